"""The replica check's checksum and its one-line error, and clipping at exactly the limit
(train/step.py). A second rank is simulated by a communicator whose max-allreduce folds in that
rank's values; the CRC-32 values are computed here with zlib on the arrays' bytes."""

from __future__ import annotations

import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from distnn.comm.base import Communicator
from distnn.train.errors import ReplicaMismatch
from distnn.train.step import check_replicas, clip_grad_norm_, parameter_checksum


class WithPeer(Communicator):
    """Rank 0 of 2; the peer's parameters have CRC-32 `peer_crc`."""

    name = "peer"

    def __init__(self, peer_crc: int):
        self._rank, self._size, self.timeout = 0, 2, None
        self.peer = np.array([peer_crc, -peer_crc], dtype=np.float64)
        self.ops: list[str] = []

    def _allreduce(self, buf, op):
        self.ops.append(op)
        assert op == "max" and buf.dtype == np.float64
        np.maximum(buf, self.peer, out=buf)

    def _broadcast(self, buf, root):
        raise AssertionError("not used")

    def _barrier(self):
        raise AssertionError("not used")

    def abort(self, message, code=1):
        raise AssertionError(message)


def params_of(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(37).astype(np.float32)


def test_parameter_checksum_is_the_crc32_of_the_raw_bytes():
    # The CRC-32 check value of "123456789" (ISO-HDLC / zlib): 0xCBF43926.
    assert parameter_checksum(np.frombuffer(b"123456789", np.uint8)) == 0xCBF43926
    assert parameter_checksum(np.zeros(0, np.float32)) == 0
    p = params_of(1).reshape(37, 1)
    assert parameter_checksum(p) == zlib.crc32(p.tobytes())


def test_equal_replicas_pass():
    p = params_of(1)
    comm = WithPeer(zlib.crc32(p.tobytes()))
    check_replicas(SimpleNamespace(params=p), comm, step=3)
    assert comm.ops == ["max"]


@pytest.mark.parametrize("mine, theirs", [(1, 2), (2, 1)])
def test_differing_replicas_name_the_crc_range(mine, theirs):
    a, b = params_of(mine), params_of(theirs)
    crc_a, crc_b = zlib.crc32(a.tobytes()), zlib.crc32(b.tobytes())
    assert crc_a != crc_b and min(crc_a, crc_b) > 0
    with pytest.raises(ReplicaMismatch) as info:
        check_replicas(SimpleNamespace(params=a), WithPeer(crc_b), step=12)
    assert str(info.value) == (
        f"step 12: model replicas differ across ranks (parameter CRC-32 ranges from "
        f"{min(crc_a, crc_b)} to {max(crc_a, crc_b)}); a rank skipped or repeated an update")


def test_clip_at_exactly_the_limit_leaves_the_gradient():
    g = np.array([3.0, 4.0, 0.0], np.float32)
    assert clip_grad_norm_(g, 5.0) == 5.0 and g.tolist() == [3.0, 4.0, 0.0]
    zero = np.zeros(4, np.float32)
    # A zero gradient is within a zero limit: nothing to scale (no 0 / 0).
    assert clip_grad_norm_(zero, 0.0) == 0.0 and zero.tolist() == [0.0] * 4
    g = np.array([3.0, 4.0], np.float32)
    assert clip_grad_norm_(g, 0.0) == 5.0 and g.tolist() == [0.0, 0.0]
