"""Hyper-parameter declarations: every update rule and schedule lists its keys once, each with
its default and the values it may take (`hparams`). Its constructor, make_optimizer /
make_schedule and distnn.config all check through that list, so a new rule is one class that
declares its hyper-parameters plus one registry entry in distnn.optim.factory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from distnn.optim._check import BadValue, choice, integer, known_keys, number


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of a hyper-parameter that has none


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter. A finite number by default, within low/high (each bound closed
    unless *_open); integer=True for counts (>= low, 0 if None); choices for strings."""

    key: str
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    choices: tuple[str, ...] = ()

    def check(self, where: str, value: Any) -> Any:
        """`value` as this hyper-parameter's type (float, int or str); BadValue if it is not."""
        if self.choices:
            return choice(where, self.key, value, self.choices)
        if self.integer:
            return integer(where, self.key, value, low=int(self.low or 0))
        return number(where, self.key, value, self.low, self.high, self.low_open,
                      self.high_open)


def resolve(where: str, declared: tuple[HParam, ...], given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` checked against `declared`, with defaults for the keys it leaves out: {key: value}
    in declaration order. Unknown keys, missing required ones and bad values raise BadValue."""
    known_keys(where, given, [p.key for p in declared])
    out = {}
    for p in declared:
        if p.key in given:
            out[p.key] = p.check(where, given[p.key])
        elif p.default is REQUIRED:
            raise BadValue(f"{where}: missing key {p.key!r}", p.key,
                           f"missing, and {where} has no default for it")
        else:
            out[p.key] = p.default
    return out


class Declared:
    """Base of the update rules and the schedules: `name` (the registry key) and `hparams`
    (the constructor's keywords). `_set_hparams` checks them and sets each as an attribute."""

    name: ClassVar[str] = ""
    hparams: ClassVar[tuple[HParam, ...]] = ()

    def _set_hparams(self, given: Mapping[str, Any]) -> None:
        for key, value in resolve(self.name, self.hparams, given).items():
            setattr(self, key, value)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(p.key for p in cls.hparams)
