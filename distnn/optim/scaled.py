"""Per-entry learning-rate multipliers for any update rule (fine-tuning: a smaller rate for
pretrained layers, 0 for frozen ones).

Every rule's step is linear in the learning rate: SGD, momentum and Nesterov (the velocity sums
lr-scaled gradients), AdaGrad, RMSProp, Adam and AdamW's decoupled decay all move a parameter by
lr times something that does not depend on lr. So running the rule with lr and scaling each
entry's move by its multiplier s is the rule run with lr * s on that entry, for every rule,
without touching any of them: x = x_before + s * (x_rule - x_before). An entry with s = 1 keeps
the rule's value to the bit, one with s = 0 its old value to the bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from distnn.optim.rules import UpdateRule


class ScaledLR(UpdateRule):
    """`rule` with the learning rate of entry i multiplied by scale[i] (>= 0, finite). The
    state (checkpoints) is the rule's own; the step allocates nothing after the first."""

    name = "scaled"

    def __init__(self, rule: UpdateRule, scale: np.ndarray) -> None:
        super().__init__()
        scale = np.asarray(scale)
        if scale.ndim != 1 or not bool(np.all(np.isfinite(scale) & (scale >= 0))):
            raise ValueError(f"{rule.name}: learning-rate multipliers of shape {scale.shape}, "
                             f"expected a 1-D array of finite numbers >= 0")
        self.rule = rule
        self.scale = scale
        self._scaled = scale != 1  # entries whose move is scaled (the others: the rule's)
        self._still = scale == 0  # entries that keep their old value
        self._before: np.ndarray | None = None

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        if params.shape != self.scale.shape:
            raise ValueError(f"{self.rule.name}.step: params of shape {params.shape}, but "
                             f"learning-rate multipliers for {self.scale.shape}")
        if self._before is None or self._before.dtype != params.dtype:
            self._before = np.empty_like(params)
            self._moved = np.empty_like(params)
            self._factor = self.scale.astype(params.dtype)
        before, moved = self._before, self._moved
        np.copyto(before, params)
        self.rule.step(params, grads, lr)
        np.subtract(params, before, out=moved)
        moved *= self._factor
        moved += before
        np.copyto(params, moved, where=self._scaled)
        np.copyto(params, before, where=self._still)
        self.t = self.rule.t

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        self.rule.load_state_dict(d)
        self.t = self.rule.t
