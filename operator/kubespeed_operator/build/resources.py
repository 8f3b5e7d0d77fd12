"""What a training pod asks of its node: the container's requests and limits, and the size of its shared memory.

A pod that requests nothing is BestEffort, the first the kubelet evicts when the
node runs short of memory. So a resource the job names in neither requests nor
limits (`spec.resources`) is requested per rank: DEFAULT_CPU_PER_RANK CPUs and
DEFAULT_MEMORY_PER_RANK_GI GiB for each of `procsPerNode` ranks. A limit without a
request is left alone: Kubernetes makes the limit the request, as in any Pod.

The memory-backed /dev/shm counts against the pod's memory, so it may fill at most
half of what the pod asked for (SHM_FRACTION_OF_MEMORY): NCCL and torch's shared
memory transports get room, and a runaway writer cannot take the rest.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any

from kubespeed import wiring
from kubespeed.spec import LMTrainingJobSpec, quantity
from kubespeed.spec.resources import DEFAULT_CPU_PER_RANK, DEFAULT_MEMORY_PER_RANK_GI

SHM_FRACTION_OF_MEMORY = Fraction(1, 2)


def requests(spec: LMTrainingJobSpec) -> dict[str, str]:
    """The job's requests, with cpu and memory per rank where it names neither a request nor a limit."""
    asked = spec.resources
    result = {name: str(q) for name, q in asked.requests.items()}
    defaults = {"cpu": str(DEFAULT_CPU_PER_RANK * spec.procsPerNode), "memory": f"{DEFAULT_MEMORY_PER_RANK_GI * spec.procsPerNode}Gi"}
    for name, value in defaults.items():
        if name not in asked.requests and name not in asked.limits:
            result[name] = value
    return result


def container_resources(spec: LMTrainingJobSpec) -> dict[str, Any]:
    """Quantities as strings, the form the API server returns and typed clients expect."""
    limits = {name: str(q) for name, q in spec.resources.limits.items()}
    if spec.gpu:
        # An extended resource's request defaults to its limit.
        limits[wiring.GPU_RESOURCE] = str(spec.procsPerNode)
    resources: dict[str, Any] = {"requests": requests(spec)}
    if limits:
        resources["limits"] = limits
    return resources


def shm_size_limit(spec: LMTrainingJobSpec) -> str | None:
    """The size limit of the pod's /dev/shm: a share of the memory it requests (its limit, when that is
    all it names); None for a pod that asks for no memory at all."""
    return _share_of(str(requests(spec).get("memory", spec.resources.limits.get("memory"))))


@functools.lru_cache(maxsize=256)
def _share_of(memory: str) -> str | None:
    # Cached: every pod of every job computes it, from a few distinct memory sizes.
    size = quantity.parse(memory) * SHM_FRACTION_OF_MEMORY
    return quantity.format_bytes(size) if size >= 1 else None
