"""`python -m training gpu-check ...`: the stages of scripts/gpu_check.sh, run by training/study/gpu_check.py."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from training.run.config import RunConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser("gpu-check", help="the checks of scripts/gpu_check.sh (CUDA, or CPU bf16)")
    actions = check.add_subparsers(dest="action", required=True)
    precision = actions.add_parser("precision", help="bf16 autocast against fp32 per method, and the fast paths")
    precision.add_argument("--base-model", default=None)
    precision.add_argument("--dataset", default=None)
    precision.add_argument("--task", default="vqa")
    precision.add_argument("--device", default="auto")
    precision.add_argument("--batch-size", type=int, default=8)
    precision.add_argument("--out", default=None, help="write the JSON here too")
    precision.set_defaults(func=_cmd_precision)
    base = actions.add_parser("build-base", help="save a BLIP-base-size model (random weights) for the bench")
    base.add_argument("--out", required=True)
    base.set_defaults(func=_cmd_build_base)
    job = actions.add_parser("job", help="one default job through the queue and a worker process")
    job.add_argument("--task", default="caption")
    job.add_argument("--out", default=None, help="write the JSON here too")
    job.set_defaults(func=_cmd_job)
    gather = actions.add_parser("collect", help="join the pieces into one JSON")
    gather.add_argument("--pieces", required=True)
    gather.add_argument("--out", required=True)
    gather.set_defaults(func=_cmd_collect)


def _print(result: dict, out: str | None) -> int:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return 0 if result.get("ok", True) else 1


def _cmd_precision(args: argparse.Namespace) -> int:
    from training.study.gpu_check import precision_check  # torch: --help and the other commands must not load it

    result = precision_check(
        args.base_model, args.device, task=args.task, dataset=args.dataset, batch_size=args.batch_size
    )
    return _print(result, args.out)


def _cmd_build_base(args: argparse.Namespace) -> int:
    # torch: --help and the other commands must not load it
    from training.model.blip_base import save_blip_base
    from training.study.gpu_check import embedded_words

    print(save_blip_base(embedded_words(), args.out))
    return 0


def _cmd_job(args: argparse.Namespace) -> int:
    from training.study.gpu_check import run_queue_job  # torch: --help and the other commands must not load it

    result = run_queue_job(RunConfig(task=args.task), Path(tempfile.mkdtemp(prefix="vlpeft-gpu-job-")))
    result["ok"] = result["state"] == "finished"
    return _print(result, args.out)


def _cmd_collect(args: argparse.Namespace) -> int:
    from training.study.gpu_check import collect  # torch: --help and the other commands must not load it

    return _print(collect(Path(args.pieces), Path(args.out)), None)
