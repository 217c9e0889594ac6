"""scripts/answers_by_type.py: empty answers and accuracy per method and question type, from run folders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from training.paths import REPO_ROOT

spec = importlib.util.spec_from_file_location("answers_by_type", REPO_ROOT / "scripts" / "answers_by_type.py")
answers_by_type = importlib.util.module_from_spec(spec)
spec.loader.exec_module(answers_by_type)


def make_run(root: Path, name: str, method: str, rows: list[dict]) -> None:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"method": method}))
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def vqa_row(qtype: str, prediction: str, accuracy: float) -> dict:
    return {
        "question": "q?",
        "question_type": qtype,
        "prediction": prediction,
        "answers": ["x"] * 10,
        "accuracy": accuracy,
    }


def test_counts_empty_answers_and_accuracy_per_type(tmp_path, capsys):
    make_run(
        tmp_path,
        "vqa__prefix__b18k__f1__s0",
        "prefix",
        [
            vqa_row("color", "red", 100.0),
            vqa_row("color", "", 0.0),
            vqa_row("count", "2", 30.0),
        ],
    )
    make_run(tmp_path, "vqa__prefix__b18k__f1__s1", "prefix", [vqa_row("color", "red", 100.0)])
    make_run(tmp_path, "vqa__lora__b18k__f1__s0", "lora", [vqa_row("color", " ", 0.0)])
    make_run(tmp_path, "caption__prefix__b18k__f1__s0", "prefix", [{"image_id": "a", "prediction": ""}])

    assert answers_by_type.main([str(tmp_path), "--match", "vqa__prefix__*"]) == 0
    out = capsys.readouterr().out
    assert "2 runs:" in out and "lora" not in out
    # 3 colour questions over two runs: one empty, mean accuracy 66.7; the counter merges both runs.
    assert "| prefix | color | 3 | 1 | 66.7 | red (2), (empty) (1) |" in out
    assert "| prefix | count | 1 | 0 | 30.0 | 2 (1) |" in out

    assert answers_by_type.main([str(tmp_path)]) == 0  # default: every VQA run; whitespace counts as empty
    assert "| lora | color | 1 | 1 | 0.0 | (empty) (1) |" in capsys.readouterr().out


def test_clear_errors(tmp_path, capsys):
    assert answers_by_type.main([str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert answers_by_type.main([str(tmp_path), "--match", "vqa__*"]) == 2
    assert "no finished run folder" in capsys.readouterr().err
