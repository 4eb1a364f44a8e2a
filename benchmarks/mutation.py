"""Mutation score of distnn's core, per module, with every survivor and why it is accepted.

    .venv/bin/python -m benchmarks.mutation              # run mutmut, then report
    .venv/bin/python -m benchmarks.mutation --report     # report the last run only
    .venv/bin/python -m benchmarks.mutation --diff       # ... with each unexplained survivor's diff
    .venv/bin/python -m benchmarks.mutation --sample 0.2 # a fixed 20 % of the mutants (see below)

The engine is mutmut 3 (the `mutation` extra), configured in pyproject.toml ([tool.mutmut]: which
files, which tests). It copies distnn/ into mutants/, runs the in-process tests once to record
which tests reach which function, then forks one child per mutant that runs only those tests,
fastest first, stopping at the first failure. Decorated functions are not mutated by mutmut 3
(the Numba kernels, properties); the kernels are checked against NumPy references instead.

Score = killed / (killed + survived + no tests), timeouts counted as killed. A full run takes
hours on 2 cores (about 5900 mutants; a survivor in a function that every training test reaches
runs all of those tests). `--sample P` runs and scores a fixed subset: the mutants whose name
hashes (SHA-1) below P, the same subset every time while the code is unchanged; the report gives
the score's 95 % interval for that sample size. A survivor listed in
benchmarks/mutation_accepted.tsv (mutant name, tab, reason) is reported with its reason; any other
survivor is reported as unexplained and makes the exit status 1. Not part of the default test run
(minutes to tens of minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCEPTED = Path(__file__).with_name("mutation_accepted.tsv")
KILLED = {"killed", "timeout", "caught by type check"}
MISSED = {"survived", "no tests", "suspicious"}


def module_of(mutant: str) -> str:
    """distnn.optim.rules.xǁUpdateRuleǁstep__mutmut_3 -> distnn.optim.rules"""
    return re.split(r"\.x[_ǁ]", mutant, maxsplit=1)[0]


def mutmut(*args: str, capture: bool = False) -> str:
    env = dict(os.environ)
    shared = ROOT.parent / "shared" / "data"
    if "DISTNN_DATA_DIR" not in env and shared.is_dir():
        env["DISTNN_DATA_DIR"] = str(shared)  # the tests run from mutants/, not beside ../shared
    proc = subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        sys.exit(f"mutmut {' '.join(args)} failed with exit status {proc.returncode}")
    return proc.stdout or ""


def read_accepted() -> dict[str, str]:
    accepted = {}
    if ACCEPTED.exists():
        for n, line in enumerate(ACCEPTED.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            name, sep, reason = line.partition("\t")
            if not sep or not reason.strip():
                sys.exit(f"{ACCEPTED}:{n}: expected 'mutant<TAB>reason', got {line!r}")
            accepted[name.strip()] = reason.strip()
    return accepted


def statuses() -> dict[str, str]:
    out = {}
    for line in mutmut("results", "--all", "true", capture=True).splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("distnn."):
            out[name] = status
    return out


def in_sample(name: str, fraction: float) -> bool:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) < fraction * 2**32


def report(results: dict[str, str], show_diff: bool, fraction: float = 1.0) -> int:
    if not results:
        sys.exit("no mutation results: run without --report first")
    if fraction < 1.0:
        results = {n: s for n, s in results.items() if in_sample(n, fraction)}
        print(f"sample: {len(results)} mutants, those whose name hashes below {fraction:g}")
    unrun = sorted(n for n, s in results.items() if s == "not checked")
    if unrun:
        print(f"{len(unrun)} mutants not run yet (left out of the score below)")
    accepted = read_accepted()
    per_module: dict[str, Counter] = defaultdict(Counter)
    for name, status in results.items():
        per_module[module_of(name)][status] += 1
    print(f"{'module':34} {'mutants':>7} {'killed':>7} {'survived':>8} {'no tests':>8} "
          f"{'score':>6}")
    total: Counter = Counter()
    for module in sorted(per_module):
        c = per_module[module]
        total.update(c)
        print(_row(module, c))
    print(_row("all", total))
    tried = sum(total[s] for s in KILLED | MISSED)
    if fraction < 1.0 and tried:
        p = sum(total[s] for s in KILLED) / tried
        half = 1.96 * math.sqrt(p * (1 - p) / tried)
        print(f"95 % interval of the whole score from this sample: {100 * (p - half):.1f}% to "
              f"{100 * (p + half):.1f}%")
    survivors = sorted(n for n, s in results.items() if s in MISSED)
    explained = [n for n in survivors if n in accepted]
    unexplained = [n for n in survivors if n not in accepted]
    print(f"\n{len(survivors)} survivors: {len(explained)} accepted with a reason "
          f"({ACCEPTED.name}), {len(unexplained)} unexplained")
    for name in explained:
        print(f"  accepted  {name}: {accepted[name]}")
    for name in unexplained:
        print(f"  UNEXPLAINED  {name} ({results[name]})")
        if show_diff:
            print(mutmut("show", name, capture=True))
    stale = sorted(n for n in set(accepted) - set(survivors) if results.get(n) in KILLED)
    if stale:
        print(f"\n{len(stale)} entries of {ACCEPTED.name} are killed now: " + ", ".join(stale))
    return 1 if unexplained else 0


def _row(label: str, c: Counter) -> str:
    killed = sum(c[s] for s in KILLED)
    tried = killed + sum(c[s] for s in MISSED)
    score = f"{100 * killed / tried:5.1f}%" if tried else "    -"
    return (f"{label:34} {tried:7d} {killed:7d} {c['survived'] + c['suspicious']:8d} "
            f"{c['no tests']:8d} {score:>6}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", action="store_true", help="report the last run, run nothing")
    ap.add_argument("--diff", action="store_true", help="print each unexplained survivor's diff")
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--sample", type=float, default=1.0, metavar="P",
                    help="run and score only the fixed fraction P of the mutants (0 < P <= 1)")
    ap.add_argument("mutants", nargs="*", help="mutant name globs to (re)run, e.g. 'distnn.optim*'")
    args = ap.parse_args(argv)
    if not 0 < args.sample <= 1:
        ap.error(f"--sample {args.sample}: expected a fraction in (0, 1]")
    run = ["run", "--max-children", str(args.max_children)]
    if not args.report:
        if args.sample < 1.0 and not args.mutants:
            if not statuses():  # mutmut names its mutants only when it makes them, in a run
                mutmut(*run, GENERATE)
            # Named mutants are always run again: name only those without a kill on record
            # (mutmut resets the record of a mutant whose function changed).
            chosen = [n for n, s in statuses().items()
                      if in_sample(n, args.sample) and s not in KILLED]
            if chosen:
                mutmut(*run, *chosen)
        else:
            mutmut(*run, *args.mutants)
    return report(statuses(), args.diff, args.sample)


# A run of one small function's mutants, to have mutmut make (and name) all the others.
GENERATE = "distnn.nn.losses.x__non_finite*"


if __name__ == "__main__":
    sys.exit(main())
