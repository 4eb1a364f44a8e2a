"""Lines for the user on stderr, each written whole.

`print(msg, file=sys.stderr)` writes the text and its newline separately when Python runs
unbuffered (PYTHONUNBUFFERED=1, as under many launchers), and mpiexec forwards what each rank
writes as it comes: two ranks' lines then mix. One write per line keeps them apart.
"""

from __future__ import annotations

import re
import sys

LINE_LIMIT = 1000  # characters of a bad-input message; a longer one is cut in the middle


def err(line: str) -> None:
    """Write `line` and its newline to stderr in one write, then flush."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def one_line(message: object, limit: int = LINE_LIMIT) -> str:
    """A bad-input message as one line of at most about `limit` characters: line breaks (and
    their indentation) become spaces; a long message loses its middle, so that the key or file
    named in front and what was expected at the end both stay."""
    text = re.sub(r"\s*\n\s*", " ", str(message)).strip()
    if len(text) > limit:
        head, tail = text[:limit * 2 // 3], text[-(limit // 3):]
        text = f"{head} ...[{len(text) - len(head) - len(tail)} characters cut]... {tail}"
    return text
