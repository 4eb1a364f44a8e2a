"""The `distnn` command line: train, evaluate, sweep, data, summary, sanity, plot, trace,
features, knn, export, predict."""

from __future__ import annotations

import sys

from distnn.train import signals

# `distnn train` takes stop requests from its first moment: numpy, numba and h5py take most of
# a second to import below, and a SIGTERM then must still end the run resumably (exit 75).
if sys.argv[1:2] == ["train"]:
    signals.hold_for_process()
    from distnn.sweep.orphan import die_with_sweep

    die_with_sweep()  # a trial of `distnn sweep`: stop (after a checkpoint) when the sweep dies

import argparse  # noqa: E402 - after the handlers, on purpose

from distnn.data.commands import register_data_commands  # noqa: E402
from distnn.export.commands import register_export_command  # noqa: E402
from distnn.inference.commands import register_inference_commands  # noqa: E402
from distnn.launch.commands import register_train_commands  # noqa: E402
from distnn.sweep.commands import register_sweep_command  # noqa: E402
from distnn.transfer.commands import register_transfer_commands  # noqa: E402
from distnn.watch.commands import register_watch_commands  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    register_train_commands(sub)
    register_sweep_command(sub)
    register_data_commands(sub)
    register_watch_commands(sub)
    register_transfer_commands(sub)
    register_export_command(sub)
    register_inference_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
