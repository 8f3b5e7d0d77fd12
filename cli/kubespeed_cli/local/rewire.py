"""From the operator's pods to local process groups: the run folder and the few rewrites.

The pods come from the operator's own builder; this module only decides where each
volume lives on this machine and rewrites what cannot be the same off-cluster: the
pod's env and command (`localize_pod`) and the file paths in the trainer config
(`localize_trainer_config`). Everything else a pod carries reaches the process unchanged.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubespeed import program_host, wiring
from kubespeed.spec.job import BUILTIN_DATA_PREFIX


@dataclass(frozen=True)
class RunFolder:
    """`<run-dir>/<job>/`: config files, shared checkpoints, logs, and each pod's scratch."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    def pod_dir(self, pod: str) -> Path:
        return self.root / "pods" / pod

    def config_map(self, name: str) -> Path:
        """A ConfigMap of the manifest's own (a program's script, say), as the kubelet would project it."""
        return self.root / "configmaps" / name


@dataclass(frozen=True)
class LocalPod:
    """One pod as a local process: what to run, with which env, where, and where its log goes."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    metrics_port: int
    # Where the pod's launcher writes why it failed (its terminationMessagePath, here).
    termination_log: Path | None = None


def write_manifest_config_maps(config_maps: list[dict[str, Any]], folder: RunFolder) -> None:
    """The ConfigMaps that came in the job's manifest file, each key a file, where pods mount them."""
    for config_map in config_maps:
        target = folder.config_map(config_map["metadata"]["name"])
        target.mkdir(parents=True, exist_ok=True)
        for key, text in (config_map.get("data") or {}).items():
            (target / key).write_text(text, encoding="utf-8")


def write_config_files(config_map: dict[str, Any], folder: RunFolder, shared: dict[str, Path], cwd: Path) -> None:
    """The ConfigMap's keys as files, as the kubelet would project them into the config volume,
    with the trainer config's file paths as this machine sees them (`localize_trainer_config`)."""
    folder.config.mkdir(parents=True, exist_ok=True)
    for key, text in config_map["data"].items():
        if key == wiring.TRAINER_CONFIG_KEY:
            text = localize_trainer_config(text, shared, cwd)
        (folder.config / key).write_text(text, encoding="utf-8")


# Trainer config fields that name a file or directory (the spec describes each as a path in the pod).
PATH_FIELDS = (
    ("data", "train"),
    ("data", "validation"),
    ("data", "tokenizer", "path"),
    ("model", "path"),
    ("training", "initFrom"),
)


def localize_trainer_config(text: str, shared: dict[str, Path], cwd: Path) -> str:
    """trainer.yaml with each path field as this machine sees it.

    A path inside a shared volume (a claim, the checkpoint volume) becomes that
    volume's local folder; a relative path is taken from where `kubespeed local`
    runs, since the pod's working directory here is a scratch folder; any other
    absolute path, and `builtin:` data, is left as it is.
    """
    config = yaml.safe_load(text)
    for *parents, leaf in PATH_FIELDS:
        node = config
        for key in parents:
            node = node.get(key) or {}
        value = node.get(leaf)
        if not isinstance(value, str) or value.startswith(BUILTIN_DATA_PREFIX):
            continue
        node[leaf] = _local_path(value, shared) if os.path.isabs(value) else str(cwd / value)
    return yaml.safe_dump(config, sort_keys=False)


def claim_dir(run_dir: Path, claim: str) -> Path:
    """Where a PersistentVolumeClaim lives locally. A job's own checkpoint claim
    `<job>-checkpoints` is that job's local checkpoint folder, so a job that mounts
    another job's checkpoints (fine-tuning from a pre-training run) finds them."""
    owner = claim.removesuffix("-checkpoints")
    if owner != claim:
        return RunFolder(run_dir / owner).checkpoints
    return run_dir / "claims" / claim


