"""One catalog of methods: every part of the program reads training/catalog.py, and no other list exists."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from training.catalog import CATALOG, MAIN_METRIC, METHOD_NAMES, PEFT_METHODS, TASKS
from training.paths import REPO_ROOT

SOURCE_FOLDERS = ("app", "training", "tests")
# In the tests a literal naming a few methods picks a scenario (a sweep of LoRA and prompt tuning); one naming
# this many enumerates the methods, which only the catalog (through tests/method_table.py) may do.
TEST_ENUMERATION = 5


def literal_method_lists() -> list[str]:
    """Every list, tuple, set or dict literal in the program's source naming two or more methods, or mapping the
    tasks to their metrics, outside the catalog itself."""
    found = []
    names, metrics = set(METHOD_NAMES), set(MAIN_METRIC.values())
    for folder in SOURCE_FOLDERS:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            if path in (REPO_ROOT / "training" / "catalog.py", Path(__file__)):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Dict):
                    items = [k for k in node.keys if k is not None]
                    values = node.values
                elif isinstance(node, ast.List | ast.Tuple | ast.Set):
                    items, values = node.elts, []
                else:
                    continue
                strings = {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
                value_strings = {v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)}
                enough = TEST_ENUMERATION if path.is_relative_to(REPO_ROOT / "tests") else 2
                if len(strings & names) >= enough or (strings >= set(TASKS) and value_strings & metrics):
                    found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    return found


def test_no_list_of_methods_exists_outside_the_catalog():
    """In the program and in the tests alike: the tests read the catalog through tests/method_table.py."""
    assert literal_method_lists() == [], "read training/catalog.py instead of listing methods or task metrics here"


def test_the_registry_implements_exactly_the_catalog():
    from training.methods import METHODS
    from training.methods.peft_layers import PeftLayersMethod

    assert set(METHODS) == set(METHOD_NAMES)
    for name, cls in METHODS.items():
        info = CATALOG[name]
        assert (cls.family, cls.knob, cls.summary) == (info.family, info.knob, info.summary)
        if info.default_lr is not None:
            assert cls.default_lr == info.default_lr
        # Only methods whose weights live in peft's tuner layers can be exported in peft's format.
        assert info.peft_format == issubclass(cls, PeftLayersMethod), name


def test_every_entry_is_complete():
    for name, info in CATALOG.items():
        assert info.name == name and info.label and info.summary and info.colour.startswith("#")
        assert info.takes_budget == (info.knob is not None), name
    assert len({info.colour for info in CATALOG.values()}) == len(CATALOG), "two methods share a colour"


def test_the_paper_sweep_names_every_method_of_the_catalog():
    spec = yaml.safe_load((REPO_ROOT / "sweeps" / "paper.yaml").read_text())
    assert sorted(spec["methods"]) == sorted(METHOD_NAMES)


def test_the_app_and_the_report_read_the_catalog():
    from app.figures import METHOD_COLORS
    from app.format import METHOD_LABELS, TASK_LABELS
    from app.tabs.train import METHOD_ORDER
    from training.study import report

    assert METHOD_LABELS == {n: i.label for n, i in CATALOG.items()}
    assert METHOD_COLORS == {n: i.colour for n, i in CATALOG.items()}
    assert sorted(METHOD_ORDER) == sorted(METHOD_NAMES)
    assert set(TASK_LABELS) == set(TASKS)
    assert report.PEFT_METHODS == PEFT_METHODS and report.COLORS == METHOD_COLORS


def test_a_method_without_a_catalog_entry_cannot_register():
    import pytest

    from training.methods.base import Method, register

    class Unlisted(Method):
        name = "unlisted"

    with pytest.raises(ValueError, match="no entry in training/catalog.py"):
        register(Unlisted)


def test_the_scanner_finds_a_list_of_methods(tmp_path, monkeypatch):
    """The guard itself: a module with its own method list is reported."""
    import sys

    me = sys.modules[__name__]
    fake_root = tmp_path
    (fake_root / "app").mkdir()
    (fake_root / "training").mkdir()
    source = 'ORDER = ("lora", "prompt")\nMETRIC = {"caption": "CIDEr-D", "vqa": "accuracy"}\n'
    (fake_root / "app" / "x.py").write_text(source)
    monkeypatch.setattr(me, "REPO_ROOT", fake_root)
    assert me.literal_method_lists() == ["app/x.py:1", "app/x.py:2"]
