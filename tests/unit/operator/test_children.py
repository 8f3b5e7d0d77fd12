"""The builders `job -> objects`: names, owner references, the ConfigMap, Service, NetworkPolicy, claim, PodGroup."""

from __future__ import annotations

import json

import pytest
import yaml

from kubespeed import wiring
from kubespeed.deepspeed_config import resolve_deepspeed_config
from kubespeed.spec import SpecError, parse_trainer_config
from kubespeed_operator.build.children import attempt_pods, job_children, labels, owner_reference
from kubespeed_operator.build.cluster import Cluster, Scraper


def by_kind(objects):
    return {obj["kind"]: obj for obj in objects}


@pytest.mark.parametrize("delete_with_job, owned", [(False, False), (True, True)])
def test_checkpoint_claim_outlives_the_job_unless_asked(make_job, delete_with_job, owned):
    job = make_job(checkpoint__volumeClaim={"deleteWithJob": delete_with_job})
    claim = by_kind(job_children(job))["PersistentVolumeClaim"]
    assert ("ownerReferences" in claim["metadata"]) is owned
    assert claim["metadata"]["labels"][wiring.JOB_LABEL] == "demo"


def test_job_children_have_deterministic_names(make_job):
    job = make_job(checkpoint__volumeClaim={"size": "1Gi"}, scheduling__gang__enabled=True)
    names = [(o["kind"], o["metadata"]["name"]) for o in job_children(job)]
    assert names == [
        ("Service", "demo"),
        ("ConfigMap", "demo-config"),
        ("NetworkPolicy", "demo"),
        ("PersistentVolumeClaim", "demo-checkpoints"),
        ("PodGroup", "demo"),
    ]
    assert job_children(job) == job_children(job)


def test_every_child_is_controlled_by_the_job_and_labelled_with_it(make_job):
    job = make_job(nodes=2, checkpoint__volumeClaim={"deleteWithJob": True}, scheduling__gang__enabled=True)
    for obj in job_children(job) + attempt_pods(job, 1):
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a", obj["kind"]
        assert meta["ownerReferences"] == [owner_reference(job)], obj["kind"]
        assert meta["labels"][wiring.JOB_LABEL] == "demo", obj["kind"]
    assert owner_reference(job) == {
        "apiVersion": "kubespeed.io/v1alpha1",
        "kind": "LMTrainingJob",
        "name": "demo",
        "uid": job["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("job only", {}, {wiring.JOB_LABEL: "j", wiring.MANAGED_BY_LABEL: "kubespeed"}),
        (
            "training pod",
            {"node_rank": 3, "attempt": 2},
            {
                wiring.JOB_LABEL: "j",
                wiring.MANAGED_BY_LABEL: "kubespeed",
                wiring.NODE_RANK_LABEL: "3",
                wiring.COMPONENT_LABEL: wiring.TRAINER_COMPONENT,
                wiring.ATTEMPT_LABEL: "2",
            },
        ),
    ],
)
def test_labels(name, kwargs, expected):
    assert labels("j", **kwargs) == expected, name


@pytest.mark.parametrize(
    "nodes, procs, lines",
    [
        (1, 1, ["demo-0.demo slots=1"]),
        (2, 4, ["demo-0.demo slots=4", "demo-1.demo slots=4"]),
        (4, 8, [f"demo-{i}.demo slots=8" for i in range(4)]),
    ],
)
def test_hostfile_lists_each_pod_with_its_slots_in_node_rank_order(make_job, nodes, procs, lines):
    job = make_job(nodes=nodes, procsPerNode=procs, training__globalBatchSize=8 * nodes * procs, training__microBatchSize=8)
    data = by_kind(job_children(job))["ConfigMap"]["data"]
    assert data[wiring.HOSTFILE_KEY].splitlines() == lines


def test_configmap_carries_the_trainer_config_and_the_deepspeed_config_the_trainer_resolves(make_job):
    job = make_job(
        nodes=2, procsPerNode=2, gpu=False, training__globalBatchSize=64, training__microBatchSize=4, training__steps=7,
        deepspeed__overrides={"zero_optimization": {"reduce_bucket_size": 1000}},
    )
    data = by_kind(job_children(job))["ConfigMap"]["data"]
    assert sorted(data) == sorted([wiring.HOSTFILE_KEY, wiring.DEEPSPEED_CONFIG_KEY, wiring.TRAINER_CONFIG_KEY])
    trainer = parse_trainer_config(yaml.safe_load(data[wiring.TRAINER_CONFIG_KEY]))
    assert trainer.training.steps == 7
    deepspeed = json.loads(data[wiring.DEEPSPEED_CONFIG_KEY])
    assert deepspeed == resolve_deepspeed_config(trainer, world_size=4, gpu=False)
    assert deepspeed["gradient_accumulation_steps"] == 64 // (4 * 4)
    assert deepspeed["zero_optimization"]["reduce_bucket_size"] == 1000


