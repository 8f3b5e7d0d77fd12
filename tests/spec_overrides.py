"""One way for tests to write a spec with a few fields changed: `overridden(base, a__b=v)`.

`a__b=v` sets `a.b` to `v` (creating `a` if needed), `a__b=DROP` removes `a.b`; the
base is never changed, and values are copied so tables can share them.
"""

from __future__ import annotations

import copy
from typing import Any

DROP = object()


def overridden(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = spec
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        if value is DROP:
            node.pop(leaf, None)
        else:
            node[leaf] = copy.deepcopy(value)
    return spec
