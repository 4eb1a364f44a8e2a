"""Properties of the shard sampler and the evaluation split, for 1..8 ranks and sizes not
divisible by the world size or the batch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distnn.data import ShardSampler, eval_indices

setups = st.fixed_dictionaries({
    "n": st.integers(1, 300), "world": st.integers(1, 8), "local": st.integers(1, 12),
    "seed": st.integers(0, 2**32 - 1), "epoch": st.integers(0, 50),
    "drop_last": st.booleans(), "shuffle": st.booleans(),
}).filter(lambda s: not (s["drop_last"] and s["n"] < s["world"] * s["local"]))


def samplers(s) -> tuple[ShardSampler, list[ShardSampler]]:
    """The 1-worker sampler with the same global batch, and one sampler per rank."""
    batch = s["world"] * s["local"]
    kw = dict(seed=s["seed"], shuffle=s["shuffle"], drop_last=s["drop_last"])
    one = ShardSampler(s["n"], batch, 0, 1, **kw)
    ranks = [ShardSampler(s["n"], batch, r, s["world"], **kw) for r in range(s["world"])]
    for smp in [one] + ranks:
        smp.set_epoch(s["epoch"])
    return one, ranks


@settings(max_examples=150, deadline=None)
@given(setups)
def test_ranks_partition_each_one_worker_batch(s):
    one, ranks = samplers(s)
    steps = one.steps_per_epoch
    assert all(r.steps_per_epoch == steps for r in ranks)  # every rank takes the same steps
    seen = []
    for t in range(steps):
        parts = [r.local_indices(t) for r in ranks]
        np.testing.assert_array_equal(np.concatenate(parts), one.local_indices(t))
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1  # as even as possible, also on a partial batch
        assert len(np.unique(np.concatenate(parts))) == sum(sizes)  # disjoint shards
        seen.append(np.concatenate(parts))
    seen = np.concatenate(seen) if seen else np.empty(0, np.int64)
    batch = s["world"] * s["local"]
    expected = (s["n"] // batch) * batch if s["drop_last"] else s["n"]
    assert len(seen) == len(np.unique(seen)) == expected  # each sample at most once per epoch
    if not s["drop_last"]:
        np.testing.assert_array_equal(np.sort(seen), np.arange(s["n"]))


@settings(max_examples=60, deadline=None)
@given(setups, st.integers(1, 8))
def test_order_depends_only_on_seed_and_epoch(s, other_world):
    one, _ = samplers(s)
    again = ShardSampler(s["n"], other_world * 3, other_world - 1, other_world, s["seed"],
                         shuffle=s["shuffle"])
    again.set_epoch(s["epoch"])
    np.testing.assert_array_equal(one.order(), again.order())


def test_epochs_and_seeds_change_the_permutation():
    a = ShardSampler(1000, 10, 0, 1, seed=3)
    first = a.order().copy()
    a.set_epoch(1)
    assert not np.array_equal(first, a.order())
    a.set_epoch(0)
    np.testing.assert_array_equal(first, a.order())
    assert not np.array_equal(first, ShardSampler(1000, 10, 0, 1, seed=4).order())
    np.testing.assert_array_equal(ShardSampler(7, 2, 0, 1, 0, shuffle=False).order(),
                                  np.arange(7))


def test_last_partial_batch_may_leave_ranks_empty():
    # 10 samples, global batch 8 on 4 ranks: the last step's 2 samples go to ranks 0 and 1.
    ranks = [ShardSampler(10, 8, r, 4, seed=0) for r in range(4)]
    assert ranks[0].steps_per_epoch == 2
    assert [len(r.local_indices(1)) for r in ranks] == [1, 1, 0, 0]
    assert [len(r.local_indices(0)) for r in ranks] == [2, 2, 2, 2]
    dropped = ShardSampler(10, 8, 0, 4, seed=0, drop_last=True)
    assert dropped.steps_per_epoch == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2000), st.integers(1, 8))
def test_eval_indices_cover_every_sample_exactly_once(n, world):
    parts = [eval_indices(n, r, world) for r in range(world)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and all(p.dtype == np.int64 for p in parts)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="global_batch 10 is not divisible by world_size 4"):
        ShardSampler(100, 10, 0, 4, seed=0)
    with pytest.raises(ValueError, match="rank 4 out of range for world_size 4"):
        ShardSampler(100, 8, 4, 4, seed=0)
    with pytest.raises(ValueError, match="num_samples"):
        ShardSampler(0, 8, 0, 1, seed=0)
    with pytest.raises(ValueError, match="leaves no step"):
        ShardSampler(5, 8, 0, 1, seed=0, drop_last=True)
    with pytest.raises(IndexError, match=r"step 3 out of range \[0, 3\)"):
        ShardSampler(10, 4, 0, 1, seed=0).local_indices(3)
    with pytest.raises(ValueError, match="epoch"):
        ShardSampler(10, 4, 0, 1, seed=0).set_epoch(-1)
    with pytest.raises(ValueError, match="rank 2 out of range"):
        eval_indices(10, 2, 2)


def test_bad_counts_name_the_argument():
    with pytest.raises(ValueError) as err:
        eval_indices(-1, 0, 1)
    assert str(err.value) == "num_samples must be an integer >= 0, got -1"
    with pytest.raises(ValueError) as err:
        eval_indices(4, 0, 0)
    assert str(err.value) == "world_size must be an integer >= 1, got 0"
    with pytest.raises(ValueError) as err:
        ShardSampler(10, 2, 0, 0, seed=0)
    assert str(err.value) == "world_size must be an integer >= 1, got 0"
