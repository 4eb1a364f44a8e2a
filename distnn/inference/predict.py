"""`distnn predict CKPT INPUT... [--top K] [--json]`: the most probable classes of new images
under a trained network, one line per image, in input order.

INPUT: image files (.png, .jpg, .jpeg, .bmp, .gif, .webp; converted to the model's channels,
grey "L" for 1, "RGB" for 3, as Keras' load_img(color_mode=...) does; never resized: another
size is refused), folders of them (sorted by name, not recursive), .npy arrays ((N, H, W, C),
one (H, W, C), or (N, H, W) for a 1-channel model; uint8 0..255 or float 0..1), a distnn
dataset file (.h5: its --split's images) or a plain HDF5 file (its dataset --key). An image is
named by its path, a row of an array `path[i]`.

Output: `NAME  CLASS P  CLASS P ...`, the --top K classes by probability (ties to the lower
class index); with --json one object per line:
{"input": NAME, "top": [{"class": C, "index": I, "probability": P}, ...]}.

Under mpirun every rank lists the inputs (names and array headers), then the images, cut into
forward batches of --batch by their position in the list (the same batches for any number of
ranks, so the same bits), are shared among the ranks in whole batches: each rank reads only its
images, predicts them on one thread, and one sum-allreduce of the zero-filled (N, K)
probabilities (every row has one writer, so the sum is exact) gives rank 0 every line to print.
Bad input (a missing or unreadable file, a wrong size, shape or dtype, a file that is not a
distnn checkpoint) is one line on stderr and exit 2 on every rank: the ranks agree on it before
they reduce, so none is left waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np

from distnn import console
from distnn.api import Model, load
from distnn.comm import (
    Communicator,
    create_communicator,
    detect_backend,
    failed_ranks,
    install_excepthook,
)
from distnn.console import one_line
from distnn.data import split_bounds
from distnn.data.errors import DataError
from distnn.exit_codes import ExitCode
from distnn.inference.images import InputError, Source, list_inputs, read_span
from distnn.train.errors import CheckpointError

PROGRAM = "distnn predict"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a distnn checkpoint (.h5)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders of them, .npy arrays or HDF5 files")
    p.add_argument("--top", type=int, default=3, help="classes shown per image (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--split", default="test",
                   help="the split of a distnn dataset file to predict (default test)")
    p.add_argument("--key", default="images",
                   help="the dataset of a plain HDF5 file holding the images (default images)")
    p.add_argument("--batch", type=int, default=256, help="images per forward pass")


def main(args: argparse.Namespace) -> int:
    comm = create_communicator(detect_backend())
    if comm.size > 1:
        install_excepthook(comm)  # an unexpected error on one rank ends every rank
    model: Model | None = None
    sources: list[Source] = []
    message: str | None = None
    if args.top < 1:  # decided alike on every rank, before any collective
        message = f"--top {args.top}: expected >= 1"
    elif args.batch < 1:
        message = f"--batch {args.batch}: expected >= 1"
    else:
        model, sources, message = prepare(args, comm)
    if model is not None and message is None:
        probabilities, failure = predict_share(model, sources, comm, args.batch)
        message = agree(failure, comm)
    if model is None or message is not None:
        if comm.rank == 0:
            console.err(f"{PROGRAM}: {message}")
        return ExitCode.BAD_INPUT
    if comm.size > 1:
        comm.allreduce_(probabilities)
    if comm.rank == 0:
        names = [name for s in sources for name in s.names()]
        write_lines(names, probabilities, model.class_names, args.top, args.json)
    return ExitCode.OK


def prepare(args: argparse.Namespace,
            comm: Communicator) -> tuple[Model | None, list[Source], str | None]:
    """The model and the list of inputs, the same on every rank, or the message of the first
    rank that could not read them. Collective."""
    failure: Exception | None = None
    model: Model | None = None
    sources: list[Source] = []
    try:
        model = load(args.checkpoint)
        sources = list_inputs(args.inputs, model.input_shape, args.split, args.key)
    except (CheckpointError, DataError, InputError) as exc:
        failure = exc
    message = agree(failure, comm)
    if message is None and comm.size > 1:
        n = sum(s.count for s in sources)
        most, fewest = comm.allreduce_obj([n, -n], "max")
        if (most, -fewest) != (n, n):  # alike on every rank: from the same reduction
            message = f"the ranks list from {-fewest} to {most} images; expected the same " \
                      f"inputs on every rank (a file system they all see)"
    return model, sources, message


def agree(failure: Exception | None, comm: Communicator) -> str | None:
    """The one-line message of the first rank that failed, on every rank; None when none did.
    Collective: every rank calls, so none is left waiting."""
    if comm.size == 1:
        return None if failure is None else one_line(failure)
    failed = failed_ranks(comm, failure is not None)
    if not failed:
        return None
    first = failed[0]
    return comm.bcast_obj(one_line(failure) if comm.rank == first else None, root=first)


def predict_share(model: Model, sources: Sequence[Source], comm: Communicator,
                  batch: int) -> tuple[np.ndarray, Exception | None]:
    """This rank's rows of the (N, K) float64 probabilities of the N images of `sources`, the
    others zero; with the InputError that stopped it, if one did. The images are cut into
    batches of `batch` by position and each rank takes a contiguous share of whole batches;
    within a batch, the runs of images of one dtype (uint8 or float) are predicted together."""
    shape = tuple(model.input_shape)
    n = sum(s.count for s in sources)
    width = int(np.prod(model.network.output_shape))
    probabilities = np.zeros((n, width), np.float64)
    first, last = split_bounds(-(-n // batch), comm.size, comm.rank)
    threads = 1 if comm.size > 1 else None  # one core per rank under mpirun
    try:
        for j in range(first, last):
            row = j * batch
            for x in same_dtype_runs(read_span(sources, row, min(n, row + batch), shape)):
                probabilities[row:row + len(x)] = model.predict(x, len(x), threads)
                row += len(x)
    except InputError as exc:
        return probabilities, exc
    return probabilities, None


def same_dtype_runs(pieces: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Consecutive pieces (m, H, W, C) of one dtype joined: uint8 pixels stay uint8 (the
    model scales them), so an array predicts as model.predict predicts it."""
    runs: list[list[np.ndarray]] = []
    for x in pieces:
        if runs and runs[-1][0].dtype == x.dtype:
            runs[-1].append(x)
        else:
            runs.append([x])
    return [np.concatenate(run) if len(run) > 1 else run[0] for run in runs]


def top_classes(p: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k largest of probabilities p (K,), largest first, ties to the lower
    index; all K when k > K."""
    return np.argsort(-p, kind="stable")[:k]


def write_lines(names: Sequence[str], probabilities: np.ndarray, class_names: Sequence[str],
                k: int, as_json: bool) -> None:
    """One line per image: its name and its top k classes with their probabilities (N, K)."""
    def label(i: int) -> str:
        return class_names[i] if i < len(class_names) else str(i)

    lines = []
    for name, p in zip(names, probabilities, strict=True):
        top = top_classes(p, k)
        if as_json:
            lines.append(json.dumps({"input": name, "top": [
                {"class": label(int(i)), "index": int(i),
                 "probability": float(p[i]) if np.isfinite(p[i]) else None}  # NaN: null
                for i in top]}))
        else:
            lines.append(f"{name}  " + "  ".join(f"{label(int(i))} {p[i]:.4f}" for i in top))
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()
