"""Does fine-tuning beat zero-shot captioning? Issue #13, part 5, measured on the validation split only.

    .venv/bin/python scripts/headroom.py --model assets/scene-blip --method full --lr 1e-4 3e-4 --epochs 1
    .venv/bin/python scripts/headroom.py --table

Each run trains on 100 % of the caption data with the project's trainer into RUNS/<model>/<name>, is scored
on the validation split (`training.pretraining.embedded.score_on_validation`) and appends a row to RUNS/headroom.jsonl.
A run whose row is already there is skipped, so the script resumes. The trainer's own end-of-run test
evaluation is cut to one example (eval_limit) and never read: the test split steers nothing here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.paths import REPO_ROOT  # noqa: E402
from training.pretraining.embedded import VALIDATION, score_on_validation  # noqa: E402
from training.run import runs  # noqa: E402
from training.run.config import RunConfig  # noqa: E402
from training.run.trainer import train  # noqa: E402

TABLE = "headroom.jsonl"


def run_name(method: str, towers: str, lr: float | None, epochs: float, seed: int) -> str:
    if method == "zero-shot":
        return "zero-shot"
    return f"{method}-{towers}-lr{lr:g}-ep{epochs:g}-s{seed}"


def measure(model: Path, method: str, towers: str, lr: float | None, epochs: float, seed: int, runs_dir: Path) -> dict:
    name = run_name(method, towers, lr, epochs, seed)
    run_dir = runs_dir / model.name / name
    base = None if model.resolve() == (REPO_ROOT / "assets" / "scene-blip").resolve() else str(model)
    config = RunConfig(
        task="caption", method=method, towers=towers, lr=lr, epochs=epochs, seed=seed, base_model=base, eval_limit=1
    )
    if not (run_dir / runs.EVAL).exists():
        train(config, run_dir, install_signals=False)
    metrics = score_on_validation(run_dir)
    evaluation = runs.read_json(run_dir / runs.EVAL)
    info = runs.read_json(run_dir / runs.CONFIG)
    return {
        "model": model.name,
        "method": method,
        "towers": towers if method != "zero-shot" else "-",
        "lr": info["lr"] if method != "zero-shot" else None,
        "epochs": epochs if method != "zero-shot" else 0,
        "seed": seed,
        "steps": info["total_steps"],
        "trainable_params": info["trainable_params"],
        "val_cider_d": round(metrics["CIDEr-D"], 4),
        "val_bleu4": round(metrics["BLEU-4"], 4),
        "train_s": evaluation["train_s"],
        "validation_s": runs.read_json(run_dir / VALIDATION)["wall_s"],
        "run": name,
    }


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def table(rows: list[dict]) -> str:
    lines = [
        "| model | method | towers | lr | epochs | seed | steps | val CIDEr-D | train time | validation time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lr = f"{r['lr']:g}" if r["lr"] else "-"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['towers']} | {lr} | {r['epochs']:g} | {r['seed']} | "
            f"{r['steps']} | {r['val_cider_d']:.3f} | {r['train_s']:.0f} s | "
            f"{r['validation_s']:.0f} s |"
        )
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], r["towers"], r["lr"], r["epochs"]), []).append(r["val_cider_d"])
    lines += [
        "",
        "| model | method | towers | lr | epochs | seeds | mean val CIDEr-D | spread (max - min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (model, method, towers, lr, epochs), values in groups.items():
        if len(values) > 1:
            lines.append(
                f"| {model} | {method} | {towers} | {lr:g} | {epochs:g} | {len(values)} | "
                f"{statistics.mean(values):.3f} | {max(values) - min(values):.3f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "assets" / "scene-blip")
    parser.add_argument("--method", default="zero-shot")
    parser.add_argument("--towers", nargs="+", default=["both"])
    parser.add_argument("--lr", type=float, nargs="+", default=[None])
    parser.add_argument("--epochs", type=float, nargs="+", default=[1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs" / "headroom")
    parser.add_argument("--table", action="store_true", help="print the table of the runs so far and stop")
    args = parser.parse_args()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    path = args.runs_dir / TABLE
    if args.table:
        print(table(read_rows(path)))
        return 0
    done = {(r["model"], r["run"]) for r in read_rows(path)}
    for towers in args.towers:
        for lr in args.lr:
            for epochs in args.epochs:
                for seed in args.seeds:
                    if (args.model.name, run_name(args.method, towers, lr, epochs, seed)) in done:
                        continue
                    row = measure(args.model, args.method, towers, lr, epochs, seed, args.runs_dir)
                    runs.append_jsonl(path, row)
                    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
