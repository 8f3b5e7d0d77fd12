"""`spec.resources`: what each pod asks for, checked at apply time as Kubernetes checks a container's resources.

The API server validates a Pod's resources only when the Pod is created, long after
the job was accepted; these rules (Kubernetes' own, from
pkg/apis/core/validation: ValidateContainerResourceRequirements) run at apply time
instead, in the CRD with Kubernetes' CEL quantity library and in Python with
`spec.quantity`, so a job the API server accepts never has its pods refused:

- a name is cpu, memory, ephemeral-storage, hugepages-<page size>, or a resource with a
  domain (`example.com/device`; not `requests.<...>`);
- a quantity is not negative, and an extended resource (a name with a domain
  outside kubernetes.io) takes whole numbers;
- a request is at most its limit; an extended resource or hugepages request needs a
  limit, equal to it; hugepages come in whole pages of their size.

What the pod gets when the job asks for less is `build.pods.container_resources`'s:
CPU and memory per rank (DEFAULT_*_PER_RANK), so that training pods are never
BestEffort, the first evicted when a node runs short of memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubespeed import wiring
from kubespeed.spec.fields import Quantity, field
from kubespeed.spec.rules import rule

GPU_RESOURCE = wiring.GPU_RESOURCE
# Requested per rank when the job names neither a request nor a limit for the resource.
DEFAULT_CPU_PER_RANK = 1
DEFAULT_MEMORY_PER_RANK_GI = 4
HUGEPAGES = "hugepages-"
# Kubernetes' container resource names: the standard ones, or hugepages of a size, or a qualified name with a domain.
STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")
OTHER_RESOURCE_NAME = (
    r"^(hugepages-[0-9]+([KMGTPE]i|[kMGTPE])?|"
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])$"
)
MAX_RESOURCES = 16


def _q(value: str) -> str:
    """CEL: the quantity of a value the schema holds as int or string."""
    return f"quantity(string({value}))"


def _is_q(value: str) -> str:
    """CEL: the value is a quantity (the schema refuses one that is not, and a rule must not fail on it)."""
    return f"isQuantity(string({value}))"


def _extended(key: str) -> str:
    """CEL: the resource named `key` is an extended one (a domain other than kubernetes.io)."""
    return f"({key}.contains('/') && !{key}.contains('kubernetes.io/'))"


def _names_rule(side: str) -> dict[str, str]:
    # The standard names first: matching a pattern costs the evaluator here a compile each time.
    standard = "[" + ", ".join(f"'{name}'" for name in STANDARD_RESOURCES) + "]"
    return rule(
        f"self.{side}.all(k, k in {standard} || (k.matches(r'{OTHER_RESOURCE_NAME}') && !k.startsWith('requests.')))",
        "resource names are cpu, memory, ephemeral-storage, hugepages of a page size (hugepages-2Mi), or an extended resource with a domain (example.com/device)",
        f".{side}",
    )


def _values_rule(side: str) -> dict[str, str]:
    value = f"self.{side}[k]"
    # The quantity library is called only for a value that looks negative or an extended resource's:
    # the common case (cpu, memory) costs no call out of CEL.
    negative = f"(string({value}).startsWith('-') && {_q(value)}.isLessThan(quantity('0')))"
    fractional = f"({_extended('k')} && !{_q(value)}.isInteger())"
    return rule(
        f"self.{side}.all(k, !{_is_q(value)} || (!{negative} && !{fractional}))",
        "quantities must not be negative, and an extended resource (a name with a domain) takes a whole number",
        f".{side}",
    )


_REQUEST, _LIMIT = "self.requests[k]", "self.limits[k]"
_BOTH_QUANTITIES = f"{_is_q(_REQUEST)} && {_is_q(_LIMIT)}"
_PAGE = f"quantity(k.substring({len(HUGEPAGES)}))"


@dataclass(kw_only=True)
class Resources:
    """CPU, memory and extra resources per pod; GPUs come from `procsPerNode` when `gpu` is true.

    Checked as Kubernetes checks a container's resources. A resource named in neither
    requests nor limits gets a request per rank: cpu 1 and memory 4Gi for each of
    `procsPerNode` ranks, so the pods are never BestEffort (the first evicted when a
    node runs short of memory).
    """

    requests: dict[str, Quantity] = field(
        "Minimum resources per pod, e.g. {cpu: 8, memory: 64Gi}; cpu and memory default to 1 and 4Gi per rank unless limited here.",
        {}, max_properties=MAX_RESOURCES,
    )  # fmt: skip
    limits: dict[str, Quantity] = field(
        "Maximum resources per pod, e.g. {memory: 80Gi}; a limit without a request is also the request, as in a Pod.",
        {}, max_properties=MAX_RESOURCES,
    )  # fmt: skip

    __cel__ = (
        rule(f"!('{GPU_RESOURCE}' in self.requests) && !('{GPU_RESOURCE}' in self.limits)", f"{GPU_RESOURCE} comes from procsPerNode when gpu is true; leave it out of resources", ".limits"),
        _names_rule("requests"),
        _names_rule("limits"),
        _values_rule("requests"),
        _values_rule("limits"),
        rule(
            f"self.requests.all(k, !(k in self.limits) || !({_BOTH_QUANTITIES}) || {_q(_REQUEST)}.compareTo({_q(_LIMIT)}) <= 0)",
            "a request must not exceed its limit",
            ".requests",
        ),
        rule(
            f"self.requests.all(k, !(k.startsWith('{HUGEPAGES}') || {_extended('k')}) || "
            f"(k in self.limits && (!({_BOTH_QUANTITIES}) || {_q(_REQUEST)}.compareTo({_q(_LIMIT)}) == 0)))",
            "an extended resource (a name with a domain) or hugepages request needs a limit, equal to the request",
            ".limits",
        ),
        rule(
            f"self.limits.all(k, !k.startsWith('{HUGEPAGES}') || !{_is_q(_LIMIT)} || "
            f"({_PAGE}.isInteger() && {_PAGE}.isGreaterThan(quantity('0')) && {_q(_LIMIT)}.isInteger() && {_q(_LIMIT)}.asInteger() % {_PAGE}.asInteger() == 0))",
            "hugepages come in whole pages: a multiple of the page size in the name",
            ".limits",
        ),
    )
