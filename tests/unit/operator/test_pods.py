"""Training pods of one attempt: wiring env, volumes, GPU vs CPU, security, scheduling."""

from __future__ import annotations

import pytest

from kubespeed import wiring
from kubespeed_operator.build.children import Cluster, attempt_pods


def env_of(pod):
    (container,) = pod["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def mounts_of(pod):
    (container,) = pod["spec"]["containers"]
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def volumes_of(pod):
    return {v["name"]: v for v in pod["spec"]["volumes"]}


def test_one_pod_per_node_rank_with_stable_names_hostnames_and_labels(make_job):
    pods = attempt_pods(make_job(nodes=3, training__globalBatchSize=24), attempt=2)
    assert [p["metadata"]["name"] for p in pods] == ["demo-0", "demo-1", "demo-2"]
    for rank, pod in enumerate(pods):
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (f"demo-{rank}", "demo")
        labels = pod["metadata"]["labels"]
        assert labels[wiring.NODE_RANK_LABEL] == str(rank)
        assert labels[wiring.ATTEMPT_LABEL] == "2"
        assert labels[wiring.JOB_LABEL] == "demo"


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_env_wires_each_rank_to_node_rank_0(make_job, rank):
    job = make_job(nodes=4, procsPerNode=2, training__globalBatchSize=64, training__microBatchSize=8, checkpoint__mountPath="/ckpt")
    env = env_of(attempt_pods(job, attempt=5)[rank])
    assert {k: env[k] for k in (
        wiring.ENV_MASTER_ADDR, wiring.ENV_MASTER_PORT, wiring.ENV_NNODES, wiring.ENV_NODE_RANK,
        wiring.ENV_NPROC_PER_NODE, wiring.ENV_WORLD_SIZE, wiring.ENV_JOB_NAME, wiring.ENV_ATTEMPT,
        wiring.ENV_HOSTFILE, wiring.ENV_TRAINER_CONFIG, wiring.ENV_DEEPSPEED_CONFIG,
        wiring.ENV_CHECKPOINT_DIR, wiring.ENV_METRICS_PORT,
    )} == {
        wiring.ENV_MASTER_ADDR: "demo-0.demo",
        wiring.ENV_MASTER_PORT: str(wiring.MASTER_PORT),
        wiring.ENV_NNODES: "4",
        wiring.ENV_NODE_RANK: str(rank),
        wiring.ENV_NPROC_PER_NODE: "2",
        wiring.ENV_WORLD_SIZE: "8",
        wiring.ENV_JOB_NAME: "demo",
        wiring.ENV_ATTEMPT: "5",
        wiring.ENV_HOSTFILE: wiring.HOSTFILE_PATH,
        wiring.ENV_TRAINER_CONFIG: wiring.TRAINER_CONFIG_PATH,
        wiring.ENV_DEEPSPEED_CONFIG: wiring.DEEPSPEED_CONFIG_PATH,
        wiring.ENV_CHECKPOINT_DIR: "/ckpt",
        wiring.ENV_METRICS_PORT: str(wiring.METRICS_PORT),
    }


def test_user_env_is_added_after_the_wiring(make_job):
    env = env_of(attempt_pods(make_job(env=[{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "FOO", "value": "1"}]), 1)[0])
    assert env["NCCL_DEBUG"] == "INFO"
    assert env["FOO"] == "1"


def test_pod_runs_the_launcher_and_exposes_rendezvous_and_metrics(make_job):
    pod = attempt_pods(make_job(image="reg/trainer:2", imagePullPolicy="Always"), 1)[0]
    (container,) = pod["spec"]["containers"]
    assert container["name"] == wiring.TRAINER_CONTAINER_NAME
    assert (container["image"], container["imagePullPolicy"]) == ("reg/trainer:2", "Always")
    assert container["command"] == wiring.TRAINER_ENTRYPOINT
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "rendezvous": wiring.MASTER_PORT,
        "metrics": wiring.METRICS_PORT,
    }
    # The operator restarts the whole gang; the kubelet must never restart one member.
    assert pod["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize(
    "name, overrides, checkpoint_source, data_claim",
    [
        ("no claim: checkpoints in the pod", {}, {"emptyDir": {}}, None),
        ("existing claim", {"checkpoint__claimName": "ckpt"}, {"persistentVolumeClaim": {"claimName": "ckpt"}}, None),
        ("claim the operator makes", {"checkpoint__volumeClaim": {}}, {"persistentVolumeClaim": {"claimName": "demo-checkpoints"}}, None),
        ("data claim", {"data__claimName": "corpus"}, {"emptyDir": {}}, "corpus"),
    ],
)
def test_volumes_and_mounts(make_job, name, overrides, checkpoint_source, data_claim):
    pod = attempt_pods(make_job(**overrides), 1)[0]
    volumes, mounts = volumes_of(pod), mounts_of(pod)
    assert volumes["config"]["configMap"] == {"name": "demo-config"}, name
    assert mounts[wiring.CONFIG_DIR] == {"name": "config", "mountPath": wiring.CONFIG_DIR, "readOnly": True}
    assert {k: v for k, v in volumes["checkpoints"].items() if k != "name"} == checkpoint_source, name
    assert mounts[wiring.CHECKPOINT_DIR_DEFAULT]["name"] == "checkpoints"
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert mounts[wiring.SHM_DIR]["name"] == "shm"
    for writable in (wiring.TMP_DIR, wiring.WORK_DIR):
        assert "readOnly" not in mounts[writable] and "emptyDir" in volumes[mounts[writable]["name"]]
    if data_claim is None:
        assert "data" not in volumes and wiring.DATA_DIR not in mounts, name
    else:
        assert volumes["data"]["persistentVolumeClaim"] == {"claimName": data_claim, "readOnly": True}
        assert mounts[wiring.DATA_DIR] == {"name": "data", "mountPath": wiring.DATA_DIR, "readOnly": True}
    assert set(mounts_of(pod)) >= {wiring.CONFIG_DIR, wiring.SHM_DIR, wiring.TMP_DIR}
    assert len(mounts) == len(volumes), "every volume is mounted"


