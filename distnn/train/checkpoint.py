"""HDF5 checkpoints: written atomically by rank 0, verified on load. No pickle anywhere.

Layout of a checkpoint file:
  /model/<name>          every named parameter and state array ('conv0.W', 'batchnorm2.running_var')
  /optimizer/<key>       optimizer state arrays; its scalars are attributes of /optimizer
  /normalization/...     the input preprocessing (distnn/data/preprocess.py), its kind named by
                         its arrays: mean, std (C,) per channel (channel_mean_std, the only kind
                         of files written before the others); mean_image (H, W, C); pca_mean
                         (H, W, C), pca_whitening (D, k), pca_eigenvalues (k,), pca_eps (1,)
  attrs: format, step, epoch, step_in_epoch, config (YAML text), model_spec (JSON),
         coordinator (JSON: schedule, early-stopping and best-k state, rollbacks, lr scale),
         inputs (JSON: the per-sample input shape and the class names; absent in files written
         before it, which then need the dataset to know them),
         arrays (JSON list of every dataset above), meta_crc32
Integrity (format 2): every dataset carries a `crc32` attribute, the CRC-32 of its dtype, shape
and raw bytes; `meta_crc32` covers the attributes above and the optimizer scalars. A checkpoint
that fails either check is refused with one CheckpointError naming the file and the array.
Format-1 files (no checksums) still load, unverified.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from distnn.data.preprocess import Normalization, Preprocess, carried, normalization_arrays
from distnn.train.errors import CheckpointError

FORMAT = "distnn-checkpoint-2"
UNVERIFIED_FORMAT = "distnn-checkpoint-1"  # written before checksums: loads without them
GROUPS = ("model", "optimizer", "normalization")
WRITE_CHUNK = 1 << 22  # bytes per os.write


@dataclass
class Snapshot:
    """Everything a run needs to continue exactly; plain arrays, numbers and JSON-able dicts."""

    model: dict[str, np.ndarray]
    optimizer: dict
    # (mean, std) per channel, a Preprocess of another kind (mean_image, pca_whiten), or None
    normalization: Normalization
    step: int
    epoch: int
    step_in_epoch: int
    config_yaml: str
    model_spec: list
    coordinator: dict = field(default_factory=dict)
    # {"input_shape": [H, W, C], "class_names": [...]}: what the model takes and names ({} in
    # files written before it). With pca_whiten the model takes (1, 1, k); the images' shape
    # is that of normalization's pca_mean.
    inputs: dict = field(default_factory=dict)


def array_crc(arr: np.ndarray) -> int:
    """CRC-32 of an array's dtype, shape and bytes: a changed value, type or shape changes it."""
    arr = np.ascontiguousarray(arr)
    head = zlib.crc32(f"{arr.dtype.str}{arr.shape}".encode())
    return zlib.crc32(arr.data.cast("B"), head)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _meta_crc(attrs: dict, scalars: dict) -> int:
    text = json.dumps({"attrs": attrs, "optimizer": scalars}, sort_keys=True)
    return zlib.crc32(text.encode())


def _arrays(snap: Snapshot) -> dict[str, np.ndarray]:
    out = {f"model/{k}": v for k, v in snap.model.items()}
    out.update({f"optimizer/{k}": v for k, v in snap.optimizer.items()
                if isinstance(v, np.ndarray)})
    out.update({f"normalization/{k}": v
                for k, v in normalization_arrays(snap.normalization).items()})
    return out


def _write_h5(fh: h5py.File, snap: Snapshot) -> None:
    arrays = _arrays(snap)
    for name in GROUPS[:2]:
        fh.create_group(name)
    for name, arr in arrays.items():
        fh.create_dataset(name, data=arr).attrs["crc32"] = array_crc(arr)
    scalars = {k: _plain(v) for k, v in snap.optimizer.items() if not isinstance(v, np.ndarray)}
    fh["optimizer"].attrs.update(scalars)
    attrs = dict(format=FORMAT, step=snap.step, epoch=snap.epoch,
                 step_in_epoch=snap.step_in_epoch, config=snap.config_yaml,
                 model_spec=json.dumps(snap.model_spec),
                 coordinator=json.dumps(snap.coordinator), arrays=json.dumps(list(arrays)))
    if snap.inputs:
        attrs["inputs"] = json.dumps(snap.inputs)
    fh.attrs.update(attrs, meta_crc32=_meta_crc(attrs, scalars))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """A new temp name beside `path` (`.<name>.<8 hex>.tmp`, the pattern retention.py cleans)."""
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"


def encode(snap: Snapshot) -> bytes:
    """The checkpoint file's bytes, built in memory (HDF5's core driver). HDF5 itself never
    writes to disk: a full disk or an I/O error then meets a plain os.write, which fails
    cleanly, where a failing HDF5 flush leaves the library in a state that can crash later."""
    # One allocation for the whole image (the arrays plus 1 MiB of headroom for metadata) rather
    # than growing it 64 KiB at a time: half the time on a cifar10-sized checkpoint.
    size = sum(a.nbytes for a in _arrays(snap).values()) + (1 << 20)
    with h5py.File(f"distnn-{uuid.uuid4()}.h5", "w", driver="core", backing_store=False,
                   block_size=size) as fh:
        _write_h5(fh, snap)
        fh.flush()
        return fh.id.get_file_image()


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create a new empty temp file beside `path`, mode 0o666 less the umask (as `open` would),
    not mkstemp's 0o600: checkpoints are as readable as the run's other files."""
    while True:
        tmp = temp_path(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def write_bytes(fd: int, data: bytes) -> None:
    """All of `data` to `fd`, then fsync."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:WRITE_CHUNK]):]
    os.fsync(fd)


