"""`distnn summary`, `sanity`, `plot` and `trace`: each command lives in its own module, which
declares its arguments (`add_arguments`) and runs (`main(args) -> exit code`). Those modules import
their heavy dependencies (matplotlib, the model) inside `main`, so `distnn --help` stays quick."""

from __future__ import annotations

import argparse

from distnn.subcommands import register_modules

COMMANDS = {
    "summary": "each layer's output shape, parameters, activation memory and FLOPs per image",
    "sanity": "the checks before training: initial loss, regularisation, overfit 20 samples, "
              "gradient check",
    "plot": "PNG figures and an index.html from run directories (the `plot` extra)",
    "trace": "merge the ranks' Chrome traces of a run and name the slowest rank and phase",
}


def register_watch_commands(sub: argparse._SubParsersAction) -> None:
    """Add the watching commands to the `distnn` subcommands."""
    register_modules(sub, "distnn.watch", COMMANDS)
