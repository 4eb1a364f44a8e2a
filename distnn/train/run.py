"""`train(config, comm)`: the same SPMD entry on every worker of every backend."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from threadpoolctl import threadpool_limits

from distnn import console
from distnn.comm import Communicator
from distnn.config import Config, ConfigError, save_config
from distnn.data import ShardSampler, compute_normalization
from distnn.data import preprocess as pre
from distnn.data.preprocess import Normalization, Preprocess
from distnn.data.transforms import value_scale
from distnn.exit_codes import ExitCode
from distnn.nn import Sequential
from distnn.nn import threads as nn_threads
from distnn.optim import FULL_BATCH, UpdateRule
from distnn.storage import mirror
from distnn.storage.remote import read_any
from distnn.train import checkpoint as ckpt
from distnn.train import signals, tensorboard
from distnn.train.errors import CheckpointError
from distnn.train.evaluate import evaluate
from distnn.train.full_batch import FullBatchCoordinator
from distnn.train.keeper import write_on_root
from distnn.train.loop import Coordinator
from distnn.train.metrics import MetricsLog
from distnn.train.setup import (
    ScheduleLike,
    Splits,
    build_model,
    build_optimizer,
    build_schedule,
    load_splits,
    rank_threads,
)
from distnn.train.signals import StopRequest
from distnn.train.transfer import init_from


@dataclass
class Parts:
    """What the coordinator trains with, built identically on every rank."""

    splits: Splits
    model: Sequential
    optimizer: UpdateRule
    schedule: ScheduleLike
    normalization: Normalization  # (mean, std) per channel, a Preprocess, or None
    sampler: ShardSampler


@dataclass
class TrainResult:
    exit_code: int  # an ExitCode
    run_dir: Path
    test: dict | None  # accuracy, loss, n on the test split (None unless finished)
    model: Sequential


def broadcast_arrays(tree, comm):
    """Give every rank rank 0's copy of a dict of arrays and plain values (None elsewhere).
    Collective: all ranks must call. Arrays travel with the buffer broadcast, the rest pickled.
    """
    skeleton = None
    if comm.rank == 0:
        skeleton = {k: (("array", v.shape, v.dtype.str) if isinstance(v, np.ndarray) else v)
                    for k, v in tree.items()}
    skeleton = comm.bcast_obj(skeleton)
    out = {}
    for key, value in skeleton.items():
        if isinstance(value, tuple) and len(value) == 3 and value[0] == "array":
            arr = (np.ascontiguousarray(tree[key]) if comm.rank == 0
                   else np.empty(value[1], value[2]))
            out[key] = comm.broadcast_(arr) if arr.size else arr
        else:
            out[key] = value
    return out


def load_on_root(path: Path | str | None, model_spec, comm) -> ckpt.Snapshot | None:
    """Rank 0 reads and validates (against `model_spec` unless None) the checkpoint at `path`
    (a file, or a URL as a str); its copy, or its error, reaches every rank.
    Collective: all ranks must call."""
    snap, error = None, None
    if comm.rank == 0 and path is not None:
        try:
            snap = read_any(path)
            if model_spec is not None:
                # only resumes check the model: their checkpoints are local files
                ckpt.check_compatible(snap, model_spec, Path(path))
        except CheckpointError as exc:
            error = str(exc)
    error = comm.bcast_obj(error)
    if error:
        raise CheckpointError(error)
    if not comm.bcast_obj(snap is not None):
        return None
    fields = ("step", "epoch", "step_in_epoch", "config_yaml", "model_spec", "coordinator",
              "inputs")
    meta = comm.bcast_obj({k: getattr(snap, k) for k in fields} if comm.rank == 0 else None)
    model = broadcast_arrays(snap.model if snap else None, comm)
    optim = broadcast_arrays(snap.optimizer if snap else None, comm)
    norm = broadcast_arrays(pre.normalization_arrays(snap.normalization) if snap else {}, comm)
    return ckpt.Snapshot(model=model, optimizer=optim, normalization=normalization_of(norm),
                         **meta)


def normalization_of(arrays: dict[str, np.ndarray]) -> Normalization:
    """The normalisation whose arrays (by checkpoint name; validated when read) are these."""
    if not arrays:
        return None
    if set(arrays) == {"mean", "std"}:
        return arrays["mean"], arrays["std"]
    return Preprocess.from_arrays(arrays)


def normalization_for(cfg: Config, train, comm) -> Normalization:
    """The configured preprocessing of the training split (data.preprocess), the same on every
    rank: per-channel mean/std computed once on rank 0 and broadcast; mean_image and
    pca_whiten from sums of every rank's shard (preprocess_for). Collective."""
    if not cfg.data.normalize:
        return None
    if cfg.data.preprocess != "channel_mean_std":
        return preprocess_for(cfg, train, comm)
    stats = None
    if comm.rank == 0:
        mean, std = compute_normalization(train)
        stats = {"mean": np.asarray(mean, np.float32), "std": np.asarray(std, np.float32)}
    stats = broadcast_arrays(stats, comm)
    return stats["mean"], stats["std"]


