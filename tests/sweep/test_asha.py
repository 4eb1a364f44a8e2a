"""sweep/asha.py takes Ray Tune's ASHA decisions (one bracket), checked against Ray's own
bookkeeping on random result streams; and its rungs survive a new process (a resumed sweep)."""

from __future__ import annotations

import numpy as np
import pytest

from distnn.sweep.asha import Asha, milestones

hyperband = pytest.importorskip("ray.tune.schedulers.async_hyperband",
                                reason="Ray Tune not installed (pip install 'distnn[ray]')")


class FakeTrial:  # Ray's bracket reads trial_id only
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


@pytest.mark.parametrize("grace, rf, max_t, mode", [(1, 2, 8, "max"), (1, 3, 9, "min"),
                                                    (2, 2, 10, "max"), (1, 4, 20, "max"),
                                                    (1, 1.5, 6, "max")])
def test_same_decisions_as_ray_tune(tmp_path, grace, rf, max_t, mode):
    rng = np.random.default_rng([grace, int(rf * 10), max_t])
    ours = Asha(tmp_path / "rungs.jsonl", grace, rf, max_t, mode)
    ray_bracket = hyperband._Bracket(grace, max_t, rf, 0)
    assert sorted(m for m, _ in ray_bracket._rungs) == milestones(grace, rf, max_t)
    alive = {f"t{i}": 0 for i in range(12)}
    decisions = 0
    while alive:  # trials report in a random interleaving, each its epochs in order
        trial = str(rng.choice(sorted(alive)))
        alive[trial] += 1
        epoch = alive[trial]
        value = float(rng.normal())
        sign = 1.0 if mode == "max" else -1.0
        theirs = ray_bracket.on_result(FakeTrial(trial), epoch, sign * value) == "CONTINUE"
        assert ours.decide(trial, epoch, value) == theirs, (trial, epoch)
        decisions += 1
        if not theirs or epoch >= max_t:
            del alive[trial]
    assert decisions > 12
    # A new Asha on the same file (a resumed sweep, another SLURM task) knows every rung.
    again = Asha(tmp_path / "rungs.jsonl", grace, rf, max_t, mode)
    assert again._recorded() == ours._recorded()


def test_first_trial_at_a_rung_goes_on_and_a_weak_one_stops(tmp_path):
    asha = Asha(tmp_path / "r.jsonl", 1, 2, 4, "max")
    assert asha.decide("a", 1, 0.9) and asha.decide("b", 1, 0.8) is False
    assert asha.decide("c", 1, 0.95)
    assert asha.decide("d", 1, float("nan"))  # no value: goes on, not recorded
    assert "d" not in asha._recorded()[1.0]