def test_headless_service_resolves_pods_before_they_are_ready(make_job):
    spec = by_kind(job_children(make_job()))["Service"]["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    assert spec["selector"] == {wiring.JOB_LABEL: "demo"}
    assert {p["port"] for p in spec["ports"]} == {wiring.MASTER_PORT, wiring.METRICS_PORT}


OPERATOR_PODS = {wiring.NAME_LABEL: wiring.APP_NAME, wiring.COMPONENT_LABEL: wiring.OPERATOR_COMPONENT}


@pytest.mark.parametrize(
    "name, cluster, metrics_from",
    [
        ("the operator's pods in its own namespace only", Cluster(), [("kubespeed-system", OPERATOR_PODS)]),
        ("the operator where it runs", Cluster(operator_namespace="ops"), [("ops", OPERATOR_PODS)]),
        (
            "and the scrapers the cluster names",
            Cluster(metrics_scrapers=(Scraper.parse("monitoring:app.kubernetes.io/name=prometheus"), Scraper.parse("team-a:"))),
            [("kubespeed-system", OPERATOR_PODS), ("monitoring", {"app.kubernetes.io/name": "prometheus"}), ("team-a", {})],
        ),
    ],
)
def test_network_policy_admits_all_tcp_within_the_job_and_metrics_from_named_namespaces_only(make_job, name, cluster, metrics_from):
    policy = by_kind(job_children(make_job(), cluster=cluster))["NetworkPolicy"]["spec"]
    assert policy["podSelector"] == {"matchLabels": {wiring.JOB_LABEL: "demo"}}
    assert policy["policyTypes"] == ["Ingress"]
    same_job, metrics = policy["ingress"]
    assert same_job["from"] == [{"podSelector": {"matchLabels": {wiring.JOB_LABEL: "demo"}}}]
    # No port number: gloo and NCCL connect between ranks on ephemeral ports too.
    assert same_job["ports"] == [{"protocol": "TCP"}]
    # A namespace is chosen by the name label the API server sets, never by `namespaceSelector: {}` (any).
    assert [(p["namespaceSelector"], p["podSelector"]) for p in metrics["from"]] == [
        ({"matchLabels": {wiring.NAMESPACE_NAME_LABEL: namespace}}, {"matchLabels": labels}) for namespace, labels in metrics_from
    ], name
    assert metrics["ports"] == [{"protocol": "TCP", "port": wiring.METRICS_PORT}]


@pytest.mark.parametrize("text", ["Monitoring:app=prometheus", "monitoring:app", "monitoring:app=pro metheus", ":app=x"])
def test_a_scraper_that_is_not_namespace_and_labels_is_refused(text):
    with pytest.raises(ValueError, match="NAMESPACE:KEY=VALUE|is not a label"):
        Scraper.parse(text)


@pytest.mark.parametrize(
    "name, checkpoint, claim_spec",
    [
        ("no claim asked: none made", {}, None),
        ("existing claim: none made", {"claimName": "shared-ckpt"}, None),
        (
            "template with defaults",
            {"volumeClaim": {}},
            {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}}},
        ),
        (
            "template with class",
            {"volumeClaim": {"size": "50Gi", "storageClassName": "fast", "accessMode": "ReadWriteOnce"}},
            {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}}, "storageClassName": "fast"},
        ),
    ],
)
def test_checkpoint_claim_is_made_only_when_asked(make_job, name, checkpoint, claim_spec):
    claim = by_kind(job_children(make_job(checkpoint=checkpoint))).get("PersistentVolumeClaim")
    assert (claim and claim["spec"]) == claim_spec, name


@pytest.mark.parametrize(
    "name, gang, group_spec",
    [
        ("off by default", {}, None),
        (
            "scheduler-plugins",
            {"enabled": True, "scheduleTimeoutSeconds": 60},
            {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "spec": {"minMember": 4, "scheduleTimeoutSeconds": 60}},
        ),
        (
            "volcano",
            {"enabled": True, "apiVersion": "scheduling.volcano.sh/v1beta1"},
            {"apiVersion": "scheduling.volcano.sh/v1beta1", "spec": {"minMember": 4}},
        ),
    ],
)
def test_pod_group_holds_the_whole_gang(make_job, name, gang, group_spec):
    job = make_job(nodes=4, training__globalBatchSize=32, training__microBatchSize=8, scheduling__gang=gang)
    group = by_kind(job_children(job)).get("PodGroup")
    assert (group and {"apiVersion": group["apiVersion"], "spec": group["spec"]}) == group_spec, name


def test_a_bad_spec_is_refused_naming_the_field(make_job):
    with pytest.raises(SpecError) as err:
        job_children(make_job(nodes=0))
    assert err.value.path == "spec.nodes"


@pytest.mark.parametrize(
    "what, change",
    [
        ("image", {"image": "trainer:2"}),
        ("env", {"env": [{"name": "FOO", "value": "1"}]}),
        ("resources", {"resources": {"limits": {"memory": "8Gi"}}}),
        ("run policy", {"runPolicy": {"backoffLimit": 9, "suspend": True}}),
        ("scheduling", {"scheduling": {"priorityClassName": "high"}}),
    ],
)
def test_configmap_depends_only_on_fields_that_cannot_change(make_job, what, change):
    # The operator creates the ConfigMap once (an existing one is "already there"),
    # so a change the API server allows must not change what it should hold.
    before = by_kind(job_children(make_job()))["ConfigMap"]
    after = by_kind(job_children(make_job(**change)))["ConfigMap"]
    assert after == before, what
