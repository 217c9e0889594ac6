"""What do VQA runs answer, per question type? Issue #13: do tuned prompt and prefix tuning answer every question
type with something other than an empty string?

    .venv/bin/python scripts/answers_by_type.py runs/sweeps/paper/runs --match 'vqa__prompt__*' 'vqa__prefix__*'

Reads each matching run folder's `predictions.jsonl` (the test outputs its scores come from) and prints, per
method and question type: how many test questions, how many were answered with an empty string, the accuracy
and the three most common answers, over all matching runs together. Plain JSON lines only; nothing is trained.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.run.runs import CONFIG, PREDICTIONS, read_json, read_jsonl  # noqa: E402


def read_run(run_dir: Path) -> tuple[str, list[dict]]:
    """(method, prediction records) of one run folder; method from its config.json ("?" if unreadable)."""
    config = read_json(run_dir / CONFIG) or {}
    return str(config.get("method", "?")), read_jsonl(run_dir / PREDICTIONS)


def tally(runs: list[tuple[str, list[dict]]]) -> dict[tuple[str, str], dict]:
    """Per (method, question type): questions, empty answers, summed accuracy and an answer counter."""
    cells: dict[tuple[str, str], dict] = {}
    for method, rows in runs:
        for row in rows:
            if "question" not in row:  # a caption run
                continue
            cell = cells.setdefault(
                (method, row.get("question_type") or "-"),
                {"questions": 0, "empty": 0, "accuracy": 0.0, "answers": collections.Counter()},
            )
            answer = str(row.get("prediction") or "").strip()
            cell["questions"] += 1
            cell["empty"] += answer == ""
            cell["accuracy"] += float(row.get("accuracy") or 0.0)
            cell["answers"][answer or "(empty)"] += 1
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path, help="folder holding run folders (e.g. runs/sweeps/paper/runs)")
    parser.add_argument("--match", nargs="+", default=["vqa__*"], help="run folder name patterns (shell style)")
    args = parser.parse_args(argv)
    if not args.runs_dir.is_dir():
        print(f"{args.runs_dir} is not a folder; give the folder that holds the run folders.", file=sys.stderr)
        return 2
    folders = sorted(
        d
        for d in args.runs_dir.iterdir()
        if d.is_dir() and any(fnmatch.fnmatch(d.name, p) for p in args.match) and (d / PREDICTIONS).is_file()
    )
    if not folders:
        print(f"no finished run folder in {args.runs_dir} matches {' '.join(args.match)}.", file=sys.stderr)
        return 2
    cells = tally([read_run(d) for d in folders])
    print(f"{len(folders)} runs: {', '.join(d.name for d in folders)}\n")
    print("| method | question type | questions | empty answers | accuracy % | most common answers |")
    print("|---|---|---|---|---|---|")
    for (method, qtype), cell in sorted(cells.items()):
        common = ", ".join(f"{a} ({n})" for a, n in cell["answers"].most_common(3))
        accuracy = cell["accuracy"] / cell["questions"]  # records hold percent
        print(f"| {method} | {qtype} | {cell['questions']} | {cell['empty']} | {accuracy:.1f} | {common} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
