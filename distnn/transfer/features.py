"""`distnn features CKPT --layer NAME --out FILE.h5`: the codes of one layer of a trained network
for every sample of a dataset (a fixed feature extractor), as a distnn HDF5 file of float32
"images" ((n, 1, 1, D) for a vector layer) that `distnn train` and `distnn knn` read like any
dataset: a linear classifier on the codes is `model: [{type: flatten}, {type: dense, units: K}]`.

The layers up to NAME run in evaluation mode on the checkpoint's normalisation. Under mpirun
each block of samples is cut among the ranks in whole forward batches (the same batches for any
number of ranks, so the same bits); each rank computes its rows and one sum-allreduce of the
zero-filled block (every row has one writer, so the sum is exact) gives rank 0 the whole block
to write: no shared file system needed. The file appears complete or not at all (a
temporary file renamed into place).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from threadpoolctl import threadpool_limits

from distnn import console
from distnn.comm import create_communicator, detect_backend, install_excepthook
from distnn.config import ConfigError
from distnn.console import one_line
from distnn.data import Dataset, get_dataset, split_bounds, to_float
from distnn.data.errors import DataError
from distnn.data.hdf5 import CHUNK_BYTES, FORMAT, VERSION, chunk_samples
from distnn.exit_codes import ExitCode
from distnn.nn import Sequential
from distnn.nn import threads as nn_threads
from distnn.train.errors import CheckpointError
from distnn.train.evaluate_checkpoint import network_shape, read_saved, saved_network
from distnn.train.setup import rank_threads

BLOCK = 2048  # samples reduced (and written) at a time: bounded memory on every rank


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a distnn checkpoint (.h5)")
    p.add_argument("--layer", required=True, help="the layer whose output is the code")
    p.add_argument("--dataset", default=None,
                   help="a dataset name or .h5 file (default: the checkpoint's)")
    p.add_argument("--data-dir", default=None, help="where the dataset's files are")
    p.add_argument("--split", action="append", default=None,
                   help="a split to extract (repeatable; default: train and test)")
    p.add_argument("--out", required=True, help="the features file to write (.h5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch", type=int, default=256, help="samples per forward pass")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    problem = None
    if out.suffix not in (".h5", ".hdf5"):
        problem = f"--out {out}: expected a .h5 file name"
    elif out.exists() and not args.overwrite:
        problem = f"--out {out}: exists; expected a new file (or --overwrite)"
    elif args.batch < 1:
        problem = f"--batch {args.batch}: expected >= 1"
    if problem:  # decided alike on every rank, before any collective
        console.err(f"distnn features: {problem}")
        return ExitCode.BAD_INPUT
    comm = create_communicator(detect_backend())
    if comm.size > 1:
        install_excepthook(comm)  # an error on one rank only (a write) ends every rank
    t0 = time.perf_counter()
    try:
        written = extract(Path(args.checkpoint), args.layer, args.dataset, args.data_dir,
                          args.split or ["train", "test"], out, comm, args.batch)
    except (CheckpointError, DataError, ConfigError, ValueError) as exc:
        console.err(f"distnn features: {one_line(exc)}")
        return ExitCode.BAD_INPUT
    if comm.rank == 0:
        sizes = ", ".join(f"{split} {n}" for split, n in written["splits"].items())
        print(f"features of {written['layer']} ({written['values']} values per sample) for "
              f"{sizes} written to {out} in {time.perf_counter() - t0:.1f} s")
    return ExitCode.OK


def layer_model(path: Path, snap, cfg, data: Dataset, layer: str) -> tuple[Sequential, int]:
    """The checkpoint's model built for `data`'s images with its parameters, and the index of
    `layer` in it. CheckpointError (model does not fit) or ValueError (no such layer)."""
    what = f"{data.name} images {data.image_shape}"
    model = saved_network(path, snap, cfg, network_shape(path, snap, data.image_shape, what),
                          what)
    names = [lay.name for lay in model.layers]
    if layer not in names:
        raise ValueError(f"--layer {layer}: not a layer of {path}'s model; expected one of "
                         f"{', '.join(names)}")
    return model, names.index(layer)


def codes(model: Sequential, upto: int, x: np.ndarray) -> np.ndarray:
    """The output of layer `upto` for inputs x (evaluation mode), as a work buffer."""
    for layer in model.layers[:upto + 1]:
        x = layer.forward(x, False)
    return x


def extract(path: Path, layer: str, dataset: str | None, data_dir: str | None,
            splits: list[str], out: Path, comm, batch: int = 256) -> dict:
    """Write the codes of `layer` for each split to `out` (rank 0). Collective: all ranks must
    call. Returns {"layer", "values" (per sample), "splits": {split: n}}."""
    snap, cfg = read_saved(path, comm)
    name = dataset or cfg.data.dataset
    sets = {split: get_dataset(name, split, data_dir or cfg.data.data_dir) for split in splits}
    first = next(iter(sets.values()))
    model, upto = layer_model(path, snap, cfg, first, layer)
    shape = model.layers[upto].out_shape or ()
    stored = tuple(shape) if len(shape) == 3 else (1, 1, int(np.prod(shape)))
    handle, tmp = None, None
    if comm.rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name_tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(name_tmp)
        handle = h5py.File(tmp, "w")
        handle.attrs.update(format=FORMAT, version=VERSION, name=f"{first.name}-{layer}",
                            provenance=f"distnn features {path} --layer {layer}, from:\n"
                                       f"{first.provenance}",
                            class_names=list(first.class_names))
    ok = False
    try:
        threads = rank_threads(cfg.train.threads, comm.size)
        with threadpool_limits(1), nn_threads.limit(threads):
            for split, data in sets.items():
                group = handle.create_group(split) if handle is not None else None
                _write_split(model, upto, data, snap.normalization, stored, group, comm, batch)
        ok = True
    finally:
        if handle is not None and tmp is not None:
            handle.close()
            if ok:
                os.replace(tmp, out)
            else:
                tmp.unlink(missing_ok=True)
    return {"layer": layer, "values": int(np.prod(stored)),
            "splits": {split: len(data) for split, data in sets.items()}}


def _write_split(model: Sequential, upto: int, data: Dataset, normalization,
                 stored: tuple[int, ...], group, comm, batch: int) -> None:
    """One split's codes, block by block: each rank computes its rows of the block, an
    allreduce assembles it, rank 0 (`group` not None) writes it."""
    n = len(data)
    images = None
    if group is not None:
        k = min(chunk_samples(stored, CHUNK_BYTES // 4), max(n, 1))
        images = group.create_dataset("images", shape=(n,) + stored, dtype=np.float32,
                                      chunks=(k,) + stored)
        group.create_dataset("labels", data=np.asarray(data.labels, dtype=np.int64))
    size = int(np.prod(stored))
    step = BLOCK // batch * batch or batch  # whole forward batches per block
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = np.zeros((stop - start, size), np.float32)
        # The block's batches (the same ones for any number of ranks, so the same bits) are
        # cut among the ranks.
        batches = -(-(stop - start) // batch)
        first, last = split_bounds(batches, comm.size, comm.rank)
        for a in range(first * batch, min(last * batch, stop - start), batch):
            b = min(stop - start, a + batch)
            x = to_float(data.read(np.arange(start + a, start + b)), normalization)
            block[a:b] = codes(model, upto, x).reshape(b - a, size)
        if comm.size > 1:
            comm.allreduce_(block)
        if images is not None:
            images[start:stop] = block.reshape((stop - start,) + stored)
