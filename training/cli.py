"""`python -m training <command>`: one entry point; each command lives with the code it drives."""

from __future__ import annotations

import argparse
import importlib
import sys

from training.errors import UserError

# Modules that define `register(subparsers)`; each adds its commands with `set_defaults(func=...)`.
COMMAND_MODULES = (
    "training.commands.core",
    "training.jobs.cli",
    "training.commands.sweep",
    "training.commands.ship",
    "training.study.tuning",
    "training.commands.gpu_check",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description="VL-PEFT Lab: PEFT of BLIP.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
