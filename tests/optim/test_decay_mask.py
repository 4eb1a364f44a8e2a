"""AdamW's decay_mask: a 0/1 array; a bad entry is named by its value, and a masked step on
float32 parameters allocates nothing after the first (the mask is kept in the params' dtype)."""


import numpy as np
import pytest

from distnn.optim import make_optimizer
from tests.optim.test_rules import peak_bytes_after_first_step


@pytest.mark.parametrize("mask,bad", [
    (np.array([1.0, 0.0, 0.5, 2.0]), "0.5"),  # the first entry that is neither 0 nor 1
    (np.array([0.0, 1.0, 0.0, -1.0]), "-1.0"),
    (np.array([2, 1, 0, 3]), "2.0"),
    (np.array([0.25]), "0.25"),
])
def test_a_mask_entry_other_than_0_or_1_is_named(mask, bad):
    with pytest.raises(ValueError) as err:
        make_optimizer("adamw", decay_mask=mask)
    assert str(err.value) == f"adamw: decay_mask holds {bad}, expected only 0 and 1"


@pytest.mark.parametrize("mask", [np.array([True, False, True]), np.array([1, 0, 1], np.uint8),
                                  np.array([1.0, 0.0, 1.0], np.float32)])
def test_bool_integer_and_float_masks_are_accepted(mask):
    opt = make_optimizer("adamw", weight_decay=0.5, decay_mask=mask)
    params = np.array([2.0, 2.0, 2.0])
    opt.step(params, np.zeros(3), 0.1)  # zero gradient: only the decay moves x
    assert np.array_equal(params, [1.9, 2.0, 1.9])


def test_masked_float32_step_allocates_nothing_after_the_first():
    size = 100_000  # 400 kB of float32: a cast of the mask per step would show
    mask = (np.arange(size) % 2).astype(np.float64)
    opt = make_optimizer("adamw", weight_decay=0.1, decay_mask=mask)
    params = np.linspace(-1, 1, size, dtype=np.float32)
    peak = peak_bytes_after_first_step(opt, params, np.cos(params))
    assert peak < 4096, f"adamw with a mask allocated {peak} bytes in a step"
