"""distnn knn: the k-nearest-neighbour baseline on raw samples (pixels, or the vectors of a
features file), data-parallel over the training set; k chosen by cross-validation.

Each sample is flattened to float64 as it is stored: no /255, no normalisation. The training
split (or a seeded --train-size subset of it) is the reference set, cut into one contiguous shard
per rank. With --folds F >= 2, each listed k is scored by F-fold cross-validation on that set
(fold_indices, seeded by --seed): the held fold's samples are the queries, the other folds the
reference; the best accuracy wins, ties to the smallest k. The test split is then scored with the
chosen k against the whole reference set. --folds 0 skips cross-validation (one k only).

Distances: l2 (squared Euclidean, which ranks as Euclidean does) or l1. Neighbours are ordered by
(distance, training index), so ties go to the lower index and the result is the same on any
number of ranks. The vote is the majority label of the k nearest; a tie between labels goes to
the tied label whose nearest member comes first.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from distnn.comm import (
    Communicator,
    create_communicator,
    detect_backend,
    failed_ranks,
    install_excepthook,
)
from distnn.console import err, one_line
from distnn.data import DataError, Dataset, H5Dataset, get_dataset, split_bounds
from distnn.exit_codes import ExitCode
from distnn.train.setup import fold_indices, labelled_indices, rank_threads
from distnn.transfer.neighbours import (
    DISTANCES,
    choose_k,
    distances,
    flat64,
    merge,
    smallest,
    squared_norms,
    vote,
)

BLOCK = 512  # queries per block
BLOCK_ENTRIES = 1 << 24  # at most this many distances per rank and block (128 MiB of float64)
READ_BLOCK = 4096  # training samples read at a time into a rank's shard
K_EXPECTED = "expected comma-separated distinct positive integers, e.g. 1,3,5,10"
SOURCE_EXPECTED = "expected exactly one of --dataset NAME or --features FILE.h5"


class BadInput(ValueError):
    """A command-line value `distnn knn` cannot use; the message names it and what was expected."""


class Rows:
    """Samples `indices` of a source as flat float64 rows: rows[positions] -> (m, D) for the
    samples indices[positions]. read: int64 indices (m,) -> samples (m, ...) of any dtype, e.g.
    a Dataset's read."""

    def __init__(self, read: Callable[[np.ndarray], np.ndarray], indices: np.ndarray):
        self.read, self.indices = read, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        return flat64(self.read(self.indices[positions]))

    def take(self, positions: np.ndarray) -> Rows:
        """The rows at `positions` (m,) of these, as a Rows of m samples (nothing read yet)."""
        return Rows(self.read, self.indices[positions])


