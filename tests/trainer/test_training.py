"""The trainer under real DeepSpeed over gloo: several ranks, ZeRO stages, pipeline, precisions, resume, SIGTERM, nodes.

Resume equivalence is asserted bitwise (==, not approx). On the CPU in fp32 every
input to step k+1 is restored exactly: the weights and the Adam moments are
saved as fp32 tensors, the LambdaLR step count and the sampler position (and
each rank's RNG) are in the checkpoint, the data order is a pure function of
(seed, position), and gloo reduces in the same order with the same world. So
the resumed run computes the same floating-point operations on the same bits.
Any difference would mean some state was not restored.
"""

from __future__ import annotations

import json
import signal
import urllib.request

import pytest
import safetensors.torch
import torch

from kubespeed import checkpoints, wiring

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STEPS = 12
STOP_AT = 6


def assert_loss_falls(losses: dict[int, float]) -> None:
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = losses[1], losses[STEPS]
    assert last < 0.9 * first, f"loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_trains_and_resume_matches_an_uninterrupted_run(trainer_job, uninterrupted_runs, stage):
    whole = uninterrupted_runs(stage)
    assert whole.code == 0, whole.output[-3000:]
    assert_loss_falls(whole.losses())

    parted = trainer_job("parted", deepspeed={"zeroStage": stage})
    first = parted.launch(ranks=2, extra=("--max-steps-this-run", str(STOP_AT)))
    assert first.code == 0, first.output[-3000:]
    assert checkpoints.complete_tags(parted.run_dir) == [f"step{STOP_AT:08d}"]
    assert max(first.losses()) == STOP_AT

    second = parted.launch(ranks=2)
    assert second.code == 0, second.output[-3000:]
    assert [r["step"] for r in second.metrics("resume")] == [STOP_AT]
    resumed = {s: v for s, v in second.losses().items() if s > STOP_AT}
    assert resumed == {s: v for s, v in whole.losses().items() if s > STOP_AT}


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}{wiring.METRICS_PATH}", timeout=5).read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("kubespeed_")}


def test_sigterm_leaves_a_complete_checkpoint_and_the_next_run_resumes_from_it(trainer_job, unused_port):
    job = trainer_job(training={"steps": 400}, deepspeed={"zeroStage": 2})
    proc = job.start(ranks=2, extra=("--metrics-port", str(unused_port)))
    job.wait_for_step(3)
    gauges = scrape(unused_port)
    assert gauges["kubespeed_total_steps"] == 400 and gauges["kubespeed_step"] >= 3
    assert gauges["kubespeed_loss"] > 0 and gauges["kubespeed_tokens_per_second"] > 0
    proc.send_signal(signal.SIGTERM)
    stopped = job.finish(proc)
    assert stopped.code == wiring.EXIT_PREEMPTED.code, stopped.output[-3000:]
    tags = checkpoints.complete_tags(job.run_dir)
    assert len(tags) == 1
    saved_step = json.loads((job.run_dir / tags[0] / "complete").read_text())["step"]
    assert saved_step == max(stopped.losses())

    resumed = job.launch(ranks=2, extra=("--max-steps-this-run", "2"))
    assert resumed.code == 0, resumed.output[-3000:]
    assert [r["step"] for r in resumed.metrics("resume")] == [saved_step]
    assert max(resumed.losses()) == saved_step + 2


def test_two_pipeline_stages_train_the_builtin_gpt_and_export(trainer_job):
    result = trainer_job(deepspeed={"pipelineStages": 2, "zeroStage": 1}, checkpoint={"exportWeights": True}).launch(ranks=2)
    assert result.code == 0, result.output[-3000:]
    assert_loss_falls(result.losses())
    assert (result.run_dir / "export" / "model.safetensors").is_file()


def test_bf16_trains_on_the_cpu(trainer_job):
    result = trainer_job(deepspeed={"zeroStage": 2, "precision": "bf16"}).launch(ranks=2)
    assert result.code == 0, result.output[-3000:]
    assert_loss_falls(result.losses())
    config = json.loads((result.run_dir / "deepspeed.json").read_text())
    assert config["bf16"] == {"enabled": True}


