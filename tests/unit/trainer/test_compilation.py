"""deepspeed.compile: which models compile, where their kernels are kept, and what a missing toolchain does."""

from __future__ import annotations

import os

import pytest

from kubespeed import checkpoints
from kubespeed.spec import parse_trainer_config
from kubespeed_trainer.engine import compilation


def trainer_config(model: dict, **deepspeed):
    return parse_trainer_config({"model": model, "data": {"train": "builtin:tiny"},
                                 "training": {"globalBatchSize": 4, "microBatchSize": 2}, "deepspeed": deepspeed})


@pytest.mark.parametrize(
    "name, model, deepspeed, compiled",
    [
        ("the built-in gpt when asked", {"type": "gpt", "size": "tiny"}, {"compile": True}, True),
        ("not by default", {"type": "gpt", "size": "tiny"}, {}, False),
        ("an lstm runs eagerly", {"type": "lstm", "size": "tiny"}, {"compile": True}, False),
        ("pipeline stages run eagerly", {"type": "gpt", "size": "tiny"}, {"compile": True, "pipelineStages": 2}, False),
    ],
)
def test_which_configs_compile(name, model, deepspeed, compiled):
    assert compilation.wanted(trainer_config(model, **deepspeed)) is compiled, name


def test_kernels_are_kept_beside_the_checkpoints_unless_the_user_chose_a_place(tmp_path, monkeypatch):
    config = trainer_config({"type": "gpt", "size": "tiny"}, compile=True)
    monkeypatch.delenv(compilation.CACHE_ENV, raising=False)
    compilation.keep_kernels_in(tmp_path, config)
    assert os.environ[compilation.CACHE_ENV] == str(tmp_path / checkpoints.COMPILE_CACHE_DIR)
    monkeypatch.setenv(compilation.CACHE_ENV, "/cache/of/my/choice")
    compilation.keep_kernels_in(tmp_path, config)
    assert os.environ[compilation.CACHE_ENV] == "/cache/of/my/choice"


def test_an_uncompiled_run_leaves_the_cache_setting_alone(tmp_path, monkeypatch):
    monkeypatch.delenv(compilation.CACHE_ENV, raising=False)
    compilation.keep_kernels_in(tmp_path, trainer_config({"type": "gpt", "size": "tiny"}))
    assert compilation.CACHE_ENV not in os.environ


@pytest.mark.parametrize("gpu, missing", [(False, "no C++ compiler on PATH"), (True, "no C compiler (for Triton) on PATH")])
def test_without_a_compiler_the_run_trains_uncompiled_and_says_why(gpu, missing, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    for name in ("CC", "CXX"):
        monkeypatch.delenv(name, raising=False)
    assert compilation.toolchain_problem(gpu) == missing
    # An engine with no compile(): calling it would fail the test.
    assert compilation.compile_engine(object(), trainer_config({"type": "gpt", "size": "tiny"}, compile=True), gpu) is False
    assert f"deepspeed.compile: {missing}; training uncompiled" in capsys.readouterr().err
