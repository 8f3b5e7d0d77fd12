"""Shakespeare-char on the CPU: our full DeepSpeed path against a plain PyTorch loop on the same model and data.

    .venv/bin/python bench/train_shakespeare.py ../shared/data/tinyshakespeare.txt                # torch's default threads
    .venv/bin/python bench/train_shakespeare.py ../shared/data/tinyshakespeare.txt --threads 1
    .venv/bin/python bench/train_shakespeare.py ../shared/data/tinyshakespeare.txt --runs plain,fp32 --rounds 3

The recipe is nanoGPT's `train_shakespeare_char` scaled for a CPU, as its README
gives it: 4 layers, 4 heads, 128 embedding, context 64, batch 12, 2000
iterations, AdamW lr 1e-3 (100 warmup steps, cosine decay to 1e-4), beta2 0.99,
weight decay 0.1, dropout 0, gradient clipping 1.0; 90/10 train/validation
split; validation loss over 20 batches. nanoGPT reaches a validation loss of
1.88 there.

The runs (`--runs`, each in its own process):
- `plain`: a hand-written PyTorch loop (torch AdamW, LambdaLR, clip_grad_norm_),
  the same model class, seed, batches and schedule: the reference, as people
  write it (nanoGPT's loop without its optional compile);
- `fp32`: `kubespeed train` with `deepspeed.precision: fp32`,
  `deepspeed.compile: true` (off by default; a run of 2000 steps repays it) and
  every other engine setting at its default (DeepSpeed engine, ZeRO 0,
  metrics, checkpoint and export at the end), one process;
- `auto`: the same with `precision: auto`, the default, which picks the precision
  for this device (`resolved_precision` says which);
- `bf16`: the same with `precision: bf16` (the CPU's bf16, which `auto` does not
  take on a CPU: this run shows whether it would pay);
- `2ranks`: `kubespeed launch --nproc-per-node 2` with ZeRO-2 in fp32, the same
  global batch (micro batch 6 on each rank).

`--threads N` sets OMP_NUM_THREADS=N for every process; by default it is unset
and torch takes its own default (a thread per core; the `threads` figure is
what the plain loop's torch reported). `--rounds R` repeats the runs R times,
the order of the runs alternating from round to round, so a machine that gets
busier or quieter during the benchmark does not favour one of them.

Each run reports tokens_per_s: the median over windows of 100 iterations, the
first window (warm-up, and compiling for ours) left out, evaluation and
checkpointing excluded; the median keeps a window slowed by other work on the
machine from moving the figure. Then val_loss at the last iteration, wall_s
(the whole process, start-up and compiling included) and peak_rss_mb (the
largest single process, from wait4). Printed as one JSON line: each run's
rounds, the median over rounds, and for each of ours the throughput ratio to
`plain` of the same round (median, min and max over rounds), with the machine's
1-minute load average before and after.
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


def trainer_config(data: Path, iters: int, micro: int, zero: int, precision: str = "fp32") -> dict:
    return {
        "model": {"type": "gpt", "size": "mini", "layers": 4, "heads": 4, "embedDim": 128, "dropout": 0.0},
        "data": {"train": str(data), "validationSplit": 0.1, "tokenizer": {"type": "char"}},
        "training": {
            "steps": iters, "globalBatchSize": 12, "microBatchSize": micro, "seqLength": 64, "gradientClipping": 1.0,
            "optimizer": {"type": "adamw", "lr": 1e-3, "beta1": 0.9, "beta2": 0.99, "weightDecay": 0.1},
            "schedule": {"warmupSteps": 100, "decay": "cosine", "minLr": 1e-4},
            "evalInterval": 0, "evalBatches": 20, "logInterval": WARMUP_ITERS_EXCLUDED, "seed": 1337,
        },
        "deepspeed": {"zeroStage": zero, "precision": precision},
        "checkpoint": {"interval": iters, "keep": 1, "exportWeights": True},
    }


def run_measured(cmd: list[str], env: dict[str, str], stdout=None) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS MB of the largest process in the tree)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=stdout)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024


def deepspeed_run(data: Path, iters: int, ranks: int, precision: str, work: Path) -> dict:
    micro = 12 // ranks
    config = trainer_config(data, iters, micro, zero=0 if ranks == 1 else 2, precision=precision)
    config["deepspeed"]["compile"] = True
    if ranks > 1:
        # The same 240 validation sequences as one process evaluates: evalBatches is per rank.
        config["training"]["evalBatches"] = 20 * 12 // (micro * ranks)
    name = f"ds{ranks}-{precision}"
    run_dir = work / name
    config_path = work / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    kubespeed = [sys.executable, "-m", "kubespeed_cli"]
    if ranks == 1:
        cmd = [*kubespeed, "train", str(config_path), "--checkpoint-dir", str(run_dir), "--gpu", "false"]
    else:
        cmd = [*kubespeed, "launch", "--nproc-per-node", str(ranks), "--master-port", str(free_port()), "--",
               str(config_path), "--checkpoint-dir", str(run_dir), "--gpu", "false"]
    code, wall, rss = run_measured(cmd, dict(os.environ))
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train" and r["step"] > WARMUP_ITERS_EXCLUDED]
    val = [r["evalLoss"] for r in lines if r["kind"] == "eval"][-1]
    resolved = json.loads((run_dir / "deepspeed.json").read_text())
    result = {"tokens_per_s": round(statistics.median(r["tokensPerSecond"] for r in train), 1), "val_loss": round(val, 4),
              "wall_s": round(wall, 1), "peak_rss_mb": round(rss, 1)}
    if precision == "auto":
        result["resolved_precision"] = next((p for p in ("bf16", "fp16") if resolved.get(p, {}).get("enabled")), "fp32")
    return result


def plain_loop(data: Path, iters: int, work: Path) -> dict:
    """The reference: the same model and batches through a loop with no framework around it."""
    import torch

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
    return {"tokens_per_s": round(statistics.median(window_rates), 1), "val_loss": round(sum(losses) / len(losses), 4),
            "threads": torch.get_num_threads()}


def plain_run(data: Path, iters: int, work: Path) -> dict:
    """The plain loop in a process of its own, as each of ours runs in one."""
    result_file = work / "plain.json"
    cmd = [sys.executable, __file__, str(data), "--iters", str(iters), "--plain-only", str(work)]
    with open(result_file, "w") as out:
        code, wall, rss = run_measured(cmd, dict(os.environ), stdout=out)
    if code != 0:
        raise SystemExit("the plain loop failed")
    return {**json.loads(result_file.read_text()), "wall_s": round(wall, 1), "peak_rss_mb": round(rss, 1)}


RUNS = {
    "plain": plain_run,
    "fp32": lambda data, iters, work: deepspeed_run(data, iters, 1, "fp32", work),
    "auto": lambda data, iters, work: deepspeed_run(data, iters, 1, "auto", work),
    "bf16": lambda data, iters, work: deepspeed_run(data, iters, 1, "bf16", work),
    "2ranks": lambda data, iters, work: deepspeed_run(data, iters, 2, "fp32", work),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="tinyshakespeare.txt")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every process (default: torch's own)")
    parser.add_argument("--runs", default="plain,fp32,auto,2ranks", help=f"comma-separated, from {', '.join(RUNS)}")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--plain-only", type=Path, help=argparse.SUPPRESS)  # internal: the plain loop in its own process
    args = parser.parse_args()
    data = args.data.resolve()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.plain_only:
        print(json.dumps(plain_loop(data, args.iters, args.plain_only)))
        return
    names = args.runs.split(",")
    if "plain" not in names or set(names) - set(RUNS):
        parser.error(f"--runs must hold plain and only {', '.join(RUNS)}")
    load_before = os.getloadavg()[0]
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for i in range(args.rounds):
        for name in names if i % 2 == 0 else reversed(names):
            with tempfile.TemporaryDirectory(prefix="kubespeed-bench-") as tmp:
                rounds[name].append(RUNS[name](data, args.iters, Path(tmp)))
    result = {"iters": args.iters, "threads": rounds["plain"][0]["threads"], "rounds": args.rounds,
              "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    for name in names:
        runs = rounds[name]
        result[name] = {"tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs), 1),
                        "val_loss": [r["val_loss"] for r in runs], "wall_s": [r["wall_s"] for r in runs],
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "tokens_per_s_rounds": [r["tokens_per_s"] for r in runs],
                        **({"resolved_precision": runs[0]["resolved_precision"]} if "resolved_precision" in runs[0] else {})}
        if name != "plain":
            ratios = [r["tokens_per_s"] / p["tokens_per_s"] for r, p in zip(runs, rounds["plain"])]
            result[f"throughput_ratio_{name}"] = {"median": round(statistics.median(ratios), 3),
                                                  "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
