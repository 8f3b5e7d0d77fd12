"""Shakespeare-char on the CPU: our full DeepSpeed path against a plain PyTorch loop on the same model and data.

    .venv/bin/python bench/train_shakespeare.py ../shared/data/tinyshakespeare.txt                # torch's default threads
    .venv/bin/python bench/train_shakespeare.py ../shared/data/tinyshakespeare.txt --threads 1
    .venv/bin/python bench/train_shakespeare.py ../shared/data/tinyshakespeare.txt --runs plain,fp32 --rounds 3
    .venv/bin/python bench/train_shakespeare.py ../shared/data/tinyshakespeare.txt --runs plain,fp32 --interleave 1

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

`--interleave SECONDS` (e.g. 1.0) cancels that drift within a round instead of
over rounds. A shared VM's speed moves by 10-20% over tens of seconds as its
neighbours come and go, so runs done one after another disagree: the ratio of
single rounds swung from 0.95x to 1.3x. Interleaved, a round starts all its runs
at once, each in a session of its own, and freezes each process tree at once
(SIGSTOP to its process group); then it gives them the machine in turn,
round-robin: it resumes one run's whole tree (SIGCONT), lets it run SECONDS,
freezes it again and resumes the next, until all have exited. Only one run
computes at a time, so each has the whole machine, and a slow minute of the host
falls on every run alike. A descendant that left its run's process group (a
session of its own) is found by walking the tree and signalled by PID. When the
bench ends, normally, on an error, on Ctrl-C or SIGTERM (not SIGKILL), whatever
is left of the runs is continued and terminated by PID. A run's own clocks go on
while it is frozen, so a timeout inside it (gloo's, inductor's 60 s for a probe
process) sees about as many times the time as there are runs.

Each run reports tokens_per_s: the median over windows of 100 iterations, the
first window (warm-up, and compiling for ours) left out, evaluation and
checkpointing (after the last window) excluded; the median keeps a window slowed
by other work on the machine from moving the figure. A window lies between two
records of the time (time.time()) at every 100th iteration and the last: ours
are the `time` of the train records in metrics.jsonl (logInterval 100), the
plain loop's are taken at the same iterations. Its rate is its tokens over the
part of it during which the run was resumed: all of it in a sequential round,
the intervals the bench recorded resuming the run in when interleaved (then each
run also reports `slices`, how often it was resumed, and `active_s`, for how
long). Then val_loss at the last iteration, wall_s (the whole process, start-up
and compiling included, and, interleaved, its frozen time too) and peak_rss_mb
(the largest single process, from wait4). Printed as one JSON line: each run's
rounds, the median over rounds, and for each of ours the throughput ratio to
`plain` of the same round (median, min and max over rounds), with the machine's
1-minute load average before and after and `interleave` (the seconds of a
slice; null for sequential rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from kubespeed.ports import free_port

REPO = Path(__file__).resolve().parents[1]
WINDOW_ITERS = 100  # logInterval: ours and the plain loop record the time every WINDOW_ITERS iterations
TOKENS_PER_ITER = 12 * 64
# How long a freeze may take to land on every process (one in uninterruptible sleep stops when it leaves it).
STOP_WAIT_S = 1.0
# How long a process left at the end has to act on SIGTERM before SIGKILL.
TERM_WAIT_S = 5.0

Interval = tuple[float, float]  # (start, end) in time.time() seconds


def trainer_config(data: Path, iters: int, micro: int, zero: int, precision: str = "fp32") -> dict:
    return {
        "model": {"type": "gpt", "size": "mini", "layers": 4, "heads": 4, "embedDim": 128, "dropout": 0.0},
        "data": {"train": str(data), "validationSplit": 0.1, "tokenizer": {"type": "char"}},
        "training": {
            "steps": iters, "globalBatchSize": 12, "microBatchSize": micro, "seqLength": 64, "gradientClipping": 1.0,
            "optimizer": {"type": "adamw", "lr": 1e-3, "beta1": 0.9, "beta2": 0.99, "weightDecay": 0.1},
            "schedule": {"warmupSteps": 100, "decay": "cosine", "minLr": 1e-4},
            "evalInterval": 0, "evalBatches": 20, "logInterval": WINDOW_ITERS, "seed": 1337,
        },
        "deepspeed": {"zeroStage": zero, "precision": precision},
        "checkpoint": {"interval": iters, "keep": 1, "exportWeights": True},
    }


# ------------------------------------------------------------ throughput from records and active time

def active_seconds(start: float, end: float, active: list[Interval]) -> float:
    """How much of [start, end] falls inside the intervals during which the run was resumed."""
    return sum(max(0.0, min(end, stop) - max(start, resumed)) for resumed, stop in active)


def window_rates(records: list[tuple[int, float]], active: list[Interval]) -> list[float]:
    """Tokens per second of each window between consecutive (iteration, time) records, over its active part.

    The first record comes after the first window (warm-up, and compiling for ours),
    which so stays out; so does whatever follows the last record (evaluation, checkpoint).
    """
    return [(it_end - it_start) * TOKENS_PER_ITER / active_seconds(t_start, t_end, active)
            for (it_start, t_start), (it_end, t_end) in zip(records, records[1:])]


# ------------------------------------------------------------ the runs

@dataclass
class Launch:
    """A run ready to start: its command, the file its stdout goes to (None: ours), and how to read its figures."""
    name: str
    cmd: list[str]
    stdout: Path | None
    figures: Callable[[list[Interval]], dict]  # the intervals the run was resumed in -> its figures


def deepspeed_launch(data: Path, iters: int, ranks: int, precision: str, work: Path) -> Launch:
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
    return Launch(name, cmd, None, lambda active: deepspeed_figures(run_dir, precision, active))


def deepspeed_figures(run_dir: Path, precision: str, active: list[Interval]) -> dict:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [(r["step"], r["time"]) for r in lines if r["kind"] == "train"]
    val = [r["evalLoss"] for r in lines if r["kind"] == "eval"][-1]
    result = {"tokens_per_s": round(statistics.median(window_rates(records, active)), 1), "val_loss": round(val, 4)}
    if precision == "auto":
        resolved = json.loads((run_dir / "deepspeed.json").read_text())
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
    records = []  # (iterations done, time.time()), where ours writes a train record
    for it in range(1, iters + 1):
        batch = next(batches)
        inputs, targets = batch["input_ids"][:, :-1], batch["input_ids"][:, 1:]
        loss = objectives.loss(model(inputs), targets, torch.ones_like(targets, dtype=torch.float32))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr.step()
        if it % WINDOW_ITERS == 0 or it == iters:
            records.append((it, time.time()))
    model.eval()
    val_batches = kdata.batches(val_set, kdata.ResumableSampler(len(val_set), rank=0, world_size=1, seed=cfg.training.seed, micro_batch_size=12))
    with torch.no_grad():
        losses = []
        for _ in range(20):
            batch = next(val_batches)
            inputs, targets = batch["input_ids"][:, :-1], batch["input_ids"][:, 1:]
            losses.append(float(objectives.loss(model(inputs), targets, torch.ones_like(targets, dtype=torch.float32))))
    return {"records": records, "val_loss": round(sum(losses) / len(losses), 4), "threads": torch.get_num_threads()}


def plain_launch(data: Path, iters: int, work: Path) -> Launch:
    """The plain loop in a process of its own, as each of ours runs in one."""
    result_file = work / "plain.json"
    cmd = [sys.executable, __file__, str(data), "--iters", str(iters), "--plain-only", str(work)]
    return Launch("plain", cmd, result_file, lambda active: plain_figures(result_file, active))


def plain_figures(result_file: Path, active: list[Interval]) -> dict:
    loop = json.loads(result_file.read_text())
    return {"tokens_per_s": round(statistics.median(window_rates(loop["records"], active)), 1),
            "val_loss": loop["val_loss"], "threads": loop["threads"]}


RUNS: dict[str, Callable[[Path, int, Path], Launch]] = {
    "plain": plain_launch,
    "fp32": lambda data, iters, work: deepspeed_launch(data, iters, 1, "fp32", work),
    "auto": lambda data, iters, work: deepspeed_launch(data, iters, 1, "auto", work),
    "bf16": lambda data, iters, work: deepspeed_launch(data, iters, 1, "bf16", work),
    "2ranks": lambda data, iters, work: deepspeed_launch(data, iters, 2, "fp32", work),
}


# ------------------------------------------------------------ running them

@dataclass
class Measured:
    """How a run's process went: wall seconds, peak RSS of its largest process, when it had the CPU."""
    wall_s: float
    peak_rss_mb: float
    active: list[Interval]


