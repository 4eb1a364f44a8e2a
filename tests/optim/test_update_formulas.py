"""Issue 20: the `optimizer:` and `schedule:` settings, through a real training run.

For every update rule with non-default hyper-parameters, the updates the trainer applies equal
the rule's formula written out below in float64 (within float32 round-off); for every schedule
with non-default parameters, the rate of every step equals its formula at that step's
(fractional) epoch. The harness (tiny HDF5 data, a dense model, spies that call through) is in
tests/test_config_effects.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.config_harness import MOMENTUM, Recorder, dense_slots, run, toy_h5
from tests.train.runs import metrics

LR = 0.1


@pytest.fixture
def rec(monkeypatch) -> Recorder:
    return Recorder(monkeypatch)


@pytest.fixture
def data(tmp_path):
    return toy_h5(tmp_path, n_train=32)  # 4 steps of 8 per epoch: quarter epochs, exact


# -- optimizer -----------------------------------------------------------------------------------
RULES = {  # every rule, every hyper-parameter away from its default
    "sgd": {},
    "momentum": {"mu": 0.5},
    "nesterov": {"mu": 0.6},
    "adagrad": {"eps": 0.05},
    "rmsprop": {"decay_rate": 0.6, "eps": 0.02},
    "adam": {"beta1": 0.5, "beta2": 0.8, "eps": 0.01},
    "adamw": {"beta1": 0.6, "beta2": 0.7, "eps": 0.01, "weight_decay": 0.3},
}


def expected_updates(name, h, steps, mask):
    """Each step's parameter change from the formula, in float64, applied to the parameters
    the step started from; the rule's state (v, m, cache) carried in float64."""
    state = {"v": 0.0, "m": 0.0}
    out = []
    for t, s in enumerate(steps, start=1):
        x, g, lr = s.before.astype(np.float64), s.grads.astype(np.float64), s.lr
        v, m = state["v"], state["m"]
        if name == "sgd":
            new = x - lr * g
        elif name == "momentum":  # v = mu v - lr g; x += v
            v = h["mu"] * v - lr * g
            new = x + v
        elif name == "nesterov":  # v' = mu v - lr g; x += -mu v + (1 + mu) v'
            v_new = h["mu"] * v - lr * g
            new = x - h["mu"] * v + (1 + h["mu"]) * v_new
            v = v_new
        elif name == "adagrad":  # cache += g^2; x -= lr g / (sqrt(cache) + eps)
            v = v + g * g
            new = x - lr * g / (np.sqrt(v) + h["eps"])
        elif name == "rmsprop":  # cache = d cache + (1 - d) g^2
            v = h["decay_rate"] * v + (1 - h["decay_rate"]) * g * g
            new = x - lr * g / (np.sqrt(v) + h["eps"])
        else:  # adam, adamw: bias-corrected; adamw first decays the weights, scaled by lr
            if name == "adamw":
                x = x - lr * h["weight_decay"] * mask * x
            m = h["beta1"] * m + (1 - h["beta1"]) * g
            v = h["beta2"] * v + (1 - h["beta2"]) * g * g
            m_hat, v_hat = m / (1 - h["beta1"] ** t), v / (1 - h["beta2"] ** t)
            new = x - lr * m_hat / (np.sqrt(v_hat) + h["eps"])
        state = {"v": v, "m": m}
        out.append(new - s.before)
    return out


def test_every_rule_is_covered():
    from distnn.optim import RULES as REGISTERED

    assert sorted(RULES) == sorted(REGISTERED)


@pytest.mark.parametrize("name", RULES)
def test_each_rule_applies_its_formula(tmp_path, data, rec, name):
    result, _ = run(tmp_path, data, optimizer={"name": name, **RULES[name]},
                    train={"epochs": 1, "global_batch": 8},
                    schedule={"name": "exponential", "base_lr": LR, "gamma": 0.5})
    steps = rec.steps
    assert len(steps) == 4 and len({s.lr for s in steps}) == 4  # a new rate every step
    mask = np.zeros_like(steps[0].before, dtype=np.float64)
    mask[dense_slots(result.model)["W"][0]] = 1.0  # weights decay, biases do not
    for s, want in zip(steps, expected_updates(name, RULES[name], steps, mask), strict=True):
        np.testing.assert_allclose(s.after - s.before, want, rtol=1e-4, atol=1e-7)
        assert np.abs(want).max() > 1e-3  # the updates are large enough to tell rules apart


# -- schedule ------------------------------------------------------------------------------------
def step_epochs(epochs=3, per_epoch=4):
    """The fractional epoch of every step: epoch + step_in_epoch / steps_per_epoch."""
    return [e + i / per_epoch for e in range(epochs) for i in range(per_epoch)]


