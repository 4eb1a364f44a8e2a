"""Registering `distnn` subcommands that live one per module (watch/, transfer/): each module
declares its arguments (`add_arguments(parser)`) and runs (`main(args) -> exit code`), and its
docstring is the command's description."""

from __future__ import annotations

import argparse
import importlib


def register_modules(sub: argparse._SubParsersAction, package: str,
                     commands: dict[str, str]) -> None:
    """Add `{name: help}` as subcommands, each from the module `package`.`name`."""
    for name, help_text in commands.items():
        module = importlib.import_module(f"{package}.{name}")
        p = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
