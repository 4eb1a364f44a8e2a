"""Input preparation must stay a small fraction of a training step (issue: < 5 % of a
cifar-net step at batch 128). Figures: .venv/bin/python -m benchmarks.input_prep"""

from __future__ import annotations

import pytest

from benchmarks.input_prep import cifar_like, cifar_net, prep_seconds, train_with_prefetch


def test_preparing_a_cifar_batch_of_128_takes_milliseconds():
    # ~1.3 ms measured; the bound leaves room for a busy shared machine.
    assert prep_seconds(cifar_like(2000), batches=10) < 0.03


@pytest.mark.slow
def test_input_costs_under_5_percent_of_a_cifar_net_step():
    pytest.importorskip("distnn.nn")
    from threadpoolctl import threadpool_limits

    data = cifar_like(2000)
    with threadpool_limits(1):
        step, wait = train_with_prefetch(cifar_net(), data, steps=3)
    assert prep_seconds(data, batches=5) < 0.05 * step
    assert wait < 0.05 * step
