"""Shakespeare-char on the CPU: our full DeepSpeed path against a plain PyTorch loop on the same model and data.

    .venv/bin/python bench/train_shakespeare.py ../shared/data/tinyshakespeare.txt

The recipe is nanoGPT's `train_shakespeare_char` scaled for a CPU, as its README
gives it: 4 layers, 4 heads, 128 embedding, context 64, batch 12, 2000
iterations, AdamW lr 1e-3 (100 warmup steps, cosine decay to 1e-4), beta2 0.99,
weight decay 0.1, dropout 0, gradient clipping 1.0; 90/10 train/validation
split; validation loss over 20 batches. nanoGPT reaches a validation loss of
1.88 there.

Three runs, one after another, each in its own process:
- `plain`: a hand-written PyTorch loop (torch AdamW, LambdaLR, clip_grad_norm_),
  the same model class, seed, batches and schedule;
- `deepspeed_1proc`: `kubespeed train` (DeepSpeed engine, ZeRO 0, metrics,
  checkpoint and export at the end), one process;
- `deepspeed_2ranks_zero2`: `kubespeed launch --nproc-per-node 2` with ZeRO-2, the
  same global batch (micro batch 6 on each rank).

Every process runs torch with `--threads` intra-op threads (default 1, set through
OMP_NUM_THREADS for all three): OpenMP threads that spin-wait make a shared or
busy machine's figures swing by several times, and one thread per process keeps
the comparison between the loops fair.

Each reports tokens_per_s: the median over windows of 100 iterations, the first
window (warm-up) left out, evaluation and checkpointing excluded; the median keeps
a window slowed by other work on the machine from moving the figure. Then val_loss at the last iteration, wall_s (the whole
process, start-up included) and peak_rss_mb (the largest single process, from
wait4). Printed as one JSON line with the throughput ratios to `plain`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from kubespeed.ports import free_port

REPO = Path(__file__).resolve().parents[1]
WARMUP_ITERS_EXCLUDED = 100


def trainer_config(data: Path, iters: int, micro: int, zero: int) -> dict:
    return {
        "model": {"type": "gpt", "size": "mini", "layers": 4, "heads": 4, "embedDim": 128, "dropout": 0.0},
        "data": {"train": str(data), "validationSplit": 0.1, "tokenizer": {"type": "char"}},
        "training": {
            "steps": iters, "globalBatchSize": 12, "microBatchSize": micro, "seqLength": 64, "gradientClipping": 1.0,
            "optimizer": {"type": "adamw", "lr": 1e-3, "beta1": 0.9, "beta2": 0.99, "weightDecay": 0.1},
            "schedule": {"warmupSteps": 100, "decay": "cosine", "minLr": 1e-4},
            "evalInterval": 0, "evalBatches": 20, "logInterval": WARMUP_ITERS_EXCLUDED, "seed": 1337,
        },
        "deepspeed": {"zeroStage": zero, "precision": "fp32"},
        "checkpoint": {"interval": iters, "keep": 1, "exportWeights": True},
    }


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS MB of the largest process in the tree)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024


def deepspeed_run(data: Path, iters: int, ranks: int, zero: int, work: Path, port: int) -> dict:
    micro = 12 // ranks
    config = trainer_config(data, iters, micro, zero)
    if ranks > 1:
        # The same 240 validation sequences as one process evaluates: evalBatches is per rank.
        config["training"]["evalBatches"] = 20 * 12 // (micro * ranks)
    run_dir = work / f"ds{ranks}"
    config_path = work / f"ds{ranks}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    kubespeed = [sys.executable, "-m", "kubespeed_cli"]
    if ranks == 1:
        cmd = [*kubespeed, "train", str(config_path), "--checkpoint-dir", str(run_dir), "--gpu", "false"]
    else:
        cmd = [*kubespeed, "launch", "--nproc-per-node", str(ranks), "--master-port", str(port), "--",
               str(config_path), "--checkpoint-dir", str(run_dir), "--gpu", "false"]
    code, wall, rss = run_measured(cmd, dict(os.environ))
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train" and r["step"] > WARMUP_ITERS_EXCLUDED]
    val = [r["evalLoss"] for r in lines if r["kind"] == "eval"][-1]
    return {"tokens_per_s": round(statistics.median(r["tokensPerSecond"] for r in train), 1), "val_loss": round(val, 4), "wall_s": round(wall, 1), "peak_rss_mb": round(rss, 1)}


def plain_loop(data: Path, iters: int, work: Path) -> dict:
    """The reference: the same model and batches through a loop with no framework around it."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from kubespeed.spec import parse_trainer_config
    from kubespeed_trainer import data as kdata
    from kubespeed_trainer import models
    from kubespeed_trainer.engine import objectives, schedule

    cfg = parse_trainer_config(trainer_config(data, iters, 12, 0))
    prepared = kdata.prepare_dataset(cfg.data, None, work / "plain-data", seq_length=64)
    tokenizer = kdata.prepared_tokenizer(prepared)
    train_set = kdata.TokenDataset(prepared, "train", 64)
    val_set = kdata.TokenDataset(prepared, "validation", 64)
    torch.manual_seed(cfg.training.seed)
    model = models.build_model(cfg.model, vocab_size=tokenizer.vocab_size, seq_length=64)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
    lr = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: schedule.lr_factor(s, peak=1e-3, schedule=cfg.training.schedule, total_steps=iters))
    batches = kdata.batches(train_set, kdata.ResumableSampler(len(train_set), rank=0, world_size=1, seed=cfg.training.seed, micro_batch_size=12))
    window_rates, window_start = [], time.perf_counter()
    for it in range(iters):
        if it and it % WARMUP_ITERS_EXCLUDED == 0:
            now = time.perf_counter()
            if it > WARMUP_ITERS_EXCLUDED:
                window_rates.append(WARMUP_ITERS_EXCLUDED * 12 * 64 / (now - window_start))
            window_start = now
        batch = next(batches)
        inputs, targets = batch["input_ids"][:, :-1], batch["input_ids"][:, 1:]
        loss = objectives.loss(model(inputs), targets, torch.ones_like(targets, dtype=torch.float32))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr.step()
    window_rates.append(WARMUP_ITERS_EXCLUDED * 12 * 64 / (time.perf_counter() - window_start))
    model.eval()
    val_batches = kdata.batches(val_set, kdata.ResumableSampler(len(val_set), rank=0, world_size=1, seed=cfg.training.seed, micro_batch_size=12))
    with torch.no_grad():
        losses = []
        for _ in range(20):
            batch = next(val_batches)
            inputs, targets = batch["input_ids"][:, :-1], batch["input_ids"][:, 1:]
            losses.append(float(objectives.loss(model(inputs), targets, torch.ones_like(targets, dtype=torch.float32))))
    return {"tokens_per_s": round(statistics.median(window_rates), 1), "val_loss": round(sum(losses) / len(losses), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="tinyshakespeare.txt")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    parser.add_argument("--plain-only", type=Path, help=argparse.SUPPRESS)  # internal: the plain loop in its own process
    args = parser.parse_args()
    data = args.data.resolve()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.plain_only:
        print(json.dumps(plain_loop(data, args.iters, args.plain_only)))
        return
    with tempfile.TemporaryDirectory(prefix="kubespeed-bench-") as tmp:
        work = Path(tmp)
        result_file = work / "plain.json"
        cmd = [sys.executable, __file__, str(data), "--iters", str(args.iters), "--threads", str(args.threads), "--plain-only", str(work)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=open(result_file, "w"), cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit("the plain loop failed")
        plain = {**json.loads(result_file.read_text()), "wall_s": round(time.perf_counter() - start, 1),
                 "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
        one = deepspeed_run(data, args.iters, 1, 0, work, 0)
        two = deepspeed_run(data, args.iters, 2, 2, work, free_port())
    print(json.dumps({
        "iters": args.iters,
        "plain": plain,
        "deepspeed_1proc": one,
        "deepspeed_2ranks_zero2": two,
        "throughput_ratio_1proc": round(one["tokens_per_s"] / plain["tokens_per_s"], 3),
        "throughput_ratio_2ranks": round(two["tokens_per_s"] / plain["tokens_per_s"], 3),
    }))




if __name__ == "__main__":
    main()
