"""Update rules over flat buffers and learning-rate schedules. Never imports communication.

Rules: `make_optimizer(name, **hparams)` -> UpdateRule with `step(params, grads, lr)` over
(P,) float arrays in place, `state_dict()`, `load_state_dict(d)`.
Schedules: `make_schedule(cfg)` -> object with `lr(step, epoch, metrics=None)`, `update(value)`,
`state_dict()`, `load_state_dict(d)`; `scaled_lr` for the linear scaling rule.
Each rule and schedule declares its hyper-parameters (`hparams`: HParam with default and range);
`hparams_of(kind, name)` lists what a factory takes, `resolve_for(kind, name, given)` checks
config values against it. Bad values raise BadValue (a ValueError) naming the key.
"""

from distnn.optim._check import BadValue
from distnn.optim.adam import Adam, AdamW
from distnn.optim.factory import (
    FULL_BATCH,
    OPTIMIZERS,
    REGISTRIES,
    RULES,
    SCHEDULES,
    foreign,
    hparams_of,
    make_optimizer,
    make_schedule,
    resolve_for,
    takers,
)
from distnn.optim.hparams import REQUIRED, HParam, resolve
from distnn.optim.lbfgs import LBFGS
from distnn.optim.plateau import ReduceOnPlateau
from distnn.optim.rules import SGD, AdaGrad, Momentum, Nesterov, RMSProp, UpdateRule
from distnn.optim.scaled import ScaledLR
from distnn.optim.schedules import (
    Constant,
    Cosine,
    Exponential,
    InverseTime,
    LinearWarmup,
    Schedule,
    StepDecay,
    scaled_lr,
)

__all__ = ["UpdateRule", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam", "AdamW",
           "LBFGS", "FULL_BATCH", "OPTIMIZERS",
           "ScaledLR", "RULES", "make_optimizer", "Schedule", "Constant", "StepDecay",
           "Exponential", "InverseTime", "Cosine", "LinearWarmup", "ReduceOnPlateau", "SCHEDULES",
           "make_schedule", "scaled_lr", "HParam", "REQUIRED", "BadValue", "resolve",
           "REGISTRIES", "hparams_of", "takers", "foreign", "resolve_for"]
