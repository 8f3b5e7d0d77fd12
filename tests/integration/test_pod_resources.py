"""What training pods ask of their nodes, as the real API server sees it.

- The operator's pods are never BestEffort: the API server's own QoS class of the
  pods it created, and the size limit of their shared memory.
- spec.resources is checked as Kubernetes checks a container's: resources the spec
  accepts make pods the API server accepts, and each kind the spec refuses
  (test_bad_specs.BAD_RESOURCES) the API server refuses in a Pod too.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import dynamic
from kubernetes.client.exceptions import ApiException

from kubespeed import wiring
from kubespeed.spec import parse_job_spec
from kubespeed_operator.build.children import attempt_pods
from kubespeed_operator.build.render import as_submitted
from operator_fixture import job_manifest
from test_bad_specs import BAD_RESOURCES, GOOD

pytestmark = pytest.mark.integration


def shm_size(pod: Any) -> str | None:
    shm = next(v for v in pod.spec.volumes if v.name == "shm")
    return shm.empty_dir.size_limit


@pytest.mark.parametrize(
    "name, spec, qos, shm",
    [
        ("nothing asked: requests per rank make it Burstable", {}, "Burstable", "2Gi"),
        ("two ranks: twice the requests and shared memory", {"procsPerNode": 2, "training": {"steps": 10, "globalBatchSize": 16, "microBatchSize": 4}}, "Burstable", "4Gi"),
        ("requests equal to limits: Guaranteed", {"resources": {"requests": {"cpu": 2, "memory": "8Gi"}, "limits": {"cpu": 2, "memory": "8Gi"}}}, "Guaranteed", "4Gi"),
    ],
)
def test_the_operators_pods_are_never_best_effort_and_bound_their_shared_memory(lmtj, name, spec, qos, shm):
    job = f"qos-{len(spec)}-{spec.get('procsPerNode', 1)}"
    lmtj.create(job_manifest(job, **spec))
    for pod in lmtj.wait_pods(job, 2, attempt=1, bound=False):
        assert pod.status.qos_class == qos, name
        assert shm_size(pod) == shm, name


def dry_run_pod(control_plane: Any, namespace: str, pod: dict[str, Any]) -> None:
    """Create the pod as a dry run: the API server validates and admits it, and stores nothing.
    Through the dynamic client, which sends the dict as it is (the typed one checks quantities itself)."""
    pods = dynamic.DynamicClient(control_plane.api_client()).resources.get(api_version="v1", kind="Pod")
    pods.create(body=pod, namespace=namespace, dry_run="All")


GOOD_RESOURCES = [
    ("milli-cpu request under a whole limit", {"requests": {"cpu": "500m"}, "limits": {"cpu": 1}}),
    ("memory in other units, equal", {"requests": {"memory": "1Gi"}, "limits": {"memory": "1024Mi"}}),
    ("an extended resource with an equal limit", {"requests": {"example.com/nic": 2}, "limits": {"example.com/nic": "2"}}),
    ("an extended resource by its limit alone", {"limits": {"example.com/nic": 1}}),
    ("whole hugepages beside memory", {"limits": {"hugepages-2Mi": "4Mi", "memory": "1Gi"}}),
    ("ephemeral storage and a kubernetes.io resource", {"requests": {"ephemeral-storage": "10Gi", "kubernetes.io/batch-cpu": "500m"}}),
]


@pytest.mark.parametrize("what, resources", GOOD_RESOURCES, ids=[g[0] for g in GOOD_RESOURCES])
def test_resources_the_spec_accepts_make_pods_the_api_server_accepts(control_plane, namespace, what, resources):
    spec = {**GOOD, "resources": resources}
    parse_job_spec(spec)
    job = as_submitted({"apiVersion": f"{wiring.API_GROUP}/{wiring.API_VERSION}", "kind": wiring.KIND,
                        "metadata": {"name": "fits", "uid": "11111111-2222-3333-4444-555555555555"}, "spec": spec}, namespace)  # fmt: skip
    for pod in attempt_pods(job, 1):
        dry_run_pod(control_plane, namespace, pod)


@pytest.mark.parametrize("what, resources, field", BAD_RESOURCES, ids=[b[0] for b in BAD_RESOURCES])
def test_resources_the_spec_refuses_kubernetes_refuses_in_a_pod(control_plane, namespace, what, resources, field):
    job = as_submitted({"apiVersion": f"{wiring.API_GROUP}/{wiring.API_VERSION}", "kind": wiring.KIND,
                        "metadata": {"name": "refused", "uid": "11111111-2222-3333-4444-555555555555"}, "spec": GOOD}, namespace)  # fmt: skip
    pod = copy.deepcopy(attempt_pods(job, 1)[0])
    container = pod["spec"]["containers"][0]
    container["resources"] = {side: {**container["resources"].get(side, {}), **values} for side, values in resources.items()}
    with pytest.raises(ApiException) as refused:
        dry_run_pod(control_plane, namespace, pod)
    assert refused.value.status == 422, f"{what}: {refused.value.body}"
    assert "resources" in refused.value.body, what
