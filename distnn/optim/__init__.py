"""Update rules over flat buffers and learning-rate schedules. Never imports communication.

Rules: `make_optimizer(name, **hparams)` -> UpdateRule with `step(params, grads, lr)` over
(P,) float arrays in place, `state_dict()`, `load_state_dict(d)`.
Schedules: `make_schedule(cfg)` -> object with `lr(step, epoch, metrics=None)`, `update(value)`,
`state_dict()`, `load_state_dict(d)`; `scaled_lr` for the linear scaling rule.
"""

from distnn.optim.adam import Adam, AdamW
from distnn.optim.factory import RULES, SCHEDULES, make_optimizer, make_schedule
from distnn.optim.plateau import ReduceOnPlateau
from distnn.optim.rules import SGD, AdaGrad, Momentum, Nesterov, RMSProp, UpdateRule
from distnn.optim.schedules import (Constant, Cosine, Exponential, InverseTime, LinearWarmup,
                                    Schedule, StepDecay, scaled_lr)

__all__ = ["UpdateRule", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam", "AdamW",
           "RULES", "make_optimizer", "Schedule", "Constant", "StepDecay", "Exponential",
           "InverseTime", "Cosine", "LinearWarmup", "ReduceOnPlateau", "SCHEDULES",
           "make_schedule", "scaled_lr"]
