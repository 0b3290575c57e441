"""``specdiff`` command line: a thin layer over the library.

Each command group lives in ``specdiff.commands.<group>`` and exposes
``register(subparsers)``; handlers parse arguments, call library functions and
print. Bad input ends with a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Command groups, in help order. A group's module adds its sub-commands.
GROUPS = ("core", "model", "diffusers")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``specdiff CMD: error: ...``, exit status 2) instead of
    the usage block; ``--help`` still shows the usage. Sub-command parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="specdiff",
        description="Spectral progressive sampling: faster diffusion by growing the grid "
        "as frequencies emerge.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        try:
            module = importlib.import_module(f"specdiff.commands.{group}")
        except ModuleNotFoundError as e:  # a group not installed in this checkout
            if e.name != f"specdiff.commands.{group}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        result = args.func(args)
    except (CLIError, ValueError, FileNotFoundError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"specdiff {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
