"""A pod that runs the user's program (`spec.program`) instead of the built-in trainer.

The user's image needs nothing of kubespeed. An init container from the trainer image
copies the program host (kubespeed/program_host.py, standard library only) into an
emptyDir; the program container runs it with the image's `python3`, and it starts the
launcher the spec names with the pod's wiring, forwards SIGTERM to every rank, serves
progress on the metrics port and maps the exit code (see its docstring).
"""

from __future__ import annotations

from typing import Any

from kubespeed import wiring
from kubespeed.spec import LMTrainingJobSpec
from kubespeed.spec.program import ProgramSpec

HOST_VOLUME = "program-host"
INTERPRETER = "python3"
# The trainer image's Python, which has kubespeed installed.
INSTALL_COMMAND = ["python", "-m", "kubespeed.program_host", "--install", wiring.HOST_DIR]


def config_source(program: ProgramSpec) -> str | None:
    """Where the program's DeepSpeed config is in the pod: the ConfigMap's copy of the inline one, or the image's file."""
    if program.deepspeedConfig is not None:
        return wiring.DEEPSPEED_CONFIG_PATH
    return program.deepspeedConfigPath


def host_command(spec: LMTrainingJobSpec) -> list[str]:
    """The program container's command: the program host, its settings, then the user's command after `--`."""
    program = spec.program
    assert program is not None
    argv = [INTERPRETER, wiring.HOST_PATH, "--launcher", program.launcher]
    if program.module:
        argv.append("--module")
    if config_source(program) is not None and program.deepspeedConfigArgument:
        # One token: argparse would take a separate `--deepspeed_config` for an option of its own.
        argv.append(f"--config-argument={program.deepspeedConfigArgument}")
    if program.deepspeedMonitor:
        argv.append("--deepspeed-monitor")
    if program.totalSteps is not None:
        argv += ["--total-steps", str(program.totalSteps)]
    return [*argv, "--", *program.command, *program.args]


def program_env(spec: LMTrainingJobSpec) -> dict[str, str]:
    """The wiring a program gets besides the built-in trainer's (whose trainer config it has no use for)."""
    program = spec.program
    assert program is not None
    env = {wiring.ENV_PROGRESS_FILE: wiring.PROGRESS_FILE}
    source = config_source(program)
    if source is not None:
        env[wiring.ENV_DEEPSPEED_CONFIG] = source
    return env


def host_installer(spec: LMTrainingJobSpec, security_context: dict[str, Any]) -> dict[str, Any]:
    """The init container that copies the program host into the pod."""
    program = spec.program
    assert program is not None
    return {
        "name": wiring.HOST_CONTAINER_NAME,
        "image": program.helperImage,
        "imagePullPolicy": spec.imagePullPolicy,
        "command": list(INSTALL_COMMAND),
        "volumeMounts": [{"name": HOST_VOLUME, "mountPath": wiring.HOST_DIR}],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": dict(security_context),
    }