def test_compiled_model_trains_resumes_and_keeps_its_kernels_beside_the_checkpoints(trainer_job):
    # One rank: two would compile the same graphs side by side on a small machine.
    job = trainer_job(deepspeed={"compile": True}, checkpoint={"exportWeights": True})
    first = job.launch(ranks=1, extra=("--max-steps-this-run", str(STOP_AT)))
    assert first.code == 0, first.output[-3000:]
    assert [r["compiled"] for r in first.metrics("start")] == [True]
    assert any((job.run_dir / checkpoints.COMPILE_CACHE_DIR).rglob("*.so")), "no compiled kernels in the cache"
    second = job.launch(ranks=1)
    assert second.code == 0, second.output[-3000:]
    assert [r["step"] for r in second.metrics("resume")] == [STOP_AT]
    assert_loss_falls(second.losses())
    # Compiling leaves the state dict's names as they were: the export is the plain model's.
    exported = safetensors.torch.load_file(job.run_dir / "export" / "model.safetensors")
    assert exported and not any("_orig_mod" in name for name in exported)


def test_fp16_dynamic_loss_scale_halves_on_overflow_and_training_goes_on(trainer_job, cpu_fp16_refused):
    if cpu_fp16_refused:
        pytest.skip(f"this CPU cannot run a DeepSpeed fp16 engine ({cpu_fp16_refused}); "
                    "test_loss_scaling.py checks the loss scaler on every CPU")
    # 2^32 overflows fp16 gradients at once: DeepSpeed skips those steps and halves the scale
    # until the gradients fit, then trains (hysteresis 1: halve on every overflow).
    result = trainer_job(deepspeed={"zeroStage": 1, "precision": "fp16",
                                    "lossScale": {"initialScalePower": 32, "hysteresis": 1, "window": 1000}}).launch(ranks=2)
    assert result.code == 0, result.output[-3000:]
    scales = [r["lossScale"] for r in result.metrics("train")]
    assert scales[0] < 2.0**32 and scales[-1] <= scales[0]
    assert all(b <= a for a, b in zip(scales, scales[1:]))
    losses = result.losses()
    assert losses[STEPS] < losses[1]


# oneDNN honours this cap on the instruction sets it uses: below AVX512-FP16, this CPU has
# no native fp16, as on an AMD EPYC, and DeepSpeed's CPU accelerator refuses fp16.
WITHOUT_NATIVE_FP16 = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}


def test_fp16_on_a_cpu_without_it_is_refused_as_a_config_error_naming_the_field(trainer_job):
    job = trainer_job(deepspeed={"precision": "fp16"})
    result = job.launch(ranks=2, env=WITHOUT_NATIVE_FP16)
    assert result.code == wiring.EXIT_CONFIG_ERROR.code, result.output[-3000:]
    assert "deepspeed.precision: fp16 is not supported on this device (cpu)" in result.output
    assert "Traceback" not in result.output and not result.metrics("start")


def test_two_launchers_as_two_nodes_form_one_four_rank_world(trainer_job, unused_port):
    job = trainer_job(deepspeed={"zeroStage": 1})
    nodes = [job.start(2, nnodes=2, node_rank=rank, port=unused_port) for rank in (0, 1)]
    results = [job.finish(proc) for proc in nodes]
    assert [r.code for r in results] == [0, 0], results[0].output[-3000:] + results[1].output[-3000:]
    assert_loss_falls(results[0].losses())
    assert json.loads((job.run_dir / "deepspeed.json").read_text())["gradient_accumulation_steps"] == 1


def test_export_of_zero3_shards_loads_with_from_pretrained_and_gives_the_same_logits(uninterrupted_runs):
    from transformers import AutoModelForCausalLM

    from kubespeed_trainer.engine.checkpoint_weights import build_from_checkpoint

    result = uninterrupted_runs(3)
    assert result.code == 0, result.output[-3000:]
    ours, _, _ = build_from_checkpoint(result.run_dir)
    hf = AutoModelForCausalLM.from_pretrained(result.run_dir / "export").eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-5, atol=1e-5)


def test_sample_generates_text_from_the_checkpoint_and_from_the_export(uninterrupted_runs, capsys):
    from kubespeed_trainer.commands import sample

    run_dir = uninterrupted_runs(3).run_dir
    for source in (run_dir, run_dir / "export"):
        assert sample.main([str(source), "--prompt", "ROMEO:", "--tokens", "20", "--seed", "1"]) == 0
        text = capsys.readouterr().out
        assert text.startswith("ROMEO:") and len(text.rstrip("\n")) > len("ROMEO:")
