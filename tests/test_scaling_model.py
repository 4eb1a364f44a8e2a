"""benchmarks/scaling_model.py's model on hand-computed numbers: the ring formula, the step with
and without overlap (on buckets of distnn's `cut`, neighbours final at the same layer merged),
the curve fit, the tables. Pure: nothing is measured. distnn's planner itself:
tests/train/test_overlap.py."""

import pytest

from benchmarks.scaling_model import (
    Compute,
    fit_alpha_beta,
    model_buckets,
    network_table,
    predict,
    ring_time,
    step_time,
)
from distnn.train.buckets import Bucket, cut

# layers 0, 2, 4 own [0, 300), [300, 700), [704, 1500) of a 1504-element region
RANGES = [(0, 0, 300), (2, 300, 700), (4, 704, 1500)]


def test_cut_merges_the_pieces_final_at_the_same_layer():
    # pieces: [768, 1504) final after layer 4, [256, 768) and [0, 256) after layer 0: those
    # two are one bucket; the 4 slots ride in bucket 0
    assert cut(RANGES, 1504, 512, extra=4, layers=5) == [Bucket(768, 1508, 4), Bucket(0, 768, 0)]


def test_padding_at_the_end_is_final_at_once_in_the_model():
    # [256, 1024) is padding after layer 0's [0, 100): ready = layers (past the last layer)
    buckets = cut([(0, 0, 100)], 1024, 256, layers=2)
    assert buckets == [Bucket(256, 1024, 2), Bucket(0, 256, 0)]
    compute = Compute(1.0, [0.5, 0.0], 0.5, 0.0)
    # the padding goes at 0 and takes 3; the other bucket, final at 0.5, waits for it
    assert predict(compute, buckets, lambda e: e / 256, overlap=True) == 1.0 + 3 + 1


def test_the_model_buckets_are_distnn_cut_with_the_step_slots():
    assert model_buckets(RANGES, 1504, 5, 512 * 4 / 1e6) == [
        Bucket(768, 1508, 4), Bucket(0, 768, 0)]
    assert model_buckets(RANGES, 1504, 5, None) == [Bucket(0, 1508, 0)]  # one allreduce


def test_ring_formula():
    assert ring_time(1, 1e9, 1.0, 1.0) == 0.0
    # 2*3 messages of 10 us + 2*3/4 * 1e6 B / 1e9 B/s = 60 us + 1.5 ms
    assert ring_time(4, 1e6, 1e-5, 1e9) == pytest.approx(1.56e-3)
    # 2 nodes, 8 MB at 10 Gbit/s: 2 * 5 us + 8e6 / 1.25e9 = 6.41 ms
    assert ring_time(2, 8e6, 5e-6, 1.25e9) == pytest.approx(6.41e-3)


def test_step_with_and_without_overlap():
    ready, comm = [10.0, 50.0, 100.0], [30.0, 30.0, 5.0]
    assert step_time(10, 100, 1, ready, comm, overlap=False) == 176  # 10 + 100 + 65 + 1
    # ends: 10 + 30 = 40; max(50, 40) + 30 = 80; max(100, 80) + 5 = 105 > backward
    assert step_time(10, 100, 1, ready, comm, overlap=True) == 116
    # all hidden but what follows the last bucket's final time
    assert step_time(10, 100, 1, ready, [5.0, 5.0, 1.0], overlap=True) == 112


def test_step_on_cut_buckets():
    buckets = cut(RANGES, 1504, 512, extra=4, layers=5)  # 740 and 768 elements
    compute = Compute(0.05, [0.1, 0.0, 0.06, 0.0, 0.02], 0.1, 0.001)

    def cost(e):  # alpha 10 ms, 40 kB/s: 0.084 s and 0.0868 s
        return 0.01 + 4 * e / 4e4

    assert predict(compute, buckets, cost, overlap=False) == pytest.approx(
        0.05 + 0.1 + 0.084 + 0.0868 + 0.001)
    # bucket 0 final at 0.02, sent until 0.104; bucket 1 final at 0.1, sent until 0.1908
    assert predict(compute, buckets, cost, overlap=True) == pytest.approx(
        0.05 + 0.1908 + 0.001)


def test_fit_recovers_alpha_and_bandwidth():
    sizes = [4e3, 4e4, 4e5, 4e6]
    alpha, bw = fit_alpha_beta(sizes, [1e-5 + x / 1e9 for x in sizes])
    assert alpha == pytest.approx(1e-5) and bw == pytest.approx(1e9)


def test_table_one_node_is_the_compute_alone():
    compute = Compute(0.05, [0.1, 0.02], 0.1, 0.001)
    buckets = [Bucket(256, 600, 1), Bucket(0, 256, 0)]
    table = network_table(compute, buckets, 5e-6, 1e-9, links=(10,), nodes=(1, 2))
    assert all(v == pytest.approx(0.151) for v in table[10][1].values())
    two = table[10][2]
    sent = 2 * (2 * 5e-6) + 4 * 600 / 1.25e9  # 2 buckets of 2 messages, fp32, in turn
    assert two["fp32"] == pytest.approx(0.151 + sent)
