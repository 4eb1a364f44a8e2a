"""HDF5 checkpoints: written atomically by rank 0, validated on load. No pickle anywhere.

Layout of a checkpoint file:
  /model/<name>          every named parameter and state array ('conv0.W', 'batchnorm2.running_var')
  /optimizer/<key>       optimizer state arrays; its scalars are attributes of /optimizer
  /normalization/mean, /normalization/std   per-channel input normalisation (C,)
  attrs: format, step, epoch, step_in_epoch, config (YAML text), model_spec (JSON),
         coordinator (JSON: schedule, early-stopping and best-k state, metrics history)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from distnn.train.errors import CheckpointError

FORMAT = "distnn-checkpoint-1"


@dataclass
class Snapshot:
    """Everything a run needs to continue exactly; plain arrays, numbers and JSON-able dicts."""

    model: dict[str, np.ndarray]
    optimizer: dict
    normalization: tuple[np.ndarray, np.ndarray] | None
    step: int
    epoch: int
    step_in_epoch: int
    config_yaml: str
    model_spec: list
    coordinator: dict = field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_h5(fh: h5py.File, snap: Snapshot) -> None:
    grp = fh.create_group("model")
    for name, arr in snap.model.items():
        grp.create_dataset(name, data=arr)
    opt = fh.create_group("optimizer")
    for key, value in snap.optimizer.items():
        if isinstance(value, np.ndarray):
            opt.create_dataset(key, data=value)
        else:
            opt.attrs[key] = value
    if snap.normalization is not None:
        norm = fh.create_group("normalization")
        norm.create_dataset("mean", data=snap.normalization[0])
        norm.create_dataset("std", data=snap.normalization[1])
    fh.attrs.update(format=FORMAT, step=snap.step, epoch=snap.epoch,
                    step_in_epoch=snap.step_in_epoch, config=snap.config_yaml,
                    model_spec=json.dumps(snap.model_spec),
                    coordinator=json.dumps(snap.coordinator))


def save_checkpoint(snap: Snapshot, path: Path) -> None:
    """Write `snap` to `path` atomically: a temp file in the same folder, flushed and fsynced,
    then os.replace. A crash at any point leaves the previous file at `path` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as fh:
            _write_h5(fh, snap)
        with open(tmp, "rb") as raw:
            os.fsync(raw.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_h5(fh: h5py.File, path: Path) -> Snapshot:
    if fh.attrs.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {fh.attrs.get('format')!r}, expected {FORMAT!r}")
    opt = {k: np.array(v) for k, v in fh["optimizer"].items()}
    opt.update({k: (v.item() if isinstance(v, np.generic) else v)
                for k, v in fh["optimizer"].attrs.items()})
    norm = None
    if "normalization" in fh:
        norm = (np.array(fh["normalization/mean"]), np.array(fh["normalization/std"]))
    return Snapshot(
        model={k: np.array(v) for k, v in fh["model"].items()},
        optimizer=opt,
        normalization=norm,
        step=int(fh.attrs["step"]),
        epoch=int(fh.attrs["epoch"]),
        step_in_epoch=int(fh.attrs["step_in_epoch"]),
        config_yaml=str(fh.attrs["config"]),
        model_spec=json.loads(fh.attrs["model_spec"]),
        coordinator=json.loads(fh.attrs["coordinator"]),
    )


def load_checkpoint(path: Path) -> Snapshot:
    """Read a checkpoint; any unreadable, truncated or foreign file gives one CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with h5py.File(path, "r") as fh:
            return _read_h5(fh, path)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path}: not a readable distnn checkpoint (truncated or corrupt?): {exc}"
        ) from None


def check_compatible(snap: Snapshot, model_spec: list, path: Path) -> None:
    """Refuse a checkpoint of a different architecture before any array is copied."""
    if json.loads(json.dumps(model_spec)) != snap.model_spec:
        raise CheckpointError(
            f"{path}: checkpoint model {snap.model_spec} does not match the configured model "
            f"{model_spec}"
        )