def reap(launch: Launch, proc: subprocess.Popen) -> float:
    """Wait for the run's leader to exit; its peak RSS in MB (the largest process in the tree it waited for)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{launch.name}: {' '.join(launch.cmd)} exited {proc.returncode}")
    return usage.ru_maxrss / 1024


def run_alone(launch: Launch) -> Measured:
    """A sequential run: it has the machine, shared with no other run, from its start to its exit."""
    with open(launch.stdout, "w") if launch.stdout else contextlib.nullcontext() as out:
        began, start = time.perf_counter(), time.time()
        proc = subprocess.Popen(launch.cmd, env=dict(os.environ), cwd=REPO, stdout=out)
        rss = reap(launch, proc)
    return Measured(time.perf_counter() - began, rss, [(start, time.time())])


class SlicedRun:
    """One run's process tree, which the controller resumes and freezes in turn.

    The run starts in a session of its own, so that one signal to its process group
    reaches every process in it at once, as a shell's job control does. Its processes
    are looked up again at each signal, since they come and go (kubespeed launch's
    forkserver and ranks, the compiler's workers): the group's members, and each
    descendant of a process seen before, so that one that moved to a session of its
    own (torch elastic's `subprocess` start method puts each rank in one) is
    signalled by PID, and one whose parent exited is still found.
    """

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self.out = open(launch.stdout, "w") if launch.stdout else None
        self.began = time.perf_counter()
        self.proc = subprocess.Popen(launch.cmd, env=dict(os.environ), cwd=REPO, stdout=self.out, start_new_session=True)
        self.pgid = self.proc.pid
        self.exited: int | None = os.pidfd_open(self.proc.pid)  # readable once the leader has exited
        self.known = {psutil.Process(self.proc.pid)}
        self.active: list[Interval] = []
        self.measured: Measured | None = None

    def members(self) -> set[psutil.Process]:
        """The run's live processes (zombies included), outsiders to its process group too."""
        children: dict[int, list[psutil.Process]] = {}
        group = set()
        for process in psutil.process_iter(["ppid"]):  # one pass over /proc
            children.setdefault(process.info["ppid"], []).append(process)
            if _process_group(process) == self.pgid:
                group.add(process)
        found, todo = set(), [p for p in self.known | group if p.is_running()]
        while todo:
            process = todo.pop()
            if process not in found:
                found.add(process)
                todo += children.get(process.pid, [])
        self.known = found
        return found

    def send(self, sig: int) -> set[psutil.Process]:
        """Send sig to every process of the run: the group at once, then each outsider by PID; the processes.

        Walks again until it finds no outsider it has not signalled: one may have
        forked while its parent was still running.
        """
        signalled: set[psutil.Process] = set()
        while True:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, sig)
            members = self.members()
            outsiders = {p for p in members if _process_group(p) != self.pgid} - signalled
            if not outsiders:
                return members
            for process in outsiders:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(sig)
            signalled |= outsiders

    def freeze(self) -> None:
        """Stop every process of the run, and wait (up to STOP_WAIT_S) until each has stopped."""
        members = self.send(signal.SIGSTOP)
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline and not all(_stopped(p) for p in members):
            time.sleep(0.001)

    def run_for(self, seconds: float) -> bool:
        """Resume the run for `seconds`, or until its leader exits; whether it has exited."""
        resumed = time.time()
        self.send(signal.SIGCONT)
        exited = bool(select.select([self.exited], [], [], seconds)[0])
        if exited:
            self.active.append((resumed, time.time()))
            rss = reap(self.launch, self.proc)
            self.measured = Measured(time.perf_counter() - self.began, rss, self.active)
            self.end()
            return True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGSTOP)  # the group stops now; freeze() then stops any outsider too
        self.active.append((resumed, time.time()))
        self.freeze()
        return False

    def end(self) -> None:
        """Leave nothing behind: continue every process of the run (a stopped one acts on no signal
        but SIGKILL) and terminate it by PID; kill what is still there TERM_WAIT_S later. Again
        until none is left, since a process may fork before its SIGTERM lands."""
        if self.exited is None:
            return
        sig = signal.SIGTERM
        while left := {p for p in self.members() if not _gone(p)}:
            self.send(signal.SIGCONT)
            for process in left:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(sig)
            _wait_gone(left, TERM_WAIT_S)
            sig = signal.SIGKILL
        if self.proc.returncode is None:
            _, status = os.waitpid(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self.out:
            self.out.close()
        os.close(self.exited)
        self.exited = None


def _process_group(process: psutil.Process) -> int | None:
    with contextlib.suppress(ProcessLookupError):
        return os.getpgid(process.pid)
    return None


def _stopped(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return process.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)
    return True


def _wait_gone(processes: set[psutil.Process], seconds: float) -> None:
    """Wait up to `seconds` for the processes to go. A zombie counts as gone: it runs no more, and
    whoever is its parent now reaps it (psutil.wait_procs would wait for that)."""
    deadline = time.monotonic() + seconds
    while any(not _gone(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.01)


def _gone(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return process.status() == psutil.STATUS_ZOMBIE
    return True


def run_interleaved(launches: list[Launch], seconds: float) -> list[Measured]:
    """Start every run frozen, then give each the machine for `seconds` in turn until all have exited."""
    runs: list[SlicedRun] = []
    try:
        for launch in launches:
            runs.append(SlicedRun(launch))
            runs[-1].freeze()
        pending = list(runs)
        while pending:
            pending = [run for run in pending if not run.run_for(seconds)]
        return [run.measured for run in runs]
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave a run stopped.
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        for run in runs:
            run.end()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def round_figures(launch: Launch, measured: Measured, interleaved: bool) -> dict:
    result = {**launch.figures(measured.active), "wall_s": round(measured.wall_s, 1), "peak_rss_mb": round(measured.peak_rss_mb, 1)}
    if interleaved:
        result |= {"slices": len(measured.active), "active_s": round(sum(end - start for start, end in measured.active), 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="tinyshakespeare.txt")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every process (default: torch's own)")
    parser.add_argument("--runs", default="plain,fp32,auto,2ranks", help=f"comma-separated, from {', '.join(RUNS)}")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--interleave", type=float, metavar="SECONDS",
                        help="run a round's runs at once, each resumed for SECONDS in turn (default: one after another)")
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
    if args.interleave is not None and args.interleave <= 0:
        parser.error("--interleave takes a positive number of seconds")
    if args.interleave:
        # SIGTERM, like Ctrl-C, unwinds through run_interleaved's cleanup rather than leave its runs stopped.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_before = os.getloadavg()[0]
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for i in range(args.rounds):
        order = names if i % 2 == 0 else names[::-1]
        with tempfile.TemporaryDirectory(prefix="kubespeed-bench-") as tmp:
            launches = []
            for name in order:
                work = Path(tmp) / name
                work.mkdir()
                launches.append(RUNS[name](data, args.iters, work))
            if args.interleave:
                measured = run_interleaved(launches, args.interleave)
            else:
                measured = [run_alone(launch) for launch in launches]
            for name, launch, run in zip(order, launches, measured):
                rounds[name].append(round_figures(launch, run, args.interleave is not None))
    result = {"iters": args.iters, "threads": rounds["plain"][0]["threads"], "rounds": args.rounds, "interleave": args.interleave,
              "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    for name in names:
        runs = rounds[name]
        result[name] = {"tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs), 1),
                        "val_loss": [r["val_loss"] for r in runs], "wall_s": [r["wall_s"] for r in runs],
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "tokens_per_s_rounds": [r["tokens_per_s"] for r in runs],
                        **({"resolved_precision": runs[0]["resolved_precision"]} if "resolved_precision" in runs[0] else {}),
                        **({key: [r[key] for r in runs] for key in ("slices", "active_s")} if args.interleave else {})}
        if name != "plain":
            ratios = [r["tokens_per_s"] / p["tokens_per_s"] for r, p in zip(runs, rounds["plain"])]
            result[f"throughput_ratio_{name}"] = {"median": round(statistics.median(ratios), 3),
                                                  "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
