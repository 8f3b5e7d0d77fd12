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


# Refusals that tests/integration/test_bad_specs.py already holds are not repeated here: its one
# table is judged by this parser and by the API server alike (without a control plane for the parser).
@pytest.mark.parametrize(
    "name, spec, field",
    [
        ("missing image", {"data": {"train": "x"}}, "spec.image"),
        ("unknown top-level field", with_(modle={}), "spec.modle"),
        ("batch not multiple of world", with_(nodes=2, training__globalBatchSize=8, training__microBatchSize=8), "spec.training.globalBatchSize"),
        ("several nodes without a shared checkpoint volume", with_(nodes=2, training__globalBatchSize=16, training__microBatchSize=8), "spec.checkpoint"),
        ("world not multiple of stages", with_(nodes=3, deepspeed__pipelineStages=2), "spec.deepspeed.pipelineStages"),
        ("negative lr", with_(training__optimizer={"lr": -1.0}), "spec.training.optimizer.lr"),
        ("claim retention not a boolean", with_(checkpoint__volumeClaim={"deleteWithJob": "yes"}), "spec.checkpoint.volumeClaim.deleteWithJob"),
        ("both claim and template", with_(checkpoint__claimName="c", checkpoint__volumeClaim={}), "spec.checkpoint.volumeClaim"),
        ("elastic bounds upside down", with_(elastic={"minNodes": 3, "maxNodes": 2}, nodes=2, checkpoint__claimName="c"), "spec.elastic.minNodes"),
        ("nodes above elastic.maxNodes", with_(elastic={"minNodes": 1, "maxNodes": 2}, nodes=4, checkpoint__claimName="c"), "spec.nodes"),
        ("nodes below elastic.minNodes", with_(elastic={"minNodes": 2, "maxNodes": 4}, nodes=1, checkpoint__claimName="c", training__globalBatchSize=16, training__microBatchSize=8), "spec.nodes"),
        ("elastic without minNodes", with_(elastic={"maxNodes": 2}), "spec.elastic.minNodes"),
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
    # The built-in trainer's sections are defaulted field by field once written, and by the parser when left out.
    assert "default" not in schema["properties"]["training"]
    assert schema["properties"]["training"]["properties"]["steps"]["default"] == parsed.training.steps
    assert schema["properties"]["deepspeed"]["properties"]["precision"]["default"] == parsed.deepspeed.precision
    assert "interval" not in schema["properties"]["checkpoint"]["default"]
    assert schema["properties"]["checkpoint"]["properties"]["interval"]["description"].endswith(f"Default: {parsed.checkpoint.interval}.")


PROGRAM = {"image": "me/train:1", "program": {"command": ["train.py"]}}


def program(**overrides):
    return overridden(PROGRAM, **overrides)


def test_a_program_needs_no_training_sections_and_gets_the_program_defaults():
    spec = parse_job_spec(PROGRAM)
    assert spec.data is None
    assert (spec.program.launcher, spec.program.deepspeedConfigArgument, spec.program.deepspeedMonitor) == ("deepspeed", "--deepspeed_config", True)
    assert spec.program.helperImage.startswith("ghcr.io/kubespeed/kubespeed-trainer:")
    # Checkpoint volume settings apply to a program, the trainer's save policy does not.
    assert parse_job_spec(program(nodes=2, checkpoint={"claimName": "ckpt", "mountPath": "/ckpt"})).checkpoint.mountPath == "/ckpt"


# As above: the program refusals of test_bad_specs.py's table are not repeated here.
@pytest.mark.parametrize(
    "name, spec, field",
    [
        ("batch that is not micro x accumulation x world", program(nodes=2, procsPerNode=2, checkpoint={"claimName": "c"},
         program__deepspeedConfig={"train_batch_size": 8, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}),
         "spec.program.deepspeedConfig.train_batch_size"),
        ("batch not a multiple of micro x world", program(procsPerNode=4, program__deepspeedConfig={"train_batch_size": 6, "train_micro_batch_size_per_gpu": 1}),
         "spec.program.deepspeedConfig.train_batch_size"),
        ("micro batch that is not a number", program(program__deepspeedConfig={"train_micro_batch_size_per_gpu": "two"}),
         "spec.program.deepspeedConfig.train_micro_batch_size_per_gpu"),
        ("checkpoint export with a program", program(checkpoint__exportWeights=False), "spec.checkpoint.exportWeights"),
    ],
)
def test_bad_program_spec_is_refused_naming_the_field(name, spec, field):
    with pytest.raises(SpecError) as err:
        parse_job_spec(spec)
    assert err.value.path == field, (name, str(err.value))


@pytest.mark.parametrize(
    "name, template, field",
    [
        ("command of the training container", {"spec": {"containers": [{"name": "trainer", "command": ["sh"]}]}}, "spec.podTemplate.spec.containers[0].command"),
        ("image of the training container", {"spec": {"containers": [{"name": "sidecar", "image": "a"}, {"name": "trainer", "image": "b"}]}},
         "spec.podTemplate.spec.containers[1].image"),
        ("env that rewires the pod", {"spec": {"containers": [{"name": "trainer", "env": [{"name": "A", "value": "1"}, {"name": "NODE_RANK", "value": "0"}]}]}},
         "spec.podTemplate.spec.containers[0].env[1].name"),
        ("a volume named like the operator's", {"spec": {"volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "shm", "emptyDir": {}}]}},
         "spec.podTemplate.spec.volumes[1].name"),
        ("a field Kubernetes does not know", {"spec": {"nodeSelectr": {"a": "b"}}}, "spec.podTemplate.spec.nodeSelectr"),
        ("a capability that is not a string", {"spec": {"containers": [{"name": "trainer", "securityContext": {"capabilities": {"add": [1]}}}]}},
         "spec.podTemplate.spec.containers[0].securityContext.capabilities.add[0]"),
    ],
)
def test_bad_pod_template_is_refused_by_the_parser_naming_the_field(name, template, field):
    # The API server refuses the last two too; the others it cannot afford to (a CEL rule over every list entry exceeds its cost budget).
    with pytest.raises(SpecError) as err:
        parse_job_spec(with_(podTemplate=template))
    assert err.value.path == field, (name, str(err.value))


def test_hugging_face_auto_batch_sizes_are_left_to_the_trainer():
    config = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}
    assert parse_job_spec(program(program__deepspeedConfig=config)).program.deepspeedConfig == config
