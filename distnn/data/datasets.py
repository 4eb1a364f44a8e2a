"""The Dataset interface, the in-memory dataset of the canonical readers, and get_dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from distnn.data import catalog
from distnn.data.cifar import load_cifar10
from distnn.data.errors import DataError
from distnn.data.fetch import ensure_files, verify_md5
from distnn.data.idx import load_idx_pair

SPLITS = ("train", "test")


class Dataset:
    """One split of an image-classification dataset.

    Attributes: name, split, image_shape (H, W, C), num_classes, class_names (tuple of str),
    labels (n,) int64, provenance (str: source files, checksums, citation).
    `read(indices)` returns the images at those indices, uint8 (len(indices), H, W, C).
    """

    name: str
    split: str
    image_shape: tuple
    num_classes: int
    class_names: tuple
    labels: np.ndarray
    provenance: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def read(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def check_indices(self, indices) -> np.ndarray:
        """indices as a 1-D int64 array within [0, len); ValueError naming the bad value."""
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise ValueError(f"{self.name}/{self.split}: indices must be a 1-D integer array, got "
                             f"shape {idx.shape} dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            bad = idx[(idx < 0) | (idx >= len(self))][0]
            raise IndexError(f"{self.name}/{self.split}: index {bad} out of range [0, {len(self)})")
        return idx

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"image_shape={self.image_shape})")


class ArrayDataset(Dataset):
    """A split held in memory: images (n, H, W, C) uint8, labels (n,) int64."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names, name: str,
                 split: str, provenance: str = ""):
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"{name}/{split}: images must be uint8 (n, H, W, C) with one label "
                             f"each, got {images.dtype} {images.shape} and {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.name, self.split, self.provenance = name, split, provenance
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.image_shape = tuple(int(d) for d in images.shape[1:])

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (len(indices), H, W, C), a copy, in the order given (duplicates allowed)."""
        return self.images[self.check_indices(indices)]


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
        from distnn.data.hdf5 import H5Dataset

        return H5Dataset(name, split)
    spec = catalog.lookup(str(name))
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(catalog.SPECS)} "
                        f"or a path to a .h5 file")
    if split not in SPLITS:
        raise DataError(f"{spec.name}: unknown split {split!r}; expected one of {SPLITS}")
    return _load_named(spec, split, data_dir, verify, download)
