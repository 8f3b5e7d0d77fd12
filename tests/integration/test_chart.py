"""The Helm chart and the kustomize base against the real control plane and the pinned helm.

`helm lint` is clean; every mode's render (charts/kubespeed/ci/*-values.yaml) is accepted
by the API server (server-side dry-run); a wrong value is refused by values.schema.json
naming the value; `kubectl kustomize manifests/` is the chart's default render and the
files scripts/sync-manifests writes are current; `helm install` makes an operator whose
ServiceAccount may do what the operator does and nothing it must not.
"""

from __future__ import annotations

import json
import re
import secrets
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubespeed import wiring
from kubespeed.spec import load_job
from kubespeed_cli.dev.cluster import ControlPlane
from chart_fixture import CHART, MODE_IDS, MODES, REPO, SYNC, documents, ok, render, run, template
from operator_fixture import JobClient, OperatorProcess, install_crd, job_manifest, run_all, shared_checkpoint_claim, wait_for

pytestmark = pytest.mark.integration

# The namespaces charts/kubespeed/ci/namespaced-multi-values.yaml names.
TEAM_NAMESPACES = ("team-a", "team-b")

def monitor_crd(kind: str, endpoints: str) -> dict[str, Any]:
    """prometheus-operator is not part of this control plane: a stand-in for its `kind` CRD with
    the upstream schema of the fields the chart sets, so a typo there is refused."""
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "required": ["selector"],
                        "properties": {
                            "selector": {"type": "object", "properties": {
                                "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                            "namespaceSelector": {"type": "object", "properties": {
                                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                            endpoints: {"type": "array", "items": {"type": "object", "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            }}},
                        },
                    }},
                }},
            }],
        },
    }  # fmt: skip


# The operator's ServiceMonitor and the training pods' PodMonitor, which the chart ships.
SERVICE_MONITOR_CRD = monitor_crd("ServiceMonitor", "endpoints")
POD_MONITOR_CRD = monitor_crd("PodMonitor", "podMetricsEndpoints")


