"""The Dataset interface and the in-memory dataset the canonical readers return."""

from __future__ import annotations

import numpy as np


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
