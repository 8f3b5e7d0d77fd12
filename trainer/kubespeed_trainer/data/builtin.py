"""Text the installation itself carries, for `data.train: builtin:<name>`; nothing is downloaded or vendored.

- `builtin:python-docs`: the docstrings of the Python standard library that
  came with this interpreter, read from the modules' source files with `ast`
  (nothing is imported or run). One document per module, in sorted path order:
  the module's dotted name and docstring, then each public class, function and
  method that has a docstring, pydoc style (`name(signature)` and the indented
  docstring). Test suites (`test`, `tests`, `idle_test`) and site-packages are
  left out. The text depends only on the interpreter's version: about
  2 MB (635 modules) on CPython 3.11. Parsing the standard library takes
  seconds, so the text is kept in the user's cache directory
  ($XDG_CACHE_HOME/kubespeed, else ~/.cache/kubespeed), keyed by the
  interpreter and by this module's source, and a later run reads it from there.

There is deliberately no `builtin:shakespeare`: that text is test data, kept
outside the package.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from kubespeed import checkpoints

SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def python_docs_fingerprint() -> str:
    """Identifies the text without reading it: the same interpreter build always yields the same docs."""
    return f"python-docs:{sys.version}:{stdlib_dir()}"


def stdlib_sources(root: Path) -> list[Path]:
    top_level = set(sys.stdlib_module_names)
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0].removesuffix(".py") not in top_level or SKIPPED_DIRS.intersection(rel.parts[:-1]):
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_docs(modules: set[str] | None = None) -> Iterator[str]:
    """One pydoc-style document per stdlib module; `modules` narrows it to those dotted names."""
    for name, document in _all_python_docs():
        if modules is None or name in modules:
            yield document


@lru_cache(maxsize=1)
def _all_python_docs() -> tuple[tuple[str, str], ...]:
    """Read once per process (a learned tokenizer reads the text, then tokenizing reads it again), parsed once per machine."""
    cache = _cache_file()
    try:
        return tuple((name, document) for name, document in json.loads(cache.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    documents = _parse_python_docs()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        checkpoints.write_atomically(cache, json.dumps(documents))
    except OSError:
        pass  # a read-only home: parse again next time
    return documents


def _cache_file() -> Path:
    """Named by the interpreter and by this file's source, so a new Python or a change to the rendering misses it."""
    renderer = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    key = hashlib.sha256(f"{python_docs_fingerprint()}\0{renderer}".encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kubespeed" / f"python-docs-{key}.json"


def _parse_python_docs() -> tuple[tuple[str, str], ...]:
    root = stdlib_dir()
    documents = []
    for path in stdlib_sources(root):
        name = module_name(path.relative_to(root))
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are deliberately broken or not UTF-8 (lib2to3 fixtures)
        document = _render_module(name, tree)
        if document:
            documents.append((name, document))
    return tuple(documents)


def _render_module(name: str, tree: ast.Module) -> str:
    sections = []
    doc = ast.get_docstring(tree)
    if doc:
        sections.append(f"{name}\n{'=' * len(name)}\n\n{doc}\n")
    sections += _render_body(tree.body, prefix="")
    if not sections:
        return ""
    if not doc:
        sections.insert(0, f"{name}\n{'=' * len(name)}\n")
    return "\n".join(sections)


def _render_body(body: list[ast.stmt], prefix: str) -> list[str]:
    out = []
    for node in body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if node.name.startswith("_") and node.name != "__init__":
            continue
        doc = ast.get_docstring(node)
        if isinstance(node, ast.ClassDef):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            header = f"class {prefix}{node.name}" + (f"({bases})" if bases else "")
        else:
            header = f"{prefix}{node.name}({ast.unparse(node.args)})"
        if doc:
            out.append(header + "\n" + "".join(f"    {line}\n" if line else "\n" for line in doc.splitlines()))
        if isinstance(node, ast.ClassDef):
            out += _render_body(node.body, prefix=f"{prefix}{node.name}.")
    return out


BUILTINS = {"python-docs": (python_docs, python_docs_fingerprint)}