def as_rows(samples: np.ndarray | Rows) -> Rows:
    """An in-memory (n, ...) array as Rows of all its n samples; Rows as they are."""
    if isinstance(samples, Rows):
        return samples
    return Rows(samples.__getitem__, np.arange(len(samples)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `distnn knn`."""
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="dataset name (mini_mnist, mnist, fashion_mnist, cifar10) or a .h5 "
                             "file: train split = reference set, test split = scored")
    parser.add_argument("--features", default=None, metavar="FILE.h5",
                        help="a distnn HDF5 features file with train and test splits (instead "
                             "of --dataset)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder of the named datasets (default: $DISTNN_DATA_DIR, else "
                             "~/.cache/distnn)")
    parser.add_argument("--k", default="1,3,5,10", metavar="K[,K...]",
                        help="the k to try, comma-separated (default 1,3,5,10)")
    parser.add_argument("--folds", type=int, default=5,
                        help="cross-validation folds choosing k (default 5; 0: none, one --k)")
    parser.add_argument("--distance", choices=DISTANCES, default="l2",
                        help="l2 (squared Euclidean, default) or l1")
    parser.add_argument("--train-size", type=int, default=0, metavar="N",
                        help="a seeded subset of N training samples (default 0: all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the --train-size subset and of the folds (default 0)")


def parse_ks(text: str) -> list[int]:
    """'5,1,3' -> [1, 3, 5]. BadInput naming the bad entry unless every entry is a distinct
    positive integer."""
    ks: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not re.fullmatch(r"[+-]?[0-9]+", part):
            raise BadInput(f"--k {text}: {part!r} is not an integer; {K_EXPECTED}")
        k = int(part)
        if k < 1:
            raise BadInput(f"--k {text}: k={k} is not positive; {K_EXPECTED}")
        if k in ks:
            raise BadInput(f"--k {text}: k={k} is repeated; {K_EXPECTED}")
        ks.append(k)
    return sorted(ks)


def block_size(n: int, size: int) -> int:
    """Queries per block for n reference samples over `size` ranks: BLOCK, fewer if a rank's
    (block, shard) distance matrix would exceed BLOCK_ENTRIES. The same on every rank."""
    return max(1, min(BLOCK, BLOCK_ENTRIES // max(1, -(-n // size))))


def exchange(dist: np.ndarray, index: np.ndarray, label: np.ndarray,
             comm: Communicator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every rank's candidates (each (Q, k): distances, indices, labels) on every rank, as
    (Q, size * k) arrays of distances, indices and labels (float64), rank by rank. One
    allreduce of a zero-filled (3, size, Q, k) float64 buffer in which each rank fills only its
    own slot (indices below 2^53 and labels are exact in float64). Collective."""
    q, k = dist.shape
    buf = np.zeros((3, comm.size, q, k), dtype=np.float64)
    buf[0, comm.rank], buf[1, comm.rank], buf[2, comm.rank] = dist, index, label
    comm.allreduce_(buf, op="sum")
    d, i, lab = buf.transpose(0, 2, 1, 3).reshape(3, q, comm.size * k)
    return d, i, lab


def nearest(shard: np.ndarray, shard_labels: np.ndarray, queries: np.ndarray, k: int,
            distance: str, comm: Communicator, offset: int = 0, exclude: np.ndarray | None = None,
            shard_sq: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest reference samples of each query, over all ranks' shards: (indices (Q, k)
    int64, labels (Q, k) int64), nearest first by (distance, index). shard: this rank's (N, D)
    float64 reference rows, global indices offset..offset+N-1, labels (N,); queries (Q, D)
    float64, the same on every rank; exclude: (N,) bool, True for shard rows that are not
    reference points here; shard_sq: (N,) squared_norms(shard) for l2, if already computed.
    Collective. ValueError (on every rank) if fewer than k points."""
    dist = distances(queries, shard, shard_sq, distance)
    if exclude is not None:
        dist[:, exclude] = np.inf
    d, i = smallest(dist, k, offset)
    padded = np.append(np.asarray(shard_labels, dtype=np.int64), -1)  # [-1]: unused slots
    lab = padded[np.where(i >= 0, i - offset, -1)]
    _, index, label = merge(*exchange(d, i, lab, comm), k)
    if (index < 0).any():
        raise ValueError(f"k={k} is larger than the number of reference samples")
    return index.astype(np.int64), label.astype(np.int64)


def knn_predict(reference: np.ndarray, labels: np.ndarray, queries: np.ndarray | Rows,
                ks: Sequence[int], distance: str, comm: Communicator, *, offset: int = 0,
                exclude: np.ndarray | None = None, block: int = BLOCK) -> np.ndarray:
    """k-NN predictions (len(ks), Q) int64 of every query, one row per k in `ks`.

    reference: this rank's shard (N, D) of the reference set (float64, or any dtype: it is
    converted), with global indices offset..offset+N-1 and labels (N,) int; under one process,
    the whole set. queries: (Q, ...) samples or Rows, the same on every rank, processed `block`
    at a time. exclude: (N,) bool, shard rows that do not count as reference points. Collective:
    every rank calls with the same queries, ks, distance and block.
    """
    reference = flat64(reference)
    reference_sq = squared_norms(reference) if distance == "l2" else None
    rows, kmax = as_rows(queries), max(ks)
    out = np.empty((len(ks), len(rows)), dtype=np.int64)
    for start in range(0, len(rows), block):
        stop = min(len(rows), start + block)
        _, near = nearest(reference, labels, rows[np.arange(start, stop)], kmax, distance, comm,
                          offset, exclude, reference_sq)
        for j, k in enumerate(ks):
            out[j, start:stop] = vote(near[:, :k])
    return out


def cross_validate(shard: np.ndarray, offset: int, train: np.ndarray | Rows,
                   train_labels: np.ndarray, ks: Sequence[int], folds: int, seed: int,
                   distance: str, comm: Communicator, block: int = BLOCK) -> np.ndarray:
    """Cross-validation accuracy (len(ks),) float64 of each k: correct / n over the `folds`
    folds of fold_indices(n, folds, fold, seed), each held fold scored against the other folds.

    shard: this rank's rows offset..offset+N-1 of the training set (N, D); train: all n
    training samples (read a block at a time for the queries); train_labels (n,). Collective.
    """
    n, rows = len(train_labels), as_rows(train)
    shard_labels = train_labels[offset:offset + len(shard)]
    correct = np.zeros(len(ks), dtype=np.int64)
    for fold in range(folds):
        _, held = fold_indices(n, folds, fold, seed)
        excluded = np.zeros(n, dtype=bool)
        excluded[held] = True
        pred = knn_predict(shard, shard_labels, rows.take(held), ks, distance, comm,
                           offset=offset, exclude=excluded[offset:offset + len(shard)],
                           block=block)
        correct += (pred == train_labels[held]).sum(axis=1)
    return correct / n


@dataclass
class Plan:
    """What `distnn knn` runs: the splits, the training subset (sorted indices into train),
    the sorted ks, folds and distance."""

    train: Dataset
    test: Dataset
    subset: np.ndarray
    ks: list[int]
    folds: int
    distance: str

    def close(self) -> None:
        """Close the HDF5 files the splits hold open."""
        close(self.train, self.test)


def close(*splits: Dataset) -> None:
    """Close the splits read from HDF5 files (the others hold nothing open)."""
    for ds in splits:
        if isinstance(ds, H5Dataset):
            ds.close()


def open_splits(args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """The train and test splits of --dataset or --features. BadInput/DataError naming them."""
    given = [f"{flag} {value}" for flag, value in (("--dataset", args.dataset),
                                                    ("--features", args.features)) if value]
    if len(given) != 1:
        both = " and ".join(given) + " both"
        raise BadInput(f"{both if given else 'neither --dataset nor --features'} given; "
                       f"{SOURCE_EXPECTED}")
    if args.features:
        if not Path(args.features).is_file():
            raise BadInput(f"--features {args.features}: no such file; expected a distnn HDF5 "
                           f"file with train and test splits")
        h5_train = H5Dataset(args.features, "train")
        try:
            return h5_train, H5Dataset(args.features, "test")
        except BaseException:
            close(h5_train)
            raise
    train = get_dataset(args.dataset, "train", args.data_dir)
    return train, get_dataset(args.dataset, "test", args.data_dir)


def check_plan(args: argparse.Namespace, ks: list[int], train: Dataset, test: Dataset) -> Plan:
    """The Plan of `args` on these splits; BadInput naming the value that does not fit them."""
    if not len(test):
        raise BadInput(f"{test.name}: the test split has no samples; expected some to score")
    if test.image_shape != train.image_shape:
        raise BadInput(f"test samples have shape {test.image_shape} and training samples "
                       f"{train.image_shape}; expected the same shape")
    if not 0 <= args.train_size <= len(train):
        raise BadInput(f"--train-size {args.train_size}: the training split has {len(train)} "
                       f"samples; expected 0 (all) to {len(train)}")
    n = args.train_size or len(train)
    subset = labelled_indices(len(train), n, args.seed)  # data.train_size's choice
    if args.folds > n:
        raise BadInput(f"--folds {args.folds}: more folds than the {n} training samples; "
                       f"expected 2 <= folds <= {n}, or 0 (no cross-validation)")
    limit = n - -(-n // args.folds) if args.folds else n
    where = " of a cross-validation fold" if args.folds else ""
    if ks[-1] > limit:
        raise BadInput(f"--k {args.k}: k={ks[-1]} is larger than the {limit} reference "
                       f"samples{where}; expected k <= {limit}")
    return Plan(train, test, subset, ks, args.folds, args.distance)


def make_plan(args: argparse.Namespace) -> Plan:
    """Check `args`, open the data and check it against them: the same decision on every rank.
    BadInput or DataError (one line each) on anything that does not fit."""
    ks = parse_ks(args.k)
    if args.folds < 0 or args.folds == 1:
        raise BadInput(f"--folds {args.folds}: expected 0 (no cross-validation) or at least 2")
    if args.folds == 0 and len(ks) != 1:
        raise BadInput(f"--k {args.k} with --folds 0: no cross-validation chooses among "
                       f"{len(ks)} values; expected one k, or --folds 2 or more")
    train, test = open_splits(args)
    try:
        return check_plan(args, ks, train, test)
    except BaseException:
        close(train, test)
        raise


def agree(failure: Exception | None, comm: Communicator) -> bool:
    """Whether any rank failed; a rank that failed prints its one line, a rank whose peers
    failed says which. Collective: every rank calls, so none is left waiting."""
    failed = failed_ranks(comm, failure is not None)
    tag = f" [rank {comm.rank}]" if comm.size > 1 else ""
    if failure is not None:
        err(f"distnn knn{tag}: {one_line(failure)}")
    elif failed:
        err(f"distnn knn{tag}: stopped: rank(s) {', '.join(map(str, failed))} rejected the "
            f"input")
    return bool(failed)


def run(plan: Plan, comm: Communicator, seed: int) -> tuple[list[str], int, float, int]:
    """Cross-validate and test: (cv lines, chosen k, test accuracy, n). Collective."""
    n, dim = len(plan.subset), int(np.prod(plan.train.image_shape))
    lo, hi = split_bounds(n, comm.size, comm.rank)
    train = Rows(plan.train.read, plan.subset)
    shard = np.empty((hi - lo, dim), dtype=np.float64)
    for start in range(lo, hi, READ_BLOCK):
        stop = min(hi, start + READ_BLOCK)
        shard[start - lo:stop - lo] = train[np.arange(start, stop)]
    labels = plan.train.labels[plan.subset]
    block, lines, chosen = block_size(n, comm.size), [], plan.ks[0]
    if plan.folds:
        acc = cross_validate(shard, lo, train, labels, plan.ks, plan.folds, seed, plan.distance,
                             comm, block)
        lines = [f"k={k}  cv accuracy {a:.4f}  ({plan.folds} folds of {n} training samples, "
                 f"{plan.distance})" for k, a in zip(plan.ks, acc, strict=True)]
        chosen = choose_k(plan.ks, acc)
    test = Rows(plan.test.read, np.arange(len(plan.test)))
    pred = knn_predict(shard, labels[lo:hi], test, [chosen], plan.distance, comm, offset=lo,
                       block=block)[0]
    return lines, chosen, float(np.mean(pred == plan.test.labels)), n


def main(args: argparse.Namespace) -> int:
    """`distnn knn`: exit 0 after printing (rank 0) the cv lines and the test line; 2 on bad
    input (every rank)."""
    started = time.perf_counter()
    comm = create_communicator(detect_backend())
    if comm.size > 1:
        install_excepthook(comm)  # an exception on one rank ends the job, no rank left waiting
    plan, failure = None, None
    try:
        plan = make_plan(args)
    except (BadInput, DataError) as exc:
        failure = exc
    if agree(failure, comm):
        if plan is not None:
            plan.close()
        return ExitCode.BAD_INPUT
    assert plan is not None  # no rank failed, this one included
    try:  # BLAS on cores / ranks threads: ranks sharing a node must not oversubscribe it
        with threadpool_limits(rank_threads(0, comm.size)):
            lines, chosen, accuracy, n = run(plan, comm, args.seed)
    finally:
        plan.close()
    if comm.rank == 0:
        ranks = f"{comm.size} rank{'s' if comm.size > 1 else ''}"
        for line in lines:
            print(line)
        print(f"chosen k={chosen}  test accuracy {accuracy:.4f}  n {len(plan.test)}  "
              f"({n} training samples, {plan.distance}, {ranks}, "
              f"{time.perf_counter() - started:.2f} s)")
    return ExitCode.OK
