"""Asynchronous successive halving (ASHA, Li et al. 2018) for the local and SLURM backends.

The rule is Ray Tune's ASHAScheduler with one bracket (tests/sweep/test_asha.py checks the same
decisions as Ray's own bookkeeping): rungs at grace * rf**k epochs below the stage's epochs; a
trial reaching a rung is stopped when its metric is below the (1 - 1/rf) quantile of the values
recorded there before it, and its value is recorded. On Ray, Tune's ASHAScheduler itself runs.
The rungs live in a file under a lock, so trials run by separate processes (SLURM array tasks)
share them; a resumed sweep finds them again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from distnn.sweep.records import locked


def milestones(grace: int, rf: float, max_t: int) -> list[float]:
    """The rungs, in epochs, lowest first (Ray's count: int(log(max_t/grace)/log(rf)) + 1)."""
    count = int(np.log(max_t / grace) / np.log(rf) + 1) if max_t >= grace else 0
    return [float(grace * rf ** k) for k in range(count)]


class Asha:
    """The rungs of one stage in `path` (JSON lines {"rung", "trial", "value"})."""

    def __init__(self, path: Path, grace: int, rf: float, max_t: int, mode: str):
        self.path, self.rf, self.sign = Path(path), rf, (1.0 if mode == "max" else -1.0)
        self.rungs = milestones(grace, rf, max_t)

    def _recorded(self) -> dict[float, dict[str, float]]:
        out: dict[float, dict[str, float]] = {m: {} for m in self.rungs}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn line of a killed writer
                out.setdefault(float(rec["rung"]), {})[rec["trial"]] = rec["value"]
        return out

    def decide(self, trial: str, epochs: int, value: float | None) -> bool:
        """Whether `trial`, `epochs` epochs in with metric `value`, goes on (False: stop it)."""
        reward = self.sign * value if value is not None and math.isfinite(value) else None
        with locked(self.path):
            recorded = self._recorded()
            for rung in reversed(self.rungs):  # the highest rung reached decides
                if epochs < rung or trial in recorded[rung]:
                    continue
                seen = list(recorded[rung].values())
                cutoff = np.nanpercentile(seen, (1 - 1 / self.rf) * 100) if seen else None
                go_on = not (cutoff is not None and reward is not None and reward < cutoff)
                if reward is not None:
                    with open(self.path, "a") as fh:
                        fh.write(json.dumps({"rung": rung, "trial": trial,
                                             "value": reward}) + "\n")
                return go_on
        return True
