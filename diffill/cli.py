"""`diffill` command line: a thin dispatcher; each subcommand lives in diffill/commands/<name>.py.

Subcommand modules are imported only when chosen, so `diffill serve` never pays for torch
imports it does not need and a broken optional piece cannot break the other commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module under diffill.commands (keep sorted; one line per command)
COMMANDS: dict[str, str] = {
    "bench": "bench",
    "complete": "complete",
    "corpus": "corpus",
    "eval": "eval",
    "info": "info",
    "infill": "infill",
    "models": "models",
    "pull": "pull",
    "serve": "serve",
    "train": "train",
    "serve-http": "serve_http",
}


def _load(name: str):  # noqa: ANN202
    return importlib.import_module(f"diffill.commands.{COMMANDS[name]}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffill", description="Diffusion fill-in-the-middle code completion"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name, help="", add_help=False)
            continue
        mod = _load(name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen not in COMMANDS:
        # help / unknown command: load every module's help text
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
    args = build_parser(only=chosen).parse_args(argv)
    from .commands import CommandError

    try:
        return int(_load(args.command).run(args) or 0)
    except CommandError as e:
        print(f"diffill {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
