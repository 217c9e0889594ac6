"""The core commands: methods (budget table), train, evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.budget import parse_budget
from training.errors import UserError
from training.paths import DEFAULT_MODEL_DIR, REPO_ROOT
from training.run.config import TASKS, TOWERS
from training.run.launch import add_train_options, train_from_args
from training.study.replay import commit_of


def register(subparsers: argparse._SubParsersAction) -> None:
    methods = subparsers.add_parser("methods", help="what every method trains under a parameter budget")
    methods.add_argument("--budget", required=True, help="20000, 20k, 1.5M or 0.5%%")
    methods.add_argument("--base-model", default=None, help="Hub id or local path (default: the embedded model)")
    methods.add_argument("--towers", default="both", choices=TOWERS)
    methods.add_argument("--json", action="store_true", help="print a JSON list")
    methods.set_defaults(func=cmd_methods)

    train = subparsers.add_parser("train", help="fine-tune one method and write a run directory")
    add_train_options(train)
    train.set_defaults(func=train_from_args)

    evaluate = subparsers.add_parser("evaluate", help="re-evaluate a finished run on its test split")
    evaluate.add_argument("--run", required=True, help="run directory")
    evaluate.add_argument("--eval-limit", type=int, default=None)
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=cmd_evaluate)

    pretrain = subparsers.add_parser("pretrain", help="pre-train the embedded default BLIP on the scene world")
    pretrain.add_argument("--out", required=True, help="folder to save the model in")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    pretrain.add_argument(
        "--edition",
        type=int,
        default=1,
        help="the scene world's edition whose recipe to follow: 1 (shipped) or 2 (docs/embedded-world-v2.md)",
    )
    pretrain.add_argument(
        "--pool-images", type=int, default=None, help="pre-training images rendered (default: the recipe's)"
    )
    pretrain.add_argument(
        "--object-weight",
        type=float,
        default=None,
        help="weight of the object-level vision objective (default: the edition's recipe; 0 turns it off)",
    )
    pretrain.add_argument(
        "--clause-share",
        type=float,
        default=None,
        help="share of the descriptive sentences written as per-object clauses (default: 0.25)",
    )
    pretrain.add_argument(
        "--no-caption-frames",
        action="store_true",
        help="keep the caption task's sentence frames ('a picture of', ...) out of the corpus",
    )
    pretrain.add_argument(
        "--restart",
        action="store_true",
        help="start afresh even if --out holds a stopped pre-training's state (by default it resumes from it)",
    )
    pretrain.set_defaults(func=cmd_pretrain)

    probe = subparsers.add_parser(
        "probe", help="what the vision tower knows: a linear probe per object attribute on held-out scenes"
    )
    probe.add_argument(
        "--model", default=None, help="model folder, or a running pre-training's --out (default: the embedded model)"
    )
    probe.add_argument("--json", action="store_true", help="print JSON")
    probe.set_defaults(func=cmd_probe)

    bench = subparsers.add_parser("bench", help="speed and memory figures on the embedded default")
    bench.add_argument("--json", action="store_true", help="print JSON")
    bench.add_argument("--steps", type=int, default=20, help="timed training steps per method")
    bench.add_argument("--batch-size", type=int, default=32, help="training batch (every method and full alike)")
    bench.add_argument("--work-dir", default=None, help="where the benchmark's runs go (default: a temp dir)")
    bench.add_argument("--base-model", default=None, help="Hub id or local path (default: the embedded model)")
    bench.add_argument("--task", default="caption", choices=TASKS, help="the task the training steps use")
    bench.add_argument("--device", default="auto", help="auto, cpu or cuda")
    bench.add_argument(
        "--parts",
        default="train,compare,eval,app,paths",
        help="what to measure, comma-separated: train, compare, eval, app, paths, runs (grid points replayed end "
        "to end: minutes each)",
    )
    bench.add_argument(
        "--points",
        default=None,
        help="runs: the paper grid's points to replay, comma-separated (default: the bench's set, "
        "training/study/replay.py)",
    )
    bench.add_argument(
        "--against",
        default=None,
        metavar="COMMIT",
        help="runs: also replay the points with this commit's code, in turns",
    )
    bench.add_argument(
        "--resident",
        action="store_true",
        help="runs: this code runs the points in one resident worker (as sweeps and tuning run them), in turns "
        "with --against's code in fresh processes (a grid's whole speed-up), or without --against with this code "
        "in fresh processes",
    )
    bench.add_argument(
        "--runs-json",
        default="results/bench-runs.json",
        help="runs: where the raw measurement is written (relative to the repository)",
    )
    bench.add_argument("--compare-tasks", default="caption,vqa", help="the tasks Compare is timed on")
    bench.set_defaults(func=cmd_bench)

    report = subparsers.add_parser("embedded-report", help="measure the embedded default and write its model card")
    report.add_argument("--model", default=None, help="model folder (default: assets/scene-blip)")
    report.add_argument("--work-dir", default=None, help="where the check runs go (default: assets/.quality-runs)")
    report.add_argument("--note", action="append", default=[], help="a line for the card's notes (repeatable)")
    report.add_argument(
        "--caption-data", default=None, help="caption dataset folder (default: the embedded scene-caption)"
    )
    report.add_argument("--vqa-data", default=None, help="VQA dataset folder (default: the embedded scene-vqa)")
    report.set_defaults(func=cmd_embedded_report)


def cmd_methods(args: argparse.Namespace) -> int:
    # torch: --help and the other commands must not load it
    from training.methods.budget import plan_all
    from training.model.base_model import load_base_model

    budget = parse_budget(args.budget)
    base = load_base_model(args.base_model)
    plans = plan_all(base.model, budget, args.towers)
    if args.json:
        print(json.dumps([p.to_dict() for p in plans], indent=2))
        return 0
    total = sum(p.numel() for p in base.model.parameters())
    print(
        f"base model: {base.source} ({total:,} parameters); budget {budget} = {budget.resolve(total):,}; "
        f"towers {args.towers}"
    )
    header = f"{'method':<17} {'knob':<17} {'value':>5} {'trainable':>11} {'% of base':>9}  {'feasible range':<27} ok"
    print(header)
    print("-" * len(header))
    for p in plans:
        value = "-" if p.value is None else str(p.value)
        span = f"{p.min_params:,} - {p.max_params:,}"
        print(
            f"{p.method:<17} {p.knob or '-':<17} {value:>5} {p.trainable_params:>11,} {p.percent:>9.3f}  "
            f"{span:<27} {'yes' if p.feasible else 'NO'}"
        )
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    # torch, numpy and PIL: --help and the other commands must not load them
    from training.data.scenes import EDITIONS
    from training.pretraining.pretrain import PretrainConfig, pretrain

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if args.edition not in EDITIONS:
        raise UserError(f"--edition {args.edition} is not an edition of the scene world: use one of {EDITIONS}.")
    config = PretrainConfig.for_edition(args.edition, seed=args.seed)
    if args.steps:
        config.steps = args.steps
    if args.pool_images:
        config.pool_images = args.pool_images
    if args.object_weight is not None:
        if args.object_weight < 0:
            raise UserError(f"--object-weight {args.object_weight} is negative: use 0 (off) or e.g. 1.")
        config.object_weight = args.object_weight
    if args.clause_share is not None:
        if not 0 <= args.clause_share <= 1:
            raise UserError(f"--clause-share {args.clause_share} is outside [0, 1]: use e.g. 0.5.")
        config.clause_share = args.clause_share
    config.caption_frames = not args.no_caption_frames
    try:
        pretrain(config, args.out, resume=not args.restart)
    except ValueError as error:  # a saved state of other settings: say which, and how to go on
        raise UserError(str(error)) from error
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    # torch: --help and the other commands must not load it
    from training.methods.vlmodel import VLModel
    from training.model.base_model import load_base_model
    from training.pretraining import checkpoint
    from training.pretraining.pretrain import model_from_state
    from training.pretraining.probe import probe

    if args.model and not (Path(args.model) / "config.json").is_file() and checkpoint.exists(args.model):
        # A pre-training still running (or stopped): probe its last saved state.
        base, step = model_from_state(args.model)
        print(f"{args.model} holds no finished model: probing its pre-training state at step {step}", file=sys.stderr)
    else:
        base = load_base_model(args.model)
    result = probe(VLModel(base))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"linear probe on frozen vision features, object by object: fitted on {result['train_objects']} objects "
        f"of {result['train_scenes']} held-out scenes, scored on {result['test_objects']} of {result['test_scenes']}"
    )
    for name, accuracy in result["accuracy"].items():
        print(f"  {name:<6} {accuracy:.1%}")
    return 0


def cmd_embedded_report(args: argparse.Namespace) -> int:
    from training.pretraining.embedded import report, verdicts  # torch: --help must not load it

    datasets = {task: path for task, path in (("caption", args.caption_data), ("vqa", args.vqa_data)) if path}
    results = report(args.model or DEFAULT_MODEL_DIR, args.work_dir, args.note, datasets)
    for text, passed, detail in verdicts(results):
        print(f"[{'pass' if passed else 'FAIL'}] {text}: {detail}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from training.study.bench import PARTS, Setting, print_table, run_bench  # torch: --help must not load it

    parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise UserError(f"Unknown bench part {unknown[0]!r}: choose among {', '.join(PARTS)}.")
    setting = Setting(base_model=args.base_model, task=args.task, device=args.device)

    if args.against:
        commit_of(REPO_ROOT, args.against)  # an unknown commit is said now, not after the other parts
    compare_tasks = tuple(task.strip() for task in args.compare_tasks.split(",") if task.strip())
    if set(compare_tasks) - set(TASKS):
        raise UserError(f"--compare-tasks takes {' and '.join(TASKS)}, comma-separated.")
    result = run_bench(
        steps=args.steps,
        batch_size=args.batch_size,
        work_dir=args.work_dir,
        setting=setting,
        parts=parts,
        compare_tasks=compare_tasks,
        points=tuple(p.strip() for p in args.points.split(",") if p.strip()) if args.points else None,
        against=args.against,
        runs_json=REPO_ROOT / args.runs_json,
        resident=args.resident,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.run.trainer import reevaluate  # torch: --help must not load it

    metrics = reevaluate(args.run, eval_limit=args.eval_limit, device=args.device)
    print(json.dumps(metrics, indent=2))
    return 0
