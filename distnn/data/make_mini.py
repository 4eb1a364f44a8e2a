"""Regenerate the bundled `mini_mnist` (distnn/data/mini/) from the canonical MNIST files.

    python -m distnn.data.make_mini [--source DIR] [--out DIR]

DIR holds mnist/*.gz (default: $DISTNN_DATA_DIR, else ../shared/data beside the checkout).
The subset: for each digit, PER_CLASS[split] indices drawn without replacement from that
digit's samples with np.random.default_rng(SEED + offset), then all kept in their original
order. The output gzip files carry no name or time stamp, so a rerun reproduces their bytes
(and the md5s pinned in distnn/data/catalog.py) exactly.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from distnn.data.catalog import MINI_DIR, MINI_MNIST
from distnn.data.datasets import get_dataset
from distnn.data.fetch import md5_file
from distnn.data.idx import write_idx_gz

SEED = 20240611
PER_CLASS = {"train": 800, "test": 200}
SPLIT_OFFSET = {"train": 0, "test": 1}  # different draws for the two splits


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """(num_classes * per_class,) sorted indices with exactly per_class of each label."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} samples, fewer than {per_class}")
        picks.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(picks))


def make_mini(source: str | os.PathLike | None = None, out: str | os.PathLike = MINI_DIR) -> dict:
    """Write the four IDX gz files of mini_mnist into `out`; returns {file name: md5}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, files in MINI_MNIST.splits.items():
        full = get_dataset("mnist", split, source, download=False)  # md5-verified originals
        keep = balanced_subset(full.labels, PER_CLASS[split], SEED + SPLIT_OFFSET[split])
        images_file, labels_file = files
        write_idx_gz(out / images_file.name, full.read(keep)[..., 0])
        write_idx_gz(out / labels_file.name, full.labels[keep].astype(np.uint8))
        for f in files:
            written[f.name] = md5_file(out / f.name)
    return written


def default_source() -> Path | None:
    if os.environ.get("DISTNN_DATA_DIR"):
        return None  # get_dataset resolves it
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=None, help="data dir holding mnist/*.gz")
    parser.add_argument("--out", default=str(MINI_DIR), help="output folder")
    args = parser.parse_args(argv)
    written = make_mini(args.source or default_source(), args.out)
    for name, md5 in written.items():
        size = (Path(args.out) / name).stat().st_size
        print(f"{name}  {size:8d} bytes  md5 {md5}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
