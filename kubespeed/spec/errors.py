"""The one error a spec or config refusal raises."""

from __future__ import annotations


class SpecError(ValueError):
    """A spec value is wrong; `path` names the field (e.g. `spec.training.steps`)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message
