#!/usr/bin/env python
"""Entry script for a Ray cluster: run `distnn train --backend ray` as the driver.

Used by `ray submit launch/ray-cluster.yaml launch/ray_train.py -- ARGS` (runs on the head
node) and by `ray job submit --address http://HEAD:8265 -- python launch/ray_train.py ARGS`
(runs under the job server, which sets RAY_ADDRESS). ARGS are those of `distnn train`, e.g.

    launch/ray_train.py cifar10 --workers 4 --run-dir /shared/runs/c10 --resume auto

`--backend ray` is added unless given; `--address` defaults to $RAY_ADDRESS, else "auto"
(the cluster this node belongs to). The exit code is that of `distnn train`
(0 done, 2 bad input, 3 diverged, 75 stopped by a signal after a checkpoint).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    from distnn.cli import main as distnn_main

    args = list(argv)
    if "--backend" not in args and not any(a.startswith("--backend=") for a in args):
        args += ["--backend", "ray"]
    if ("--address" not in args and not any(a.startswith("--address=") for a in args)
            and not os.environ.get("RAY_ADDRESS")):
        args += ["--address", "auto"]
    return distnn_main(["train", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
