"""The `kubespeed local` command: parse the job, build its pods, run the gang attempt by attempt, report."""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from kubespeed import checkpoints, metrics, wiring
from kubespeed.ports import free_port
from kubespeed.spec import LMTrainingJobSpec, SpecError, load_job, parse_job_spec
from kubespeed.spec.status import Reason
from kubespeed_cli.local import progress, recovery, rewire, runner, summary
from kubespeed_cli.local.overrides import apply_overrides
from kubespeed_cli.local.plot import plot_loss
from kubespeed_operator.build.children import attempt_pods, job_children
from kubespeed_operator.build.render import FIRST_ATTEMPT, as_submitted
from kubespeed_operator.decide.observed import PodPhase, PodView
from kubespeed_operator.decide.restart import Failure, attempt_failure, reason_line, verdict

INTERRUPTED = 130  # what a shell reports for a command stopped by Ctrl-C


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubespeed local", description="Run an LMTrainingJob on this machine, each pod a local process group.")
    p.add_argument("job", help="an LMTrainingJob manifest (YAML)")
    p.add_argument("--run-dir", type=Path, default=Path("runs"), help="checkpoints, logs and summary go to RUN_DIR/<job>/ (default: ./runs)")
    p.add_argument("--fresh", action="store_true", help="delete RUN_DIR/<job>/ first instead of resuming from its latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="print the trainer's metrics records as lines instead of a progress bar")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a spec field, e.g. --set training.steps=20 (repeatable; the value is YAML)")
    return p


def load_local_job(path: str, overrides: list[str]) -> tuple[dict[str, Any], LMTrainingJobSpec]:
    """The manifest with overrides applied, as `kubespeed render` submits it, and its parsed spec."""
    job = apply_overrides(load_job(path), overrides)
    spec = parse_job_spec(job.get("spec") or {}, path=f"{path}: spec")
    return as_submitted(job, "default"), spec


def manifest_config_maps(path: str, spec: LMTrainingJobSpec) -> list[dict[str, Any]]:
    """The ConfigMaps in the job's manifest file; each one the pod template mounts must be there (this machine has no other)."""
    with open(path, encoding="utf-8") as handle:
        found = [d for d in yaml.safe_load_all(handle) if isinstance(d, dict) and d.get("kind") == "ConfigMap"]
    names = {d["metadata"]["name"] for d in found}
    for index, volume in enumerate(spec.podTemplate.spec.get("volumes") or []):
        wanted = (volume.get("configMap") or {}).get("name")
        if wanted and wanted not in names:
            raise SpecError(f"{path}: spec.podTemplate.spec.volumes[{index}]", f"ConfigMap {wanted!r} must be in the same file to run locally")
    return found


def visible_gpus() -> int:
    """NVIDIA GPUs this machine's driver shows, as far as CUDA_VISIBLE_DEVICES lets ranks see them.

    Read from the driver's /proc entries, so that this process need not load torch;
    the trainer checks its GPUs itself once it runs.
    """
    try:
        present = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return present
    # CUDA stops at the first entry that names no device ("", "-1").
    usable = list(itertools.takewhile(lambda entry: entry.strip() not in ("", "-1"), listed.split(",")))
    return min(present, len(usable))


def main(argv: list[str]) -> int:
    started = time.monotonic()  # the wall time people wait includes loading the job
    args = _parser().parse_args(argv)
    try:
        job, spec = load_local_job(args.job, args.overrides)
        config_maps = manifest_config_maps(args.job, spec)
    except SpecError as err:
        print(f"kubespeed local: {err}", file=sys.stderr)
        return wiring.EXIT_CONFIG_ERROR.code
    folder = rewire.RunFolder(args.run_dir.resolve() / job["metadata"]["name"])
    if args.fresh and folder.root.exists():
        shutil.rmtree(folder.root)
    rewire.write_manifest_config_maps(config_maps, folder)
    try:
        return run_job(job, spec, folder, plain=args.no_progress, job_path=args.job, started=started)
    except KeyboardInterrupt:  # Ctrl-C while loading, before any pod started
        return INTERRUPTED


def run_job(job: dict[str, Any], spec: LMTrainingJobSpec, folder: rewire.RunFolder, *, plain: bool, job_path: str, started: float) -> int:
    name = job["metadata"]["name"]
    clock = progress.StepClock(start_step=resume_step(folder, spec), started=started)
    use_gpu = spec.gpu and visible_gpus() >= spec.procsPerNode
    pods = attempt_pods(job, FIRST_ATTEMPT)
    config_map = next(c for c in job_children(job) if c["kind"] == "ConfigMap")
    rewire.write_config_files(config_map, folder, rewire.shared_mounts(pods[0], spec.checkpoint.mountPath, folder), Path.cwd())
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    print(f"{name}: {spec.nodes} pod(s) x {spec.procsPerNode} rank(s) on the {'GPU' if use_gpu else 'CPU'}; "
          f"checkpoints and logs in {folder.root}", flush=True)

    interrupt = runner.Interrupt()
    previous = {sig: signal.signal(sig, interrupt.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    metrics_file = folder.checkpoints / checkpoints.METRICS_FILE
    logged_before = len(metrics.read_jsonl(metrics_file))
    view = progress.progress_view(name, metrics_file, plain)
    budget = recovery.RetryBudget(folder.checkpoints)
    attempt = FIRST_ATTEMPT
    try:
        while True:
            gang = local_pods(pods, spec, folder, use_gpu)
            watch = recovery.StallWatch(spec.runPolicy.progressDeadlineSeconds, spec.runPolicy.startupTimeoutSeconds)
            result = runner.run_gang(gang, attempt, spec.runPolicy.terminationGracePeriodSeconds, interrupt,
                                     on_tick=lambda port=gang[0].metrics_port, watch=watch: show(port, clock, view, watch))
            if (result.exit_code == 0 and not result.stalled) or result.interrupted:
                break
            failure = attempt_failure([PodView(result.failed_pod or "", result.failed_rank or 0, attempt, phase=PodPhase.FAILED,
                                               exit_code=result.exit_code, message=result.message)], spec.nodes, name)
            if result.stalled:
                failure = Failure("", Reason.PROGRESS_DEADLINE_EXCEEDED, result.stalled)
            decision = verdict(failure, spec.runPolicy, budget.before(), attempt)
            budget.failures += 0 if failure.disruption else 1
            print(f"{name}: {decision.message}", file=sys.stderr)
            if not decision.restart:
                break
            attempt += 1
            pods = attempt_pods(job, attempt)
    finally:
        view.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    if result.interrupted:
        outcome, code = "interrupted", INTERRUPTED
    elif result.stalled:
        outcome, code = f"failed: {result.stalled}", wiring.EXIT_RETRYABLE.code
    elif result.exit_code == 0:
        outcome, code = "succeeded", 0
    else:
        outcome, code = f"failed: {result.failed_pod} exited {result.exit_code}", result.exit_code
    reason = reason_line(result.message) if code and not result.interrupted and not result.stalled else None
    in_place = summary.in_place_restarts(metrics.read_jsonl(metrics_file)[logged_before:])
    records = metrics.read_jsonl(metrics_file) if spec.program is None else program_records(gang[0])
    report(name, outcome, folder, clock, records, restarts=attempt - FIRST_ATTEMPT, in_place_restarts=in_place, reason=reason)
    if result.interrupted:
        print(f"resume with: kubespeed local {job_path}")
    elif code:
        print(f"logs: {folder.logs}", file=sys.stderr)
    return code


def show(metrics_port: int, clock: progress.StepClock, view: progress.LineProgress | progress.BarProgress,
         watch: recovery.StallWatch) -> str | None:
    """One look at rank 0: the progress shown, and why the attempt must end (a stall), if it must."""
    gauges = progress.read_gauges(metrics_port)
    snapshot = progress.snapshot(gauges) if gauges is not None else None
    if snapshot is not None:
        clock.observe(snapshot.step)
    view.update(snapshot)
    return watch.observe(gauges)


def resume_step(folder: rewire.RunFolder, spec: LMTrainingJobSpec) -> int:
    """The step this run resumes from (the latest complete checkpoint), 0 when it starts fresh."""
    if spec.checkpoint.resume == "never":
        return 0
    tag = checkpoints.latest_complete(folder.checkpoints)
    return checkpoints.step_of(tag) if tag else 0


def local_pods(pods: list[dict[str, Any]], spec: LMTrainingJobSpec, folder: rewire.RunFolder, use_gpu: bool) -> list[rewire.LocalPod]:
    """One attempt's pods as local process groups, node rank 0 first; one rendezvous port for the gang."""
    master_port = free_port()
    ordered = sorted(pods, key=lambda p: int(p["metadata"]["labels"][wiring.NODE_RANK_LABEL]))
    return [
        rewire.localize_pod(
            pod,
            rewire.local_mounts(pod, spec.checkpoint.mountPath, folder),
            master_port=master_port,
            metrics_port=free_port(),
            gpu_available=use_gpu,
            folder=folder,
        )
        for pod in ordered
    ]


def sample_command(weights: Path) -> str:
    """The command that generates text from these weights, with the path as short as it can be from here."""
    try:
        shown = weights.relative_to(Path.cwd())
    except ValueError:
        shown = weights
    return f"kubespeed sample {shlex.quote(str(shown))} --tokens 200"


def program_records(rank0: rewire.LocalPod) -> list[dict[str, Any]]:
    """What a program reported in pod 0's progress file (KUBESPEED_PROGRESS_FILE), as the trainer's `train` lines."""
    records = metrics.read_jsonl(rank0.env[wiring.ENV_PROGRESS_FILE]) if wiring.ENV_PROGRESS_FILE in rank0.env else []
    return [{"kind": "train", **record} for record in records if "step" in record]


def report(name: str, outcome: str, folder: rewire.RunFolder, clock: progress.StepClock, records: list[dict[str, Any]],
           restarts: int, in_place_restarts: int, reason: str | None) -> None:  # fmt: skip
    drew = plot_loss(summary.history(records), folder.loss_plot, f"{name}: loss")
    tag = checkpoints.latest_complete(folder.checkpoints)
    export = folder.checkpoints / checkpoints.EXPORT_DIR
    wall_seconds = time.monotonic() - clock.started
    phases = summary.startup(records, started=time.time() - wall_seconds)
    result = summary.build_summary(
        job=name,
        outcome=outcome,
        records=records,
        wall_seconds=wall_seconds,
        # The trainer's own clock when it wrote one: the bar's polling sees the first step late.
        seconds_to_first_step=sum(phases.values()) if phases else clock.seconds_to_first_step,
        startup_seconds=phases,
        steps_per_second=clock.steps_per_second,
        restarts=restarts,
        in_place_restarts=in_place_restarts,
        checkpoint=folder.checkpoints / tag if tag else None,
        export=export if export.is_dir() else None,
        sample_command=sample_command(export if export.is_dir() else folder.checkpoints) if tag else None,
        loss_plot=folder.loss_plot if drew else None,
        reason=reason,
    )
    summary.write_summary(result, folder.summary)
    print(summary.format_summary(result))
