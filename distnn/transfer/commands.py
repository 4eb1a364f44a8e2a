"""`distnn features` and `distnn knn`: a trained network as a fixed feature extractor, and the
k-nearest-neighbour baseline (on pixels or on features). Each command lives in its own module
with `add_arguments` and `main(args) -> exit code`."""

from __future__ import annotations

import argparse

from distnn.subcommands import register_modules

COMMANDS = {
    "features": "the codes of one layer of a trained network for every sample, as a dataset "
                "file (HDF5) that `distnn train` and `distnn knn` read",
    "knn": "k-nearest-neighbour classification (L1 or L2), k chosen by cross-validation, "
           "data-parallel",
}


def register_transfer_commands(sub: argparse._SubParsersAction) -> None:
    """Add the transfer commands to the `distnn` subcommands."""
    register_modules(sub, "distnn.transfer", COMMANDS)
