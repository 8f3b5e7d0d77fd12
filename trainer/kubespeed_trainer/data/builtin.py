"""Text the installation itself carries, for `data.train: builtin:<name>`; nothing is downloaded or vendored.

- `builtin:python-docs`: the docstrings of the Python standard library that
  came with this interpreter, read from the modules' source files with `ast`
  (nothing is imported or run). One document per module, in sorted path order:
  the module's dotted name and docstring, then each public class, function and
  method that has a docstring, pydoc style (`name(signature)` and the indented
  docstring). Test suites (`test`, `tests`, `idle_test`) and site-packages are
  left out. The text depends only on the interpreter's version: about
  2 MB (635 modules) on CPython 3.11.

There is deliberately no `builtin:shakespeare`: that text is test data, kept
outside the package.
"""

from __future__ import annotations

import ast
import sys
import sysconfig
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

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
    """Parsed once per process (a few seconds): a learned tokenizer reads the text, then tokenizing reads it again."""
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