def _mounted_volumes(pod: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(mountPath, mount, volume) for each mount of the trainer container."""
    sources = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    container = pod["spec"]["containers"][0]
    return [(m["mountPath"], m, sources[m["name"]]) for m in container.get("volumeMounts", [])]


def local_mounts(pod: dict[str, Any], checkpoint_mount: str, folder: RunFolder) -> dict[str, Path]:
    """mountPath in the pod -> folder on this machine, for every volume of the trainer container."""
    mounts: dict[str, Path] = {}
    for path, mount, volume in _mounted_volumes(pod):
        if path == checkpoint_mount:
            local = folder.checkpoints
        elif "configMap" in volume and volume["configMap"]["name"] == wiring.config_map_name(pod["metadata"]["labels"][wiring.JOB_LABEL]):
            local = folder.config
        elif "configMap" in volume:
            local = folder.config_map(volume["configMap"]["name"])
        elif "persistentVolumeClaim" in volume:
            local = claim_dir(folder.root.parent, volume["persistentVolumeClaim"]["claimName"])
        elif path == wiring.SHM_DIR:
            local = Path(wiring.SHM_DIR)
        else:
            local = folder.pod_dir(pod["metadata"]["name"]) / mount["name"]
        mounts[path] = local
    return mounts


def shared_mounts(pod: dict[str, Any], checkpoint_mount: str, folder: RunFolder) -> dict[str, Path]:
    """The mounts every pod sees alike (config, checkpoints, claims): not a pod's own scratch (emptyDir)."""
    scratch = {path for path, _, volume in _mounted_volumes(pod) if "emptyDir" in volume and path != checkpoint_mount}
    return {path: local for path, local in local_mounts(pod, checkpoint_mount, folder).items() if path not in scratch}


def _local_path(value: str, mounts: dict[str, Path]) -> str:
    """A path inside the pod as the same file on this machine; other values unchanged."""
    for inside in sorted(mounts, key=len, reverse=True):
        if value == inside or value.startswith(inside.rstrip("/") + "/"):
            return str(mounts[inside] / value[len(inside):].lstrip("/"))
    return value


def _program_argument(value: str, mounts: dict[str, Path]) -> str:
    """A program's argument as this machine sees it: a path that exists here already (the program's
    own file, where `kubespeed local` runs) stays as it is, even under a folder a volume is mounted
    on in the pod (`/tmp`); other paths inside a volume point at the volume's local folder."""
    if value.startswith("/") and Path(value).exists():
        return value
    return _local_path(value, mounts)


def localize_pod(
    pod: dict[str, Any],
    mounts: dict[str, Path],
    *,
    master_port: int,
    metrics_port: int,
    gpu_available: bool,
    folder: RunFolder,
) -> LocalPod:
    """The only rewrites between the operator's pod and a local process group.

    - every pod reaches node rank 0 at 127.0.0.1 (no headless Service here), on a
      free port, and serves metrics on its own free port (all pods share one host);
    - env values that are paths inside a volume point at that volume's local folder,
      and the termination log is a file in the pod's folder;
    - `kubespeed` runs as this Python's module, so an unactivated venv works; a user's
      program runs with this Python too, from the folder `kubespeed local` runs in;
    - without a GPU here the trainer is told to use the CPU (gloo), as `gpu: false` would.
    """
    container = pod["spec"]["containers"][0]
    name = pod["metadata"]["name"]
    termination_log = folder.pod_dir(name) / "termination-log" if container.get("terminationMessagePath") else None
    paths = {**mounts, container["terminationMessagePath"]: termination_log} if termination_log else mounts
    env = {e["name"]: _local_path(str(e.get("value", "")), paths) for e in container.get("env", []) if "value" in e}
    env[wiring.ENV_MASTER_ADDR] = "127.0.0.1"
    env[wiring.ENV_MASTER_PORT] = str(master_port)
    env[wiring.ENV_METRICS_PORT] = str(metrics_port)
    if not gpu_available:
        env[wiring.ENV_USE_GPU] = "0"
    argv = [*container.get("command", []), *container.get("args", [])]
    workdir = container.get("workingDir")
    cwd = Path(_local_path(workdir, mounts)) if workdir else folder.pod_dir(name)
    if argv[:1] == ["kubespeed"]:
        argv = [sys.executable, "-m", "kubespeed_cli", *argv[1:]]
    elif argv[1:2] == [wiring.HOST_PATH]:
        # A user's program: this machine plays the user's image (this Python, which has torch and
        # DeepSpeed), with the program's files where `kubespeed local` runs (or in a volume: its
        # arguments are paths as this machine sees them); the program host is this installation's,
        # which the init container would have copied into the pod.
        argv = [sys.executable, program_host.__file__, *(_program_argument(arg, mounts) for arg in argv[2:])]
        cwd = Path.cwd()
    return LocalPod(name=name, argv=argv, env=env, cwd=cwd, log=folder.logs / f"{name}.log", metrics_port=metrics_port,
                    termination_log=termination_log)
