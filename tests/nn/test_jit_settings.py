"""The Numba settings of distnn's kernels (nn/jit.py): cached on disk, IEEE arithmetic unless a
kernel names its fast-math flags, no bounds checks, the GIL released (the conv layers' threads)."""

import numba
import numpy as np
import pytest

from distnn.nn import direct, jit, kernels, winograd

SETTINGS = {"nopython": True, "nogil": True, "boundscheck": False}


def add_one(a):
    return a + 1.0


def compiled_kernels():
    return [(mod.__name__, name, obj) for mod in (kernels, winograd, direct)
            for name, obj in vars(mod).items()
            if isinstance(obj, numba.core.dispatcher.Dispatcher)]


def test_njit_compiles_with_distnn_settings():
    fn = jit.njit(add_one)
    assert isinstance(fn, numba.core.dispatcher.Dispatcher)
    assert fn.py_func is add_one
    assert fn.targetoptions == {**SETTINGS, "fastmath": False}
    assert fn.stats.cache_path is not None  # cache=True: compiled code kept on disk
    assert fn(np.float64(2.0)) == 3.0


def test_njit_fastmath_allows_only_the_named_flags():
    fn = jit.njit_fastmath("contract")(add_one)
    assert isinstance(fn, numba.core.dispatcher.Dispatcher)
    assert fn.py_func is add_one
    assert fn.targetoptions == {**SETTINGS, "fastmath": {"contract"}}
    assert fn.stats.cache_path is not None
    both = jit.njit_fastmath("contract", "reassoc")(add_one)
    assert both.targetoptions["fastmath"] == {"contract", "reassoc"}


def test_every_kernel_has_the_settings():
    found = compiled_kernels()
    assert len(found) > 10
    for mod, name, fn in found:
        where = f"{mod}.{name}"
        opts = fn.targetoptions
        assert {k: opts[k] for k in SETTINGS} == SETTINGS, where
        assert opts["fastmath"] is False or opts["fastmath"] <= {"contract", "reassoc"}, where
        assert fn.stats.cache_path is not None, where


@pytest.mark.parametrize("name", ["correlate", "_correlate_one"])
def test_direct_correlation_fuses_multiply_adds_only(name):
    assert getattr(direct, name).targetoptions["fastmath"] == {"contract"}
