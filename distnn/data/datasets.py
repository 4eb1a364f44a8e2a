"""get_dataset: one split of a dataset by name (canonical readers) or of an HDF5 file by path."""

from __future__ import annotations

import os
from pathlib import Path

from distnn.data import catalog
from distnn.data.base import ArrayDataset, Dataset
from distnn.data.cifar import load_cifar10
from distnn.data.errors import DataError
from distnn.data.fetch import ensure_files, verify_md5
from distnn.data.hdf5 import H5Dataset
from distnn.data.idx import load_idx_pair

SPLITS = ("train", "test")


def _provenance(spec: catalog.DatasetSpec, folder: Path, files, verified: bool) -> str:
    lines = [f"{spec.name}: " + ", ".join(f"{folder / f.name} (md5 {f.md5})" for f in files)]
    lines.append("md5 verified" if verified else "md5 NOT verified (verify=False)")
    if spec.bundled:
        lines.append(f"a class-balanced subset of MNIST made by distnn.data.make_mini; sources, "
                     f"md5s and selection in {catalog.MINI_DIR / 'README.md'}")
    lines.append(f"citation: {spec.citation}")
    return "\n".join(lines)


def _load_named(spec: catalog.DatasetSpec, split: str, data_dir, verify: bool,
                download: bool | None) -> ArrayDataset:
    folder = ensure_files(spec, data_dir, split, download)
    files = spec.splits[split]
    if verify:
        for f in files:
            verify_md5(folder / f.name, f.md5)
    if spec.kind == "cifar":
        images, labels, names = load_cifar10(folder / files[0].name, split, len(spec.class_names))
    else:
        images, labels = load_idx_pair(folder / files[0].name, folder / files[1].name,
                                       spec.image_shape[:2], len(spec.class_names),
                                       spec.counts[split] if verify else None)
        names = spec.class_names
    return ArrayDataset(images, labels, names, spec.name, split,
                        _provenance(spec, folder, files, verify))


def get_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
                verify: bool = True, download: bool | None = None) -> Dataset:
    """One split of a dataset by name, or of a distnn HDF5 file by path.

    name: "mnist", "fashion_mnist", "cifar10", "mini_mnist" (bundled), or a path ending in
    .h5/.hdf5 (read lazily). split: "train" or "test" (an HDF5 file: any group it holds).
    data_dir: explicit folder, else $DISTNN_DATA_DIR, else ~/.cache/distnn (see catalog).
    verify: check the canonical md5s (and sample counts) first; verify=False reads any
    well-formed file, e.g. a re-packed archive (strict format checks still apply).
    download: None = download missing files unless $DISTNN_OFFLINE is set; True/False force.
    """
    if str(name).lower().endswith((".h5", ".hdf5")):
        return H5Dataset(name, split)
    spec = catalog.lookup(str(name))
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(catalog.SPECS)} "
                        f"or a path to a .h5 file")
    if split not in SPLITS:
        raise DataError(f"{spec.name}: unknown split {split!r}; expected one of {SPLITS}")
    return _load_named(spec, split, data_dir, verify, download)
