"""The trainer config: read from the file a command is given, or from the copy a run keeps beside its checkpoints.

The file holds the LMTrainingJob's five training sections (`model`, `data`,
`training`, `deepspeed`, `checkpoint`) with the same names and nesting;
`kubespeed.spec` parses and checks them.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kubespeed import checkpoints
from kubespeed.spec import SpecError, TrainerConfig, parse_trainer_config


def load_config(path: str, name: str | None = None) -> TrainerConfig:
    """Parse a trainer config file; errors name the field, under `name` (e.g. `spec` for a job's) or the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except OSError as err:
        raise SpecError(path, f"cannot read: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise SpecError(path, f"not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise SpecError(path, "must be a mapping with sections model, data, training, deepspeed, checkpoint")
    return parse_trainer_config(raw, name or path)


def load_run_config(directory: Path) -> TrainerConfig:
    """The trainer config a run wrote beside its checkpoints."""
    path = directory / checkpoints.TRAINER_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a kubespeed checkpoint directory ({checkpoints.TRAINER_CONFIG_FILE} missing)")
    return parse_trainer_config(yaml.safe_load(path.read_text()), str(path))
