"""distnn: a data-parallel trainer for convolutional networks in NumPy and Numba.

The public Python API (distnn/api.py), imported on first use so that `import distnn` stays
light:

    import distnn
    result = distnn.train("quickstart")             # -> distnn.RunResult
    model = distnn.load(result.checkpoint)          # -> distnn.Model
    probabilities = model.predict(images)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["Model", "RunResult", "__version__", "load", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":  # the package distnn.train, callable as distnn.api.train
        return importlib.import_module("distnn.train")
    if name in ("Model", "RunResult", "load"):
        return getattr(importlib.import_module("distnn.api"), name)
    raise AttributeError(f"module 'distnn' has no attribute {name!r}")
