"""The SPMD training run (run.py and what it composes). The package is also callable:
`distnn.train(config, ...)` is distnn.api.train, the public Python entry (`distnn.train` is
both this package and that function, as the API promises)."""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from distnn.api import train  # the API imports this package: only when called

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