def by_identity(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    keyed = {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs}
    assert len(keyed) == len(docs), "two objects with one identity"
    return keyed


@pytest.fixture(scope="module")
def helm(control_plane: ControlPlane) -> Path:
    return control_plane.bin_dir / "helm"


@pytest.fixture(scope="module")
def kubectl(control_plane: ControlPlane) -> Path:
    return control_plane.bin_dir / "kubectl"


@pytest.fixture(scope="module")
def cluster_ready(control_plane: ControlPlane) -> ControlPlane:
    """The namespaces and CRDs the renders refer to: the kustomize base's namespace, the
    team namespaces of the namespaced mode, the LMTrainingJob, ServiceMonitor and PodMonitor CRDs."""
    api = control_plane.api_client()
    core = client.CoreV1Api(api)
    existing = {ns.metadata.name for ns in core.list_namespace().items}
    for name in (SYNC.NAMESPACE, *TEAM_NAMESPACES):
        if name not in existing:
            core.create_namespace({"metadata": {"name": name}})
    install_crd(api)
    extensions = client.ApiextensionsV1Api(api)
    installed = {c.metadata.name for c in extensions.list_custom_resource_definition().items}
    for monitor in (SERVICE_MONITOR_CRD, POD_MONITOR_CRD):
        if monitor["metadata"]["name"] not in installed:
            extensions.create_custom_resource_definition(monitor)
    return control_plane


# ---------------------------------------------------------------- lint and render


@pytest.mark.parametrize("values", MODES, ids=MODE_IDS)
def test_helm_lint_is_clean(helm, control_plane, values):
    out = ok(run([helm, "lint", "--strict", CHART, *(["--values", values] if values else [])], control_plane))
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize("values", MODES, ids=MODE_IDS)
def test_every_mode_renders_objects_the_api_server_accepts(kubectl, cluster_ready, values):
    rendered = template(cluster_ready, values, "--include-crds")
    assert documents(rendered)
    # --force-conflicts: objects of the same name that other tests applied may differ (a dry run changes nothing).
    apply = [kubectl, "apply", "--server-side", "--force-conflicts", "--dry-run=server", "--field-manager=kubespeed-test"]
    out = ok(run([*apply, "-f", "-"], cluster_ready, rendered))
    assert "deployment.apps/kubespeed-operator serverside-applied (server dry run)" in out


def test_namespaced_mode_grants_roles_only_in_the_watched_namespaces(control_plane):
    docs = render(control_plane, CHART / "ci" / "namespaced-multi-values.yaml")
    kinds = {doc["kind"] for doc in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    # Besides the leader-election Role in the operator's own namespace.
    operator_role = f"{SYNC.RELEASE}-operator"
    roles = {doc["metadata"]["namespace"] for doc in docs if doc["kind"] == "Role" and doc["metadata"]["name"] == operator_role}
    bindings = {doc["metadata"]["namespace"] for doc in docs if doc["kind"] == "RoleBinding" and doc["metadata"]["name"] == operator_role}
    assert roles == bindings == set(TEAM_NAMESPACES)
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [f"--namespace={ns}" for ns in TEAM_NAMESPACES]


def test_operator_deployment_listens_where_the_wiring_says_with_a_standby_on_another_node(control_plane):
    docs = render(control_plane)
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # A rolling update starts the new replica before the old one goes, which hands the Lease over.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = deployment["spec"]["template"]
    (preferred,) = pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert preferred["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    budget = next(doc for doc in docs if doc["kind"] == "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": wiring.OPERATOR_METRICS_PORT, "health": wiring.OPERATOR_HEALTH_PORT}
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # A job's NetworkPolicy lets pods with these labels scrape its metrics.
    assert pod["metadata"]["labels"][wiring.NAME_LABEL] == wiring.APP_NAME
    assert pod["metadata"]["labels"][wiring.COMPONENT_LABEL] == wiring.OPERATOR_COMPONENT
    service = next(doc for doc in docs if doc["kind"] == "Service")
    assert service["spec"]["ports"][0]["port"] == wiring.OPERATOR_METRICS_PORT


def test_gpu_runtime_class_and_trainer_scrapers_reach_the_operator_and_a_pod_monitor(control_plane):
    docs = render(control_plane, CHART / "ci" / "gpu-monitoring-values.yaml")
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--gpu-runtime-class=nvidia" in args
    assert "--metrics-scraper=monitoring:app.kubernetes.io/name=prometheus" in args
    monitor = next(doc for doc in docs if doc["kind"] == "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {wiring.MANAGED_BY_LABEL: wiring.MANAGED_BY, wiring.COMPONENT_LABEL: wiring.TRAINER_COMPONENT}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


WRONG_VALUES = [
    ("unknown top-level key", ["--set", "replicaCount=2"], "replicaCount"),
    ("unknown watch mode", ["--set", "watch.mode=everywhere"], "/watch/mode"),
    ("pull policy not in the enum", ["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    ("trainer pull policy not in the enum", ["--set", "trainer.imagePullPolicy=Daily"], "/trainer/imagePullPolicy"),
    ("namespace that is no DNS label", ["--set", "watch.mode=namespaced", "--set", "watch.namespaces={Team_A}"], "/watch/namespaces/0"),
    ("namespaces listed in cluster mode", ["--set", "watch.namespaces={team-a}"], "/watch/namespaces"),
    ("memory that is no quantity", ["--set", "resources.limits.memory=lots"], "/resources/limits/memory"),
    ("service monitor interval that is no duration", ["--set", "metrics.serviceMonitor.interval=soon"], "/metrics/serviceMonitor/interval"),
    ("existing service account without a name", ["--set", "serviceAccount.create=false"], "/serviceAccount/name"),
    ("log level not in the enum", ["--set", "logLevel=chatty"], "/logLevel"),
    ("no replica at all", ["--set", "replicas=0"], "/replicas"),
    ("runtime class that is no name", ["--set", "trainer.runtimeClassName=NVIDIA"], "/trainer/runtimeClassName"),
    ("scraper namespace that is no DNS label", ["--set", "metrics.trainers.scrapers[0].namespace=Monitoring"], "/metrics/trainers/scrapers/0/namespace"),
    ("scraper label value with a space", ["--set", "metrics.trainers.scrapers[0].namespace=monitoring", "--set", "metrics.trainers.scrapers[0].podLabels.app=pro metheus"], "/metrics/trainers/scrapers/0/podLabels/app"),
]


@pytest.mark.parametrize("what, args, named", WRONG_VALUES, ids=[w[0].replace(" ", "-") for w in WRONG_VALUES])
def test_wrong_value_is_refused_by_the_schema_naming_it(helm, control_plane, what, args, named):
    result = run([helm, "install", "refused", CHART, "--namespace", "default", "--dry-run=client", *args], control_plane)
    assert result.returncode != 0, f"{what} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert named in result.stderr, result.stderr


# ---------------------------------------------------------------- the kustomize base


def test_kustomize_base_is_the_charts_default_render_and_its_namespace(kubectl, control_plane):
    base = by_identity(documents(ok(run([kubectl, "kustomize", REPO / "manifests"], control_plane))))
    chart = by_identity(documents(template(control_plane, None, "--include-crds")))
    namespace = base.pop(("Namespace", "", SYNC.NAMESPACE))
    # The operator's namespace enforces Pod Security `restricted`, which its pod meets.
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert sorted(base) == sorted(chart), "run scripts/sync-manifests"
    for identity, obj in chart.items():
        assert base[identity] == obj, f"{identity} differs between manifests/ and the chart: run scripts/sync-manifests"


def test_generated_manifests_are_what_sync_manifests_writes(helm):
    for path, text in SYNC.expected_files(helm).items():
        on_disk = REPO / path
        assert on_disk.exists() and on_disk.read_text() == text, f"{path} is stale: run scripts/sync-manifests"


def test_kustomize_base_is_accepted_server_side(kubectl, cluster_ready):
    apply = [kubectl, "apply", "--server-side", "--force-conflicts", "--dry-run=server", "--field-manager=kubespeed-test"]
    out = ok(run([*apply, "-k", REPO / "manifests"], cluster_ready))
    assert "customresourcedefinition.apiextensions.k8s.io/lmtrainingjobs.kubespeed.io serverside-applied" in out


def test_example_jobs_use_the_charts_trainer_image_and_are_accepted(kubectl, cluster_ready, namespace):
    trainer = yaml.safe_load((CHART / "values.yaml").read_text())["trainer"]
    examples = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
    assert examples
    for example in examples:
        job = load_job(str(example))
        assert job["spec"]["image"] == trainer["image"], example.name
    ok(run([kubectl, "apply", "--dry-run=server", "-n", namespace, *(a for e in examples for a in ("-f", e))], cluster_ready))


# ---------------------------------------------------------------- helm install


@pytest.fixture(scope="module")
def installed(helm, cluster_ready) -> Iterator[tuple[str, str]]:
    """`helm install` of the chart with default values: (release namespace, ServiceAccount)."""
    api = client.CoreV1Api(cluster_ready.api_client())
    release = f"ks-{secrets.token_hex(3)}"
    api.create_namespace({"metadata": {"name": release, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    try:
        ok(run([helm, "install", release, CHART, "--namespace", release], cluster_ready))
        yield release, f"{release}-operator"
    finally:
        run([helm, "uninstall", release, "--namespace", release, "--wait"], cluster_ready)
        api.delete_namespace(release)


def test_helm_install_creates_the_operator_and_its_identity(installed, cluster_ready, helm):
    namespace, account = installed
    api = cluster_ready.api_client()
    client.CoreV1Api(api).read_namespaced_service_account(account, namespace)
    deployment = client.AppsV1Api(api).read_namespaced_deployment(account, namespace)
    assert deployment.spec.template.spec.service_account_name == account
    binding = client.RbacAuthorizationV1Api(api).read_cluster_role_binding(account)
    assert [(s.kind, s.namespace, s.name) for s in binding.subjects] == [("ServiceAccount", namespace, account)]
    notes = ok(run([helm, "get", "notes", namespace, "--namespace", namespace], cluster_ready))
    assert f"rollout status deployment/{account}" in notes and "kubectl get lmtj" in notes


def test_notes_job_is_accepted_and_uses_the_trainer_image(installed, cluster_ready, helm, kubectl, namespace):
    release_namespace, _ = installed
    notes = ok(run([helm, "get", "notes", release_namespace, "--namespace", release_namespace], cluster_ready))
    heredoc = re.search(r"<<YAML[^\n]*\n(.*?)\n\s*YAML\n", notes, re.DOTALL).group(1)
    job = yaml.safe_load(textwrap.dedent(heredoc))
    assert job["spec"]["image"] == yaml.safe_load((CHART / "values.yaml").read_text())["trainer"]["image"]
    ok(run([kubectl, "apply", "--dry-run=server", "-n", namespace, "-f", "-"], cluster_ready, yaml.safe_dump(job)))


def can(api: Any, verb: str, resource: str, namespace: str = "default", group: str = "", subresource: str = "") -> bool:
    review = {"spec": {"resourceAttributes": {
        "verb": verb, "group": group, "resource": resource, "subresource": subresource, "namespace": namespace}}}  # fmt: skip
    return client.AuthorizationV1Api(api).create_self_subject_access_review(review).status.allowed


OPERATOR_NEEDS = [
    ("watch jobs", "watch", wiring.PLURAL, wiring.API_GROUP, ""),
    ("patch job status", "patch", wiring.PLURAL, wiring.API_GROUP, "status"),
    ("create pods", "create", "pods", "", ""),
    ("delete pods", "delete", "pods", "", ""),
    ("create the job's config", "create", "configmaps", "", ""),
    ("create the headless service", "create", "services", "", ""),
    ("create the network policy", "create", "networkpolicies", "networking.k8s.io", ""),
    ("read back a config map that was there", "get", "configmaps", "", ""),
    ("bring the config map up to date after a resize", "update", "configmaps", "", ""),
    ("read back a service that was there", "get", "services", "", ""),
    ("read back a network policy that was there", "get", "networkpolicies", "networking.k8s.io", ""),
    ("post events", "create", "events", "", ""),
]
OPERATOR_MUST_NOT = [
    ("read secrets", "get", "secrets", "", ""),
    ("list secrets", "list", "secrets", "", ""),
    ("exec into pods", "create", "pods", "", "exec"),
    ("attach to pods", "create", "pods", "", "attach"),
    ("change its own role", "escalate", "clusterroles", "rbac.authorization.k8s.io", ""),
    ("bind roles", "bind", "clusterroles", "rbac.authorization.k8s.io", ""),
    ("impersonate", "impersonate", "serviceaccounts", "", ""),
    ("delete the CRD", "delete", "customresourcedefinitions", "apiextensions.k8s.io", ""),
    ("delete config maps", "delete", "configmaps", "", ""),
    ("update services", "update", "services", "", ""),
    ("list config maps", "list", "configmaps", "", ""),
    ("create nodes", "create", "nodes", "", ""),
]


@pytest.mark.parametrize("what, verb, resource, group, sub", OPERATOR_NEEDS, ids=[n[0].replace(" ", "-") for n in OPERATOR_NEEDS])
def test_installed_service_account_may_do_what_the_operator_does(installed, cluster_ready, what, verb, resource, group, sub):
    namespace, account = installed
    assert can(cluster_ready.impersonate(namespace, account), verb, resource, "some-team", group, sub), what


@pytest.mark.parametrize("what, verb, resource, group, sub", OPERATOR_MUST_NOT, ids=[n[0].replace(" ", "-") for n in OPERATOR_MUST_NOT])
def test_installed_service_account_may_not_do_what_the_operator_never_does(installed, cluster_ready, what, verb, resource, group, sub):
    namespace, account = installed
    assert not can(cluster_ready.impersonate(namespace, account), verb, resource, "some-team", group, sub), what


def test_installed_service_account_creates_a_training_pod_and_patches_job_status(installed, cluster_ready, namespace):
    """Real requests as the ServiceAccount: what the operator does first for every job."""
    from kubespeed_operator.build.children import attempt_pods

    release_namespace, account = installed
    as_operator = cluster_ready.impersonate(release_namespace, account)
    custom = client.CustomObjectsApi(cluster_ready.api_client())
    # Suspended, so that an operator running in this session leaves the job to the test.
    job = custom.create_namespaced_custom_object(
        wiring.API_GROUP, wiring.API_VERSION, namespace, wiring.PLURAL,
        {"apiVersion": f"{wiring.API_GROUP}/{wiring.API_VERSION}", "kind": wiring.KIND, "metadata": {"name": "hello"},
         "spec": {"image": "trainer:1", "gpu": False, "data": {"train": "builtin:python-docs"}, "runPolicy": {"suspend": True}}},
    )  # fmt: skip
    pod = attempt_pods(job, 1)[0]
    created = client.CoreV1Api(as_operator).create_namespaced_pod(namespace, pod)
    assert created.metadata.owner_references[0].uid == job["metadata"]["uid"]
    patched = client.CustomObjectsApi(as_operator).patch_namespaced_custom_object_status(
        wiring.API_GROUP, wiring.API_VERSION, namespace, wiring.PLURAL, "hello", {"status": {"phase": "Pending"}})
    assert patched["status"]["phase"] == "Pending"
    with pytest.raises(client.exceptions.ApiException) as refused:
        client.CoreV1Api(as_operator).list_namespaced_secret(namespace)
    assert refused.value.status == 403
    assert json.loads(refused.value.body)["reason"] == "Forbidden"


def service_account_kubeconfig(cp: ControlPlane, namespace: str, account: str, folder: Path) -> Path:
    """A kubeconfig whose only credential is a bound token of the ServiceAccount (TokenRequest API)."""
    token = client.CoreV1Api(cp.api_client()).create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}).status.token  # fmt: skip
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "chart",
        "clusters": [{"name": "kubespeed", "cluster": {"server": cp.server, "certificate-authority": str(cp.pki.ca.cert)}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "chart", "context": {"cluster": "kubespeed", "user": account}}],
    }  # fmt: skip
    path = folder / "chart-operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def test_example_job_succeeds_under_an_operator_with_the_charts_service_account(
    installed, control_plane, operator, kubelet, namespace, tmp_path
):
    """The operator process runs with the token of the ServiceAccount `helm install` made, so
    every request it makes is authorised by the chart's RBAC; the quickstart job runs to the end."""
    release_namespace, account = installed
    kubeconfig = service_account_kubeconfig(control_plane, release_namespace, account, tmp_path)
    chart_operator = OperatorProcess(kubeconfig, tmp_path, ["--lease-namespace", release_namespace], identity="chart-operator")
    # The session's operator (under manifests/rbac) must not act on the same job meanwhile.
    operator.stop()
    try:
        chart_operator.start()
        jobs = JobClient(control_plane, namespace)
        example = yaml.safe_load((REPO / "manifests" / "examples" / "quickstart.yaml").read_text())
        jobs.create(example)
        name, nodes = example["metadata"]["name"], example["spec"]["nodes"]
        pods = run_all(jobs, kubelet, name, attempt=1, nodes=nodes)
        for pod in pods:
            kubelet.exit(namespace, pod.metadata.name, 0)
        jobs.wait_phase(name, "Succeeded")
        log = chart_operator.log()
        assert "Traceback" not in log, log[-5000:]
        assert f'User "system:serviceaccount:{release_namespace}:{account}" cannot' not in log, log[-5000:]
    finally:
        chart_operator.stop()
        operator.start()


def test_the_charts_two_replicas_one_stands_by_and_takes_over(installed, control_plane, operator, kubelet, namespace, tmp_path):
    """The installed Deployment's replicas, run as its container runs (its args, the chart's
    ServiceAccount, POD_NAMESPACE = the release namespace): one leads, the other stands by,
    healthy, and takes the Lease when the leader dies; the job goes on under the new leader."""
    release_namespace, account = installed
    deployment = client.AppsV1Api(control_plane.api_client()).read_namespaced_deployment(account, release_namespace)
    assert deployment.spec.replicas == 2
    budget = client.PolicyV1Api(control_plane.api_client()).read_namespaced_pod_disruption_budget(account, release_namespace)
    assert budget.spec.max_unavailable == 1
    args = [*deployment.spec.template.spec.containers[0].args, "--lease-namespace", release_namespace]
    kubeconfig = service_account_kubeconfig(control_plane, release_namespace, account, tmp_path)
    first, second = (OperatorProcess(kubeconfig, tmp_path, args, identity=f"replica-{n}") for n in (1, 2))
    operator.stop()
    try:
        first.start()
        second.start(wait_for_lease=False)
        wait_for(lambda: "waiting for Lease" in second.log(), "the second replica to stand by")
        assert second.healthy() and "leading" not in second.log()
        assert "kubespeed_operator_leader 0.0" in second.metrics() and "kubespeed_operator_leader 1.0" in first.metrics()

        jobs = JobClient(control_plane, namespace)
        shared_checkpoint_claim(jobs.core, namespace)
        jobs.create(job_manifest("handover"))
        run_all(jobs, kubelet, "handover", attempt=1)
        first.kill()
        wait_for(lambda: "leading: Lease" in second.log(), "the standby to take the Lease", timeout=40)
        assert "kubespeed_operator_leader 1.0" in second.metrics()
        for pod in jobs.pods("handover"):
            kubelet.exit(namespace, pod.metadata.name, 0)
        jobs.wait_phase("handover", "Succeeded")
        for replica in (first, second):
            assert "Traceback" not in replica.log(), replica.log()[-5000:]
            assert f'User "system:serviceaccount:{release_namespace}:{account}" cannot' not in replica.log()
    finally:
        first.kill()
        second.stop()
        operator.start()
