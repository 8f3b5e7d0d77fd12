"""`kubespeed render job.yaml`: the builders' objects as YAML, or a refusal naming the file and field."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from kubespeed_cli import main as cli
from kubespeed_operator.build.children import attempt_pods, job_children
from kubespeed_operator.build.render import RENDER_UID, as_submitted, render

GOOD = """\
apiVersion: kubespeed.io/v1alpha1
kind: LMTrainingJob
metadata:
  name: shakespeare
spec:
  image: ghcr.io/kubespeed/trainer:0.1.0
  nodes: 2
  procsPerNode: 2
  data: {train: "builtin:tinyshakespeare"}
  training: {globalBatchSize: 32, microBatchSize: 4}
  checkpoint: {volumeClaim: {size: 5Gi}}
"""


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_render_prints_every_object_as_parseable_yaml(tmp_path, capsys):
    assert cli.main(["render", write(tmp_path, GOOD)]) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Service", "shakespeare"),
        ("ConfigMap", "shakespeare-config"),
        ("NetworkPolicy", "shakespeare"),
        ("PersistentVolumeClaim", "shakespeare-checkpoints"),
        ("Pod", "shakespeare-0"),
        ("Pod", "shakespeare-1"),
    ]
    assert {o["metadata"]["namespace"] for o in objects} == {"default"}
    owned = [o for o in objects if o["kind"] != "PersistentVolumeClaim"]  # the claim outlives the job
    assert {o["metadata"]["ownerReferences"][0]["uid"] for o in owned} == {RENDER_UID}


def test_render_output_is_what_the_builders_return(tmp_path, capsys):
    assert cli.main(["render", write(tmp_path, GOOD), "--namespace", "team-a"]) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    job = as_submitted(yaml.safe_load(GOOD), "team-a")
    assert printed == job_children(job) + attempt_pods(job, 1) == render(job)


def test_manifest_namespace_wins_over_the_flag(tmp_path, capsys):
    text = GOOD.replace("  name: shakespeare\n", "  name: shakespeare\n  namespace: research\n")
    assert cli.main(["render", write(tmp_path, text), "-n", "team-a"]) == 0
    assert {o["metadata"]["namespace"] for o in yaml.safe_load_all(capsys.readouterr().out)} == {"research"}


@pytest.mark.parametrize(
    "name, text, field",
    [
        ("impossible batch arithmetic", GOOD.replace("microBatchSize: 4", "microBatchSize: 3"), "spec.training.globalBatchSize"),
        ("missing image", GOOD.replace("  image: ghcr.io/kubespeed/trainer:0.1.0\n", ""), "spec.image"),
        ("wrong type", GOOD.replace("nodes: 2", "nodes: two"), "spec.nodes"),
        ("unknown enum value", GOOD.replace("nodes: 2", "nodes: 2\n  imagePullPolicy: Sometimes"), "spec.imagePullPolicy"),
        ("wrong apiVersion", GOOD.replace("v1alpha1", "v1"), "apiVersion"),
        ("no name", GOOD.replace("  name: shakespeare\n", "  labels: {}\n"), "metadata.name"),
        ("name too long for pod hostnames", GOOD.replace("name: shakespeare", "name: " + "a" * 59), "metadata.name"),
        ("name that cannot be a Service name", GOOD.replace("name: shakespeare", "name: 1st-run"), "metadata.name"),
        ("not YAML", "spec: [unclosed", "not valid YAML"),
    ],
)
def test_bad_file_is_refused_naming_the_file_and_the_field(tmp_path, capsys, name, text, field):
    path = write(tmp_path, text)
    assert cli.main(["render", path]) == 1, name
    out = capsys.readouterr()
    assert out.out == ""
    assert path in out.err and field in out.err, out.err


def test_missing_file_is_refused_naming_it(tmp_path, capsys):
    path = str(tmp_path / "absent.yaml")
    assert cli.main(["render", path]) == 1
    assert path in capsys.readouterr().err


def test_render_needs_neither_kopf_nor_the_kubernetes_client():
    import subprocess
    import sys

    code = (
        "import sys, kubespeed_cli.render;"
        "loaded = sorted(m for m in ('kopf', 'kubernetes', 'torch', 'deepspeed') if m in sys.modules);"
        "print(','.join(loaded))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
