"""DeepSpeed config resolution: batch arithmetic, precision, ZeRO and offload, overrides, refusals that name the field.

`kubespeed.deepspeed_config` is imported by the operator too, so it must not pull in torch or deepspeed.
"""

import subprocess
import sys

import pytest

from kubespeed import deepspeed_config
from kubespeed.spec import SpecError, parse_trainer_config
from kubespeed.spec.job import ScheduleSpec
from kubespeed_trainer.engine import schedule
from spec_overrides import overridden


def config(**sections):
    return parse_trainer_config(overridden({"data": {"train": "builtin:python-docs"}}, **sections))


def batch(global_, micro, **more):
    return config(training__globalBatchSize=global_, training__microBatchSize=micro, **more)


@pytest.mark.parametrize(
    "name, cfg, world, accumulation",
    [
        ("one rank accumulates global / micro", batch(32, 8), 1, 4),
        ("ranks share the accumulation", batch(32, 8), 2, 2),
        ("one micro batch per rank", batch(32, 8), 4, 1),
        ("pipeline stages do not count as data parallel", batch(32, 8, deepspeed__pipelineStages=2), 4, 2),
        ("two nodes of two, micro 1", batch(12, 1), 4, 3),
    ],
)
def test_gradient_accumulation_is_global_over_micro_times_data_parallel(name, cfg, world, accumulation):
    resolved = deepspeed_config.resolve_deepspeed_config(cfg, world, gpu=False)
    assert resolved["gradient_accumulation_steps"] == accumulation, name
    dp = world // cfg.deepspeed.pipelineStages
    assert resolved["train_batch_size"] == resolved["train_micro_batch_size_per_gpu"] * accumulation * dp


@pytest.mark.parametrize(
    "name, cfg, world, field",
    [
        ("global batch not a multiple of micro x world", batch(32, 8), 3, "config.training.globalBatchSize"),
        ("global batch smaller than micro x world", batch(8, 8), 2, "config.training.globalBatchSize"),
        ("world not a multiple of pipeline stages", config(deepspeed__pipelineStages=2), 3, "config.deepspeed.pipelineStages"),
    ],
)
def test_a_world_size_that_cannot_run_the_config_is_refused_naming_the_field(name, cfg, world, field):
    with pytest.raises(SpecError) as err:
        deepspeed_config.resolve_deepspeed_config(cfg, world, gpu=False)
    assert err.value.path == field, name


@pytest.mark.parametrize(
    "name, raw, field",
    [
        ("pipeline with ZeRO 2", {"deepspeed__pipelineStages": 2, "deepspeed__zeroStage": 2}, "config.deepspeed.zeroStage"),
        ("optimizer offload with ZeRO 0", {"deepspeed__offload": {"optimizer": "cpu"}}, "config.deepspeed.offload.optimizer"),
        ("parameter offload below ZeRO 3", {"deepspeed__zeroStage": 2, "deepspeed__offload": {"parameters": "cpu"}}, "config.deepspeed.offload.parameters"),
        ("pipeline for a Hugging Face model", {"deepspeed__pipelineStages": 2, "model__type": "hf", "model__hfConfig": {"model_type": "gpt2"}}, "config.deepspeed.pipelineStages"),
        ("activation checkpointing for the LSTM", {"model__type": "lstm", "deepspeed__activationCheckpointing": True}, "config.deepspeed.activationCheckpointing"),
        ("offload with SGD", {"deepspeed__zeroStage": 2, "deepspeed__offload": {"optimizer": "cpu"}, "training__optimizer": {"type": "sgd"}}, "config.deepspeed.offload.optimizer"),
    ],
)
def test_spec_level_refusals_name_the_field_before_resolution(name, raw, field):
    with pytest.raises(SpecError) as err:
        config(**raw)
    assert err.value.path == field, name


@pytest.mark.parametrize(
    "name, precision, gpu, bf16, want",
    [
        ("auto on a CPU is fp32", "auto", False, True, {}),
        ("auto on a bf16 GPU is bf16", "auto", True, True, {"bf16": {"enabled": True}}),
        ("auto on an old GPU is fp32", "auto", True, False, {}),
        ("bf16 asked for on a CPU", "bf16", False, True, {"bf16": {"enabled": True}}),
    ],
)
def test_precision(name, precision, gpu, bf16, want):
    resolved = deepspeed_config.resolve_deepspeed_config(config(deepspeed__precision=precision), 1, gpu=gpu, bf16_supported=bf16)
    assert {k: resolved[k] for k in ("bf16", "fp16") if k in resolved} == want, name


def test_fp16_uses_dynamic_loss_scaling_from_the_spec():
    cfg = config(deepspeed__precision="fp16", deepspeed__lossScale={"initialScalePower": 12, "window": 50, "hysteresis": 3, "minScale": 2})
    fp16 = deepspeed_config.resolve_deepspeed_config(cfg, 1, gpu=False)["fp16"]
    assert fp16 == {"enabled": True, "loss_scale": 0, "initial_scale_power": 12, "loss_scale_window": 50, "hysteresis": 3, "min_loss_scale": 2}


def test_zero_stage_offload_clipping_and_optimizer_come_from_the_spec():
    cfg = config(deepspeed__zeroStage=3, deepspeed__offload={"optimizer": "cpu", "parameters": "cpu"},
                 training__gradientClipping=0.5, training__optimizer={"lr": 1e-3, "beta2": 0.99, "weightDecay": 0.05})
    resolved = deepspeed_config.resolve_deepspeed_config(cfg, 2, gpu=True)
    assert resolved["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                                             "offload_param": {"device": "cpu", "pin_memory": True}}
    assert resolved["gradient_clipping"] == 0.5
    assert resolved["optimizer"] == {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0.05}}


@pytest.mark.parametrize("offload", [{}, {"optimizer": "cpu", "parameters": "cpu"}])
def test_cpu_runs_torch_fused_adamw_and_has_nothing_to_offload(offload):
    resolved = deepspeed_config.resolve_deepspeed_config(config(deepspeed__zeroStage=3, deepspeed__offload=offload), 1, gpu=False)
    assert resolved["optimizer"]["params"]["torch_adam"] is True
    assert resolved["optimizer"]["params"]["fused"] is True
    assert resolved["zero_optimization"] == {"stage": 3}


def test_overrides_merge_last_and_deep():
    cfg = config(deepspeed__zeroStage=2, deepspeed__overrides={"zero_optimization": {"reduce_bucket_size": 1000}, "gradient_clipping": 2.0})
    resolved = deepspeed_config.resolve_deepspeed_config(cfg, 1, gpu=False)
    assert resolved["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 1000}
    assert resolved["gradient_clipping"] == 2.0


def test_module_imports_neither_torch_nor_deepspeed():
    code = "import sys, kubespeed.deepspeed_config; print(sorted(m for m in ('torch', 'deepspeed') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "name, step, want",
    [
        ("first warmup step", 0, 1e-3 * 1 / 11),
        ("last warmup step", 9, 1e-3 * 10 / 11),
        ("peak after warmup", 10, 1e-3),
        ("halfway down the cosine", 60, 1e-4 + 0.5 * (1e-3 - 1e-4)),
        ("minimum at the last step", 110, 1e-4),
        ("minimum beyond the last step", 200, 1e-4),
    ],
)
def test_warmup_then_cosine(name, step, want):
    sched = ScheduleSpec(warmupSteps=10, decay="cosine", minLr=1e-4)
    assert schedule.lr_at(step, peak=1e-3, schedule=sched, total_steps=110) == pytest.approx(want), name
