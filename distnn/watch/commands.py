"""`distnn summary`, `sanity`, `plot` and `trace`: each command lives in its own module, which
declares its arguments (`add_arguments`) and runs (`main(args) -> exit code`). Those modules import
their heavy dependencies (matplotlib, the model) inside `main`, so `distnn --help` stays quick."""

from __future__ import annotations

import argparse
import importlib

COMMANDS = {
    "summary": "each layer's output shape, parameters, activation memory and FLOPs per image",
    "sanity": "the checks before training: initial loss, regularisation, overfit 20 samples, "
              "gradient check",
    "plot": "PNG figures and an index.html from run directories (the `plot` extra)",
    "trace": "merge the ranks' Chrome traces of a run and name the slowest rank and phase",
}


def register_watch_commands(sub: argparse._SubParsersAction) -> None:
    """Add the watching commands to the `distnn` subcommands."""
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"distnn.watch.{name}")
        p = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
