"""Imports sit at the top of a module; one inside a function says why (docs/architecture.md#layers).

A function-level import is for a heavy or optional dependency on a path that must stay light (`python -m
training --help`, the jobs CLI), never a way round the layers. Its reason is a comment at the end of its line,
or on the line above it; a comment above a run of consecutive imports covers the whole run.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "training")
# Directives for tools, not reasons.
DIRECTIVES = ("noqa", "type:", "pragma", "fmt:")


def _reasons(source: str) -> dict[int, str]:
    """Line number -> the comment on that line, stripped of tool directives ('' when only a directive)."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            found[token.start[0]] = "" if text.startswith(DIRECTIVES) else text
    return found


def _import_runs(function: ast.AST) -> list[list[ast.stmt]]:
    """The runs of consecutive import statements in every statement list inside `function`."""
    runs = []
    for node in ast.walk(function):
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if not isinstance(statements, list):
                continue
            run: list[ast.stmt] = []
            for statement in [*statements, None]:
                if isinstance(statement, (ast.Import, ast.ImportFrom)):
                    run.append(statement)
                    continue
                if run:
                    runs.append(run)
                run = []
    return runs


def unexplained_imports(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """'file:line: the import' (relative to `root`) for each function-level import in `path` without a reason."""
    source = path.read_text(encoding="utf-8")
    comments = _reasons(source)
    lines = source.splitlines()
    missing = []
    functions = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    seen: set[int] = set()  # a nested function's imports are found from its outer function too
    for function in functions:
        for run in _import_runs(function):
            covered, previous_end = False, 0
            for statement in run:
                above = statement.lineno - 1
                if lines[above - 1].strip().startswith("#"):  # a comment line opens a block of imports
                    covered = bool(comments.get(above))
                elif above != previous_end:  # code or a blank line between: the block has ended
                    covered = False
                previous_end = statement.end_lineno
                inline = any(comments.get(n) for n in range(statement.lineno, statement.end_lineno + 1))
                if statement.lineno in seen:
                    continue
                seen.add(statement.lineno)
                if not (covered or inline):
                    where = path.relative_to(root)
                    missing.append(f"{where}:{statement.lineno}: {lines[statement.lineno - 1].strip()}")
    return missing


def test_every_function_level_import_says_why_it_is_not_at_the_top():
    files = sorted(f for package in PACKAGES for f in (REPO_ROOT / package).rglob("*.py"))
    assert len(files) > 100  # the walk found the packages
    missing = [line for path in files for line in unexplained_imports(path)]
    assert not missing, (
        "Move these imports to the top of their module, or say in a comment why they cannot be there "
        "(a heavy or optional dependency on a light path):\n" + "\n".join(missing)
    )


def test_the_guard_names_an_import_without_a_reason_and_accepts_one_with(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def bare():\n"
        "    import json\n"
        "\n"
        "\n"
        "def directive_only():\n"
        "    import csv  # noqa: F401\n"
        "\n"
        "\n"
        "def explained():\n"
        "    import torch  # torch: --help must not load it\n"
        "    # optional dependency: only on clusters\n"
        "    import ray\n"
        "    from ray import util\n"
        "    x = 1\n"
        "    import math\n",
        encoding="utf-8",
    )
    assert unexplained_imports(sample, root=tmp_path) == [
        "sample.py:2: import json",
        "sample.py:6: import csv  # noqa: F401",
        "sample.py:15: import math",
    ]
