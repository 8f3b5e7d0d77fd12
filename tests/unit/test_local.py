"""`kubespeed local`: overrides, the local rewiring of the operator's pods, the gang of
process groups, progress parsing, and the summary and plot of a run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubespeed import program_host, wiring
from kubespeed_cli.local import command, progress, recovery, rewire, runner, summary
from kubespeed_cli.local.overrides import apply_overrides
from kubespeed_cli.local.plot import plot_loss
from kubespeed_operator.build.children import attempt_pods
from kubespeed.metrics import read_jsonl
from kubespeed.ports import free_port
from kubespeed.spec import SpecError, load_job, parse_job_spec

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
# The trainer image the chart names for jobs; the examples must name the same one.
EXAMPLE_IMAGE = yaml.safe_load((REPO / "charts" / "kubespeed" / "values.yaml").read_text())["trainer"]["image"]
JOB = {
    "apiVersion": f"{wiring.API_GROUP}/{wiring.API_VERSION}",
    "kind": wiring.KIND,
    "metadata": {"name": "demo"},
    "spec": {"image": "trainer:1", "nodes": 2, "procsPerNode": 2, "data": {"train": "builtin:tiny"}, "checkpoint": {"volumeClaim": {}}},
}


def write_job(tmp_path: Path, job: dict = JOB) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


# ---------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "name, overrides, where, value",
    [
        ("number", ["training.steps=20"], ("training", "steps"), 20),
        ("creates missing sections", ["checkpoint.interval=5"], ("checkpoint", "interval"), 5),
        ("boolean", ["gpu=false"], ("gpu",), False),
        ("object as YAML", ["model={type: lstm}"], ("model",), {"type": "lstm"}),
        ("string with equals sign", ["data.train=a=b.txt"], ("data", "train"), "a=b.txt"),
        ("later wins", ["nodes=3", "nodes=1"], ("nodes",), 1),
    ],
)
def test_override_sets_the_field_inside_spec(name, overrides, where, value):
    spec = apply_overrides(JOB, overrides)["spec"]
    for key in where:
        spec = spec[key]
    assert spec == value, name
    assert JOB["spec"]["nodes"] == 2, "the manifest itself is not changed"


@pytest.mark.parametrize("text", ["training.steps", "=3", "training..steps=3", "nodes.count=3"])
def test_bad_override_is_refused_naming_it(text):
    with pytest.raises(SpecError) as err:
        apply_overrides(JOB, [text])
    assert text in str(err.value)


def test_override_of_unknown_field_is_refused_naming_file_and_field(tmp_path):
    path = write_job(tmp_path)
    with pytest.raises(SpecError) as err:
        command.load_local_job(str(path), ["training.stpes=3"])
    assert str(path) in str(err.value) and "training.stpes" in str(err.value)


def test_bad_job_exits_with_the_config_error_code(tmp_path, capsys):
    path = write_job(tmp_path, {**JOB, "spec": {**JOB["spec"], "nodes": 0}})
    assert command.main([str(path), "--run-dir", str(tmp_path / "runs")]) == wiring.EXIT_CONFIG_ERROR.code
    err = capsys.readouterr().err
    assert str(path) in err and "spec.nodes" in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- rewiring


def local_pods(tmp_path: Path, gpu: bool = False) -> tuple[list[rewire.LocalPod], rewire.RunFolder]:
    from kubespeed_operator.build.children import attempt_pods

    job, spec = command.load_local_job(str(write_job(tmp_path)), [])
    folder = rewire.RunFolder(tmp_path / "runs" / "demo")
    return command.local_pods(attempt_pods(job, 1), spec, folder, gpu), folder


def test_local_pods_meet_at_127_0_0_1_on_one_free_port(tmp_path):
    pods, _ = local_pods(tmp_path)
    assert [p.name for p in pods] == ["demo-0", "demo-1"]
    assert {p.env[wiring.ENV_MASTER_ADDR] for p in pods} == {"127.0.0.1"}
    assert len({p.env[wiring.ENV_MASTER_PORT] for p in pods}) == 1
    ports = [p.metrics_port for p in pods]
    assert len(set(ports)) == 2 and [int(p.env[wiring.ENV_METRICS_PORT]) for p in pods] == ports


def test_local_pods_keep_the_builders_gang_env(tmp_path):
    pods, _ = local_pods(tmp_path)
    assert [p.env[wiring.ENV_NODE_RANK] for p in pods] == ["0", "1"]
    for pod in pods:
        assert (pod.env[wiring.ENV_NNODES], pod.env[wiring.ENV_NPROC_PER_NODE], pod.env[wiring.ENV_WORLD_SIZE]) == ("2", "2", "4")
        assert pod.env[wiring.ENV_JOB_NAME] == "demo" and pod.env[wiring.ENV_ATTEMPT] == "1"


def test_pod_paths_become_the_run_folder(tmp_path):
    pods, folder = local_pods(tmp_path)
    for pod in pods:
        assert pod.env[wiring.ENV_TRAINER_CONFIG] == str(folder.config / wiring.TRAINER_CONFIG_KEY)
        assert pod.env[wiring.ENV_DEEPSPEED_CONFIG] == str(folder.config / wiring.DEEPSPEED_CONFIG_KEY)
        assert pod.env[wiring.ENV_HOSTFILE] == str(folder.config / wiring.HOSTFILE_KEY)
        assert pod.env[wiring.ENV_CHECKPOINT_DIR] == str(folder.checkpoints), "all pods share one checkpoint folder"
        assert pod.cwd == folder.pod_dir(pod.name) / "workspace", "scratch volumes are per pod"
        assert pod.log == folder.logs / f"{pod.name}.log"
        assert pod.env[wiring.ENV_TERMINATION_LOG] == str(pod.termination_log) == str(folder.pod_dir(pod.name) / "termination-log")


@pytest.mark.parametrize("gpu, want", [(False, "0"), (True, "1")])
def test_gpu_job_uses_the_gpu_only_when_there_is_one(tmp_path, gpu, want):
    pods, _ = local_pods(tmp_path, gpu=gpu)
    assert {p.env[wiring.ENV_USE_GPU] for p in pods} == {want}


def test_pod_command_runs_with_this_python(tmp_path):
    pods, _ = local_pods(tmp_path)
    assert pods[0].argv == [sys.executable, "-m", "kubespeed_cli", *wiring.TRAINER_ENTRYPOINT[1:]]


@pytest.mark.parametrize(
    "claim, where",
    [
        ("pretrain-checkpoints", Path("pretrain/checkpoints")),
        ("shared-data", Path("claims/shared-data")),
    ],
)
def test_a_claim_is_a_folder_beside_the_runs(tmp_path, claim, where):
    assert rewire.claim_dir(tmp_path, claim) == tmp_path / where


def test_config_files_are_written_as_the_kubelet_projects_them(tmp_path):
    from kubespeed_operator.build.children import job_children

    job, _ = command.load_local_job(str(write_job(tmp_path)), [])
    config_map = next(c for c in job_children(job) if c["kind"] == "ConfigMap")
    folder = rewire.RunFolder(tmp_path / "demo")
    rewire.write_config_files(config_map, folder, {}, tmp_path)
    assert (folder.config / wiring.HOSTFILE_KEY).read_text() == config_map["data"][wiring.HOSTFILE_KEY]
    assert sorted(p.name for p in folder.config.iterdir()) == sorted(config_map["data"])


FINETUNE = {**JOB, "spec": {**JOB["spec"], "data": {"train": "builtin:tiny", "claimName": "pretrain-checkpoints"}}}


@pytest.mark.parametrize(
    "name, field, value, want",
    [
        ("builtin data stays builtin", ("data", "train"), "builtin:python-docs", "builtin:python-docs"),
        ("relative path is from where kubespeed local runs", ("data", "train"), "corpus/a.txt", "{cwd}/corpus/a.txt"),
        ("path in a claim is the claim's folder", ("training", "initFrom"), "/data/export", "{runs}/pretrain/checkpoints/export"),
        ("path in the checkpoint volume is the run's checkpoints", ("model", "path"), "/checkpoints/export", "{runs}/demo/checkpoints/export"),
        ("path in a pod's scratch volume is left alone", ("data", "validation"), "/tmp/val.txt", "/tmp/val.txt"),
        ("other absolute path is left alone", ("data", "tokenizer", "path"), "/srv/tok", "/srv/tok"),
    ],
)
def test_trainer_config_paths_are_the_ones_this_machine_sees(tmp_path, name, field, value, want):
    from kubespeed_operator.build.children import attempt_pods

    job, spec = command.load_local_job(str(write_job(tmp_path, FINETUNE)), [])
    folder = rewire.RunFolder(tmp_path / "runs" / "demo")
    shared = rewire.shared_mounts(attempt_pods(job, 1)[0], spec.checkpoint.mountPath, folder)
    config = {"data": {"train": "builtin:tiny", "tokenizer": {}}, "model": {}, "training": {}}
    node = config
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    local = yaml.safe_load(rewire.localize_trainer_config(yaml.safe_dump(config), shared, tmp_path / "cwd"))
    for key in field:
        local = local[key]
    assert local == want.format(cwd=tmp_path / "cwd", runs=tmp_path / "runs"), name


@pytest.mark.parametrize("field", rewire.PATH_FIELDS, ids=".".join)
def test_every_path_field_is_a_trainer_config_field(field):
    import dataclasses
    import typing

    from kubespeed.spec.job import TrainerConfig

    cls = TrainerConfig
    for key in field:
        hints = typing.get_type_hints(cls)
        assert key in {f.name for f in dataclasses.fields(cls)}, field
        cls = typing.get_args(hints[key])[0] if typing.get_args(hints[key]) else hints[key]


# ---------------------------------------------------------------- process groups


def sleeper_pod(tmp_path: Path, name: str, script: str) -> rewire.LocalPod:
    return rewire.LocalPod(name=name, argv=[sys.executable, "-c", script], env={}, cwd=tmp_path / name,
                           log=tmp_path / "logs" / f"{name}.log", metrics_port=0)


# A pod whose command starts a child (like the launcher starts ranks) and writes the child's pid.
PARENT_AND_CHILD = (
    "import subprocess, sys, time, pathlib;"
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
    "pathlib.Path('child.pid').write_text(str(c.pid)); time.sleep(60)"
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[1].split()[0] != "Z"


def wait_for(path: Path) -> int:
    for _ in range(200):
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_a_failing_pod_stops_the_whole_gang_and_its_children(tmp_path):
    pods = [sleeper_pod(tmp_path, "demo-0", PARENT_AND_CHILD), sleeper_pod(tmp_path, "demo-1", "import sys, time; time.sleep(1); sys.exit(75)")]
    result = runner.run_gang(pods, 1, 5, runner.Interrupt(), on_tick=lambda: None)
    assert (result.exit_code, result.failed_pod, result.interrupted) == (75, "demo-1", False)
    assert not alive(wait_for(tmp_path / "demo-0" / "child.pid"))
    assert "attempt 1" in (tmp_path / "logs" / "demo-1.log").read_text()


@pytest.mark.parametrize(
    "name, script, message",
    [
        ("the launcher's line in the termination log",
         "import os, sys; open(os.environ['LOG'], 'w').write('rank 0: spec.data: data source x does not exist'); sys.exit(65)",
         "rank 0: spec.data: data source x does not exist"),
        ("an empty termination log falls back to the end of the pod's log",
         "import sys; print('loading'); print('RuntimeError: boom', file=sys.stderr); sys.exit(1)", "RuntimeError: boom"),
    ],
)
def test_a_failed_pod_says_why_as_the_kubelet_would(tmp_path, name, script, message):
    pod = dataclasses.replace(sleeper_pod(tmp_path, "demo-0", script), termination_log=tmp_path / "demo-0" / "termination-log")
    pod = dataclasses.replace(pod, env={**os.environ, "LOG": str(pod.termination_log)})
    result = runner.run_gang([pod], 1, 5, runner.Interrupt(), on_tick=lambda: None)
    assert result.message is not None and result.message.rstrip().endswith(message), name


def test_a_run_that_never_stepped_reports_why_instead_of_empty_losses():
    s = summary.build_summary(job="demo", outcome="failed: demo-0 exited 65", records=[], wall_seconds=20.0,
                              seconds_to_first_step=None, startup_seconds=None, steps_per_second=None, restarts=0, in_place_restarts=0, checkpoint=None,
                              export=None, sample_command=None, loss_plot=None, reason="rank 0: spec.data: data source x does not exist")
    assert summary.format_summary(s).splitlines() == [
        "demo: failed: demo-0 exited 65 before the first step",
        "  reason          rank 0: spec.data: data source x does not exist",
        "  wall time       0:20",
    ]


def test_an_interrupt_sends_sigterm_to_each_pod_group(tmp_path):
    trap = "import signal, sys, time, pathlib; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); pathlib.Path('up').write_text('1'); time.sleep(60)"
    pods = [sleeper_pod(tmp_path, "demo-0", trap)]
    interrupt = runner.Interrupt()

    def tick() -> None:
        if (tmp_path / "demo-0" / "up").exists():
            interrupt.handle(signal.SIGINT, None)

    result = runner.run_gang(pods, 1, 5, interrupt, on_tick=tick)
    assert (result.exit_code, result.interrupted) == (wiring.EXIT_PREEMPTED.code, True)


def test_exit_code_reads_a_signal_as_128_plus_it():
    assert [runner.exit_code(c) for c in (0, 75, -9, -15)] == [0, 75, 137, 143]


def test_a_stall_the_tick_reports_stops_the_gang_though_its_pods_ignore_sigterm(tmp_path):
    # As a gang stuck in a collective would: SIGTERM cannot make it checkpoint, so it is killed.
    stubborn = "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); pathlib.Path('up').write_text('1'); time.sleep(600)"
    result = runner.run_gang([sleeper_pod(tmp_path, "demo-0", stubborn)], 1, 600, runner.Interrupt(),
                             on_tick=lambda: "step 5 is silent" if (tmp_path / "demo-0" / "up").exists() else None)
    assert (result.stalled, result.interrupted, result.exit_code) == ("step 5 is silent", False, 137)


# ---------------------------------------------------------------- recovery


STARTUP = 100
GAVE_UP = "did not bring it back within 100s more"


@pytest.mark.parametrize(
    "name, gauges_over_time, want",
    [
        ("a moving step", [(0, {"step": 1}), (50, {"step": 2}), (100, {"step": 3}), (150, {"step": 4})], None),
        ("silent past the deadline and a start's bound", [(0, {"step": 1}), (60, {"step": 1}), (161, None)], GAVE_UP),
        ("the ranks' start-up is not silence", [(0, None), (1000, {}), (2000, {"totalSteps": 9})], None),
        ("an in-place restart is not silence until the new run's first step",
         [(0, {"step": 1}), (50, {"inPlaceRestarts": 1}), (1000, {"inPlaceRestarts": 1}), (1100, {"step": 0, "inPlaceRestarts": 1})], None),
        ("a restarted run that freezes again", [(0, {"step": 1}), (50, {"inPlaceRestarts": 1}),
                                                (60, {"step": 2, "inPlaceRestarts": 1}), (221, None)], GAVE_UP),
    ],
)
def test_the_stall_watch_ends_an_attempt_whose_step_stays_silent(name, gauges_over_time, want, capsys):
    watch = recovery.StallWatch(60, STARTUP)
    verdicts = [watch.observe(gauges, now=now) for now, gauges in gauges_over_time]
    assert all(v is None for v in verdicts[:-1]), name
    assert (verdicts[-1] is None) if want is None else (want in verdicts[-1]), (name, verdicts)


def test_the_stall_watch_reports_a_stall_once_and_is_off_without_a_deadline(capsys):
    watch = recovery.StallWatch(60, STARTUP)
    for now in (0, 61, 70, 80):
        watch.observe({"step": 7}, now=now)
    assert capsys.readouterr().out.count("stalled: step 7 has not advanced for 61s") == 1
    assert recovery.StallWatch(None, STARTUP).observe({"step": 7}, now=0) is None
    assert recovery.StallWatch(None, STARTUP).observe(None, now=10**6) is None


def complete_checkpoint(folder: Path, step: int) -> None:
    from kubespeed import checkpoints

    (folder / checkpoints.tag_for(step)).mkdir(parents=True)
    (folder / checkpoints.tag_for(step) / checkpoints.COMPLETE_MARKER).write_text("{}")
    (folder / checkpoints.LATEST_FILE).write_text(checkpoints.tag_for(step))


def test_the_retry_budget_counts_failures_in_a_row_until_a_newer_checkpoint(tmp_path):
    complete_checkpoint(tmp_path, 10)
    budget = recovery.RetryBudget(tmp_path)
    seen = []
    for newer in (None, 20, None, None):
        if newer:
            complete_checkpoint(tmp_path, newer)
        seen.append(budget.before())
        budget.failures += 1
    assert seen == [0, 0, 1, 2]


def test_in_place_restarts_are_counted_from_the_trainers_start_records(capsys):
    records = [{"kind": "start", "step": 0, "inPlaceRestarts": 0}, {"kind": "train", "step": 1},
               {"kind": "start", "step": 0, "inPlaceRestarts": 1}, {"kind": "start", "step": 0, "inPlaceRestarts": 2}]
    assert summary.in_place_restarts(records) == 2
    assert progress.format_record(records[2]) == "the ranks were restarted in place (1 in this attempt)"
    assert progress.format_record(records[0]) is None


# ---------------------------------------------------------------- progress


def test_progress_reads_the_trainers_gauges():
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    for name, value in [("kubespeed_step", 40), ("kubespeed_total_steps", 200), ("kubespeed_loss", 2.5),
                        ("kubespeed_tokens_per_second", 1234.0), ("kubespeed_eta_seconds", 75)]:
        Gauge(name, name, registry=registry).set(value)
    snapshot = progress.parse_metrics(generate_latest(registry).decode())
    assert snapshot == progress.Snapshot(step=40, total=200, loss=2.5, tokens_per_second=1234.0, eta_seconds=75)
    assert progress.describe(snapshot) == "step 40/200  loss 2.5000  1,234 tok/s  eta 1:15"


def test_progress_is_nothing_before_the_first_step_count():
    assert progress.parse_metrics("# HELP python_info x\n") is None
    assert progress.scrape(free_port()) is None


def test_step_clock_counts_from_where_a_resumed_run_starts():
    clock = progress.StepClock(start_step=50, started=100.0)
    for step, now in [(50, 101.0), (50, 104.0), (51, 105.0), (55, 107.0), (61, 110.0), (61, 111.0)]:
        clock.observe(step, now)
    assert clock.seconds_to_first_step == 5.0
    assert clock.steps_per_second == 2.0


def test_plain_progress_prints_each_new_record_once_skipping_earlier_runs(tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"kind": "train", "step": 5, "totalSteps": 20, "loss": 9.0}) + "\n")
    view = progress.LineProgress(metrics)
    records = [
        {"kind": "resume", "step": 5},
        {"kind": "train", "step": 10, "totalSteps": 20, "loss": 2.5, "tokensPerSecond": 1234.0, "etaSeconds": 75},
        {"kind": "eval", "step": 10, "evalLoss": 2.25, "evalPerplexity": 9.49},
        {"kind": "checkpoint", "step": 10, "checkpointStep": 10},
        {"kind": "end", "step": 20, "finished": 1},
    ]
    with metrics.open("a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records[:2]) + '{"kind": "ev')  # a line half written
        fh.flush()
        view.update(None)
        fh.write(json.dumps(records[2])[len('{"kind": "ev'):] + "\n" + "".join(json.dumps(r) + "\n" for r in records[3:]))
    view.update(None)
    view.close()
    assert capsys.readouterr().out.splitlines() == [
        "resumed from the checkpoint at step 5",
        "step 10/20  loss 2.5000  1,234 tok/s  eta 1:15",
        "step 10  eval loss 2.2500  perplexity 9.49",
        "step 10  checkpoint written",
    ]


# ---------------------------------------------------------------- summary and plot


def synthetic_metrics(path: Path) -> None:
    lines = [{"kind": "train", "step": s, "loss": 4.0 - s / 10} for s in range(10, 40, 10)]
    lines.append({"kind": "eval", "step": 30, "evalLoss": 3.2, "evalPerplexity": 24.53})
    lines += [{"kind": "train", "step": s, "loss": 3.0 - s / 100} for s in (30, 40)]  # a resumed run logs step 30 again
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_summary_follows_the_run_the_weights_came_from(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    synthetic_metrics(metrics)
    records = read_jsonl(metrics)
    assert [r["step"] for r in summary.history(records)] == [10, 20, 30, 40]
    s = summary.build_summary(job="demo", outcome="succeeded", records=records, wall_seconds=12.345,
                              seconds_to_first_step=3.21, startup_seconds={"launch": 1.0, "firstStep": 2.21},
                              steps_per_second=2.5, restarts=1, in_place_restarts=2, checkpoint=None, export=None,
                              sample_command=None, loss_plot=None)
    assert (s["step"], s["first_loss"], s["final_loss"], s["eval_loss"]) == (40, 3.0, 2.6, 3.2)
    assert s["eval_perplexity"] == 24.53
    summary.write_summary(s, tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text()) == s
    text = summary.format_summary(s)
    assert "3.0000 -> 2.6000" in text and "gang restarts   1" in text and "in place        2 restarts of the ranks" in text
    assert "start-up (s)    launch 1.0, first step 2.2" in text


def test_startup_is_the_runs_first_attempt_from_launch_to_first_step():
    seconds = {"imports": 2.5, "processGroup": 0.25, "data": 1.0, "engine": 0.75, "firstStep": 0.5}
    records = [
        {"kind": "startup", "time": 90.0, "processStart": 85.0, "seconds": seconds},  # an earlier run of the job
        {"kind": "train", "time": 104.0, "step": 10, "loss": 3.0},
        {"kind": "startup", "time": 106.0, "processStart": 101.0, "seconds": seconds},
        {"kind": "startup", "time": 130.0, "processStart": 125.0, "seconds": seconds},  # after a gang restart
    ]
    assert summary.startup(records, started=100.0) == {"launch": 1.0, **seconds}
    assert summary.startup(records[:2], started=100.0) is None


def test_loss_plot_is_a_png(tmp_path):
    synthetic_metrics(tmp_path / "metrics.jsonl")
    png = tmp_path / "loss.png"
    assert plot_loss(summary.history(read_jsonl(tmp_path / "metrics.jsonl")), png, "demo")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_loss([], tmp_path / "none.png", "empty") and not (tmp_path / "none.png").exists()


# ---------------------------------------------------------------- examples


def test_there_are_examples():
    assert {p.stem for p in EXAMPLES} >= {"quickstart", "llama-tiny", "lstm", "denoising-pretrain", "finetune", "deepspeed-program", "hf-trainer"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_a_valid_job_with_data_on_a_fresh_machine(path):
    job = load_job(str(path))
    spec = parse_job_spec(job["spec"])
    if spec.program is None:
        assert spec.data.train.startswith("builtin:"), "examples need no download"
    else:
        # A program's files come in the same manifest, which `kubespeed local` reads too.
        assert command.manifest_config_maps(str(path), spec), "the program's script travels with the example"
    assert spec.image == EXAMPLE_IMAGE


def test_a_program_script_in_a_config_map_of_the_manifest_is_where_the_local_pod_runs_it(tmp_path):
    path = REPO / "manifests" / "examples" / "deepspeed-program.yaml"
    job, spec = command.load_local_job(str(path), [])
    folder = rewire.RunFolder(tmp_path / job["metadata"]["name"])
    rewire.write_manifest_config_maps(command.manifest_config_maps(str(path), spec), folder)
    (pod,) = attempt_pods(job, 1)
    local = rewire.localize_pod(pod, rewire.local_mounts(pod, spec.checkpoint.mountPath, folder), master_port=1, metrics_port=2,
                                gpu_available=False, folder=folder)  # fmt: skip
    script = Path(local.argv[local.argv.index("--") + 1])
    assert script == folder.config_map("regression-script") / "train.py" and "deepspeed.initialize" in script.read_text()
    assert local.argv[1] == program_host.__file__
    assert Path(local.env[wiring.ENV_PROGRESS_FILE]).is_relative_to(folder.pod_dir(pod["metadata"]["name"]))
    assert Path(local.env[wiring.ENV_DEEPSPEED_CONFIG]) == folder.config / wiring.DEEPSPEED_CONFIG_KEY


def test_a_config_map_the_template_mounts_must_come_with_the_manifest_to_run_locally(tmp_path):
    manifest = tmp_path / "job.yaml"
    example = (REPO / "manifests" / "examples" / "deepspeed-program.yaml").read_text()
    manifest.write_text(example.split("---\n", 1)[1])
    job, spec = command.load_local_job(str(manifest), [])
    with pytest.raises(SpecError) as err:
        command.manifest_config_maps(str(manifest), spec)
    assert err.value.path.endswith("spec.podTemplate.spec.volumes[0]") and "regression-script" in str(err.value)


def test_a_program_argument_that_exists_here_stays_even_under_a_folder_the_pod_mounts(tmp_path):
    # The pod mounts an emptyDir at /tmp, and a clone under /tmp holds the program's own file.
    here = tmp_path / "program.py"
    here.write_text("")
    local_tmp = tmp_path / "pod-tmp"
    mounts = {str(tmp_path): local_tmp, "/data": tmp_path / "data"}
    assert rewire._program_argument(str(here), mounts) == str(here)
    assert rewire._program_argument(f"{tmp_path}/written-by-the-job", mounts) == str(local_tmp / "written-by-the-job")
    assert rewire._program_argument("/data/corpus.txt", mounts) == str(tmp_path / "data" / "corpus.txt")
    assert rewire._program_argument("--steps", mounts) == "--steps"
