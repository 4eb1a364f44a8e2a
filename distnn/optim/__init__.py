"""Update rules over flat buffers and learning-rate schedules. Never imports communication."""

from distnn.optim.rules import (RULES, SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov, RMSProp,
                                make_optimizer)
from distnn.optim.schedules import (SCHEDULES, Constant, Cosine, Exponential, InverseTime,
                                    LinearWarmup, ReduceOnPlateau, StepDecay, make_schedule,
                                    scaled_lr)

__all__ = ["RULES", "SGD", "AdaGrad", "Adam", "AdamW", "Momentum", "Nesterov", "RMSProp",
           "make_optimizer", "SCHEDULES", "Constant", "Cosine", "Exponential", "InverseTime",
           "LinearWarmup", "ReduceOnPlateau", "StepDecay", "make_schedule", "scaled_lr"]
