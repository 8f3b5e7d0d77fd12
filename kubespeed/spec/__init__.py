"""The LMTrainingJob vocabulary: one declaration for the CRD, the trainer config and `kubespeed local`."""

import re

import yaml

from kubespeed import wiring
from kubespeed.spec.fields import SpecError, from_dict, openapi_schema, to_dict
from kubespeed.spec.job import JOB_NAME_MAX_LENGTH, JOB_NAME_PATTERN, LMTrainingJobSpec, TrainerConfig

__all__ = [
    "LMTrainingJobSpec",
    "SpecError",
    "TrainerConfig",
    "check_job_name",
    "from_dict",
    "load_job",
    "openapi_schema",
    "parse_job_spec",
    "parse_trainer_config",
    "to_dict",
]


def parse_job_spec(spec: dict, path: str = "spec") -> LMTrainingJobSpec:
    """Parse and default a job's `spec`; raises SpecError naming the field."""
    return from_dict(LMTrainingJobSpec, spec, path).check(path)


def parse_trainer_config(config: dict, path: str = "config") -> TrainerConfig:
    """Parse and default a trainer config (the job's five training sections)."""
    return from_dict(TrainerConfig, config, path)


def load_job(path: str) -> dict:
    """Read an LMTrainingJob manifest from YAML; errors name the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d]
    except OSError as err:
        raise SpecError(path, f"cannot read: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise SpecError(path, f"not valid YAML: {err}") from err
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == wiring.KIND]
    if len(jobs) != 1:
        raise SpecError(path, f"expected exactly one {wiring.KIND} document, found {len(jobs)}")
    job = jobs[0]
    want = f"{wiring.API_GROUP}/{wiring.API_VERSION}"
    if job.get("apiVersion") != want:
        raise SpecError(f"{path}: apiVersion", f"must be {want}, got {job.get('apiVersion')!r}")
    name = (job.get("metadata") or {}).get("name")
    if not name:
        raise SpecError(f"{path}: metadata.name", "is required")
    check_job_name(name, f"{path}: metadata.name")
    return job


def check_job_name(name: str, path: str = "metadata.name") -> None:
    """Refuse a name the children cannot carry, as the CRD does (see JOB_NAME_PATTERN)."""
    if not isinstance(name, str) or not re.fullmatch(JOB_NAME_PATTERN, name):
        raise SpecError(path, f"must be lowercase letters, digits and '-', starting with a letter; got {name!r}")
    if len(name) > JOB_NAME_MAX_LENGTH:
        raise SpecError(path, f"must be at most {JOB_NAME_MAX_LENGTH} characters (pod hostnames are <name>-<rank>); got {len(name)}")
