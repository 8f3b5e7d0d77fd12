"""The ConfigMap `<job>-config`: DeepSpeed hostfile, resolved DeepSpeed config, trainer config.

Every pod mounts it read-only at `wiring.CONFIG_DIR`; the launcher and trainer read
the three files there, so a pod carries no configuration that the ConfigMap lacks.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from kubespeed import wiring
from kubespeed.deepspeed_config import resolve_deepspeed_config
from kubespeed.spec import LMTrainingJobSpec, to_dict
from kubespeed_operator.build.meta import child_metadata, labels

SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def hostfile(job_name: str, spec: LMTrainingJobSpec) -> str:
    """`<pod>.<job> slots=<procsPerNode>` per node, node rank 0 first: DeepSpeed's rank order."""
    hosts = [wiring.pod_host(job_name, rank) for rank in range(spec.nodes)]
    return wiring.hostfile(hosts, spec.procsPerNode)


def deepspeed_config(spec: LMTrainingJobSpec) -> dict[str, Any]:
    """The DeepSpeed config the trainer will run with, from the trainer's own resolver.

    Precision `auto` resolves as for a GPU with bf16; on an older GPU the trainer
    resolves fp32 at start-up instead, the one value that can differ from the file.
    """
    return resolve_deepspeed_config(spec.trainer_config(), spec.world_size, spec.gpu, path="spec")


def config_map(job: dict[str, Any], spec: LMTrainingJobSpec) -> dict[str, Any]:
    """The hostfile always; then the built-in trainer's two configs, or a program's inline DeepSpeed config as written."""
    name = job["metadata"]["name"]
    data = {wiring.HOSTFILE_KEY: hostfile(name, spec)}
    if spec.program is None:
        data[wiring.DEEPSPEED_CONFIG_KEY] = _json(deepspeed_config(spec))
        # libyaml's dumper when pyyaml has it: the pure-Python one took 5% of the operator's CPU at scale.
        data[wiring.TRAINER_CONFIG_KEY] = yaml.dump(to_dict(spec.trainer_config()), Dumper=SAFE_DUMPER, sort_keys=False)
    elif spec.program.deepspeedConfig is not None:
        data[wiring.DEEPSPEED_CONFIG_KEY] = _json(spec.program.deepspeedConfig)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(job, wiring.config_map_name(name), labels(name)),
        "data": data,
    }


def _json(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"
