"""ReduceOnPlateau's counting: min_delta in 'max' mode, and the count restarting at zero after
a reduction."""

from distnn.optim import ReduceOnPlateau
from tests.optim.test_plateau import rates


def test_max_mode_needs_more_than_min_delta_above_the_best():
    s = ReduceOnPlateau(base_lr=1.0, factor=0.5, patience=0, mode="max", min_delta=0.1)
    s.update(1.0)
    assert s.improves(1.2)
    assert not s.improves(1.05)  # higher, but not by more than min_delta
    assert not s.improves(0.95)
    assert rates(s, [1.05]) == [0.5]
    assert s.best == 1.0


def test_min_mode_needs_more_than_min_delta_below_the_best():
    s = ReduceOnPlateau(base_lr=1.0, mode="min", min_delta=0.1)
    s.update(1.0)
    assert s.improves(0.8)
    assert not s.improves(0.95)
    assert not s.improves(1.05)


def test_count_restarts_at_zero_after_a_reduction():
    s = ReduceOnPlateau(base_lr=1.0, factor=0.5, patience=1, cooldown=0)
    # best; 1st bad (allowed); 2nd bad reduces; then again two bad ones before the next.
    assert rates(s, [1.0, 2.0, 2.0]) == [1.0, 1.0, 0.5]
    assert s.state_dict()["bad"] == 0
    assert rates(s, [2.0, 2.0, 2.0]) == [0.5, 0.25, 0.25]
    assert s.state_dict()["bad"] == 1
