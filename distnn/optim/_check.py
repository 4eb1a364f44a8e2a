"""Input checks shared by the update rules and the schedules.

Every failure is a BadValue (a ValueError) that names where the value entered (`where`), the key,
the bad value and what was expected, so a typo in a YAML config is found without reading a
traceback. Its `key` and `detail` let distnn.config say the same under the dotted config key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any

import numpy as np


class BadValue(ValueError):
    """str(): 'momentum: mu=1.5, expected a number in [0, 1)'. `key`: 'mu'; `detail`: the same
    failure without where it entered, '1.5 must be in [0, 1)' (or 'is not ...', 'unknown key')."""

    def __init__(self, message: str, key: str, detail: str):
        super().__init__(message)
        self.key, self.detail = key, detail


def _fail(where: str, key: str, value: Any, kind: str, bound: str, right_kind: bool) -> BadValue:
    shown = show(value)
    detail = f"{shown} must be {bound}" if right_kind and bound else f"{shown} is not {kind}"
    return BadValue(f"{where}: {key}={shown}, expected {kind} {bound}".rstrip(), key, detail)


def number(where: str, key: str, value: Any, low: float | None = None,
           high: float | None = None, low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a float if it is a finite real (not a bool) inside the given bounds; a 0-d
    NumPy array counts as the number it holds (show() prints it so)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    bound = _describe(low, high, low_open, high_open)
    kind = "a number" if low is not None and high is not None else "a finite number"
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise _fail(where, key, value, kind, bound, right_kind=False)
    value = float(value)
    ok = low is None or (value > low if low_open else value >= low)
    if not (ok and (high is None or (value < high if high_open else value <= high))):
        raise _fail(where, key, value, kind, bound, right_kind=True)
    return value


def integer(where: str, key: str, value: Any, low: int = 0) -> int:
    """`value` as an int if it is an integer (Python or NumPy, not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise _fail(where, key, value, "an integer", f">= {low}", right_kind=False)
    if value < low:
        raise _fail(where, key, value, "an integer", f">= {low}", right_kind=True)
    return int(value)


def choice(where: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    """`value` if it is one of the strings `choices`."""
    if not (isinstance(value, str) and value in choices):
        names = ", ".join(choices)
        raise BadValue(f"{where}: {key}={show(value)}, expected one of {names}", key,
                       f"{show(value)} is not one of {names}")
    return value


def show(value: Any) -> str:
    """repr, but a NumPy scalar (say, read back from HDF5) prints as the plain number it is."""
    return repr(value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0
                else value)


def array_desc(a: Any) -> str:
    """'float32[10]' for an array, the type name for anything else (for error messages)."""
    shape = getattr(a, "shape", None)
    if shape is not None and hasattr(a, "dtype"):
        return f"{a.dtype}{list(shape)}"
    return type(a).__name__


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _describe(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """'in [0, 1)', '> 0', '<= 2' or '' (no bound)."""
    if low is not None and high is not None:
        return (f"in {'(' if low_open else '['}{_num(low)}, "
                f"{_num(high)}{')' if high_open else ']'}")
    if low is not None:
        return f"{'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_num(high)}"
    return ""


def known_keys(where: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Reject keys outside `allowed`, naming the first bad one and listing the valid ones."""
    allowed = set(allowed)
    extra = [k for k in given if k not in allowed]
    if extra:
        listed = f"expected some of {', '.join(sorted(allowed)) or '(none)'}"
        raise BadValue(f"{where}: unknown key {extra[0]!r}; {listed}", extra[0],
                       f"unknown key; {listed}")
