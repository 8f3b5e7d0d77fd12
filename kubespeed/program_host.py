"""kubespeed's program host: a user's program in the user's image, with kubespeed's wiring around it.

Python's standard library only, nothing of kubespeed: it runs on the image's own
`python3`. An init container from the trainer image copies this file into the pod
(`python -m kubespeed.program_host --install DIR`), and the program container runs

    python3 /opt/kubespeed-host/program_host.py --launcher deepspeed [--module] \\
        [--config-argument=--deepspeed_config] [--deepspeed-monitor] [--total-steps N] -- train.py --epochs 3

with the pod's wiring in its environment (kubespeed/wiring.py). It

1. prepares the DeepSpeed config: KUBESPEED_DEEPSPEED_CONFIG (the ConfigMap's copy of
   spec.program.deepspeedConfig, or a file in the image), with DeepSpeed's CSV monitor
   switched on (--deepspeed-monitor) unless the config sets `csv_monitor`, written to
   /tmp/kubespeed; KUBESPEED_DEEPSPEED_CONFIG then names that copy, and
   `<config argument> <copy>` ends the program's arguments;
2. names the newest complete checkpoint, `<KUBESPEED_CHECKPOINT_DIR>/<tag in latest>`
   (DeepSpeed's own `latest` file), in KUBESPEED_LATEST_CHECKPOINT when there is one;
3. starts one launcher for this pod:
   deepspeed: `python3 -m deepspeed.launcher.runner --hostfile $KUBESPEED_HOSTFILE --no_ssh
              --node_rank $NODE_RANK --master_addr $MASTER_ADDR --master_port $MASTER_PORT prog args`
   torchrun:  `python3 -m torch.distributed.run` with c10d rendezvous at pod 0 and
              --max-restarts $KUBESPEED_MAX_RESTARTS (ranks restart in place)
   none:      the command itself;
4. serves the job's progress on KUBESPEED_METRICS_PORT in the gauges the operator reads
   (kubespeed/metrics.py; a test keeps the names equal): optimizer steps and learning
   rate from DeepSpeed's CSV monitor (which counts samples: steps = samples /
   train_batch_size), and whatever the program appends to KUBESPEED_PROGRESS_FILE as
   JSON lines ({"step": 10, "loss": 2.3, "totalSteps": 100, "tokensPerSecond": 5e4}),
   the newest value of each key winning;
5. on SIGTERM (deletion, preemption, suspend) sends SIGTERM to every rank at once and
   kills the launchers, whose own handling would SIGKILL ranks after a fixed 30 s
   (DeepSpeed's) or restart them (torch elastic); the ranks then have the rest of the
   pod's grace period to save and exit. It reaps every process of the pod (it is their
   subreaper) and exits 143. With launcher none, SIGTERM goes to the command.

Exit codes, for the operator's restartPolicy: 0 (the program succeeded), 64 and 65
(the program's own: a retry cannot help; Python's usage error 2, a bad argument or a
script that is not there, becomes 64), 143 (stopped by SIGTERM), 75 (anything else: a
crashed or killed rank, a failed rendezvous; the gang is recreated).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXIT_SUCCESS, EXIT_CONFIG_ERROR, EXIT_DATA_ERROR, EXIT_PREEMPTED, EXIT_RETRYABLE = 0, 64, 65, 143, 75
PYTHON_USAGE_ERROR = 2
RUN_DIR = "/tmp/kubespeed"
MONITOR_JOB = "kubespeed"
# DeepSpeed's CSV monitor file for the learning rate, written at every optimizer step by global rank 0.
MONITOR_LR_FILE = "Train_Samples_lr.csv"
METRICS_PATH = "/metrics"
PR_SET_CHILD_SUBREAPER = 36
NODE_RANK_DIGITS = 4
STRAGGLER_SECONDS = 10

# The gauges served, as kubespeed.metrics.GAUGES names them: JSON key -> Prometheus name.
GAUGES = {
    "step": "kubespeed_step",
    "totalSteps": "kubespeed_total_steps",
    "loss": "kubespeed_loss",
    "lr": "kubespeed_lr",
    "tokensPerSecond": "kubespeed_tokens_per_second",
    "etaSeconds": "kubespeed_eta_seconds",
    "elapsedSeconds": "kubespeed_elapsed_seconds",
    "checkpointStep": "kubespeed_checkpoint_step",
    "attempt": "kubespeed_attempt",
}
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def env(name: str, default: str = "") -> str:
    return os.environ.get(name) or default


# ---------------------------------------------------------------- the DeepSpeed config

def batch_size(config: dict, world_size: int) -> int | None:
    """Samples per optimizer step, when the config says it in numbers (Hugging Face's "auto" does not)."""
    batch = config.get("train_batch_size")
    if isinstance(batch, int) and not isinstance(batch, bool):
        return batch
    micro, accumulation = config.get("train_micro_batch_size_per_gpu"), config.get("gradient_accumulation_steps", 1)
    if isinstance(micro, int) and isinstance(accumulation, int):
        return micro * accumulation * world_size
    return None


def prepare_config(source: str, monitor: bool, run_dir: str) -> tuple[str, dict]:
    """The config the program gets: `source`'s, with the CSV monitor on when asked and not set; its path and content."""
    with open(source, encoding="utf-8") as handle:
        config = json.load(handle)
    if monitor and "csv_monitor" not in config:
        config["csv_monitor"] = {"enabled": True, "output_path": os.path.join(run_dir, "monitor"), "job_name": MONITOR_JOB}
    path = os.path.join(run_dir, "deepspeed.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)
    return path, config


def monitor_dir(config: dict) -> str | None:
    csv_monitor = config.get("csv_monitor") or {}
    if not csv_monitor.get("enabled") or not csv_monitor.get("output_path"):
        return None
    return os.path.join(csv_monitor["output_path"], csv_monitor.get("job_name") or "DeepSpeedJobName")


def latest_checkpoint(directory: str) -> str | None:
    """`<directory>/<tag>` of DeepSpeed's `latest` file, when it names a folder that exists."""
    try:
        with open(os.path.join(directory, "latest"), encoding="utf-8") as handle:
            tag = handle.read().strip()
    except OSError:
        return None
    path = os.path.join(directory, tag)
    return path if tag and os.path.isdir(path) else None


# ---------------------------------------------------------------- the launcher

def rendezvous_name(master_addr: str, node_rank: int) -> str:
    """torch's c10d numbers nodes by sorting their local_addr: pod 0 first, so global rank 0 is in pod 0."""
    return master_addr if node_rank == 0 else f"{master_addr}~{node_rank:0{NODE_RANK_DIGITS}d}"


def launcher_argv(launcher: str, module: bool, program: list[str], python: str, environ: dict) -> list[str]:
    """The command that starts this pod's ranks (or, for `none`, the program itself)."""
    if launcher == "none":
        return list(program)
    master_addr, master_port = environ["MASTER_ADDR"], environ["MASTER_PORT"]
    node_rank = int(environ["NODE_RANK"])
    if launcher == "deepspeed":
        argv = [python, "-u", "-m", "deepspeed.launcher.runner", "--hostfile", environ["KUBESPEED_HOSTFILE"], "--no_ssh",
                f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={master_port}"]  # fmt: skip
        return argv + (["--module"] if module else []) + list(program)
    timeout = environ.get("KUBESPEED_RENDEZVOUS_TIMEOUT", "600")
    argv = [
        python, "-u", "-m", "torch.distributed.run",
        f"--nnodes={environ['NNODES']}", f"--nproc-per-node={environ['NPROC_PER_NODE']}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint={master_addr}:{master_port}", f"--rdzv-id={environ.get('KUBESPEED_JOB', 'job')}",
        f"--rdzv-conf=is_host={'1' if node_rank == 0 else '0'},join_timeout={timeout},read_timeout={timeout}",
        f"--local-addr={rendezvous_name(master_addr, node_rank)}",
        f"--max-restarts={environ.get('KUBESPEED_MAX_RESTARTS', '0')}", "--monitor-interval=0.5",
    ]  # fmt: skip
    return argv + (["--module"] if module else []) + list(program)


def exit_code(returncode: int, terminated: bool) -> int:
    """Python exits 2 for a usage error (argparse, a script that is not there): like 64, a retry cannot help."""
    if terminated:
        return EXIT_PREEMPTED
    if returncode == PYTHON_USAGE_ERROR:
        return EXIT_CONFIG_ERROR
    if returncode in (EXIT_SUCCESS, EXIT_CONFIG_ERROR, EXIT_DATA_ERROR):
        return returncode
    return EXIT_RETRYABLE


# ---------------------------------------------------------------- processes

def children_by_parent() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8") as handle:
                # The command name (field 2) may hold spaces; the parent pid follows its closing parenthesis.
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(parent, []).append(int(name))
    return tree


def descendants(root: int) -> list[int]:
    tree, found, todo = children_by_parent(), [], [root]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def is_rank(pid: int) -> bool:
    """A rank of DeepSpeed's launcher or torchrun: both put LOCAL_RANK in their ranks' environment."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return any(item.startswith(b"LOCAL_RANK=") for item in handle.read().split(b"\0"))
    except OSError:
        return False


def send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def stop_ranks(host: int) -> None:
    """SIGTERM to every rank at once, SIGKILL to the launchers between this process and them.

    A rank's own workers (data loaders) are left to it: they carry LOCAL_RANK too, so
    a rank is a process with LOCAL_RANK whose parent has none."""
    pids = descendants(host)
    ranks = {pid for pid in pids if is_rank(pid)}
    tree = children_by_parent()
    workers = {child for rank in ranks for child in tree.get(rank, [])}
    for pid in ranks - workers:
        send(pid, signal.SIGTERM)
    for pid in set(pids) - ranks:
        send(pid, signal.SIGKILL)


# ---------------------------------------------------------------- progress

class Progress:
    """What the program has reported so far, read incrementally from the monitor's CSV and the progress file."""

    def __init__(self, monitor: str | None, progress_file: str, samples_per_step: int | None, total_steps: int | None,
                 checkpoint_dir: str, attempt: str) -> None:  # fmt: skip
        self.monitor_file = os.path.join(monitor, MONITOR_LR_FILE) if monitor else None
        self.progress_file = progress_file
        self.samples_per_step = samples_per_step
        self.checkpoint_dir = checkpoint_dir
        self.started = time.time()
        self.values: dict[str, float] = {}
        if total_steps is not None:
            self.values["totalSteps"] = float(total_steps)
        if attempt.isdigit():
            self.values["attempt"] = float(attempt)
        self._offsets: dict[str, int] = {}
        self._first: tuple[float, float] | None = None
        self._lock = threading.Lock()

    def _new_lines(self, path: str | None) -> list[str]:
        if not path:
            return []
        try:
            with open(path, encoding="utf-8") as handle:
                handle.seek(self._offsets.get(path, 0))
                text = handle.read()
        except OSError:
            return []
        complete = text[: text.rfind("\n") + 1]
        self._offsets[path] = self._offsets.get(path, 0) + len(complete.encode("utf-8"))
        return complete.splitlines()

    def _read_monitor(self) -> None:
        for row in csv.reader(self._new_lines(self.monitor_file)):
            try:
                samples, lr = float(row[0]), float(row[1])
            except (IndexError, ValueError):
                continue  # the header
            self.values["lr"] = lr
            if self.samples_per_step:
                self.values["step"] = float(int(samples) // self.samples_per_step)

    def _read_progress_file(self) -> None:
        for line in self._new_lines(self.progress_file):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                for key, value in record.items():
                    if key in GAUGES and isinstance(value, (int, float)) and not isinstance(value, bool):
                        self.values[key] = float(value)

    def _read_checkpoint(self) -> None:
        latest = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        match = _LAST_NUMBER.search(os.path.basename(latest)) if latest else None
        if match:
            self.values["checkpointStep"] = float(match.group(1))

    def read(self) -> dict[str, float]:
        with self._lock:
            self._read_monitor()
            self._read_progress_file()
            self._read_checkpoint()
            now = time.time()
            values = dict(self.values, elapsedSeconds=now - self.started)
            step, total = values.get("step"), values.get("totalSteps")
            if step is not None and self._first is None:
                self._first = (now, step)
            if step is not None and total is not None and self._first and step > self._first[1]:
                rate = (step - self._first[1]) / (now - self._first[0])
                values["etaSeconds"] = max(0.0, total - step) / rate
            return values

    def prometheus(self) -> str:
        values = self.read()
        return "".join(f"# TYPE {name} gauge\n{name} {values.get(key, float('nan'))}\n" for key, name in GAUGES.items())


def serve(progress: Progress, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path != METRICS_PATH:
                self.send_error(404)
                return
            body = progress.prometheus().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("", port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


# ---------------------------------------------------------------- main

def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("program_host: the program follows `--`")
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="program_host", description="Run a user's program with kubespeed's pod wiring.")
    parser.add_argument("--launcher", choices=("deepspeed", "torchrun", "none"), default="deepspeed")
    parser.add_argument("--module", action="store_true")
    parser.add_argument("--config-argument", default="")
    parser.add_argument("--deepspeed-monitor", action="store_true")
    parser.add_argument("--total-steps", type=int)
    args = parser.parse_args(argv[:cut])
    program = argv[cut + 1:]
    if not program:
        parser.error("no program after `--`")
    return args, program


def install(directory: str) -> int:
    target = os.path.join(directory, os.path.basename(__file__))
    shutil.copyfile(__file__, target)
    os.chmod(target, 0o755)
    print(f"program_host: installed {target}")
    return EXIT_SUCCESS


def run(argv: list[str]) -> int:
    args, program = parse_args(argv)
    environ = os.environ
    # The host's files live beside the progress file: the pod's /tmp, or a folder of its own under `kubespeed local`.
    progress_file = env("KUBESPEED_PROGRESS_FILE", os.path.join(RUN_DIR, "progress.jsonl"))
    run_dir = os.path.dirname(progress_file)
    os.makedirs(run_dir, exist_ok=True)
    world_size = int(env("WORLD_SIZE", "1"))
    config: dict = {}
    source = env("KUBESPEED_DEEPSPEED_CONFIG")
    if source:
        path, config = prepare_config(source, args.deepspeed_monitor, run_dir)
        environ["KUBESPEED_DEEPSPEED_CONFIG"] = path
        if args.config_argument:
            program = [*program, args.config_argument, path]
    checkpoint_dir = env("KUBESPEED_CHECKPOINT_DIR")
    latest = latest_checkpoint(checkpoint_dir) if checkpoint_dir else None
    if latest:
        environ["KUBESPEED_LATEST_CHECKPOINT"] = latest
    if args.launcher != "none":
        # One OpenMP thread per CPU in each of NPROC_PER_NODE ranks oversubscribes the CPUs; a value the pod sets wins.
        cpus = len(os.sched_getaffinity(0))
        environ.setdefault("OMP_NUM_THREADS", str(max(1, cpus // int(env("NPROC_PER_NODE", "1")))))
        # Ranks restarted in place get a fresh store rather than the last round's keys (see kubespeed launch).
        environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    progress = Progress(monitor_dir(config), progress_file, batch_size(config, world_size), args.total_steps, checkpoint_dir,
                        env("KUBESPEED_ATTEMPT"))  # fmt: skip
    server = serve(progress, int(env("KUBESPEED_METRICS_PORT", "9400")))
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1)
    argv_ = launcher_argv(args.launcher, args.module, program, sys.executable, dict(environ))
    print(f"program_host: {' '.join(argv_)}", flush=True)
    terminated = threading.Event()
    child: list[subprocess.Popen] = []

    def on_term(signum: int, frame: object) -> None:
        terminated.set()
        if args.launcher != "none":
            stop_ranks(os.getpid())
        elif child:
            send(child[0].pid, signal.SIGTERM)

    # Before the launcher starts: as a container's PID 1, this process would ignore an unhandled SIGTERM.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    child.append(subprocess.Popen(argv_))
    if terminated.is_set():
        on_term(signal.SIGTERM, None)
    returncode = reap(child[0].pid, terminated)
    server.shutdown()
    code = exit_code(returncode, terminated.is_set())
    print(f"program_host: the {args.launcher} launcher exited {returncode}; exiting {code}", flush=True)
    return code


def reap(main: int, terminated: threading.Event) -> int:
    """Wait for the launcher, then for every process left in the pod (orphans come here): the launcher's exit code.

    Stopped by SIGTERM, the ranks take the time they need (the kubelet bounds it by the
    grace period). A launcher that ended by itself leaves nothing worth waiting for:
    what is left gets SIGTERM, and SIGKILL after STRAGGLER_SECONDS."""
    returncode: int | None = None
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == main:
            returncode = os.waitstatus_to_exitcode(status)
            if not terminated.is_set():
                stragglers = descendants(os.getpid())
                for straggler in stragglers:
                    send(straggler, signal.SIGTERM)
                timer = threading.Timer(STRAGGLER_SECONDS, lambda: [send(p, signal.SIGKILL) for p in stragglers])
                timer.daemon = True
                timer.start()
    return returncode if returncode is not None else EXIT_RETRYABLE


def main(argv: list[str]) -> int:
    if argv[:1] == ["--install"]:
        return install(argv[1])
    return run(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
