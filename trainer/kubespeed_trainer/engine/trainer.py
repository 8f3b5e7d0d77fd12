"""The training loop: one DeepSpeed engine, resumable data, checkpoints, evaluation and metrics.

`run(config, options)` is what every rank executes, under a process group the
launcher set up (env RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or,
with none of that set, as a world of one. It returns an exit code from
`kubespeed.wiring` (`commands/train.py` maps exceptions to the others):

- EXIT_SUCCESS: every step done, final checkpoint written (and weights exported), or
  `max_steps_this_run` steps done and checkpointed;
- EXIT_PREEMPTED: SIGTERM arrived; all ranks stopped at the same step boundary and
  a complete checkpoint of that step exists.

Rank 0 alone writes metrics and the files beside the checkpoints (`is_rank0`).
What the loop starts from (data, weights, the DeepSpeed engine) is built in `build.py`.

Importing this module imports deepspeed: import it only after `device.select_accelerator`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from kubespeed import checkpoints, deepspeed_config, wiring
from kubespeed.spec import TrainerConfig, to_dict
from kubespeed_trainer import data, elastic, models
from kubespeed_trainer.engine import accelerator, build, checkpoint, checkpoint_weights, clipping, compilation, device, fused_adam, objectives, reshard
from kubespeed_trainer.engine.metrics import Metrics
from kubespeed_trainer.engine.signals import StopRequest
from kubespeed_trainer.engine.startup import StartupClock


@dataclass(kw_only=True)
class RunOptions:
    checkpoint_dir: Path
    metrics_port: int | None = None
    max_steps_this_run: int | None = None
    attempt: int = 0
    # Times the launcher restarted the ranks in place before this run, in this attempt.
    in_place_restarts: int = 0
    gpu: bool = False
    startup: StartupClock = dataclasses.field(default_factory=StartupClock)


@dataclass
class Position:
    """Where training stands: optimizer steps done and tokens trained on.

    A checkpoint's client state carries it beside DeepSpeed's own state (and the sampler's).
    """

    step: int = 0
    tokens: int = 0


class Trainer:
    def __init__(self, config: TrainerConfig, options: RunOptions) -> None:
        self.config, self.options = config, options
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_rank0 = self.rank == 0
        self.directory = options.checkpoint_dir
        self.ds_config = deepspeed_config.resolve_deepspeed_config(
            config, self.world, options.gpu, bf16_supported=device.bf16_supported(options.gpu))
        self.prepared, self.tokenizer = build.prepare_data(config, self.directory)
        options.startup.mark("data")
        if self.is_rank0:
            build.write_run_files(self.directory, config, self.ds_config, self.tokenizer)
            build.compare_with_operator_config(self.ds_config)
        init_state = build.initial_weights(config)
        # Decided before the engine is built: a checkpoint of another data-parallel size needs an engine that loads
        # DeepSpeed's universal format.
        self.resume_tag = checkpoint.agreed_resume_tag(self.directory, config.checkpoint.resume)
        self.universal = reshard.prepare(
            self.directory, self.resume_tag, config.deepspeed.zeroStage, config.deepspeed.pipelineStages,
            deepspeed_config.data_parallel_size(config, self.world)) if self.resume_tag else None
        engine_config = self.ds_config
        if self.universal:
            engine_config = {**self.ds_config, "checkpoint": {**self.ds_config.get("checkpoint", {}), "load_universal": True}}
        self.engine, self.parameters = build.build_engine(config, engine_config, self.tokenizer.vocab_size, init_state)
        self.clipped_in_step = clipping.fold_into_fused_step(self.engine)
        fused_adam.streamline(self.engine.optimizer)
        self.compiled = compilation.compile_engine(self.engine, config, options.gpu)
        self.pipelined = config.deepspeed.pipelineStages > 1
        self.device = self.engine.device
        self.dp_rank, self.dp_size = self._data_parallel_coords()
        self.position = Position()
        self.own_grad_norm: float | None = None
        self.stop = StopRequest().install().join()
        self.watchdog = elastic.StepWatchdog()
        self.metrics = None
        if self.is_rank0:
            self.metrics = Metrics(self.directory / checkpoints.METRICS_FILE, port=options.metrics_port,
                                   attempt=options.attempt, total_steps=config.training.steps,
                                   in_place_restarts=options.in_place_restarts)
        self._build_data()

    # ------------------------------------------------------------ set-up

    def _data_parallel_coords(self) -> tuple[int, int]:
        if self.pipelined:
            grid = self.engine.grid
            return grid.get_data_parallel_rank(), grid.get_data_parallel_world_size()
        return self.rank, self.world

    def _build_data(self) -> None:
        training = self.config.training
        self.train_set = data.TokenDataset(self.prepared, "train", training.seqLength)
        self.val_set = data.TokenDataset(self.prepared, "validation", training.seqLength)
        if len(self.train_set) < training.microBatchSize * self.dp_size:
            raise build.DataError(f"data.train: {len(self.train_set)} sequences of {training.seqLength} tokens cannot fill one "
                                  f"micro batch on each of {self.dp_size} data-parallel ranks")
        self.sampler = data.ResumableSampler(len(self.train_set), rank=self.dp_rank, world_size=self.dp_size,
                                             seed=training.seed, micro_batch_size=training.microBatchSize)
        self.batches = data.batches(self.train_set, self.sampler)

    # ------------------------------------------------------------ batches

    def _generator(self, step: int, micro: int) -> torch.Generator:
        """Noise for the denoising objective: a function of (seed, step, rank, micro batch), so resume repeats it."""
        seed = hash((self.config.training.seed, step, self.dp_rank, micro)) & (2**63 - 1)
        return torch.Generator().manual_seed(seed)

    def _make(self, batch: dict[str, Any], step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, targets, mask = objectives.make_batch(
            self.config.training.objective, batch, tokenizer=self.tokenizer,
            denoising=self.config.training.denoising, generator=self._generator(step, micro))
        return inputs.to(self.device), targets.to(self.device), mask.to(self.device)

    def _pipeline_iter(self, step: int) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]:
        micro = 0
        while True:
            inputs, targets, mask = self._make(next(self.batches), step, micro)
            micro += 1
            yield inputs, (targets, mask)

    # ------------------------------------------------------------ steps

    def train_step(self, step: int, measure_grad_norm: bool = False) -> torch.Tensor:
        """One optimizer step (all its micro batches); returns this rank's mean loss as a 0-d tensor.

        ZeRO stage 0 in fp32 runs the bare optimizer, which reports no gradient norm
        unless clipping folded into its step computes one (`clipping`); otherwise, with
        `measure_grad_norm`, it is computed here before the step (only on logged steps:
        it is one more pass over every gradient).
        """
        engine = self.engine
        if self.pipelined:
            return engine.train_batch(data_iter=self._pipeline_iter(step)).detach().float()
        total = torch.zeros((), device=self.device)
        accumulation = engine.gradient_accumulation_steps()
        own_norm = measure_grad_norm and self.config.deepspeed.zeroStage == 0 and not self.clipped_in_step
        for micro in range(accumulation):
            inputs, targets, mask = self._make(next(self.batches), step, micro)
            loss = objectives.loss(engine(inputs), targets, mask)
            engine.backward(loss)
            if own_norm and micro == accumulation - 1:
                self.own_grad_norm = _grad_norm(engine.module)
            engine.step()
            total += loss.detach().float()
        return total / accumulation

    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            norm = self.own_grad_norm
        return None if norm is None else float(norm)

    @torch.no_grad()
    @torch.compiler.set_stance("force_eager")
    def evaluate(self) -> float | None:
        """Mean validation loss over `training.evalBatches` micro batches per data-parallel rank, all ranks averaged.

        A compiled model evaluates eagerly: evaluation mode without gradients is a
        graph of its own, and compiling it would cost a training run's compile
        again for a few batches.
        """
        training = self.config.training
        if len(self.val_set) < training.microBatchSize * self.dp_size:
            return None
        sampler = data.ResumableSampler(len(self.val_set), rank=self.dp_rank, world_size=self.dp_size,
                                        seed=training.seed, micro_batch_size=training.microBatchSize)
        batches = data.batches(self.val_set, sampler)
        self.engine.eval()
        total = torch.zeros((), device=self.device)
        if self.pipelined:
            def items() -> Iterator[Any]:
                for i in itertools.count():
                    inputs, targets, mask = self._make(next(batches), -1, i)
                    yield inputs, (targets, mask)

            loss = self.engine.eval_batch(items(), num_micro_batches=training.evalBatches)
            total += loss.float().reshape(())
        else:
            for i in range(training.evalBatches):
                inputs, targets, mask = self._make(next(batches), -1, i)
                total += objectives.loss(self.engine(inputs), targets, mask).float()
            total /= training.evalBatches
        self.engine.train()
        return _mean_over_ranks(total)

    # ------------------------------------------------------------ checkpoints

    def save(self) -> None:
        client = {"step": self.position.step, "tokens": self.position.tokens, "sampler": self.sampler.state_dict(),
                  "trainerConfig": to_dict(self.config)}
        checkpoint.save(self.engine, self.directory, self.position.step, client, keep=self.config.checkpoint.keep,
                        data_parallel_size=self.dp_size, on_complete=self._record_checkpoint)

    def _record_checkpoint(self, tag: str) -> None:
        if self.metrics:
            self.metrics.record("checkpoint", step=self.position.step, checkpointStep=self.position.step)

    def resume(self) -> None:
        tag = self.resume_tag
        if tag is None:
            return
        client, _ = checkpoint.load(self.engine, self.directory, tag, self.universal)
        self.position = Position(step=int(client["step"]), tokens=int(client.get("tokens", 0)))
        # The sampler's position is global: at another data-parallel size the ranks go on with the same stream.
        self.sampler.load_state_dict(client["sampler"])
        if self.metrics:
            resized = {"resizedFrom": self.universal["savedSize"], "conversionSeconds": self.universal["seconds"]} if self.universal else {}
            self.metrics.record("resume", step=self.position.step, checkpointStep=self.position.step, tag=tag,
                                dataParallelSize=self.dp_size, **resized)

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        training, options = self.config.training, self.options
        if self.metrics:
            self.metrics.record("start", step=self.position.step, parameters=self.parameters, worldSize=self.world,
                                device=torch.cuda.get_device_name() if options.gpu else "cpu",
                                gradientAccumulation=self.engine.gradient_accumulation_steps(), compiled=self.compiled,
                                attempt=options.attempt, inPlaceRestarts=options.in_place_restarts)
        self.resume()
        options.startup.mark("engine")
        tokens_per_step = training.globalBatchSize * training.seqLength
        flops_per_token = self._flops_per_token()
        peak = device.peak_flops(options.gpu)
        start_step = self.position.step
        run_start = time.perf_counter()
        window_start, window_steps = time.perf_counter(), 0
        loss_sum = torch.zeros((), device=self.device)
        saved_at = start_step if start_step else None
        while self.position.step < training.steps:
            # Covers the step and what may follow it (evaluation, a checkpoint, the stop agreement).
            self.watchdog.arm()
            step = self.position.step
            logged = (step + 1) % training.logInterval == 0 or step + 1 == training.steps
            loss_sum += self.train_step(step, measure_grad_norm=logged)
            self.position.step += 1
            self.position.tokens += tokens_per_step
            window_steps += 1
            done = self.position.step
            if done == start_step + 1:
                options.startup.mark("firstStep")
                if self.metrics:
                    self.metrics.record("startup", step=done, **options.startup.record())
            if self.metrics:
                self.metrics.update(step=done)
            if logged:
                elapsed = time.perf_counter() - window_start
                loss = _mean_over_ranks(loss_sum / window_steps)
                tps = tokens_per_step * window_steps / elapsed if elapsed > 0 else None
                eta = (training.steps - done) * elapsed / window_steps
                if self.metrics:
                    self.metrics.record(
                        "train", step=done, totalSteps=training.steps, loss=loss, lr=self.engine.get_lr()[0],
                        gradNorm=self.grad_norm(), lossScale=self._loss_scale(), tokensPerSecond=tps,
                        mfu=tps * flops_per_token / (peak * self.world) if peak and tps else None,
                        etaSeconds=eta, elapsedSeconds=time.perf_counter() - run_start, tokens=self.position.tokens,
                        samplesDrawn=self.sampler.drawn())
                loss_sum.zero_()
                window_start, window_steps = time.perf_counter(), 0
            if training.evalInterval and done % training.evalInterval == 0 and done < training.steps:
                self._eval_and_record()
                window_start = time.perf_counter()
            stop = self.stop.agreed()
            ran = done - start_step
            if stop or done % self.config.checkpoint.interval == 0 or (options.max_steps_this_run and ran >= options.max_steps_this_run):
                if saved_at != done:
                    self.save()
                    saved_at = done
                window_start = time.perf_counter()
            if stop:
                return wiring.EXIT_PREEMPTED.code
            if options.max_steps_this_run and ran >= options.max_steps_this_run and done < training.steps:
                return wiring.EXIT_SUCCESS.code
        self.watchdog.disarm()
        self._eval_and_record()
        if saved_at != self.position.step:
            self.save()
        if self.config.checkpoint.exportWeights:
            self._export()
        if self.metrics:
            self.metrics.record("end", step=self.position.step, finished=1, **_peak_memory(options.gpu))
        return wiring.EXIT_SUCCESS.code

    def _eval_and_record(self) -> None:
        eval_loss = self.evaluate()
        if self.metrics and eval_loss is not None:
            self.metrics.record("eval", step=self.position.step, evalLoss=eval_loss, evalPerplexity=math.exp(min(eval_loss, 80.0)))

    def _export(self) -> None:
        if self.is_rank0:
            checkpoint_weights.export_checkpoint(self.directory, checkpoints.latest_complete(self.directory), self.directory / checkpoints.EXPORT_DIR)
        dist.barrier()

    def _flops_per_token(self) -> float:
        return models.estimate_flops_per_token(self.engine.module, self.config.model,
                                               vocab_size=self.tokenizer.vocab_size, seq_length=self.config.training.seqLength)

    def _loss_scale(self) -> float | None:
        if "fp16" not in self.ds_config or not self.ds_config["fp16"].get("enabled"):
            return None
        scale = getattr(self.engine.optimizer, "cur_scale", None)
        if scale is None:
            scale = getattr(getattr(self.engine.optimizer, "loss_scaler", None), "cur_scale", None)
        return None if scale is None else float(scale)

    def close(self) -> None:
        if self.metrics:
            self.metrics.close()


def _peak_memory(gpu: bool) -> dict[str, float]:
    """This process's peak host memory (and GPU memory), for the `end` metrics line."""
    peak = {"peakRssMb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if gpu:
        peak["peakGpuMemoryGb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return peak


def _grad_norm(module: torch.nn.Module) -> float:
    """The global L2 norm of the gradients (ZeRO 0 in fp32 has no optimizer that reports it)."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _mean_over_ranks(value: torch.Tensor) -> float:
    value = value.detach().clone()
    if dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return float(value)


def run(config: TrainerConfig, options: RunOptions) -> int:
    accelerator.init_distributed(options.gpu)
    options.startup.mark("processGroup")
    try:
        trainer = Trainer(config, options)
        try:
            code = trainer.run()
            trainer.stop.settle()
            return code
        finally:
            trainer.close()
    finally:
        dist.destroy_process_group()
