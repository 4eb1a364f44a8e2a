"""16-bit gradient transport (train/compress.py): the codecs against references, error
feedback that loses nothing, the compressed step (with and without overlap) on one process and
the same replicas on two MPI ranks, and training that learns as well as without compression."""

from __future__ import annotations

import numpy as np
import pytest

from distnn.comm import create_communicator
from distnn.optim import make_optimizer
from distnn.train.compress import Codec, ErrorFeedback
from distnn.train.step import DataParallelStep
from tests.train.test_overlap import SMALL_MB, SPEC, batch, model_of, run_steps


def bf16_reference(x: np.ndarray) -> np.ndarray:
    """Nearest bfloat16 (ties to even) by exhaustive choice between the two neighbours."""
    bits = x.view(np.uint32).astype(np.int64)
    down = bits & 0xFFFF0000
    up = down + 0x10000
    lo = down.astype(np.uint32).view(np.float32).astype(np.float64)
    with np.errstate(over="ignore"):
        hi = (up & 0xFFFFFFFF).astype(np.uint32).view(np.float32).astype(np.float64)
    exact = x.astype(np.float64)
    d_lo, d_hi = np.abs(exact - lo), np.abs(hi - exact)  # (no input near the largest)
    pick_up = (d_hi < d_lo) | ((d_hi == d_lo) & ((down >> 16) & 1 == 1))
    return np.where(pick_up, up >> 16, down >> 16).astype(np.uint16)


def test_bf16_rounds_to_nearest_even_and_keeps_specials():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20_000) * 10.0 ** rng.integers(-30, 30, 20_000),
                        [0.0, -0.0, 1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38]]).astype(
        np.float32)
    codes = np.zeros(x.size, np.uint16)
    codec = Codec("bf16")
    codec.encode(x, codes)
    np.testing.assert_array_equal(codes[:-1], bf16_reference(x)[:-1])
    back = np.zeros(x.size, np.float32)
    codec.decode(codes, back)
    assert back[-4] == 1.0 and back[-3] == 1.0 and back[-2] == 1 + 2 ** -6  # ties: to even
    assert np.isinf(back[-1])  # past the largest bfloat16 and half its last step: inf
    assert np.signbit(back[-5]) and back[-5] == 0
    finite = np.isfinite(back)
    assert np.all(np.abs(back[finite] - x[finite]) <= np.abs(x[finite]) * 2.0 ** -8)
    specials = np.array([np.nan, np.inf, -np.inf], np.float32)
    out = np.zeros(3, np.uint16)
    codec.encode(specials, out)
    codec.decode(out, back[:3])
    assert np.isnan(back[0]) and back[1] == np.inf and back[2] == -np.inf


def test_fp16_is_ieee_half():
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32) * 1e-3
    codes, back = np.zeros(1000, np.uint16), np.zeros(1000, np.float32)
    Codec("fp16").encode(x, codes)
    np.testing.assert_array_equal(codes, x.astype(np.float16).view(np.uint16))
    Codec("fp16").decode(codes, back)
    np.testing.assert_array_equal(back, x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_error_feedback_loses_nothing(name):
    # sum of what was sent + the residual left = sum of the gradients (telescoping).
    rng = np.random.default_rng(2)
    fb = ErrorFeedback(Codec(name), 500)
    sent_total, grad_total = np.zeros(500), np.zeros(500)
    codes, sent = np.zeros(500, np.uint16), np.zeros(500, np.float32)
    for _ in range(50):
        g = (rng.standard_normal(500) * 1e-5).astype(np.float32)  # fp16 underflows some
        fb.encode(g, codes)
        fb.codec.decode(codes, sent)
        sent_total += sent
        grad_total += g
    np.testing.assert_allclose(sent_total + fb.residual, grad_total, rtol=0, atol=1e-9)
    assert np.abs(fb.residual).max() < 1e-5  # carried, not growing


def test_bad_codec_name():
    with pytest.raises(ValueError, match="comm.compress: 'int8', expected one of bf16, fp16"):
        Codec("int8")


@pytest.mark.parametrize("mb", [None, SMALL_MB])
@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_compressed_step_stays_close_to_the_float32_step(name, mb):
    out = []
    for compress in ("none", name):
        model = model_of(SPEC)
        step = DataParallelStep(model, make_optimizer("momentum", mu=0.9),
                                create_communicator("local"), l2=1e-3, grad_accum=2, seed=1,
                                bucket_mb=mb, compress=compress)
        out.append(run_steps(step, model, steps=4))
    (p0, l0), (p1, l1) = out
    assert not np.array_equal(p0, p1)  # compression did happen
    np.testing.assert_allclose(p1, p0, atol=2e-3)
    assert [c for _, c, _ in l0] != [] and [n for *_, n in l1] == [n for *_, n in l0]
    assert abs(l1[-1][0] - l0[-1][0]) < 0.05


def test_a_non_finite_step_resets_the_error():
    model = model_of(SPEC)
    step = DataParallelStep(model, make_optimizer("sgd"), create_communicator("local"),
                            compress="bf16")
    x, y = batch(8)
    step(x, y, 8, 0.01, False)
    assert step.feedback is not None and np.any(step.feedback.residual != 0)
    x[0, 0, 0, 0] = np.nan
    with np.errstate(invalid="ignore"):
        res = step(x, y, 8, 0.01, False)
    assert not np.isfinite(res.loss)
    assert not np.any(step.feedback.residual)
