"""spec.podTemplate merged onto the training pods: added where the operator has some, the template's elsewhere."""

from __future__ import annotations

from kubespeed import wiring
from kubespeed_operator.build.children import attempt_pods

TEMPLATE = {
    "metadata": {"labels": {"team": "nlp"}, "annotations": {"sidecar.istio.io/inject": "false"}},
    "spec": {
        "containers": [
            {
                "name": "trainer",
                "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
                "envFrom": [{"configMapRef": {"name": "team-settings"}}],
                "volumeMounts": [{"name": "datasets", "mountPath": "/datasets", "readOnly": True}],
                "resources": {"limits": {"memory": "64Gi", "rdma/ib": 1}},
                "securityContext": {"capabilities": {"add": ["IPC_LOCK"]}},
            },
            {"name": "log-shipper", "image": "fluent-bit:3"},
        ],
        "initContainers": [{"name": "fetch", "image": "busybox:1", "command": ["true"]}],
        "volumes": [{"name": "datasets", "persistentVolumeClaim": {"claimName": "datasets"}}],
        "nodeSelector": {"pool": "a100"},
        "tolerations": [{"key": "spot", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}],
        "runtimeClassName": "nvidia",
        "priorityClassName": "training",
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccountName": "trainer",
    },
}  # fmt: skip


def pod(make_job, **spec):
    return attempt_pods(make_job(podTemplate=TEMPLATE, **spec), attempt=1)[0]


def test_the_template_adds_to_the_training_container_and_keeps_its_wiring(make_job):
    main = pod(make_job, scheduling__nodeSelector={"disk": "ssd"})["spec"]["containers"][0]
    names = [e["name"] for e in main["env"]]
    assert names.index(wiring.ENV_MASTER_ADDR) < names.index("HF_TOKEN")
    assert main["env"][-1]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert main["envFrom"] == [{"configMapRef": {"name": "team-settings"}}]
    mounts = {m["mountPath"] for m in main["volumeMounts"]}
    assert {"/datasets", wiring.CONFIG_DIR, wiring.CHECKPOINT_DIR_DEFAULT} <= mounts
    assert main["resources"]["limits"]["memory"] == "64Gi" and main["resources"]["limits"]["rdma/ib"] == "1"
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["command"] == list(wiring.TRAINER_ENTRYPOINT)


def test_the_template_adds_sidecars_volumes_and_placement_to_the_pod(make_job):
    built = pod(make_job, scheduling__nodeSelector={"disk": "ssd"})
    spec = built["spec"]
    assert [c["name"] for c in spec["containers"]] == ["trainer", "log-shipper"]
    assert spec["initContainers"] == TEMPLATE["spec"]["initContainers"]
    assert {v["name"] for v in spec["volumes"]} >= {"config", "checkpoints", "datasets"}
    assert spec["nodeSelector"] == {"disk": "ssd", "pool": "a100"}
    assert {"key": "spot", "operator": "Exists"} in spec["tolerations"] and len(spec["tolerations"]) == 2  # and the GPU taint's
    for key in ("affinity", "topologySpreadConstraints", "runtimeClassName", "priorityClassName", "imagePullSecrets", "serviceAccountName"):
        assert spec[key] == TEMPLATE["spec"][key], key
    assert spec["hostname"] == "demo-0" and spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert built["metadata"]["labels"]["team"] == "nlp" and built["metadata"]["labels"][wiring.JOB_LABEL] == "demo"
    assert built["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"


def test_a_programs_init_container_runs_before_the_templates(make_job):
    spec = attempt_pods(make_job(data=None, program={"command": ["train.py"]}, podTemplate=TEMPLATE), attempt=1)[0]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [wiring.HOST_CONTAINER_NAME, "fetch"]


def test_the_jobs_own_template_is_left_as_it_was(make_job):
    job = make_job(podTemplate=TEMPLATE)
    attempt_pods(job, attempt=1)
    assert job["spec"]["podTemplate"] == TEMPLATE
