"""The Numba settings of every distnn kernel, in one place: `@njit`, or `@njit_fastmath(...)`.

- cache=True: the compiled code is cached on disk (in the kernel module's __pycache__), so a new
  process (an MPI rank, a Ray actor) does not compile again.
- fastmath=False: IEEE arithmetic in the order written. A kernel that needs more names the LLVM
  fast-math flags it allows (`njit_fastmath`), never all of them.
- boundscheck=False: the callers pass buffers of checked shapes.
- nogil=True: the conv layers run kernels on several threads (distnn/nn/threads.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import numba as nb

if TYPE_CHECKING:  # generic in numba's type stubs only
    from numba.core.dispatcher import Dispatcher

F = TypeVar("F", bound=Callable[..., object])


def _compile(fn: F, fastmath: bool | set[str]) -> Dispatcher[F]:
    return nb.njit(fn, cache=True, fastmath=fastmath, boundscheck=False, nogil=True)


def njit(fn: F) -> Dispatcher[F]:
    """Compile `fn` (lazily, per argument types) with distnn's settings."""
    return _compile(fn, False)


def njit_fastmath(*flags: str) -> Callable[[F], Dispatcher[F]]:
    """`njit`, but allowing these fast-math flags: "contract" (multiply-adds may fuse into FMAs),
    "reassoc" (sums may be reordered, e.g. into vector lanes; the order is still fixed by the
    compiled code, so results are the same from run to run)."""

    def wrap(fn: F) -> Dispatcher[F]:
        return _compile(fn, set(flags))

    return wrap
