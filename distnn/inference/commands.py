"""`distnn predict`: a trained network on new images. The command lives in its own module with
`add_arguments` and `main(args) -> exit code`."""

from __future__ import annotations

import argparse

from distnn.subcommands import register_modules

COMMANDS = {
    "predict": "the most probable classes of image files, folders, .npy arrays or HDF5 files "
               "under a trained network, one line per image (data-parallel under mpirun)",
}


def register_inference_commands(sub: argparse._SubParsersAction) -> None:
    """Add the inference commands to the `distnn` subcommands."""
    register_modules(sub, "distnn.inference", COMMANDS)
