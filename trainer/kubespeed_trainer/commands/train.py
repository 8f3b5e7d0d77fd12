"""`kubespeed train CONFIG`: train one rank group from a trainer config file.

The config file holds the LMTrainingJob's five training sections (`model`, `data`,
`training`, `deepspeed`, `checkpoint`) with the same names and nesting, so a job's
spec and a local config are one format. A minimal one:

    data: {train: ../shared/data/tinyshakespeare.txt}
    training: {steps: 200, globalBatchSize: 16, microBatchSize: 8, seqLength: 64}

One process (a world of one; checkpoints go to `checkpoint.mountPath` unless told):

    kubespeed train config.yaml --checkpoint-dir /tmp/run

Several ranks on this machine, through torch's launcher (or `kubespeed launch`):

    torchrun --nproc-per-node 2 -m kubespeed_trainer.commands.train config.yaml --checkpoint-dir /tmp/run

Several nodes: `kubespeed launch` on each (see commands/launch.py). Rerunning the same
command resumes from the newest complete checkpoint (`checkpoint.resume: auto`).

The DeepSpeed config is resolved here from the trainer config with the same
function the operator uses for the ConfigMap's `deepspeed.json`, so both agree;
the resolved one is written beside the checkpoints.

Exit codes (kubespeed.wiring): 0 done (or `--max-steps-this-run` steps done and
checkpointed), 64 invalid config, 65 data or tokenizer unreadable, 143 stopped by
SIGTERM after a complete checkpoint; a crash exits non-zero otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kubespeed import deepspeed_config, wiring
from kubespeed.spec import SpecError
from kubespeed_trainer import elastic
from kubespeed_trainer.commands import failure
from kubespeed_trainer.config import load_config
from kubespeed_trainer.engine import compilation, device, startup


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kubespeed train", description="Train one rank group from a trainer config file.")
    parser.add_argument("config", nargs="?", default=os.environ.get(wiring.ENV_TRAINER_CONFIG, wiring.TRAINER_CONFIG_PATH),
                        help=f"trainer config (default: ${wiring.ENV_TRAINER_CONFIG} or {wiring.TRAINER_CONFIG_PATH})")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help=f"checkpoints, metrics and prepared data (default: ${wiring.ENV_CHECKPOINT_DIR}, else checkpoint.mountPath)")
    parser.add_argument("--metrics-port", type=int, default=_env_int(wiring.ENV_METRICS_PORT),
                        help=f"rank 0 serves Prometheus metrics here (default: ${wiring.ENV_METRICS_PORT}; unset: no server)")
    parser.add_argument("--max-steps-this-run", type=int, default=None,
                        help="stop after this many steps with a checkpoint and exit 0 (the next run resumes)")
    parser.add_argument("--gpu", choices=("auto", "true", "false"), default="auto",
                        help=f"train on GPUs (default: ${wiring.ENV_USE_GPU}, else whether one is visible)")
    return parser.parse_args(argv)


def fail(code: wiring.ExitCode, message: str) -> int:
    """Say why this rank stops, in its log and to the launcher (which carries it to the job)."""
    print(f"kubespeed train: {message}", file=sys.stderr, flush=True)
    failure.record(message, code.code)
    return code.code


def main(argv: list[str]) -> int:
    clock = startup.StartupClock()
    elastic.die_with_launcher()
    elastic.register_rank()
    elastic.StepWatchdog().arm_for_startup()
    # Counted as the process starts, so a restart that fails while loading still counts.
    in_place_restarts = elastic.count_start() if os.environ.get("RANK") == "0" else 0
    args = parse_args(argv)
    # A job's config is its spec's training sections: errors name the spec's fields.
    in_job = bool(os.environ.get(wiring.ENV_JOB_NAME))
    try:
        config = load_config(args.config, "spec" if in_job else None)
    except SpecError as err:
        return fail(wiring.EXIT_CONFIG_ERROR, str(err))
    if args.gpu != "auto":
        os.environ[wiring.ENV_USE_GPU] = args.gpu
    gpu = device.gpu_requested()
    problem = device.check_gpu() if gpu else None
    if problem is not None:
        return fail(*problem)
    directory = args.checkpoint_dir or Path(os.environ.get(wiring.ENV_CHECKPOINT_DIR) or config.checkpoint.mountPath)
    compilation.keep_kernels_in(directory, config)
    device.select_accelerator(gpu)
    # deepspeed picks its accelerator when first imported, and these modules import it: only after the line above.
    from kubespeed_trainer.engine import accelerator, build, trainer

    clock.mark("imports")
    precision = deepspeed_config.resolve_precision(config.deepspeed.precision, gpu, device.bf16_supported(gpu))
    refused = accelerator.unsupported_precision(precision)
    if refused is not None:
        field = "spec.deepspeed.precision" if in_job else f"{args.config}: deepspeed.precision"
        return fail(wiring.EXIT_CONFIG_ERROR, f"{field}: {refused}")

    options = trainer.RunOptions(checkpoint_dir=directory, metrics_port=args.metrics_port,
                                 max_steps_this_run=args.max_steps_this_run,
                                 attempt=_env_int(wiring.ENV_ATTEMPT) or 0, in_place_restarts=in_place_restarts, gpu=gpu,
                                 startup=clock)
    try:
        return trainer.run(config, options)
    except SpecError as err:
        return fail(wiring.EXIT_CONFIG_ERROR, str(err))
    except build.DataError as err:
        # Its message starts with the section it is about (`data: ...`).
        return fail(wiring.EXIT_DATA_ERROR, f"spec.{err}" if in_job else str(err))
    except Exception as err:
        failure.record(f"{type(err).__name__}: {err}")
        raise


def rank(argv: list[str]) -> None:
    """A rank as `kubespeed launch` starts it, forked from its forkserver: `main`, with its exit
    code left in the launcher's folder (the forkserver, not the launcher, reaps the process)."""
    try:
        code = main(argv)
    except BaseException:
        elastic.record_exit(1)
        raise
    elastic.record_exit(code)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    exit_code = main(sys.argv[1:])
    # The rank's outcome is decided and its checkpoint and metrics are on disk. A crash while
    # the interpreter tears down (torch's, gloo's or DeepSpeed's threads and finalizers) must
    # not turn it into a failure: the launcher would answer one with an in-place restart of
    # every rank of a job that had finished.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
