"""Fault injection: a run with a checkpoint every step is killed (SIGKILL) at a point chosen from a
seed inside one of its checkpoint writes, random bits of its checkpoint files are flipped, and it
is resumed with --resume auto. Every resume either continues from a checkpoint that verifies and
ends bit-identical to the uninterrupted run, or names the corruption in one line and exits 2."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.train.faults import PHASES, flip_random_bits, run_with_fault
from tests.train.runs import params, run, write_config

MAX_STEPS = 16  # one checkpoint write per step: steps 1..15 mid-epoch, 16 at the epoch end


def fault_config(tmp_path):
    return write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": MAX_STEPS},
                        checkpoint={"every_steps": 1, "keep_last": 3})


def straight_run(tmp_path, cfg, ranks) -> dict[str, np.ndarray]:
    out = run(["train", str(cfg), "--run-dir", str(tmp_path / "straight")], ranks=ranks)
    assert out.returncode == 0, out.stderr
    return params(tmp_path / "straight/checkpoints/last.h5")


def one_round(tmp_path, cfg, seed: int, expected, ranks=None) -> str:
    """Kill, corrupt, resume; check the outcome. Returns 'resumed' or 'refused'."""
    rng = np.random.default_rng(seed)
    save, phase = int(rng.integers(1, MAX_STEPS + 1)), PHASES[int(rng.integers(len(PHASES)))]
    rd = tmp_path / f"round-{seed}"
    killed = run_with_fault(tmp_path, ["train", str(cfg), "--run-dir", str(rd)], save, phase,
                            kill=True, ranks=ranks)
    hit = flip_random_bits(rd / "checkpoints", rng, int(rng.integers(0, 4)))
    what = f"seed {seed}: killed in write {save} at {phase}, flipped {hit}"
    assert killed.returncode != 0, f"{what}: the fault did not fire\n{killed.stderr}"
    out = run(["train", str(cfg), "--run-dir", str(rd), "--resume", "auto"], ranks=ranks)
    if out.returncode == 2:
        # One message per rank (under mpiexec the two may share a line of the merged stderr).
        errors = re.split(r"distnn train \[rank \d+\]: ", out.stderr)[1:]
        assert len(errors) == (ranks or 1), f"{what}\n{out.stderr}"
        assert all("corrupt" in e or "passes its checks" in e for e in errors), \
            f"{what}\n{out.stderr}"
        return "refused"
    assert out.returncode == 0, f"{what}\n{out.stderr}"
    final = params(rd / "checkpoints/last.h5")
    assert all(np.array_equal(final[k], expected[k]) for k in expected), what
    leftovers = [p.name for p in (rd / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, f"{what}: {leftovers}"
    return "resumed"


def fault_rounds(tmp_path, seeds, ranks=None) -> list[str]:
    cfg = fault_config(tmp_path)
    expected = straight_run(tmp_path, cfg, ranks)
    return [one_round(tmp_path, cfg, seed, expected, ranks) for seed in seeds]


def test_kills_and_bit_flips(tmp_path):
    outcomes = fault_rounds(tmp_path, range(3))
    assert "resumed" in outcomes


@pytest.mark.slow
def test_kills_and_bit_flips_many(tmp_path):
    outcomes = fault_rounds(tmp_path, range(100, 130))
    assert "resumed" in outcomes and "refused" in outcomes
