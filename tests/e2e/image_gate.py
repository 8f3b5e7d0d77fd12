"""When the image tests build and run an image: only when its recipe changed since it was last proven.

Building costs minutes (timed in README). Each image's recipe key (its Dockerfile stages,
pyproject.toml, .dockerignore, the base, the build arguments; kubespeed_cli.dev.image) is
committed, once its tests passed, in `tests/e2e/<target>-image.proven`. While the key is
the same the tests skip, naming the key, in every clone and on every machine, CI's
included; when it changes they run (in CI too) and, once they pass, write the new key,
to be committed with the change. KUBESPEED_IMAGE_TESTS=always runs them regardless.
Where podman or mmdebstrap is missing they skip saying so, except under CI (CI set),
where they fail: a changed recipe is never left unproven in CI.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kubespeed_cli.dev import image as images

ALWAYS_ENV = "KUBESPEED_IMAGE_TESTS"


class ImageGate:
    def __init__(self, target: str) -> None:
        self.target = target
        self.proven = Path(__file__).with_name(f"{target}-image.proven")

    def key(self) -> str:
        return images.recipe_key(self.target)

    def proven_key(self) -> str | None:
        return self.proven.read_text().split()[0] if self.proven.exists() else None

    def built(self) -> images.Built:
        """The image, built (or reused) when its recipe is unproven; else the test skips."""
        key = self.key()
        if self.proven_key() == key and os.environ.get(ALWAYS_ENV) != "always":
            pytest.skip(f"{self.target} image recipe {key} (the Dockerfile's {self.target} stages, pyproject.toml, "
                        f".dockerignore, base, build arguments) unchanged since it was built and proven "
                        f"({self.proven.name}: {self.proven.read_text().strip()}); {ALWAYS_ENV}=always runs it")  # fmt: skip
        absent = images.missing_tools()
        if absent:
            message = f"{', '.join(absent)} not installed, so the {self.target} image is neither built nor run here"
            if os.environ.get("CI"):
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        return images.ensure_image(self.target)

    def record(self, built: images.Built) -> None:
        """The recipe is proven: its key, to be committed."""
        self.proven.write_text(f"{self.key()} {time.strftime('%Y-%m-%d')} ({built.image_bytes} bytes)\n")
