"""The LMTrainingJob CRD against a real kube-apiserver: accepted, defaults like the parser's,
`kubectl explain` teaches, `kubectl get` shows progress, and every object `kubespeed render`
prints is accepted and garbage-collected with its job (Pod Security: test_security.py)."""

from __future__ import annotations

import copy
import subprocess
import time
from typing import Any

import pytest
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from kubespeed import wiring
from kubespeed_cli.dev.cluster import ControlPlane
from kubespeed.spec import parse_job_spec, to_dict
from kubespeed_operator.build.render import render
from operator_fixture import install_crd

pytestmark = pytest.mark.integration

# Suspended: an operator running in the same session (tests/integration/operator_fixture.py)
# then creates nothing for these jobs, leaving their children to the tests.
MINIMAL_SPEC = {"image": "trainer:1", "data": {"train": "builtin:tiny"}, "runPolicy": {"suspend": True}}


def lmtj(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{wiring.API_GROUP}/{wiring.API_VERSION}",
        "kind": wiring.KIND,
        "metadata": {"name": name},
        "spec": copy.deepcopy(spec),
    }


@pytest.fixture(scope="module")
def installed_crd(control_plane: ControlPlane) -> dict[str, Any]:
    return install_crd(control_plane.api_client())


@pytest.fixture
def jobs(control_plane: ControlPlane, installed_crd: dict[str, Any], namespace: str) -> Any:
    """Create, patch the status of, and delete LMTrainingJobs in the test's namespace."""
    custom = client.CustomObjectsApi(control_plane.api_client())
    group, version, plural = wiring.API_GROUP, wiring.API_VERSION, wiring.PLURAL

    class Jobs:
        def create(self, job: dict[str, Any]) -> dict[str, Any]:
            return custom.create_namespaced_custom_object(group, version, namespace, plural, job, field_validation="Strict")

        def patch_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
            return custom.patch_namespaced_custom_object_status(group, version, namespace, plural, name, {"status": status})

        def delete(self, name: str) -> None:
            custom.delete_namespaced_custom_object(group, version, namespace, plural, name)

    return Jobs()


