"""LinearWarmup around any schedule: the inner schedule sees the same step, epoch and metrics
as the warmup, and the warmup factor starts at 0.1 by default."""

from distnn.optim import Constant, LinearWarmup


class Recording:
    """A user's schedule with lr() only: the rate depends on the step and the metrics."""

    def __init__(self):
        self.calls = []

    def lr(self, step, epoch, metrics=None):
        self.calls.append((step, epoch, metrics))
        return 2.0 if metrics is None else 2.0 * metrics["scale"]


def test_inner_schedule_gets_step_epoch_and_metrics_during_and_after_warmup():
    inner = Recording()
    w = LinearWarmup(inner, 4.0, 0.5)
    assert w.lr(7, 1.0, {"scale": 0.5}) == 1.0 * (0.5 + 0.5 * 0.25)
    assert w.lr(30, 6.0, {"scale": 2.0}) == 4.0
    assert w.lr(31, 6.5) == 2.0
    assert inner.calls == [(7, 1.0, {"scale": 0.5}), (30, 6.0, {"scale": 2.0}), (31, 6.5, None)]


def test_default_start_factor_is_a_tenth():
    w = LinearWarmup(Constant(base_lr=1.0), 2.0)
    assert w.start_factor == 0.1
    assert w.lr(0, 0.0) == 0.1
    assert abs(w.lr(0, 1.0) - 0.55) < 1e-15
    assert w.lr(0, 2.0) == 1.0
