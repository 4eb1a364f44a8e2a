"""Datasets, sharding and input preparation for data-parallel training.

Readers of the canonical MNIST / Fashion-MNIST (IDX gzip) and CIFAR-10 (python tarball, safe
unpickler) files with md5 checks, a lazy HDF5 format, the bundled `mini_mnist`, a deterministic
shard sampler, augmentation and a prefetching batch iterator. Images are uint8 NHWC
(n, H, W, C) until the iterator turns them into normalised float32.

Nothing here imports communication (mpi4py, ray, distnn.comm, distnn.train): rank and world
size are plain arguments.
"""

from distnn.data.base import ArrayDataset, Dataset
from distnn.data.catalog import SPECS, resolve_data_dir
from distnn.data.datasets import get_dataset
from distnn.data.errors import CorruptFileError, DataError, DatasetNotFoundError, UnsafePickleError
from distnn.data.hdf5 import H5Dataset, write_h5
from distnn.data.iterator import BatchIterator, prepare_batch
from distnn.data.preprocess import Normalization, Preprocess
from distnn.data.sampler import (
    ShardSampler,
    eval_indices,
    group_plan,
    micro_counts,
    micro_shares,
    split_bounds,
)
from distnn.data.transforms import RandomCropFlip, compute_normalization, to_float

DATASETS = tuple(SPECS)

__all__ = [
    "ArrayDataset", "BatchIterator", "CorruptFileError", "DATASETS", "DataError", "Dataset",
    "DatasetNotFoundError", "H5Dataset", "Normalization", "Preprocess", "RandomCropFlip",
    "ShardSampler", "UnsafePickleError",
    "compute_normalization", "eval_indices", "get_dataset", "group_plan", "micro_counts",
    "micro_shares", "prepare_batch", "resolve_data_dir", "split_bounds", "to_float", "write_h5",
]
