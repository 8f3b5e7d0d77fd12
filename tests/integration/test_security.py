"""What the install asks for, against the real API server: RBAC without wildcards, secrets or
exec in any mode of the chart; the operator pod admitted where Pod Security `restricted` is
enforced; training pods admitted under `baseline` and `restricted`, as non-root; a job's
NetworkPolicy admitting only the job's own pods, and to the metrics port the operator's
pods in its namespace and the scrapers the cluster names.

No CNI runs here, so the NetworkPolicy is created on the API server (schema, defaults) and
the object it returns is evaluated by the rules of the NetworkPolicy API (matchLabels
selectors, ports) for each kind of peer.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from kubespeed import wiring
from kubespeed.spec import load_job
from kubespeed_cli.dev.cluster import ControlPlane
from kubespeed_operator.build.children import attempt_pods, job_children
from kubespeed_operator.build.cluster import Cluster, Scraper
from kubespeed_operator.build.render import as_submitted

from chart_fixture import MODE_IDS, MODES, REPO, render

pytestmark = pytest.mark.integration

EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


def operator_pod(cp: ControlPlane) -> dict[str, Any]:
    """The pod the chart's Deployment makes, as the ReplicaSet controller would create it."""
    deployment = next(doc for doc in render(cp) if doc["kind"] == "Deployment")
    template = copy.deepcopy(deployment["spec"]["template"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator", **template["metadata"]}, "spec": template["spec"]}


@pytest.fixture
def enforcing(control_plane: ControlPlane) -> Iterator[Any]:
    """`enforcing(level)`: a new namespace labelled pod-security.kubernetes.io/enforce=level."""
    core = client.CoreV1Api(control_plane.api_client())
    made: list[str] = []

    def make(level: str) -> str:
        name = f"psa-{level}-{secrets.token_hex(3)}"
        labels = {"pod-security.kubernetes.io/enforce": level, "pod-security.kubernetes.io/enforce-version": "latest"}
        core.create_namespace({"metadata": {"name": name, "labels": labels}})
        made.append(name)
        return name

    yield make
    for name in made:
        core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
        core.delete_namespace(name)


def create_pod(cp: ControlPlane, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    """Create the pod as its controller would, once its ServiceAccount exists in the namespace.

    Through the dynamic client: the typed client's models refuse integer quantities
    (`nvidia.com/gpu: 2`) that the API server accepts."""
    core = client.CoreV1Api(cp.api_client())
    account = pod["spec"].get("serviceAccountName", "default")
    if account != "default":
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    deadline = time.monotonic() + 60
    while not any(sa.metadata.name == account for sa in core.list_namespaced_service_account(namespace).items):
        assert time.monotonic() < deadline, f"ServiceAccount {account} never appeared in {namespace}"
        time.sleep(0.2)
    pods = dynamic.DynamicClient(cp.api_client()).resources.get(api_version="v1", kind="Pod")
    return pods.create(body=pod, namespace=namespace).to_dict()


# ---------------------------------------------------------------- RBAC


def rbac_rules(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", rule) for d in docs if d["kind"] in ("Role", "ClusterRole") for rule in d["rules"]]


@pytest.mark.parametrize("values", MODES, ids=MODE_IDS)
def test_no_rule_uses_a_wildcard_or_reaches_secrets_exec_or_escalation(control_plane, values):
    rules = rbac_rules(render(control_plane, values))
    assert rules
    for owner, rule in rules:
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(key, []), f"{owner}: wildcard in {key}: {rule}"
        assert "secrets" not in rule["resources"], f"{owner}: no feature needs secrets: {rule}"
        for sub in ("pods/exec", "pods/attach", "pods/portforward", "pods/proxy", "nodes/proxy"):
            assert sub not in rule["resources"], f"{owner}: {sub}: {rule}"
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), f"{owner}: {rule}"
        assert not {"roles", "clusterroles", "rolebindings", "clusterrolebindings"} & set(rule["resources"]), f"{owner}: {rule}"


def test_namespaced_modes_grant_nothing_cluster_wide(control_plane):
    for values in MODES[1:]:
        docs = render(control_plane, values)
        watch = yaml.safe_load(values.read_text()).get("watch", {})
        if watch.get("mode") == "namespaced":
            assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")], values.name


def test_leader_election_may_update_only_the_operators_lease(control_plane):
    role = next(d for d in render(control_plane) if d["kind"] == "Role" and d["metadata"]["name"].endswith("leader-election"))
    for rule in role["rules"]:
        if set(rule["verbs"]) - {"create"}:
            assert rule["resourceNames"] == ["kubespeed-operator"], rule


# ---------------------------------------------------------------- Pod Security admission


def test_operator_pod_is_admitted_under_restricted(control_plane, enforcing):
    created = create_pod(control_plane, enforcing("restricted"), operator_pod(control_plane))
    assert created["spec"]["securityContext"]["runAsNonRoot"] is True


def test_restricted_namespace_really_refuses_a_pod_that_breaks_it(control_plane, enforcing):
    pod = operator_pod(control_plane)
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(ApiException) as refused:
        create_pod(control_plane, enforcing("restricted"), pod)
    assert refused.value.status == 403 and "violates PodSecurity" in refused.value.body


def example_job(path: Path, namespace: str) -> dict[str, Any]:
    job = as_submitted(load_job(str(path)), namespace)
    job["metadata"]["uid"] = "11111111-2222-3333-4444-555555555555"
    return job


@pytest.mark.parametrize("level", ["baseline", "restricted"])
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_training_pods_are_admitted_and_run_as_non_root(control_plane, enforcing, example, level):
    namespace = enforcing(level)
    for pod in attempt_pods(example_job(example, namespace), 1):
        created = create_pod(control_plane, namespace, pod)["spec"]
        assert created["securityContext"]["runAsNonRoot"] is True
        assert created["securityContext"]["runAsUser"] == wiring.TRAINER_UID != 0
        assert created["automountServiceAccountToken"] is False


@pytest.mark.parametrize("level, admitted", [("restricted", False), ("baseline", False), ("privileged", True)])
def test_a_capability_the_template_adds_needs_a_privileged_namespace(control_plane, enforcing, level, admitted):
    # IPC_LOCK (pinned memory for RDMA) is outside both restricted's and baseline's short lists.
    namespace = enforcing(level)
    job = example_job(REPO / "manifests" / "examples" / "quickstart.yaml", namespace)
    job["spec"]["podTemplate"] = {"spec": {"containers": [{"name": "trainer", "securityContext": {"capabilities": {"add": ["IPC_LOCK"]}}}]}}
    (pod,) = attempt_pods(job, 1)
    if admitted:
        created = create_pod(control_plane, namespace, pod)["spec"]["containers"][0]["securityContext"]
        assert created["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
        return
    with pytest.raises(ApiException) as refused:
        create_pod(control_plane, namespace, pod)
    assert refused.value.status == 403 and "IPC_LOCK" in refused.value.body, refused.value.body


# ---------------------------------------------------------------- a job's NetworkPolicy


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"evaluator knows matchLabels only: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admits(policy: dict[str, Any], peer: dict[str, Any], port: int) -> bool:
    """Whether `policy` lets `peer` (namespace, labels, namespaceLabels) reach a selected pod on TCP `port`."""
    spec = policy["spec"]
    assert "Ingress" in spec["policyTypes"]
    for rule in spec.get("ingress", []):
        ports = rule.get("ports") or [{"protocol": "TCP"}]
        if not any(p.get("protocol", "TCP") == "TCP" and p.get("port", port) == port for p in ports):
            continue
        for source in rule.get("from") or [{}]:
            if "ipBlock" in source:
                continue
            in_namespace = (
                selects(source["namespaceSelector"], peer["namespaceLabels"])
                if "namespaceSelector" in source
                else peer["namespace"] == policy["metadata"]["namespace"]
            )
            if in_namespace and selects(source.get("podSelector", {}), peer["labels"]):
                return True
    return False


# The chart's metrics.trainers.scrapers, as its ci values name Prometheus.
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}
CLUSTER = Cluster(metrics_scrapers=(Scraper("monitoring", tuple(PROMETHEUS.items())),))


@pytest.fixture
def job_policy(control_plane: ControlPlane, namespace: str) -> dict[str, Any]:
    """The NetworkPolicy of the quickstart job, as the API server stored it (with the operator in
    kubespeed-system and Prometheus in `monitoring` allowed to scrape)."""
    job = example_job(REPO / "manifests" / "examples" / "quickstart.yaml", namespace)
    policy = next(obj for obj in job_children(job, cluster=CLUSTER) if obj["kind"] == "NetworkPolicy")
    networking = client.NetworkingV1Api(control_plane.api_client())
    stored = networking.create_namespaced_network_policy(namespace, policy)
    return control_plane.api_client().sanitize_for_serialization(stored)


def peer_cases(cp: ControlPlane, namespace: str, job: str) -> list[tuple[str, dict[str, Any], int, bool]]:
    trainer = attempt_pods(example_job(REPO / "manifests" / "examples" / "quickstart.yaml", namespace), 1)[0]
    own = trainer["metadata"]["labels"]
    other = {**own, wiring.JOB_LABEL: f"{job}-other"}
    operator = operator_pod(cp)["metadata"]["labels"]
    system = {"kubernetes.io/metadata.name": "kubespeed-system"}
    here = {"kubernetes.io/metadata.name": namespace}
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    elsewhere = {"kubernetes.io/metadata.name": "team-b"}

    def peer(labels: dict[str, str], ns: str, ns_labels: dict[str, str]) -> dict[str, Any]:
        return {"labels": labels, "namespace": ns, "namespaceLabels": ns_labels}

    return [
        ("same job, rendezvous port", peer(own, namespace, here), wiring.MASTER_PORT, True),
        ("same job, an NCCL/gloo ephemeral port", peer(own, namespace, here), 41234, True),
        ("same job, metrics port", peer(own, namespace, here), wiring.METRICS_PORT, True),
        ("another job's pod, rendezvous port", peer(other, namespace, here), wiring.MASTER_PORT, False),
        ("another job's pod, metrics port", peer(other, namespace, here), wiring.METRICS_PORT, False),
        ("unlabelled pod, rendezvous port", peer({}, namespace, here), wiring.MASTER_PORT, False),
        ("operator pod, metrics port", peer(operator, "kubespeed-system", system), wiring.METRICS_PORT, True),
        ("operator pod, rendezvous port", peer(operator, "kubespeed-system", system), wiring.MASTER_PORT, False),
        ("pod elsewhere, metrics port", peer({"app": "curl"}, "kubespeed-system", system), wiring.METRICS_PORT, False),
        # Any namespace's pods can carry the operator's labels: only those in its namespace count.
        ("a pod labelled as the operator in another namespace, metrics port", peer(operator, "team-b", elsewhere), wiring.METRICS_PORT, False),
        ("a pod labelled as the operator in the job's namespace, metrics port", peer(operator, namespace, here), wiring.METRICS_PORT, False),
        ("Prometheus in the monitoring namespace, metrics port", peer(PROMETHEUS, "monitoring", monitoring), wiring.METRICS_PORT, True),
        ("Prometheus in the monitoring namespace, rendezvous port", peer(PROMETHEUS, "monitoring", monitoring), wiring.MASTER_PORT, False),
        ("another pod in the monitoring namespace, metrics port", peer({"app": "grafana"}, "monitoring", monitoring), wiring.METRICS_PORT, False),
        ("a pod labelled as Prometheus in another namespace, metrics port", peer(PROMETHEUS, "team-b", elsewhere), wiring.METRICS_PORT, False),
    ]


def test_job_network_policy_admits_only_the_gang_and_the_scrapes_of_the_operator_and_named_scrapers(control_plane, namespace, job_policy):
    cases = peer_cases(control_plane, namespace, job_policy["metadata"]["labels"][wiring.JOB_LABEL])
    outcomes = {what: admits(job_policy, peer, port) for what, peer, port, _ in cases}
    assert outcomes == {what: allowed for what, _, _, allowed in cases}
