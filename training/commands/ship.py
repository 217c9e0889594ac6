"""`python -m training ship-adapters`: the small adapters the app ships, built from the grid's runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.launch.executor import sigterm_stops_runs


def register(subparsers: argparse._SubParsersAction) -> None:
    ship = subparsers.add_parser(
        "ship-adapters",
        help="one adapter per PEFT method and task at the grid's reference budget, for the app to ship",
    )
    ship.add_argument("--out", default="assets/adapters", help="folder for the adapters and MANIFEST.json")
    ship.add_argument("--sweep", default="paper", help="the grid: a name under sweeps/ or a YAML file")
    ship.add_argument("--threads", type=int, default=1, help="CPU threads of each training run")
    ship.add_argument("--work", default="runs/ship", help="where runs the grid's folder lacks are trained")
    ship.add_argument("--only", default=None, help="ship only the points whose name matches this regular expression")
    ship.add_argument("--fresh", action="store_true", help="ship every point again (after the grid is rerun)")
    ship.set_defaults(func=cmd_ship_adapters)


def cmd_ship_adapters(args: argparse.Namespace) -> int:
    from training.study.shipped import command_line, ship_adapters  # torch: --help must not load it

    command = command_line(args.sweep, args.out, args.threads, args.only, args.fresh)
    try:
        with sigterm_stops_runs():
            ship_adapters(
                args.sweep,
                Path(args.out).resolve(),
                Path(args.work).resolve(),
                threads=args.threads,
                only=args.only,
                fresh=args.fresh,
                command=command,
                echo=lambda line: print(line, flush=True),
            )
    except KeyboardInterrupt:
        print("interrupted: the adapters shipped so far are kept; run the same command to go on.", file=sys.stderr)
        return 130
    return 0
