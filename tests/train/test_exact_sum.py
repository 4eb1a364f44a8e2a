"""The exact, order-free sum of the invariant step (distnn/train/exact.py), the group plan of the
sampler, and evaluation sums that do not depend on the world size."""

import math

import numpy as np
import pytest

from distnn.comm import LocalCommunicator
from distnn.data import ArrayDataset, group_plan, micro_counts
from distnn.nn import Sequential
from distnn.train.evaluate import evaluate
from distnn.train.exact import BUCKET, ExactSum, headroom
from tests.train.threadcomm import run_ranks


def wide_rows(groups=16, size=3 * BUCKET + 17, seed=0):
    """float32 rows with magnitudes spread over 2**-30 .. 2**10 and both signs."""
    rng = np.random.default_rng(seed)
    mant = rng.standard_normal((groups, size))
    return (mant * np.exp2(rng.integers(-30, 10, (groups, size)))).astype(np.float32)


def exact(rows):
    out = np.empty(rows.shape[1], np.float32)
    ExactSum(rows.shape[1], len(rows), LocalCommunicator())(rows, out)
    return out


def test_the_sum_is_the_exact_sum_rounded_once_where_values_share_a_bucket_range():
    rows = wide_rows()
    got = exact(rows)
    truth = np.array([math.fsum(map(float, col)) for col in rows.T])
    f32 = np.zeros(rows.shape[1], np.float32)
    for row in rows:  # what a float32 allreduce does: one rounding per addition
        f32 += row
    err, err32 = np.abs(got - truth), np.abs(f32.astype(np.float64) - truth)
    # Exact up to the grid: 2**(E - T) per addend, E the bucket's bound (<= 2**10 here).
    grid = 16 * 2.0 ** (10 - headroom(16))
    ulp = np.spacing(np.abs(truth).astype(np.float32)).astype(np.float64)
    assert (err <= 0.5 * ulp + grid).all()
    assert (err <= err32 + grid).all()  # never worse than float32 summation
    assert np.linalg.norm(err) < 0.5 * np.linalg.norm(err32)


def test_any_order_and_any_split_over_ranks_gives_the_same_bits():
    rows = wide_rows(groups=12)
    want = exact(rows)
    np.testing.assert_array_equal(exact(rows[::-1].copy()), want)
    for n in (2, 3, 5):
        def job(comm, n=n):
            from distnn.data.sampler import split_bounds
            a, b = split_bounds(12, n, comm.rank)
            out = np.empty(rows.shape[1], np.float32)
            ExactSum(rows.shape[1], 12, comm)(rows[a:b], out)
            return out
        for got in run_ranks(n, job):
            np.testing.assert_array_equal(got, want)


def test_a_non_finite_value_poisons_its_bucket_only_and_extra_slots_arrive_exact():
    rows = wide_rows(groups=4)
    rows[2, BUCKET + 3] = np.inf
    s = ExactSum(rows.shape[1], 4, LocalCommunicator(), extra=2)
    s.extra[:] = (0.1, -7.5)
    out = np.empty(rows.shape[1], np.float32)
    s(rows, out)
    assert np.isnan(out[BUCKET:2 * BUCKET]).all()
    assert np.isfinite(out[:BUCKET]).all() and np.isfinite(out[2 * BUCKET:]).all()
    assert tuple(s.extra) == (0.1, -7.5)
    zeros = np.zeros((3, 10), np.float32)
    assert not exact(zeros).any()


def test_group_plan_cuts_fixed_groups_and_deals_them_out_in_rank_order():
    for count, groups, accum in [(30, 8, 1), (30, 8, 3), (5, 8, 2), (128, 16, 1)]:
        for n in range(1, groups + 1):
            plans = [group_plan(count, groups, accum, n, r) for r in range(n)]
            seen = sorted((g, a, b) for plan in plans for micro in plan for g, a, b in micro)
            # The groups and their bounds never depend on n; every position once.
            assert seen == [(g, *_bounds(count, groups, g)) for g in range(groups)]
            for micro_index in range(accum):
                ids = [g for plan in plans for g, _, _ in plan[micro_index]]
                assert ids == sorted(ids)  # rank r's groups come before rank r+1's
        assert sum(micro_counts(count, groups, accum)) == count
    assert micro_counts(30, 8, 3) == [12, 12, 6]  # groups of 4,4,4 | 4,4,4 | 3,3


def _bounds(count, groups, g):
    base, extra = divmod(count, groups)
    start = g * base + min(g, extra)
    return start, start + base + (1 if g < extra else 0)


def test_evaluation_sums_are_bit_identical_on_any_world_size():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (700, 6, 6, 1), dtype=np.uint8)
    data = ArrayDataset(images, rng.integers(0, 3, 700), ("a", "b", "c"), "toy", "test")

    def model():  # one per rank: layers keep work buffers
        return Sequential([{"type": "flatten"}, {"type": "dense", "units": 3}], (6, 6, 1),
                          seed=2)

    want = evaluate(model(), data, LocalCommunicator(), None, batch=64)
    assert want["n"] == 700
    for n in (2, 3, 7):
        for got in run_ranks(n, lambda c: evaluate(model(), data, c, None, batch=64)):
            assert got == want
    scores = model().predict(images.astype(np.float32) / 255)
    assert want["accuracy"] == pytest.approx(np.mean(scores.argmax(1) == data.labels), abs=0)


def test_one_group_at_the_top_of_the_grid_rounds_correctly():
    # One addend: T = 51, the bucket's largest value lands at 2**50 .. 2**51 on the grid, the
    # edge of the add-and-subtract rounding; a value just below a power of two rounds up to it.
    row = np.array([[np.nextafter(np.float32(2.0), np.float32(0)), 1.0, -3.5e-8]], np.float32)
    np.testing.assert_array_equal(exact(row), row[0])
    assert headroom(1) == 51 and headroom(16) == 47 and headroom(17) == 46


def test_float64_rows_far_below_one_stay_finite_and_deterministic():
    rows = np.array([[1e-300, 0.0, 0.0], [0.0, 2e-300, 0.0]])
    out = np.empty(3)
    ExactSum(3, 2, LocalCommunicator(), dtype=np.float64)(rows, out)
    assert np.isfinite(out).all()
    # Below 2**(T - 1023) the grid stops shrinking: 1e-300 keeps about 2**26 steps.
    np.testing.assert_allclose(out, [1e-300, 2e-300, 0.0], rtol=1e-7)
