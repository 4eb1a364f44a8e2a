"""16-bit gradient transport (`comm.compress: bf16 | fp16`) with error feedback.

Each rank adds the rounding error it kept from the previous step to its gradient, rounds the
sum to 16 bits and keeps the new error (Seide et al. 2014, "1-bit SGD", and Karimireddy et al.
2019: the error is not lost, only delayed). The 16-bit codes travel through
Communicator.allreduce_coded_: chunk j of every rank's codes is decoded, summed in float32 in
rank order and rounded to 16 bits again by one rank, and every rank decodes the same reduced
chunks, so every replica gets the same bits. That second rounding is shared by all ranks and
not fed back (as in Horovod's fp16 compression).

bf16 keeps float32's range with 8 bits of mantissa (round to nearest even); fp16 keeps 11 bits
but flushes magnitudes below 6e-8 to zero and overflows above 65504 (error feedback carries
what underflows into later steps).
"""

from __future__ import annotations

import numpy as np

from distnn.nn.jit import njit

CODECS = ("bf16", "fp16")


@njit
def _bf16_encode(x, out):
    """out = x (float32) rounded to bfloat16, nearest even, as uint16 codes (NaN stays NaN)."""
    bits = x.view(np.uint32)
    for i in range(x.size):
        b = np.uint32(bits[i])
        if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
            out[i] = np.uint16((b >> np.uint32(16)) | np.uint32(0x40))
        else:
            rounded = b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))
            out[i] = np.uint16(rounded >> np.uint32(16))


@njit
def _bf16_decode(codes, out):
    bits = out.view(np.uint32)
    for i in range(codes.size):
        bits[i] = np.uint32(codes[i]) << np.uint32(16)


@njit
def _bf16_add(codes, acc):
    """acc += the values of `codes`, in float32, element by element."""
    one = np.empty(1, np.uint32)
    value = one.view(np.float32)
    for i in range(codes.size):
        one[0] = np.uint32(codes[i]) << np.uint32(16)
        acc[i] += value[0]


class Codec:
    """float32 <-> uint16 codes of one 16-bit float format."""

    def __init__(self, name: str):
        if name not in CODECS:
            raise ValueError(f"comm.compress: {name!r}, expected one of {', '.join(CODECS)} "
                             f"(or none)")
        self.name = name

    def encode(self, x: np.ndarray, out: np.ndarray) -> None:
        """out (uint16) = the codes of x (float32, contiguous), rounded to nearest even."""
        if self.name == "bf16":
            _bf16_encode(x, out)
        else:
            out.view(np.float16)[...] = x  # IEEE half, nearest even; overflow gives inf

    def decode(self, codes: np.ndarray, out: np.ndarray) -> None:
        """out (float32) = the values of `codes`."""
        if self.name == "bf16":
            _bf16_decode(codes, out)
        else:
            out[...] = codes.view(np.float16)

    def combine(self, parts: list[np.ndarray], out: np.ndarray) -> None:
        """out = the codes of the float32 sum, in the order given, of the values of `parts`
        (every rank's codes of one chunk, in rank order). A Communicator `Combine`."""
        acc = np.empty(out.size, np.float32)
        self.decode(parts[0], acc)
        for part in parts[1:]:
            if self.name == "bf16":
                _bf16_add(part, acc)
            else:
                np.add(acc, part.view(np.float16), out=acc)  # float16 -> float32 exactly
        self.encode(acc, out)


class ErrorFeedback:
    """One rank's rounding error, carried from step to step (`size` float32 values)."""

    def __init__(self, codec: Codec, size: int):
        self.codec = codec
        self.residual = np.zeros(size, np.float32)
        self.sent = np.zeros(size, np.float32)

    def encode(self, grads: np.ndarray, codes: np.ndarray, lo: int = 0) -> None:
        """codes = 16-bit codes of grads + the residual of elements lo.. lo + grads.size; the
        residual becomes what this rounding lost."""
        r = self.residual[lo:lo + grads.size]
        sent = self.sent[lo:lo + grads.size]
        r += grads
        self.codec.encode(r, codes)
        self.codec.decode(codes, sent)
        r -= sent
