"""The object store through fsspec/s3fs: where a URL points, its published objects, publishing.

Publishing a file (`upload`): it goes to a temporary key `<key>.tmp-<32 hex>`, its size is
checked against the local file, then a server-side copy makes the final key and the temporary
key is deleted. S3 makes a PUT or a copy visible whole, so no reader ever sees part of an
object under a final key; the size check before the copy means a short upload never replaces a
good object. Readers list final keys only (`published`): a `.tmp-` key is a writer's unfinished
work, and the lock object is no file of the run.

The endpoint (MinIO, moto, a cloud other than AWS) comes from botocore's standard settings:
`AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), with the usual `AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY` / `AWS_DEFAULT_REGION` or ~/.aws files.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distnn.config import ConfigError
from distnn.storage import INSTALL_HINT, SCHEMES, is_url
from distnn.train.checkpoint import Snapshot, load_checkpoint
from distnn.train.errors import CheckpointError

TEMP_KEY = re.compile(r".+\.tmp-[0-9a-f]{32}")
LOCK_NAME = "distnn.lock"
COPY_LIMIT = 5 << 30  # bytes: the largest object one CopyObject request may copy


@dataclass(frozen=True)
class Location:
    """`s3://bucket/prefix`: `url` as given (no trailing slash), fsspec paths below it."""

    url: str
    bucket: str
    prefix: str  # no slash at either end; "" for the bucket's top

    def path(self, rel: str = "") -> str:
        """The fsspec path ('bucket/prefix/rel') of `rel`, a '/'-separated name below it."""
        return "/".join(p for p in (self.bucket, self.prefix, rel) if p)

    def key(self, rel: str) -> str:
        """The object key (below the bucket) of `rel`."""
        return "/".join(p for p in (self.prefix, rel) if p)

    def rel(self, path: str) -> str:
        """The name below this location of an fsspec path under it."""
        return path[len(self.path()):].lstrip("/")


def parse(url: str) -> Location:
    """`url` checked: a scheme distnn knows and a bucket (ConfigError naming the URL)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in SCHEMES:
        raise ConfigError(f"{url}: unsupported URL scheme {scheme!r}; expected a local path or "
                          f"s3://BUCKET/PREFIX")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(f"{url}: no bucket named; expected s3://BUCKET/PREFIX")
    return Location(url.rstrip("/"), bucket, prefix.strip("/"))


def filesystem(loc: Location) -> Any:
    """The s3fs file system for `loc` (ConfigError with the install hint without s3fs)."""
    try:
        import s3fs
    except ImportError:  # absent, or present but broken (a botocore that does not fit it)
        raise ConfigError(f"{loc.url}: an s3:// location needs the s3 extra: "
                          f"{INSTALL_HINT}") from None
    # No listing cache: a listing must show what another node published a moment ago.
    return s3fs.S3FileSystem(use_listings_cache=False)


def connect(url: str) -> tuple[Location, Any]:
    """Parse `url`, open its file system and check that its bucket answers; any failure is one
    ConfigError naming the URL (no such bucket, no endpoint, no credentials, no s3fs)."""
    loc = parse(url)
    fs = filesystem(loc)
    try:
        fs.call_s3("head_bucket", Bucket=loc.bucket)
    except Exception as exc:  # botocore and aiohttp errors have no common base but Exception
        raise ConfigError(f"{loc.url}: cannot reach bucket {loc.bucket!r}: "
                          f"{_reason(exc)}") from None
    return loc, fs


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such bucket"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def published(fs: Any, loc: Location) -> dict[str, dict]:
    """{name below `loc`: its info (size, ETag, LastModified)} of every published object:
    neither a temporary `.tmp-` key nor the lock object."""
    found = fs.find(loc.path(), detail=True)
    out = {}
    for path, info in found.items():
        name = loc.rel(path)
        if info.get("type") == "file" and name and name != LOCK_NAME \
                and not TEMP_KEY.fullmatch(name):
            out[name] = info
    return out


def stray_temps(fs: Any, loc: Location) -> list[str]:
    """The temporary keys below `loc` (a writer died between its upload and its copy)."""
    return sorted(loc.rel(p) for p in fs.find(loc.path()) if TEMP_KEY.fullmatch(loc.rel(p)))


def upload(fs: Any, local: Path, path: str, data: bytes | None = None) -> None:
    """Publish the local file `local` (or `data`, a snapshot of it already read) at the fsspec
    path `path` (see the module doc); on any failure the temporary key is removed (best effort)
    and the object at `path` is unchanged."""
    size = os.path.getsize(local) if data is None else len(data)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        if data is None:
            fs.put_file(str(local), tmp)
        else:
            fs.pipe_file(tmp, data)
        got = fs.info(tmp)["size"]
        if got != size:
            raise OSError(f"uploaded {got} of {size} bytes of {local} to {tmp}")
        copy(fs, tmp, path, size)
    finally:
        with contextlib.suppress(Exception):
            fs.rm_file(tmp)


def copy(fs: Any, source: str, path: str, size: int) -> None:
    """Server-side copy of the object at `source` (of `size` bytes) to `path`: one request up
    to S3's 5 GiB limit for it (s3fs's own copy asks for the size first), else s3fs's
    multipart copy."""
    if size >= COPY_LIMIT:
        fs.copy(source, path)
        return
    bucket, _, key = path.partition("/")
    src_bucket, _, src_key = source.partition("/")
    fs.call_s3("copy_object", Bucket=bucket, Key=key,
               CopySource={"Bucket": src_bucket, "Key": src_key})


def download(fs: Any, path: str, local: Path) -> None:
    """The object at `path` into the local file `local`, which appears only once complete."""
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.parent / f".{local.name}.{uuid.uuid4().hex[:8]}.download"
    try:
        fs.get_file(path, str(tmp))
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(url: str) -> Snapshot:
    """Read and verify the checkpoint at `url` (downloaded to a temporary file that is removed
    afterwards); any failure is one CheckpointError naming the URL."""
    try:
        loc, fs = connect(url)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    if TEMP_KEY.fullmatch(loc.prefix):
        raise CheckpointError(f"{url}: an unpublished temporary object (a writer's unfinished "
                              f"upload), not a checkpoint; expected a final key such as "
                              f"checkpoints/last.h5")
    with tempfile.TemporaryDirectory(prefix="distnn-ckpt-") as tmp:
        local = Path(tmp) / (loc.prefix.rpartition("/")[2] or "checkpoint.h5")
        try:
            download(fs, loc.path(), local)
        except FileNotFoundError:
            raise CheckpointError(f"{url}: no such checkpoint object") from None
        except Exception as exc:
            raise CheckpointError(f"{url}: cannot download: {_reason(exc)}") from None
        try:
            return load_checkpoint(local)
        except CheckpointError as exc:
            raise CheckpointError(str(exc).replace(str(local), url)) from None


def read_any(path: Path | str) -> Snapshot:
    """A checkpoint from a local path or a URL (`read_checkpoint`)."""
    return read_checkpoint(path) if isinstance(path, str) and is_url(path) \
        else load_checkpoint(Path(path))
