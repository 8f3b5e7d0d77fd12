"""The spec vocabulary: defaults, refusals that name the field, and the CRD generated from it."""

import pytest

from kubespeed.spec import SpecError, crd, parse_job_spec, parse_trainer_config
from spec_overrides import overridden

MINIMAL = {"image": "trainer:1", "data": {"train": "builtin:tiny"}}


def with_(**overrides):
    return overridden(MINIMAL, **overrides)


def test_minimal_spec_gets_every_default():
    spec = parse_job_spec(MINIMAL)
    assert (spec.nodes, spec.procsPerNode, spec.gpu) == (1, 1, True)
    assert spec.training.optimizer.type == "adamw"
    assert spec.checkpoint.mountPath == "/checkpoints"
    assert spec.runPolicy.restartPolicy == "ExitCode"
    # Recovery: in place first, a startup bound, hang detection off.
    assert (spec.runPolicy.maxInPlaceRestarts, spec.runPolicy.startupTimeoutSeconds, spec.runPolicy.progressDeadlineSeconds) == (3, 600, None)


@pytest.mark.parametrize(
    "name, spec, field",
    [
        ("missing image", {"data": {"train": "x"}}, "spec.image"),
        ("zero nodes", with_(nodes=0), "spec.nodes"),
        ("string nodes", with_(nodes="two"), "spec.nodes"),
        ("unknown top-level field", with_(modle={}), "spec.modle"),
        ("unknown model type", with_(model__type="rnn"), "spec.model.type"),
        ("batch not multiple of micro batch", with_(training__globalBatchSize=10, training__microBatchSize=4), "spec.training.globalBatchSize"),
        ("batch not multiple of world", with_(nodes=2, training__globalBatchSize=8, training__microBatchSize=8), "spec.training.globalBatchSize"),
        ("several nodes without a shared checkpoint volume", with_(nodes=2, training__globalBatchSize=16, training__microBatchSize=8), "spec.checkpoint"),
        ("world not multiple of stages", with_(nodes=3, deepspeed__pipelineStages=2), "spec.deepspeed.pipelineStages"),
        ("parameter offload without zero 3", with_(deepspeed__zeroStage=2, deepspeed__offload={"parameters": "cpu"}), "spec.deepspeed.offload.parameters"),
        ("finetune without initFrom", with_(training__objective="finetune"), "spec.training.initFrom"),
        ("hf model without config", with_(model__type="hf"), "spec.model.hfConfig"),
        ("negative lr", with_(training__optimizer={"lr": -1.0}), "spec.training.optimizer.lr"),
        ("fractional minimum loss scale", with_(deepspeed__lossScale={"minScale": 0.5}), "spec.deepspeed.lossScale.minScale"),
        ("compile not a boolean", with_(deepspeed__compile="yes"), "spec.deepspeed.compile"),
        ("claim retention not a boolean", with_(checkpoint__volumeClaim={"deleteWithJob": "yes"}), "spec.checkpoint.volumeClaim.deleteWithJob"),
        ("both claim and template", with_(checkpoint__claimName="c", checkpoint__volumeClaim={}), "spec.checkpoint.volumeClaim"),
        ("negative in-place restarts", with_(runPolicy__maxInPlaceRestarts=-1), "spec.runPolicy.maxInPlaceRestarts"),
        ("startup bound shorter than a pod start", with_(runPolicy__startupTimeoutSeconds=5), "spec.runPolicy.startupTimeoutSeconds"),
        ("progress deadline of no time", with_(runPolicy__progressDeadlineSeconds=0), "spec.runPolicy.progressDeadlineSeconds"),
        ("progress deadline as a duration string", with_(runPolicy__progressDeadlineSeconds="10m"), "spec.runPolicy.progressDeadlineSeconds"),
    ],
)
def test_bad_spec_is_refused_naming_the_field(name, spec, field):
    with pytest.raises(SpecError) as err:
        parse_job_spec(spec)
    assert err.value.path == field, name
    assert str(err.value).startswith(field)


def test_trainer_config_is_the_jobs_training_sections():
    job = parse_job_spec(with_(training__steps=7))
    config = parse_trainer_config({"data": {"train": "builtin:tiny"}, "training": {"steps": 7}})
    assert config == job.trainer_config()


def _walk(schema, path="spec"):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_every_crd_field_has_a_description():
    version = crd.crd()["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    missing = [p for p, s in _walk(root["properties"]["spec"]) if not s.get("description")]
    missing += [p for p, s in _walk(root["properties"]["status"], "status") if not s.get("description")]
    assert missing == []


def test_crd_defaults_match_the_parser_defaults():
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    parsed = parse_job_spec(MINIMAL)
    assert schema["properties"]["training"]["default"]["steps"] == parsed.training.steps
    assert schema["properties"]["deepspeed"]["default"]["precision"] == parsed.deepspeed.precision