def replace_atomically(path: Path, data: bytes) -> None:
    """Make `path` hold `data`: a temp file in the same folder, written and fsynced, then
    os.replace and an fsync of the folder. A crash or an exception at any point leaves the
    previous file at `path` intact, and an exception removes the temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        write_bytes(fd, data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    commit(tmp, path)


def commit(tmp: Path, path: Path) -> None:
    """os.replace the complete temp file `tmp` over `path` and fsync the folder; on failure
    remove `tmp` (the file at `path` is still the previous one)."""
    try:
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(snap: Snapshot, path: Path) -> None:
    """Write `snap` to `path` atomically (`replace_atomically`)."""
    replace_atomically(path, encode(snap))


def _read_array(fh: h5py.File, name: str, path: Path, verify: bool) -> np.ndarray:
    if name not in fh or not isinstance(fh[name], h5py.Dataset):
        raise CheckpointError(f"{path}: array {name!r} is missing (the file is corrupt)")
    ds = fh[name]
    arr = np.array(ds)
    if verify:
        stored = ds.attrs.get("crc32")
        if stored is None or int(stored) != array_crc(arr):
            raise CheckpointError(
                f"{path}: array {name!r} fails its CRC-32 check (its data, shape or type "
                f"changed since it was written): the file is corrupt")
    return arr


def _check_normalization(mean: np.ndarray, std: np.ndarray, path: Path) -> None:
    if mean.ndim != 1 or mean.shape != std.shape:
        raise CheckpointError(f"{path}: stored normalisation mean {mean.shape} and std "
                              f"{std.shape} are not two vectors of one length per channel")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise CheckpointError(f"{path}: stored normalisation is invalid (mean {mean.tolist()}, "
                              f"std {std.tolist()}; every value must be finite and std > 0)")


def _read_normalization(stored: dict[str, np.ndarray], path: Path) -> Normalization:
    """The stored preprocessing: None, a (mean, std) tuple (files written before the other
    kinds hold only these), or a Preprocess of another kind."""
    if not stored:
        return None
    if set(stored) <= {"mean", "std"}:
        norm = (stored.get("mean", np.empty(0)), stored.get("std", np.empty(0)))
        _check_normalization(*norm, path)
        return norm
    try:
        return carried(Preprocess.from_arrays(stored))
    except ValueError as exc:
        raise CheckpointError(f"{path}: stored normalisation is invalid: {exc}") from None


def _read_meta(fh: h5py.File, path: Path) -> tuple[dict, dict, bool]:
    """The file attributes and optimizer scalars, meta CRC checked; verify: format 2."""
    fmt = fh.attrs.get("format")
    if fmt not in (FORMAT, UNVERIFIED_FORMAT):
        raise CheckpointError(f"{path}: format {fmt!r}, expected {FORMAT!r}")
    attrs = {k: _plain(v) for k, v in fh.attrs.items() if k != "meta_crc32"}
    scalars = {k: _plain(v) for k, v in fh["optimizer"].attrs.items()}
    verify = fmt == FORMAT
    if verify and int(fh.attrs.get("meta_crc32", -1)) != _meta_crc(attrs, scalars):
        raise CheckpointError(f"{path}: its attributes (step, config, coordinator state) fail "
                              f"their CRC-32 check: the file is corrupt")
    return attrs, scalars, verify


def _listed_arrays(fh: h5py.File, attrs: dict, path: Path, verify: bool) -> list[str]:
    found = [f"{g}/{k}" for g in GROUPS if g in fh for k in fh[g]]
    if not verify:
        return found
    listed = json.loads(attrs["arrays"])
    extra = sorted(set(found) - set(listed))
    if extra:
        raise CheckpointError(f"{path}: unexpected array(s) {extra} (the file is corrupt)")
    return listed


def _group(arrays: dict[str, np.ndarray], group: str) -> dict[str, np.ndarray]:
    return {k.split("/", 1)[1]: v for k, v in arrays.items() if k.split("/", 1)[0] == group}


def _read_h5(fh: h5py.File, path: Path) -> Snapshot:
    attrs, opt, verify = _read_meta(fh, path)
    arrays = {name: _read_array(fh, name, path, verify)
              for name in _listed_arrays(fh, attrs, path, verify)}
    return Snapshot(
        model=_group(arrays, "model"),
        optimizer={**opt, **_group(arrays, "optimizer")},
        normalization=_read_normalization(_group(arrays, "normalization"), path),
        step=int(attrs["step"]),
        epoch=int(attrs["epoch"]),
        step_in_epoch=int(attrs["step_in_epoch"]),
        config_yaml=str(attrs["config"]),
        model_spec=json.loads(attrs["model_spec"]),
        coordinator=json.loads(attrs["coordinator"]),
        inputs=json.loads(attrs.get("inputs", "{}")),
    )


def load_checkpoint(path: Path) -> Snapshot:
    """Read and verify a checkpoint; any unreadable, truncated, corrupt or foreign file gives one
    CheckpointError naming the file (and the array, when one fails its check)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with h5py.File(path, "r") as fh:
            return _read_h5(fh, path)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        # json.JSONDecodeError and UnicodeDecodeError are ValueErrors.
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
