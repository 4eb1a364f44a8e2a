"""md5 verification, downloads that never leave a half file behind, and the one "missing
dataset" error."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from distnn.data.catalog import ENV_OFFLINE, DatasetSpec, FileSpec, dataset_folder
from distnn.data.errors import CorruptFileError, DatasetNotFoundError

CHUNK = 1 << 20
TIMEOUT = 30.0  # seconds without data before a mirror counts as unreachable
_VERIFIED: set = set()  # (path, size, mtime_ns, md5) already checked in this process


def md5_file(path: str | os.PathLike) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify_md5(path: str | os.PathLike, expected: str) -> None:
    """Raise CorruptFileError (check 'md5') unless the file's md5 is `expected`.

    Remembers success per (path, size, mtime) so the train and test splits of one archive, or
    repeated get_dataset calls, hash a file once per process.
    """
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, expected)
    if key in _VERIFIED:
        return
    actual = md5_file(path)
    if actual != expected:
        raise CorruptFileError(path, "md5", f"got {actual}, expected {expected} ({st.st_size} "
                                            f"bytes); the file is corrupt, truncated or not the "
                                            f"canonical distribution: delete it and download again")
    _VERIFIED.add(key)


def download_file(url: str, dest: Path, md5: str | None, quiet: bool = False) -> Path:
    """Fetch `url` into `dest` with a tqdm progress bar, checking md5 on the way.

    The bytes go to a temp file in dest's folder; only a complete file with the right md5 is
    renamed (os.replace, atomic) to `dest`, so an interrupted or corrupt download is never left
    where it would be read as complete. Concurrent downloads of the same file (several ranks)
    are safe: each writes its own temp file and the last rename wins with identical bytes.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                      disable=quiet or None) as bar:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        if md5 is not None and h.hexdigest() != md5:
            raise CorruptFileError(url, "md5", f"download got {h.hexdigest()}, expected {md5}")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def missing_files(spec: DatasetSpec, folder: Path, split: str | None = None) -> list[FileSpec]:
    files = spec.files if split is None else spec.splits[split]
    return [f for f in files if not (folder / f.name).is_file()]


def offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no")


def ensure_files(spec: DatasetSpec, data_dir=None, split: str | None = None,
                 download: bool | None = None, quiet: bool = False) -> Path:
    """The dataset's folder with its files present (not yet md5-checked).

    Missing files are downloaded from the spec's mirrors unless `download` is False (None means
    "unless $DISTNN_OFFLINE is set"). If any stay missing: one DatasetNotFoundError listing
    the files, their md5 and the folder to put them in.
    """
    folder = dataset_folder(spec, data_dir)
    missing = missing_files(spec, folder, split)
    if not missing:
        return folder
    allowed = (not offline()) if download is None else download
    failures = []
    if allowed and spec.mirrors:
        for f in missing:
            failures += _download_one(spec, f, folder, quiet)
        missing = missing_files(spec, folder, split)
        if not missing:
            return folder
    raise DatasetNotFoundError(_missing_message(spec, folder, missing, allowed, failures))


def _download_one(spec: DatasetSpec, f: FileSpec, folder: Path, quiet: bool) -> list[str]:
    """Try each mirror in turn; the reasons they failed (empty on success)."""
    failures = []
    for base in spec.mirrors:
        try:
            download_file(base + f.name, folder / f.name, f.md5, quiet=quiet)
            return []
        except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, timeout, md5
            failures.append(f"{base}{f.name}: {exc}")
    return failures


def _missing_message(spec, folder, missing, tried, failures) -> str:
    lines = [f"dataset {spec.name!r} is missing {len(missing)} file(s) in {folder}:"]
    lines += [f"  {folder / f.name}  ({f.size} bytes, md5 {f.md5})" for f in missing]
    if failures:
        lines.append("the download failed:")
        lines += [f"  {reason}" for reason in failures]
    elif not tried:
        lines.append(f"downloads are disabled (${ENV_OFFLINE} or download=False).")
    lines.append("Put the files there, point --data-dir or $DISTNN_DATA_DIR at a folder holding "
                 f"{spec.folder}/, or run `distnn data download {spec.name}` with internet access.")
    return "\n".join(lines)
