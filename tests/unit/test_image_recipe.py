"""The images' recipe keys (cli/kubespeed_cli/dev/image.py): each target's key changes with what
building that target reads, and with nothing else, so an edit to the trainer stages does not make
CI rebuild the operator image, nor the reverse."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kubespeed_cli.dev import image as images

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    for name in ("Dockerfile", *images.IMAGE_INPUTS):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


EDITS = [
    # (what is edited, old text, new text, changed keys)
    ("Dockerfile", 'RUN pip install ".[trainer]"', 'RUN pip install --verbose ".[trainer]"', {"trainer"}),
    ("Dockerfile", "ARG TRAINER_PYTHON=python3.12", "ARG TRAINER_PYTHON=python3.13", {"trainer"}),
    ("Dockerfile", "ARG TRAINER_BASE=nvidia/cuda:13.0.2-base-ubuntu24.04", "ARG TRAINER_BASE=nvidia/cuda:13.0.3-base-ubuntu24.04", {"trainer"}),
    ("Dockerfile", "USER 65532:65532", "USER 65533:65533", {"operator"}),
    ("Dockerfile", "ARG PYTHON_BASE=python:3.11-slim-bookworm", "ARG PYTHON_BASE=python:3.11-slim-trixie", {"operator"}),
    ("Dockerfile", "# ---------------------------------------------------------------- trainer", "# the trainer", set()),
    ("Dockerfile", "--no-install-recommends ${TRAINER_PYTHON} ${TRAINER_PYTHON}-dev g++ \\",
     "--no-install-recommends ${TRAINER_PYTHON} ${TRAINER_PYTHON}-dev g++   \\", set()),  # fmt: skip
    ("pyproject.toml", '"deepspeed==0.19.8"', '"deepspeed==0.19.9"', {"operator", "trainer"}),
    (".dockerignore", "!cli/", "!cli/\n!docs/", {"operator", "trainer"}),
]


@pytest.mark.parametrize(
    "name, old, new, changed",
    EDITS,
    ids=["trainer-stage-step", "trainer-python", "trainer-base-default", "operator-stage-step", "operator-base-default",
         "a-comment", "whitespace", "a-pin", "the-context-filter"],
)  # fmt: skip
def test_a_recipe_key_changes_with_what_its_target_is_built_from(checkout: Path, name: str, old: str, new: str, changed: set[str]) -> None:
    before = {target: images.recipe_key(target, checkout) for target in images.STAGES}
    path = checkout / name
    assert path.read_text().count(old) == 1, f"{old!r} is not once in {name}"
    path.write_text(path.read_text().replace(old, new))
    after = {target: images.recipe_key(target, checkout) for target in images.STAGES}
    assert {target for target in images.STAGES if before[target] != after[target]} == changed


def test_each_target_recipe_holds_its_own_stages_and_the_global_args_they_use() -> None:
    text = (REPO / "Dockerfile").read_text()
    operator = images.dockerfile_recipe(text, images.STAGES["operator"])
    trainer = images.dockerfile_recipe(text, images.STAGES["trainer"])
    assert "AS operator-build" in operator and "AS operator\n" in operator and "TRAINER" not in operator and "AS trainer" not in operator
    assert "AS trainer-build" in trainer and "ARG TRAINER_BASE=" in trainer and "PYTHON_BASE" not in trainer
    assert "#" not in operator + trainer
