"""Run directories and checkpoints in an object store: `s3://bucket/prefix` through fsspec/s3fs.

A run directory given as a URL is staged: rank 0 works in a fresh local directory (removed when
the run ends) that starts as a copy of the published objects (mirror.py), so the checkpoint code
(checksums, atomic writes, retention, `--resume auto`) runs unchanged on local files, and every
change is published back (remote.py: a temporary key, a server-side copy to the final key, the
temporary key deleted). One writer at a time: lock.py, a conditional put.

This module imports nothing (distnn.config uses `is_url`); fsspec and s3fs are imported only when
a URL is met, so a local run never needs them.
"""

from __future__ import annotations

import re

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# A URL that went through pathlib.Path lost a slash: 's3://b/k' -> 's3:/b/k'.
FOLDED_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):/(?!/)")
SCHEMES = ("s3",)
INSTALL_HINT = "pip install 'distnn[s3]'"


def is_url(text: object) -> bool:
    """Whether `text` is a URL (`scheme://...`), not a local path."""
    return isinstance(text, str) and URL.match(text) is not None


def shown(path: object) -> str:
    """`path` as the user wrote it: a URL made into a Path ('s3:/b/k') gets its '//' back."""
    text = str(path)
    return FOLDED_URL.sub(r"\1://", text, count=1) if FOLDED_URL.match(text) else text
