"""`builtin:python-docs-qa`: prompt/response pairs made from the standard library's own docstrings.

For every public function of a public stdlib module that has a docstring, the
prompt asks what it does and the response is the docstring's first paragraph:

    prompt:   "What does shutil.which(cmd, mode=os.F_OK | os.X_OK, path=None) do?\n"
    response: "Given a command, mode, and a PATH string, return the path which conforms ...\n"

Like `builtin:python-docs` it is read from this interpreter's source files with
`ast` (nothing imported, nothing downloaded or vendored), in sorted path order,
so the same interpreter always yields the same pairs: about 1,400 on CPython 3.11.
It is fine-tuning data for a model pre-trained on `builtin:python-docs`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from kubespeed_trainer.data.builtin import module_name, python_docs_fingerprint, stdlib_dir, stdlib_sources

MAX_RESPONSE_CHARS = 400


def python_docs_qa() -> Iterator[tuple[str, str]]:
    """(prompt, response) per documented public function, in stdlib path order."""
    root = stdlib_dir()
    for path in stdlib_sources(root):
        name = module_name(path.relative_to(root))
        if any(part.startswith("_") for part in name.split(".")):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # the same deliberately broken stdlib files builtin:python-docs skips
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            summary = " ".join(doc.strip().split("\n\n")[0].split())[:MAX_RESPONSE_CHARS]
            yield f"What does {name}.{node.name}({ast.unparse(node.args)}) do?\n", summary + "\n"


def python_docs_qa_fingerprint() -> str:
    return "qa:" + python_docs_fingerprint()
