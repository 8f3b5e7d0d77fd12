"""What a run is built from before its first step: the prepared data, the starting weights, the DeepSpeed engine
around the model, and the files written beside the checkpoints.

Importing this module imports deepspeed: import it only after `device.select_accelerator`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
import yaml

from kubespeed import checkpoints, wiring
from kubespeed.spec import TrainerConfig, to_dict
from kubespeed_trainer import data, models
from kubespeed_trainer.data.tokenizer import Tokenizer, load_tokenizer
from kubespeed_trainer.engine import checkpoint_weights, objectives, schedule
from kubespeed_trainer.parallel import pipeline


class DataError(RuntimeError):
    """A data source or tokenizer is missing or unreadable (exit code wiring.EXIT_DATA_ERROR)."""


def prepare_data(config: TrainerConfig, directory: Path) -> tuple[Path, Tokenizer]:
    """Token shards and tokenizer; one rank per node tokenizes, the others then reuse its result.

    A run that starts from `training.initFrom` keeps that model's tokenizer (saved
    beside its checkpoints or in its export), so token ids mean what they meant.
    """

    def prepare() -> Path:
        try:
            inherited = None
            if config.training.initFrom and (Path(config.training.initFrom) / checkpoints.TOKENIZER_DIR).is_dir():
                inherited = load_tokenizer(Path(config.training.initFrom) / checkpoints.TOKENIZER_DIR)
            return data.prepare_dataset(config.data, inherited, directory / checkpoints.DATA_DIR, seq_length=config.training.seqLength)
        except (OSError, ValueError, UnicodeError) as err:
            raise DataError(f"data: {err}") from err

    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    prepared = prepare() if first else None
    dist.barrier()
    prepared = prepared or prepare()
    return prepared, data.prepared_tokenizer(prepared)


def initial_weights(config: TrainerConfig) -> dict[str, torch.Tensor] | None:
    """Weights to start from, for objective finetune: a checkpoint directory or exported weights."""
    source = config.training.initFrom
    if not source:
        return None
    try:
        return checkpoint_weights.state_dict_from(Path(source))
    except (OSError, ValueError) as err:
        raise DataError(f"training.initFrom: {err}") from err


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases, norms and (as in nanoGPT/GPT-2) nothing one-dimensional."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def build_engine(config: TrainerConfig, ds_config: dict[str, Any], vocab_size: int,
                 init_state: dict[str, torch.Tensor] | None) -> tuple[Any, int]:
    """(the model wrapped by DeepSpeed, a pipeline engine when `deepspeed.pipelineStages` > 1; its parameter count)."""
    torch.manual_seed(config.training.seed)
    model = models.build_model(config.model, vocab_size=vocab_size, seq_length=config.training.seqLength)
    parameters = models.count_parameters(model)
    if init_state is not None:
        checkpoint_weights.load_state(model, init_state)
    if config.deepspeed.activationCheckpointing and hasattr(model, "gradient_checkpointing"):
        model.gradient_checkpointing(True)
    if config.deepspeed.pipelineStages > 1:
        model = pipeline.gpt_pipeline(model, config, objectives.pipeline_loss)
    peak = config.training.optimizer.lr
    total = config.training.steps

    def lr_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        factor = lambda step: schedule.lr_factor(step, peak=peak, schedule=config.training.schedule, total_steps=total)  # noqa: E731
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=_param_groups(model, config.training.optimizer.weightDecay),
        config=ds_config,
        # A `scheduler` in deepspeed.overrides replaces ours; DeepSpeed prefers a client one.
        lr_scheduler=None if "scheduler" in ds_config else lr_scheduler,
    )
    if ds_config["zero_optimization"]["stage"] == 0 and config.deepspeed.pipelineStages == 1 and dist.get_world_size() == 1:
        # ZeRO 0's engine averages the gradients over the data-parallel ranks after each
        # backward even when there is only one: it flattens them into one buffer,
        # all-reduces that over a group of one and copies it back, a twentieth of a
        # small model's step for nothing. DeepSpeed's own pipeline engine turns the
        # averaging off the same way when it reduces gradients itself.
        engine.enable_backward_allreduce = False
    return engine, parameters


def write_run_files(directory: Path, config: TrainerConfig, ds_config: dict[str, Any], tokenizer: Tokenizer) -> None:
    """The trainer config, the resolved DeepSpeed config and the tokenizer, beside the checkpoints (rank 0)."""
    directory.mkdir(parents=True, exist_ok=True)
    checkpoints.write_atomically(directory / checkpoints.TRAINER_CONFIG_FILE, yaml.safe_dump(to_dict(config), sort_keys=False))
    checkpoints.write_atomically(directory / checkpoints.DEEPSPEED_CONFIG_FILE, json.dumps(ds_config, indent=2) + "\n")
    if not (directory / checkpoints.TOKENIZER_DIR).is_dir():
        tokenizer.save(directory / checkpoints.TOKENIZER_DIR)


def compare_with_operator_config(resolved: dict[str, Any]) -> None:
    """Warn when the operator's deepspeed.json (resolved without seeing the device) differs from this run's.

    The trainer's resolution wins: it knows the device (e.g. whether this GPU has bf16).
    """
    path = os.environ.get(wiring.ENV_DEEPSPEED_CONFIG)
    if not path or not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as fh:
        written = json.load(fh)
    if written != resolved:
        print(f"kubespeed train: warning: {path} differs from the config resolved on this device; using the latter "
              f"(see {checkpoints.DEEPSPEED_CONFIG_FILE} beside the checkpoints)", file=sys.stderr)
