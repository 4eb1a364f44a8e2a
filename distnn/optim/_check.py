"""Input checks shared by the update rules and the schedules.

Every failure is a ValueError that names where the value entered (`where`), the key, the bad
value and what was expected, so a typo in a YAML config is found without reading a traceback.
"""

from __future__ import annotations

import math
from numbers import Integral, Real


def number(where: str, key: str, value, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a float if it is a finite real (not a bool) inside the given bounds."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{where}: {key}={show(value)}, expected "
                         f"{_describe(low, high, low_open, high_open)}")
    return float(value)


def integer(where: str, key: str, value, low: int = 0) -> int:
    """`value` as an int if it is an integer (Python or NumPy, not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{where}: {key}={show(value)}, expected an integer >= {low}")
    return int(value)


def show(value) -> str:
    """repr, but a NumPy scalar (say, read back from HDF5) prints as the plain number it is."""
    return repr(value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0
                else value)


def array_desc(a) -> str:
    """'float32[10]' for an array, the type name for anything else (for error messages)."""
    shape = getattr(a, "shape", None)
    if shape is not None and hasattr(a, "dtype"):
        return f"{a.dtype}{list(shape)}"
    return type(a).__name__


def _describe(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"a finite number {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"a finite number {'<' if high_open else '<='} {high}"
    return "a finite number"


def known_keys(where: str, given, allowed) -> None:
    """Reject keys outside `allowed`, naming the first bad one and listing the valid ones."""
    extra = [k for k in given if k not in allowed]
    if extra:
        raise ValueError(f"{where}: unknown key {extra[0]!r}; expected some of "
                         f"{', '.join(sorted(allowed)) or '(none)'}")