def preprocess_for(cfg: Config, train, comm) -> Preprocess:
    """data.preprocess mean_image or pca_whiten fitted on the training split: each rank sums
    its contiguous shard (float64, in blocks), one allreduce per sum, then rank 0 computes the
    statistics (pca_whiten: the eigendecomposition) and broadcasts them, so every rank holds
    the same bits whatever its LAPACK. Pixel sums are exact, so the result is also the same on
    any number of ranks. data.pca_components > D is a ConfigError, on every rank before any
    sum. Collective."""
    d = cfg.data
    if len(train) == 0:
        raise ConfigError(f"data.preprocess: {d.preprocess} has no training samples to be "
                          f"fitted on")
    if d.preprocess == "pca_whiten":
        values = int(np.prod(train.image_shape))
        if d.pca_components > values:
            raise ConfigError(f"data.pca_components: {d.pca_components}, expected at most "
                              f"D = {values}, the values of one {train.name} image "
                              f"{tuple(train.image_shape)} (0: all of them)")
    sums = pre.shard_sums(train, d.preprocess, comm.rank, comm.size)
    for total in sums.values():
        comm.allreduce_(total)
    fitted, error = None, None
    if comm.rank == 0:
        top = value_scale(train.read(np.arange(1)).dtype)
        try:
            fitted = pre.fit_sums(d.preprocess, sums, len(train), train.image_shape, top,
                                  d.pca_components, d.whiten_eps).to_arrays()
        except (ValueError, np.linalg.LinAlgError) as exc:
            error = f"data.preprocess: {d.preprocess} cannot be fitted on {train.name}: {exc}"
    error = comm.bcast_obj(error)
    if error:
        raise ConfigError(error)
    return Preprocess(d.preprocess, broadcast_arrays(fitted, comm))


def build_parts(cfg: Config, comm, resume_snap, source=None) -> Parts:
    """The run's pieces on this rank; `source`: the train.init_from checkpoint (fresh runs)."""
    splits = load_splits(cfg)
    if resume_snap is not None:
        norm = resume_snap.normalization
    elif source is not None and pretrained_normalization(cfg, source, splits.train):
        norm = source.normalization  # the inputs the pretrained layers were trained on
    else:
        norm = normalization_for(cfg, splits.train, comm)
    try:
        model = build_model(cfg, input_shape(norm, splits.train, "the checkpoint's"),
                            splits.train.num_classes)
    except ConfigError as exc:
        if isinstance(norm, Preprocess) and norm.kind == "pca_whiten":
            raise ConfigError(f"{exc}; data.preprocess pca_whiten makes each image one vector "
                              f"(1, 1, {norm.components}): expected a model of flatten and "
                              f"dense layers") from None
        raise
    comm.broadcast_(model.params)  # identical replicas from the start, whatever the seeding
    if model.state.size:
        comm.broadcast_(model.state)
    if source is not None:  # every rank holds the same snapshot: the same result everywhere
        path = Path(cast(str, cfg.train.init_from))
        done = init_from(model, source, cfg.train.reset, path)
        if comm.rank == 0:
            where = "the checkpoint's" if norm is source.normalization else "this run's"
            console.err(f"distnn train: {done.line(path)}; normalisation: {where}")
    t = cfg.train
    sampler = ShardSampler(len(splits.train), t.global_batch, comm.rank, comm.size, cfg.seed,
                           shuffle=True, drop_last=False, groups=t.groups if t.invariant else 0,
                           accum=t.grad_accum)  # the rank's shares of every micro-batch
    return Parts(splits, model, build_optimizer(cfg, model), build_schedule(cfg), norm, sampler)


def input_shape(norm: Normalization, train, whose: str) -> tuple[int, ...]:
    """The per-sample shape the model takes: the images' own, except pca_whiten's (1, 1, k).
    Preprocessing fitted on images of another shape (a resumed checkpoint's) is a
    CheckpointError."""
    try:
        return pre.model_shape(norm, tuple(train.image_shape))
    except ValueError as exc:
        raise CheckpointError(f"{whose} normalisation does not fit {train.name}: "
                              f"{exc}") from None


