"""Capacity probes: scheduled as a worker of the gang would be, never counted as one."""

from __future__ import annotations

from kubespeed import wiring
from kubespeed.spec import parse_job_spec
from kubespeed_operator.build.children import attempt_pods
from kubespeed_operator.build.podgroup import KUEUE_QUEUE_LABEL, SCHEDULER_PLUGINS_POD_GROUP_LABEL
from kubespeed_operator.build.probes import PROBE_COMMAND, capacity_probe
from kubespeed_operator.decide.observed import probe_view, view

SCHEDULING = {
    "gpu": True, "procsPerNode": 2, "runtimeClassName": "nvidia", "training__globalBatchSize": 64,
    "resources": {"requests": {"cpu": "4", "memory": "8Gi"}},
    "scheduling": {"nodeSelector": {"pool": "a100"}, "tolerations": [{"key": "spot", "operator": "Exists"}],
                   "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                       {"labelSelector": {"matchLabels": {wiring.JOB_LABEL: "demo"}}, "topologyKey": "kubernetes.io/hostname"}]}},
                   "priorityClassName": "training", "schedulerName": "custom", "queue": "team-a", "gang": {"enabled": True}},
}  # fmt: skip
PLACEMENT = ("nodeSelector", "tolerations", "affinity", "priorityClassName", "schedulerName", "runtimeClassName", "volumes")


def probe_and_worker(make_job):
    job = make_job(**SCHEDULING)
    return capacity_probe(job, parse_job_spec(job["spec"]), 1), attempt_pods(job, 3)[0]


def test_a_probe_is_placed_by_what_places_a_worker(make_job):
    probe, worker = probe_and_worker(make_job)
    assert {k: probe["spec"].get(k) for k in PLACEMENT} == {k: worker["spec"].get(k) for k in PLACEMENT}
    assert [c["resources"] for c in probe["spec"]["containers"]] == [c["resources"] for c in worker["spec"]["containers"]]
    assert probe["spec"]["containers"][0]["resources"]["limits"][wiring.GPU_RESOURCE] == "2"


def test_a_probe_does_nothing_and_joins_no_gang_or_queue(make_job):
    probe, _ = probe_and_worker(make_job)
    assert probe["metadata"]["name"] == "demo-probe-1"
    assert [c["command"] for c in probe["spec"]["containers"]] == [PROBE_COMMAND]
    assert all("env" not in c and "ports" not in c for c in probe["spec"]["containers"])
    labels = probe["metadata"]["labels"]
    assert (labels[wiring.JOB_LABEL], labels[wiring.PROBE_LABEL], labels[wiring.COMPONENT_LABEL]) == ("demo", "1", wiring.PROBE_COMPONENT)
    for gang_label in (wiring.NODE_RANK_LABEL, wiring.ATTEMPT_LABEL, KUEUE_QUEUE_LABEL, SCHEDULER_PLUGINS_POD_GROUP_LABEL):
        assert gang_label not in labels
    assert "hostname" not in probe["spec"] and "initContainers" not in probe["spec"]
    assert probe["metadata"]["ownerReferences"][0]["uid"] == make_job()["metadata"]["uid"]


def test_the_pod_watch_sees_a_probe_as_a_probe_and_never_as_a_gang_member(make_job):
    probe, _ = probe_and_worker(make_job)
    assert view(probe) is None
    seen = probe_view({**probe, "spec": {**probe["spec"], "nodeName": "gpu-node-3"}})
    assert (seen.name, seen.index, seen.node, seen.owner) == ("demo-probe-1", 1, "gpu-node-3", make_job()["metadata"]["uid"])