def kubectl(control_plane: ControlPlane, *args: str) -> str:
    result = subprocess.run(["kubectl", *args], env=control_plane.env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_crd_is_established_with_short_name_status_and_printer_columns(installed_crd):
    spec = installed_crd["spec"]
    assert spec["names"]["shortNames"] == [wiring.SHORT_NAME]
    (version,) = spec["versions"]
    assert version["subresources"] == {
        "status": {}, "scale": {"specReplicasPath": ".spec.nodes", "statusReplicasPath": ".status.nodes", "labelSelectorPath": ".status.selector"}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert {"Phase", "Nodes", "Step", "Total", "Loss", "Age"} <= set(columns)


def within(stored: Any, parsed: Any, path: str = "spec") -> None:
    """Every value the API server stored is the parser's; the parser may hold more (the defaults the CRD leaves out)."""
    if isinstance(stored, dict):
        for key, value in stored.items():
            assert key in parsed, f"{path}.{key} is stored but the parser has no such value"
            within(value, parsed[key], f"{path}.{key}")
    else:
        assert stored == parsed, f"{path}: the API server stored {stored!r}, the parser has {parsed!r}"


def test_api_server_fills_in_the_same_defaults_as_the_parser(jobs):
    created = jobs.create(lmtj("defaults", MINIMAL_SPEC))
    within(created["spec"], to_dict(parse_job_spec(MINIMAL_SPEC)))
    assert parse_job_spec(created["spec"]) == parse_job_spec(MINIMAL_SPEC)
    # The built-in trainer's sections carry no CRD default, so that a job with a program can be refused them.
    assert "model" not in created["spec"] and "interval" not in created["spec"]["checkpoint"]


def test_api_server_defaults_nested_sections_the_user_half_wrote(jobs):
    spec = {**MINIMAL_SPEC, "training": {"steps": 5}, "checkpoint": {"volumeClaim": {"storageClassName": "fast"}}}
    created = jobs.create(lmtj("partial", spec))
    parsed = parse_job_spec(spec)
    assert created["spec"]["training"] == to_dict(parsed.training)
    assert created["spec"]["checkpoint"]["volumeClaim"] == to_dict(parsed.checkpoint.volumeClaim)
    within(created["spec"], to_dict(parsed))


@pytest.mark.parametrize(
    "path, teaches",
    [
        ("lmtj.spec.checkpoint", ["claimName", "volumeClaim", "mountPath", "interval", "keep", "resume", "latest complete checkpoint"]),
        ("lmtj.spec.checkpoint.volumeClaim", ["size", "storageClassName", "accessMode", "ReadWriteMany"]),
        ("lmtj.spec.training", ["globalBatchSize", "gradient accumulation", "microBatchSize"]),
        ("lmtj.spec.scheduling.tolerations", ["operator", "effect", "tolerationSeconds"]),
        ("lmtj.status.progress", ["step", "totalSteps", "loss", "tokensPerSecond"]),
        ("lmtj.spec.program", ["launcher", "--no_ssh", "deepspeedConfig", "torchrun"]),
        ("lmtj.spec.podTemplate.spec", ["runtimeClassName", "topologySpreadConstraints", "imagePullSecrets", "merged onto"]),
        ("lmtj.spec.podTemplate.spec.containers.env.valueFrom", ["secretKeyRef", "configMapKeyRef", "fieldRef"]),
    ],
)
def test_kubectl_explain_teaches(control_plane, installed_crd, path, teaches):
    # The API server publishes a new CRD's OpenAPI a moment after it is Established.
    deadline = time.monotonic() + 30
    while True:
        result = subprocess.run(["kubectl", "explain", path], env=control_plane.env(), capture_output=True, text=True, timeout=60)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())  # kubectl wraps descriptions
    for words in teaches:
        assert words in out, f"`kubectl explain {path}` lacks {words!r}:\n{out}"


def test_kubectl_get_shows_phase_nodes_progress_and_loss(control_plane, jobs, namespace):
    jobs.create(lmtj("shown", {**MINIMAL_SPEC, "nodes": 2, "training": {"globalBatchSize": 32}, "checkpoint": {"volumeClaim": {}}}))
    expected = ["shown", "Succeeded", "1", "2", "1000", "1000", "2.31"]
    # An operator in the session may write its first status after ours; it keeps a finished job's status as it is.
    deadline = time.monotonic() + 30
    while True:
        jobs.patch_status("shown", {"phase": "Succeeded", "nodes": 1, "progress": {"step": 1000, "totalSteps": 1000, "loss": "2.31"}})
        header, row = kubectl(control_plane, "get", wiring.SHORT_NAME, "shown", "-n", namespace).splitlines()
        if row.split()[:7] == expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert header.split() == ["NAME", "PHASE", "NODES", "WANTED", "STEP", "TOTAL", "LOSS", "AGE"]
    assert row.split()[:7] == expected


def test_kubectl_scale_resizes_the_job_under_the_spec_rules(control_plane, jobs, namespace):
    jobs.create(lmtj("scaled", {**MINIMAL_SPEC, "training": {"globalBatchSize": 16, "microBatchSize": 4}, "checkpoint": {"claimName": "ckpt"},
                                "elastic": {"minNodes": 1, "maxNodes": 4}}))
    jobs.patch_status("scaled", {"nodes": 1, "selector": f"{wiring.JOB_LABEL}=scaled"})
    kubectl(control_plane, "scale", f"{wiring.SHORT_NAME}/scaled", "--replicas=4", "-n", namespace)
    assert kubectl(control_plane, "get", wiring.SHORT_NAME, "scaled", "-n", namespace, "-o", "jsonpath={.spec.nodes}") == "4"
    scale = kubectl(control_plane, "get", "--raw", f"/apis/{wiring.API_GROUP}/{wiring.API_VERSION}/namespaces/{namespace}/{wiring.PLURAL}/scaled/scale")
    assert '"replicas":4' in scale and '"replicas":1' in scale and f'"selector":"{wiring.JOB_LABEL}=scaled"' in scale
    for replicas, field in ((3, "spec.training.globalBatchSize"), (8, "spec.nodes")):
        result = subprocess.run(["kubectl", "scale", f"{wiring.SHORT_NAME}/scaled", f"--replicas={replicas}", "-n", namespace],
                                env=control_plane.env(), capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and field in result.stderr, result.stderr


def test_status_is_a_subresource_that_create_and_spec_updates_cannot_set(jobs):
    job = lmtj("guarded", MINIMAL_SPEC)
    job["status"] = {"phase": "Succeeded"}
    created = jobs.create(job)
    assert (created.get("status") or {}).get("phase") != "Succeeded"


def test_every_rendered_object_is_accepted_and_goes_with_the_job_but_the_checkpoint_claim(control_plane, jobs, namespace):
    api = control_plane.api_client()
    spec = {
        **MINIMAL_SPEC,
        "nodes": 2,
        "procsPerNode": 2,
        "training": {"globalBatchSize": 32, "microBatchSize": 4},
        "checkpoint": {"volumeClaim": {"size": "1Gi"}},
        "data": {"train": "/data/corpus.txt", "claimName": "corpus"},
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
        "resources": {"requests": {"cpu": 2, "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
        "scheduling": {"tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]},
    }
    job = jobs.create(lmtj("rendered", spec))
    objects = render(job)
    resources = dynamic.DynamicClient(api).resources
    handles = [(resources.get(api_version=o["apiVersion"], kind=o["kind"]), o) for o in objects]
    for resource, obj in handles:
        try:
            resource.create(body=obj, namespace=namespace)
        except ApiException as error:
            pytest.fail(f"the API server refused the rendered {obj['kind']} {obj['metadata']['name']}: {error.body}")

    owned = [(r, o) for r, o in handles if o["metadata"].get("ownerReferences")]
    kept = [(r, o) for r, o in handles if not o["metadata"].get("ownerReferences")]
    assert [(o["kind"], o["metadata"]["name"]) for _, o in kept] == [("PersistentVolumeClaim", "rendered-checkpoints")]

    jobs.delete("rendered")
    deadline = time.monotonic() + 90
    while left := [(o["kind"], o["metadata"]["name"]) for r, o in owned if _exists(r, o, namespace)]:
        if time.monotonic() > deadline:
            pytest.fail(f"the garbage collector left {left} after the job was deleted")
        time.sleep(0.5)
    assert all(_exists(r, o, namespace) for r, o in kept), "the checkpoint claim went with the job"


def _exists(resource: Any, obj: dict[str, Any], namespace: str) -> bool:
    try:
        resource.get(name=obj["metadata"]["name"], namespace=namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True