def pretrained_normalization(cfg: Config, source: ckpt.Snapshot, train) -> bool:
    """Whether a run initialised from `source` normalises with its statistics: when the config
    normalises and the checkpoint has statistics of the configured data.preprocess kind for
    these images (as many channels; mean_image and pca_whiten: the same image shape, and
    pca_whiten as many components as configured)."""
    norm = source.normalization
    if not cfg.data.normalize or norm is None:
        return False
    if not isinstance(norm, Preprocess):
        return cfg.data.preprocess == "channel_mean_std" \
            and norm[0].shape == (train.image_shape[-1],)
    if norm.kind != cfg.data.preprocess or norm.image_shape != tuple(train.image_shape):
        return False
    if norm.kind == "pca_whiten":
        wanted = cfg.data.pca_components or int(np.prod(train.image_shape))
        return norm.components == wanted
    return True


def load_best(resume: Path | None, cfg: Config, comm: Communicator) -> ckpt.Snapshot | None:
    """best.h5 beside the resumed checkpoint, if there is one that verifies; a corrupt one is
    skipped with a warning (training resumes, only the restore of the best weights at the end
    is lost). Collective: all ranks must call."""
    if resume is None:
        return None
    path = Path(resume).parent / "best.h5"
    # Only rank 0's view of the file system counts: load_on_root broadcasts it.
    try:
        return load_on_root(path if path.exists() else None, list(cfg.model), comm)
    except CheckpointError as exc:
        if comm.rank == 0:
            console.err(f"distnn train: warning: {exc}; resuming without it "
                        f"(the best weights so far are not restored at the end)")
        return None


def save_config_on_root(cfg: Config, run_dir: Path, comm: Communicator) -> None:
    """Rank 0 writes <run_dir>/config.yaml; a failure (disk full) ends every rank alike with
    CheckpointWriteError (exit 74). Collective: all ranks must call."""
    path = run_dir / "config.yaml"

    def save() -> None:
        save_config(cfg, path)
        mirror.publish(run_dir)  # a run directory at a URL: the store gets it now

    write_on_root(comm, save, f"could not write {path}")


def train(cfg: Config, comm: Communicator, run_dir: Path,
          resume: Path | None = None) -> TrainResult:
    """Train per `cfg` on this worker. A stop request (SIGTERM/SIGUSR1, see train/signals.py)
    at any point ends it with RESUMABLE and a checkpoint from which `resume` completes exactly
    what was left. Collective: every rank of `comm` must call."""
    run_dir = Path(run_dir)
    threads = rank_threads(cfg.train.threads, comm.size)
    # The conv layers run on `threads` threads of their own, BLAS on one (distnn/nn/threads.py).
    with threadpool_limits(threads), nn_threads.limit(threads), signals.catching() as stop, \
            contextlib.ExitStack() as stack:
        snap = load_on_root(resume, list(cfg.model), comm)
        best = load_best(resume, cfg, comm) if snap is not None else None
        source = None  # a resumed run continues from its own checkpoint, never init_from
        if snap is None and cfg.train.init_from:
            source = load_on_root(cfg.train.init_from, None, comm)  # a path or a URL
        parts = build_parts(cfg, comm, snap, source)
        if comm.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(run_dir / "metrics.jsonl", comm.rank == 0)
        publishing = mirror.metrics_sink(run_dir)  # rank 0 of a run directory at a URL
        if publishing is not None:
            metrics.sinks.append(publishing)
        if cfg.log.tensorboard:
            tensorboard.check_available()  # a ConfigError alike on every rank
            if comm.rank == 0:
                sink = tensorboard.TensorBoardSink(run_dir / "tensorboard")
                metrics.sinks.append(sink)
                stack.callback(sink.close)
        kind = FullBatchCoordinator if cfg.optimizer.name in FULL_BATCH else Coordinator
        coord = kind(cfg, comm, parts, run_dir, metrics)
        if snap is not None:
            coord.restore(snap, best, resume)
        # Only once the checkpoint has been found to fit: a refused resume changes nothing.
        save_config_on_root(cfg, run_dir, comm)
        code = coord.run(stop)
        test = None
        if code == ExitCode.OK:
            test = score_test_split(coord, parts, stop)
            code = ExitCode.OK if test is not None else ExitCode.RESUMABLE
        return TrainResult(code, run_dir, test, parts.model)


def score_test_split(coord: Coordinator, parts: Parts, stop: StopRequest) -> dict | None:
    """Score the test split once training has finished and log it; None, logging nothing, if
    a stop was requested before or during it (last.h5 holds the finished state, so a resume
    does just this). Collective: all ranks must call."""
    comm, cfg = coord.comm, coord.cfg
    if stop.anywhere(comm):
        return None
    t0 = time.perf_counter()
    test = evaluate(parts.model, parts.splits.test, comm, parts.normalization, cfg.train.loss)
    if stop.anywhere(comm):
        return None
    coord.metrics.write(epoch=coord.state.epoch, step=coord.state.step, split="test",
                        loss=test["loss"], accuracy=test["accuracy"], n=test["n"],
                        lr=coord.lr(), images_per_s=test["n"] / max(time.perf_counter() - t0,
                                                                    1e-9))
    return test
