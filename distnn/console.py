"""Lines for the user on stderr, each written whole.

`print(msg, file=sys.stderr)` writes the text and its newline separately when Python runs
unbuffered (PYTHONUNBUFFERED=1, as under many launchers), and mpiexec forwards what each rank
writes as it comes: two ranks' lines then mix. One write per line keeps them apart.
"""

from __future__ import annotations

import sys


def err(line: str) -> None:
    """Write `line` and its newline to stderr in one write, then flush."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
