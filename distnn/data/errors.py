"""The few exceptions of distnn.data. Each message names the file and the check that failed."""

from __future__ import annotations


class DataError(ValueError):
    """Base of every data error: unknown dataset or split, missing or corrupt files."""


class DatasetNotFoundError(DataError):
    """A dataset's files are absent and could not be downloaded; the message lists which files
    to put where."""


class CorruptFileError(DataError):
    """A file exists but fails a check (md5, gzip, IDX magic/dims/length, label range, pickle
    layout). `path` and `check` say which file and which check."""

    def __init__(self, path, check: str, detail: str):
        self.path, self.check, self.detail = str(path), check, detail
        super().__init__(f"{path}: {check} check failed: {detail}")


class UnsafePickleError(CorruptFileError):
    """A pickle inside a CIFAR-10 archive asked for a callable outside the allow-list; it was
    refused before anything ran."""
