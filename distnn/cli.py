"""The `distnn` command line: train, evaluate, data."""

from __future__ import annotations

import argparse
import sys

from distnn.data.commands import register_data_commands
from distnn.launch.commands import register_train_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    register_train_commands(sub)
    register_data_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
