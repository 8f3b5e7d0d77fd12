"""`spec.program`: the user's own DeepSpeed program in the user's image, instead of the built-in trainer.

A launcher starts the program in every pod from the same wiring the built-in trainer
gets: DeepSpeed's own launcher with the job's hostfile and `--no_ssh`, torchrun, or
nothing (the command once per pod). What runs beside it (signals, progress, exit
codes) is kubespeed's program host, brought into the pod by an init container.

The DeepSpeed config handed to the program is the user's, checked here only where
a world size decides (its batch arithmetic); `"auto"` values (Hugging Face's
Trainer fills them in) are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubespeed import wiring
from kubespeed.spec.errors import SpecError
from kubespeed.spec.fields import field
from kubespeed.spec.rules import rule

LAUNCHERS = ("deepspeed", "torchrun", "none")
CONFIG_ARGUMENT_PATTERN = r"(--?[A-Za-z][-_A-Za-z0-9]*)?"
BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


@dataclass(kw_only=True)
class ProgramSpec:
    """The user's own program, started in every pod by a launcher; the built-in trainer's sections (model, data, training, deepspeed) do not apply."""

    command: list[str] = field(
        "The program. For launcher `deepspeed` and `torchrun`: a Python script in the image (or a module, with `module`) "
        "and its arguments, as written after `deepspeed` or `torchrun` on a command line; for `none`: any executable and "
        "its arguments, run once per pod with the wiring in its environment (e.g. `accelerate launch train.py`).",
        min_length=1,
    )
    args: list[str] = field("More arguments after `command`, for every rank.", [])
    launcher: str = field(
        "What starts the ranks in each pod. `deepspeed`: DeepSpeed's launcher, `deepspeed --hostfile <the job's hostfile> "
        "--no_ssh --node_rank <pod's node rank> --master_addr <pod 0> --master_port 29500`, one per pod, forming one world "
        "(the hostfile's slots are procsPerNode). `torchrun`: torch's launcher with c10d rendezvous at pod 0, which restarts "
        "the ranks in place (runPolicy.maxInPlaceRestarts). `none`: the command itself, once per pod.",
        "deepspeed", enum=LAUNCHERS,
    )
    module: bool = field("Run `command[0]` as a Python module (`python -m`); for launcher deepspeed and torchrun.", False)
    deepspeedConfig: dict[str, Any] | None = field(
        "The DeepSpeed config (ds_config.json) handed to the program, inline. Its batch sizes must agree with "
        "nodes x procsPerNode where they are numbers. It reaches the program as the file named by "
        "`deepspeedConfigArgument` and KUBESPEED_DEEPSPEED_CONFIG.",
        None,
    )
    deepspeedConfigPath: str | None = field("A DeepSpeed config file in the image, instead of `deepspeedConfig`.", None, pattern=r"/.*")
    deepspeedConfigArgument: str = field(
        "The option that names the config file on the program's command line: `--deepspeed_config` "
        "(deepspeed.add_config_arguments), `--deepspeed` (Hugging Face Trainer); empty: none, the program reads "
        "KUBESPEED_DEEPSPEED_CONFIG.",
        "--deepspeed_config", pattern=CONFIG_ARGUMENT_PATTERN,
    )
    deepspeedMonitor: bool = field(
        "Switch on DeepSpeed's CSV monitor in the config handed over (unless it sets `csv_monitor`) and report its "
        "optimizer steps and learning rate as progress: no change to the program. Steps are DeepSpeed's samples divided by "
        "the config's train_batch_size. Loss comes from the progress file (KUBESPEED_PROGRESS_FILE; see README).",
        True,
    )
    totalSteps: int | None = field("Optimizer steps the program will run, for status.progress.totalSteps and the ETA; unknown when unset.", None, minimum=1)
    helperImage: str = field(
        "Image of the init container that copies kubespeed's program host (standard library only) into the pod; "
        "the user's image needs Python 3 (`python3` on PATH) and nothing of kubespeed.",
        wiring.HELPER_IMAGE, min_length=1,
    )

    __cel__ = (
        rule("!has(self.deepspeedConfig) || !has(self.deepspeedConfigPath)", "set deepspeedConfig or deepspeedConfigPath, not both", ".deepspeedConfigPath"),
        rule("self.launcher != 'none' || !self.module", "module applies to launcher deepspeed and torchrun; with none, command is run as it is", ".module"),
    )


def check_deepspeed_config(config: dict[str, Any], world_size: int, path: str) -> None:
    """Refuse batch sizes that cannot hold for `world_size` ranks, as DeepSpeed would at start-up (on every rank, later)."""
    sizes = {key: config.get(key) for key in BATCH_KEYS}
    for key, value in sizes.items():
        if value is None or value == "auto":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"{path}.{key}", f"must be a whole number of at least 1 or \"auto\"; got {value!r}")
    batch, micro, accumulation = (sizes[key] if isinstance(sizes[key], int) else None for key in BATCH_KEYS)
    if batch is not None and micro is not None and accumulation is not None and batch != micro * accumulation * world_size:
        raise SpecError(f"{path}.train_batch_size", f"{batch} is not train_micro_batch_size_per_gpu {micro} x "
                                                    f"gradient_accumulation_steps {accumulation} x {world_size} ranks")  # fmt: skip
    if batch is not None and micro is not None and batch % (micro * world_size):
        raise SpecError(f"{path}.train_batch_size", f"{batch} is not a multiple of train_micro_batch_size_per_gpu {micro} x {world_size} ranks")
    if batch is not None and accumulation is not None and batch % (accumulation * world_size):
        raise SpecError(f"{path}.train_batch_size", f"{batch} is not a multiple of gradient_accumulation_steps {accumulation} x {world_size} ranks")