def test_checkpoint_volume_follows_the_mount_path(make_job):
    mounts = mounts_of(attempt_pods(make_job(checkpoint__mountPath="/mnt/ckpt"), 1)[0])
    assert mounts["/mnt/ckpt"]["name"] == "checkpoints"


@pytest.mark.parametrize(
    "name, overrides, gpu_limit, tolerates_gpu, nccl",
    [
        ("gpu pod asks for procsPerNode GPUs", {"procsPerNode": 4, "training__globalBatchSize": 32}, "4", True, True),
        ("cpu pod asks for none", {"gpu": False, "procsPerNode": 4, "training__globalBatchSize": 32}, None, False, False),
    ],
)
def test_gpu_and_cpu_pods(make_job, name, overrides, gpu_limit, tolerates_gpu, nccl):
    pod = attempt_pods(make_job(**overrides, resources={"requests": {"cpu": 8}, "limits": {"memory": "64Gi"}}), 1)[0]
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["requests"] == {"cpu": "8"}, name
    assert container["resources"]["limits"].get(wiring.GPU_RESOURCE) == gpu_limit, name
    assert container["resources"]["limits"]["memory"] == "64Gi"
    toleration = {"key": wiring.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    assert (toleration in pod["spec"].get("tolerations", [])) == tolerates_gpu, name
    env = env_of(pod)
    assert ("TORCH_NCCL_ASYNC_ERROR_HANDLING" in env) == nccl, name
    assert env[wiring.ENV_USE_GPU] == ("1" if tolerates_gpu else "0")


@pytest.mark.parametrize(
    "name, procs, resources, requests, limits, shm",
    [
        ("nothing asked: cpu and memory per rank", 1, {}, {"cpu": "1", "memory": "4Gi"}, {}, "2Gi"),
        ("nothing asked, four ranks", 4, {}, {"cpu": "4", "memory": "16Gi"}, {}, "8Gi"),
        ("a memory request is kept; cpu still defaults", 2, {"requests": {"memory": "48Gi"}}, {"cpu": "2", "memory": "48Gi"}, {}, "24Gi"),
        ("a limit alone is the request, as in a Pod", 1, {"limits": {"cpu": "500m", "memory": "3Gi"}}, {}, {"cpu": "500m", "memory": "3Gi"}, "1536Mi"),
        ("a request below its limit", 1, {"requests": {"memory": "1000M"}, "limits": {"memory": "2G"}}, {"cpu": "1", "memory": "1000M"}, {"memory": "2G"}, "500000000"),
        ("no memory at all", 1, {"requests": {"memory": 0}}, {"cpu": "1", "memory": "0"}, {}, None),
    ],
)
def test_resources_default_per_rank_and_bound_shared_memory(make_job, name, procs, resources, requests, limits, shm):
    job = make_job(gpu=False, procsPerNode=procs, training__globalBatchSize=8 * procs, training__microBatchSize=8, resources=resources)
    pod = attempt_pods(job, 1)[0]
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["requests"] == requests, name
    assert container["resources"].get("limits", {}) == limits, name
    assert volumes_of(pod)["shm"]["emptyDir"].get("sizeLimit") == shm, name


@pytest.mark.parametrize(
    "name, job, cluster_default, runtime_class",
    [
        ("none anywhere", {}, None, None),
        ("the cluster's default for a GPU job", {}, "nvidia", "nvidia"),
        ("no GPU runtime for a CPU job", {"gpu": False}, "nvidia", None),
        ("the job's own wins", {"runtimeClassName": "nvidia-cdi"}, "nvidia", "nvidia-cdi"),
        ("the job's own on a CPU job", {"gpu": False, "runtimeClassName": "gvisor"}, None, "gvisor"),
    ],
)
def test_runtime_class_from_the_job_else_the_clusters_gpu_default(make_job, name, job, cluster_default, runtime_class):
    pod = attempt_pods(make_job(**job), 1, cluster=Cluster(gpu_runtime_class=cluster_default))[0]
    assert pod["spec"].get("runtimeClassName") == runtime_class, name


def test_the_failing_ranks_reason_goes_to_the_termination_log_and_claims_keep_their_owner(make_job):
    pod = attempt_pods(make_job(), 1)[0]
    (container,) = pod["spec"]["containers"]
    assert container["terminationMessagePath"] == wiring.TERMINATION_LOG_PATH
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert env_of(pod)[wiring.ENV_TERMINATION_LOG] == wiring.TERMINATION_LOG_PATH
    # A large checkpoint volume is not re-chowned file by file at every pod start.
    assert pod["spec"]["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_pod_meets_pod_security_restricted_and_carries_no_api_token(make_job):
    pod = attempt_pods(make_job(runPolicy__terminationGracePeriodSeconds=600), 1)[0]
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["terminationGracePeriodSeconds"] == 600
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == wiring.TRAINER_UID
    assert spec["securityContext"]["runAsGroup"] == wiring.TRAINER_GID
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert not any("hostPath" in v for v in spec["volumes"])


def test_scheduling_fields_reach_the_pod(make_job):
    scheduling = {
        "nodeSelector": {"pool": "a100"},
        "tolerations": [{"key": "spot", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
        "priorityClassName": "training",
        "schedulerName": "volcano",
    }
    spec = attempt_pods(make_job(scheduling=scheduling, serviceAccountName="trainer"), 1)[0]["spec"]
    assert spec["nodeSelector"] == {"pool": "a100"}
    assert spec["tolerations"][-1] == {"key": "spot", "operator": "Exists"}
    assert spec["affinity"] == scheduling["affinity"]
    assert (spec["priorityClassName"], spec["schedulerName"]) == ("training", "volcano")
    assert spec["serviceAccountName"] == "trainer"


def test_unset_scheduling_fields_stay_off_the_pod(make_job):
    spec = attempt_pods(make_job(gpu=False), 1)[0]["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "schedulerName", "serviceAccountName"):
        assert key not in spec, key


@pytest.mark.parametrize(
    "name, scheduling, labels, annotations",
    [
        ("no gang, no queue", {}, {}, {}),
        (
            "scheduler-plugins gang",
            {"gang": {"enabled": True}},
            {"scheduling.x-k8s.io/pod-group": "demo"},
            {},
        ),
        (
            "volcano gang",
            {"gang": {"enabled": True, "apiVersion": "scheduling.volcano.sh/v1beta1"}},
            {},
            {"scheduling.k8s.io/group-name": "demo"},
        ),
        (
            "kueue queue: the attempt's gang is one pod group that Kueue never refills in place",
            {"queue": "team-a"},
            {"kueue.x-k8s.io/queue-name": "team-a", "kueue.x-k8s.io/pod-group-name": "demo-1"},
            {"kueue.x-k8s.io/pod-group-total-count": "2", "kueue.x-k8s.io/retriable-in-group": "false"},
        ),
    ],
)
def test_gang_and_queue_hooks(make_job, name, scheduling, labels, annotations):
    pod = attempt_pods(make_job(nodes=2, training__globalBatchSize=16, scheduling=scheduling), 1)[1]
    meta = pod["metadata"]
    hooks = ("scheduling.x-k8s.io/", "kueue.x-k8s.io/", "scheduling.k8s.io/")
    assert {k: v for k, v in meta["labels"].items() if k.startswith(hooks)} == labels, name
    assert {k: v for k, v in meta["annotations"].items() if k.startswith(hooks)} == annotations, name


def test_each_attempt_is_its_own_kueue_pod_group(make_job):
    job = make_job(nodes=2, training__globalBatchSize=16, scheduling={"queue": "team-a"})
    groups = {pod["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for attempt in (1, 2) for pod in attempt_pods(job, attempt)}
    assert groups == {"demo-1", "demo-2"}


def test_attempts_count_from_one(make_job):
    with pytest.raises(ValueError):
        attempt_pods(make_job(), 0)
