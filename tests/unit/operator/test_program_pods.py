"""Pods and config of a job that runs the user's program: the program host in the user's image, per launcher."""

from __future__ import annotations

import json

import pytest

from kubespeed import wiring
from kubespeed_operator.build.children import attempt_pods, job_children
from spec_overrides import DROP


def program_job(make_job, **program):
    return make_job(data=DROP, program={"command": ["train.py", "--epochs", "2"], **program}, nodes=2, procsPerNode=2, image="me/train:1")


def container(pod):
    (only,) = pod["spec"]["containers"]
    return only


def env_of(pod):
    return {e["name"]: e["value"] for e in container(pod)["env"]}


def test_the_program_container_runs_the_host_in_the_users_image_with_the_users_command_last(make_job):
    pod = attempt_pods(program_job(make_job, deepspeedConfig={"train_micro_batch_size_per_gpu": 1}), attempt=1)[1]
    main = container(pod)
    assert main["image"] == "me/train:1"
    assert main["command"] == ["python3", wiring.HOST_PATH, "--launcher", "deepspeed", "--config-argument=--deepspeed_config",
                               "--deepspeed-monitor", "--", "train.py", "--epochs", "2"]  # fmt: skip
    # The image's own working directory: the program's files are there, not under an emptyDir.
    assert "workingDir" not in main
    assert {m["mountPath"]: m.get("readOnly", False) for m in main["volumeMounts"]}[wiring.HOST_DIR] is True


def test_an_init_container_from_the_trainer_image_installs_the_host(make_job):
    pod = attempt_pods(program_job(make_job), attempt=1)[0]
    (init,) = pod["spec"]["initContainers"]
    assert init["image"] == wiring.HELPER_IMAGE
    assert init["command"][-2:] == ["--install", wiring.HOST_DIR]
    assert init["volumeMounts"] == [{"name": "program-host", "mountPath": wiring.HOST_DIR}]
    assert init["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize(
    "program, flags",
    [
        ({"launcher": "torchrun", "module": True}, ["--launcher", "torchrun", "--module", "--deepspeed-monitor"]),
        ({"launcher": "none", "deepspeedMonitor": False}, ["--launcher", "none"]),
        ({"deepspeedConfigPath": "/app/ds.json", "deepspeedConfigArgument": "--deepspeed"},
         ["--launcher", "deepspeed", "--config-argument=--deepspeed", "--deepspeed-monitor"]),
        ({"deepspeedConfig": {}, "deepspeedConfigArgument": ""}, ["--launcher", "deepspeed", "--deepspeed-monitor"]),
        ({"totalSteps": 500}, ["--launcher", "deepspeed", "--deepspeed-monitor", "--total-steps", "500"]),
    ],
    ids=["torchrun of a module", "none without the monitor", "a config in the image for a Hugging Face Trainer",
         "a config only in the environment", "total steps for the ETA"],
)
def test_the_host_flags_follow_the_program_spec(make_job, program, flags):
    command = container(attempt_pods(program_job(make_job, **program), attempt=1)[0])["command"]
    assert command[2:command.index("--")] == flags


@pytest.mark.parametrize(
    "program, config_env",
    [({"deepspeedConfig": {"zero_optimization": {"stage": 2}}}, wiring.DEEPSPEED_CONFIG_PATH), ({"deepspeedConfigPath": "/app/ds.json"}, "/app/ds.json"), ({}, None)],
    ids=["inline, from the config map", "a file in the image", "none"],
)
def test_the_program_gets_the_wiring_and_its_config_but_no_trainer_config(make_job, program, config_env):
    env = env_of(attempt_pods(program_job(make_job, **program), attempt=3)[1])
    assert env[wiring.ENV_NODE_RANK] == "1" and env[wiring.ENV_HOSTFILE] == wiring.HOSTFILE_PATH
    assert env[wiring.ENV_PROGRESS_FILE] == wiring.PROGRESS_FILE
    assert env.get(wiring.ENV_DEEPSPEED_CONFIG) == config_env
    assert wiring.ENV_TRAINER_CONFIG not in env


def test_the_config_map_holds_the_hostfile_and_the_inline_config_as_written(make_job):
    config = {"train_batch_size": 8, "optimizer": {"type": "Adam", "params": {"lr": 0.001}}}
    children = job_children(program_job(make_job, deepspeedConfig=config))
    (config_map,) = [c for c in children if c["kind"] == "ConfigMap"]
    assert set(config_map["data"]) == {wiring.HOSTFILE_KEY, wiring.DEEPSPEED_CONFIG_KEY}
    assert json.loads(config_map["data"][wiring.DEEPSPEED_CONFIG_KEY]) == config
    assert config_map["data"][wiring.HOSTFILE_KEY] == "demo-0.demo slots=2\ndemo-1.demo slots=2\n"


def test_the_built_in_trainer_pod_is_unchanged_by_the_program_machinery(make_job):
    pod = attempt_pods(make_job(), attempt=1)[0]
    assert "initContainers" not in pod["spec"]
    assert container(pod)["command"] == list(wiring.TRAINER_ENTRYPOINT)
    assert container(pod)["workingDir"] == wiring.WORK_DIR