SCHEDULES = {  # name: (config section, lr at fractional epoch e)
    "constant": ({"base_lr": 0.07}, lambda e: 0.07),
    "step": ({"base_lr": 0.1, "drop": 0.3, "every": 1.5},
             lambda e: 0.1 * 0.3 ** math.floor(e / 1.5)),
    "exponential": ({"base_lr": 0.1, "gamma": 0.6}, lambda e: 0.1 * 0.6 ** e),
    "inverse_time": ({"base_lr": 0.1, "k": 0.8}, lambda e: 0.1 / (1 + 0.8 * e)),
    "cosine": ({"base_lr": 0.1, "total_epochs": 2, "min_lr": 0.01},
               lambda e: 0.01 + 0.09 * (1 + math.cos(math.pi * min(e, 2) / 2)) / 2),
    "cosine_of_train_epochs": ({"name": "cosine", "base_lr": 0.1, "min_lr": 0.02},
                               lambda e: 0.02 + 0.08 * (1 + math.cos(math.pi * e / 3)) / 2),
    "warmup": ({"name": "exponential", "base_lr": 0.1, "gamma": 0.6, "warmup_epochs": 1.5,
                "warmup_start_factor": 0.2},
               lambda e: 0.1 * 0.6 ** e * (0.2 + 0.8 * e / 1.5 if e < 1.5 else 1.0)),
    "per_epoch": ({"name": "exponential", "base_lr": 0.1, "gamma": 0.6, "per": "epoch"},
                  lambda e: 0.1 * 0.6 ** math.floor(e)),
    # Goyal et al.: base_lr * global_batch (8) / reference_batch (32), then the schedule.
    "scale_lr": ({"name": "step", "base_lr": 0.1, "drop": 0.5, "every": 1, "scale_lr": True,
                  "reference_batch": 32}, lambda e: 0.1 * 8 / 32 * 0.5 ** math.floor(e)),
    "scale_lr_with_warmup": ({"name": "constant", "base_lr": 0.1, "scale_lr": True,
                              "reference_batch": 4, "warmup_epochs": 2},
                             lambda e: 0.2 * (0.1 + 0.9 * e / 2 if e < 2 else 1.0)),
    "reference_batch_alone": ({"name": "constant", "base_lr": 0.1, "reference_batch": 32},
                              lambda e: 0.1),
}


def test_every_schedule_is_covered():
    from distnn.optim import SCHEDULES as REGISTERED

    names = {section.get("name", key) for key, (section, _) in SCHEDULES.items()}
    assert names == set(REGISTERED) - {"plateau"}  # plateau: the tests below


@pytest.mark.parametrize("case", SCHEDULES)
def test_each_schedule_gives_its_formula_at_every_step(tmp_path, data, rec, case):
    section, formula = SCHEDULES[case]
    run(tmp_path, data, train={"epochs": 3, "global_batch": 8},
        schedule={"name": case, **section})
    want = [formula(e) for e in step_epochs()]
    assert rec.lrs() == pytest.approx(want, rel=1e-12, abs=0)
    if section.get("per") == "epoch":  # constant within each epoch, moving between them
        assert [len(set(rec.lrs()[i:i + 4])) for i in (0, 4, 8)] == [1, 1, 1]
        assert len(set(rec.lrs())) == 3


def plateau_rates(values, base, factor, patience, mode, min_delta, cooldown, min_lr):
    """The documented rule: after more than `patience` validations in a row that do not beat
    the best by more than min_delta, multiply the rate by factor (not below min_lr) and then
    ignore `cooldown` validations. Returns the rate of each epoch (0 .. len(values))."""
    rate, best, bad, cooling, rates = base, None, 0, 0, [base]
    for v in values:
        if best is None or (v < best - min_delta if mode == "min" else v > best + min_delta):
            best, bad = v, 0
        else:
            bad += 1
        if cooling:
            cooling, bad = cooling - 1, 0
        elif bad > patience:
            rate, cooling, bad = max(rate * factor, min_lr), cooldown, 0
        rates.append(rate)
    return rates


def per_epoch(lrs, n):
    assert all(len(set(lrs[i:i + n])) == 1 for i in range(0, len(lrs), n))
    return lrs[::n]


def test_plateau_factor_patience_cooldown_min_lr_and_min_delta(tmp_path, data, rec):
    run(tmp_path, data, train={"epochs": 7, "global_batch": 8},
        schedule={"name": "plateau", "base_lr": 0.1, "factor": 0.5, "patience": 1,
                  "cooldown": 1, "min_lr": 0.03, "min_delta": 100.0})
    # min_delta 100: nothing after epoch 0 improves. Epoch 2 is the second non-improving one
    # (> patience 1): halve; epoch 3 is ignored (cooldown 1); epochs 4, 5: halve again, but not
    # below min_lr.
    assert per_epoch(rec.lrs(), 4) == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.03])


@pytest.mark.parametrize("monitor,mode", [("val_loss", "max"), ("val_accuracy", "max"),
                                          ("val_loss", "min")])
def test_plateau_judges_the_early_stopping_metric_and_mode(tmp_path, data, rec, monitor, mode):
    _, rd = run(tmp_path, data, train={"epochs": 6, "global_batch": 8}, optimizer=MOMENTUM,
                early_stopping={"enabled": False, "monitor": monitor, "mode": mode},
                schedule={"name": "plateau", "base_lr": 0.05, "factor": 0.5, "patience": 0})
    vals = [m for m in metrics(rd) if m["split"] == "val"]
    key = "loss" if monitor == "val_loss" else "accuracy"
    values = [m[key] for m in vals][:-1]  # the last validation moves no step's rate
    want = plateau_rates(values, 0.05, 0.5, 0, mode, 0.0, 0, 0.0)
    assert per_epoch(rec.lrs(), 4) == pytest.approx(want, rel=1e-12)
    # The curve tells the settings apart: the other mode, or the other metric, would differ.
    other_mode = plateau_rates(values, 0.05, 0.5, 0, {"min": "max", "max": "min"}[mode], 0.0,
                               0, 0.0)
    other = [m["accuracy" if key == "loss" else "loss"] for m in vals][:-1]
    assert want != other_mode and want != plateau_rates(other, 0.05, 0.5, 0, mode, 0.0, 0, 0.0)
