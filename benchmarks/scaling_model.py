"""Scaling on paper, from measurements: step time and scaling efficiency of the cifar net for
1-256 nodes on 10/25/100 Gbit/s links, ring allreduce, with and without overlap and 16-bit
compression, calibrated against the points this machine can measure.

    python -m benchmarks.scaling_model [--quick] [--bucket-mb 1.0] [--alpha-us 5] \
        [--compress bf16|fp16] [--json OUT.json] [--markdown OUT.md]

Measured here (benchmarks/scaling_measure.py): the per-step compute of one worker (forward, the
end of each layer's backward, the update; per-worker batch --batch, one thread; CPU time, i.e.
the pass on a core of its own), the CPU cost of a 16-bit encode/decode per float, and the
allreduce time-vs-bytes curves on 2 MPI ranks and on 2 Ray actors on two nodes of a real
two-node Ray cluster on this machine, each fitted to alpha + bytes/B (Ray: on the sizes above
64 KiB, the object-store path every bucket takes; smaller ones go inline through the
rendezvous). The 1- and 2-rank training steps of the real DataParallelStep are measured too
and compared with what the model predicts from the fitted curves (calibration).

The model (pure functions below, tested in tests/test_scaling_model.py; the printed report and
the README paragraph: benchmarks/scaling_report.py):
  * ring allreduce of `bytes` on N nodes: T = 2(N-1)*alpha + 2(N-1)/N * bytes/B;
  * buckets: distnn/train/buckets.py's `cut` of the flat gradient region (the measured
    layer_ranges): from its END backwards into pieces of about --bucket-mb MB (1 MB = 1e6
    bytes), every boundary a multiple of 256 elements from the region's start; a piece is final
    when backward has finished every layer with parameters in it (the lowest such layer:
    backward runs from the last layer), and neighbouring pieces final at the same layer are one
    bucket (each collective has a fixed cost), as the real step plans them;
  * no overlap: step = forward + backward + the buckets' allreduces one after another + update;
  * overlap: bucket k's allreduce starts at max(its final time, end of bucket k-1's); step =
    forward + max(end of backward, end of the last allreduce) + update;
  * compression: 2 bytes an element on the wire, plus the measured codec time per element
    added to each bucket's communication.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distnn.train.buckets import BLOCK, Bucket, bucket_elements, cut
from distnn.train.step import EXTRA_SLOTS

RAY_INLINE = 64 * 1024  # distnn/comm/ray.py SMALL_BYTES: allreduces inline up to this
MB = 1e6  # bytes in the MB of comm.bucket_mb (train/step.py)
LINKS_GBIT = (10, 25, 100)
NODES = tuple(2 ** k for k in range(9))  # 1 .. 256


def ring_time(nodes: int, nbytes: float, alpha: float, bandwidth: float) -> float:
    """Seconds of a ring allreduce of `nbytes` on `nodes` nodes: 2(N-1) steps, each a message
    of nbytes/N costing alpha + (nbytes/N)/bandwidth (bytes/s). 0 on one node."""
    if nodes <= 1:
        return 0.0
    return 2 * (nodes - 1) * alpha + 2 * (nodes - 1) / nodes * nbytes / bandwidth


def step_time(forward: float, backward: float, update: float, ready: Sequence[float],
              comm: Sequence[float], overlap: bool) -> float:
    """Seconds of one step. `ready[k]`: when bucket k is final, from the start of backward;
    `comm[k]`: its allreduce (with any codec). Buckets are sent one at a time, in order."""
    if not overlap:
        return forward + backward + sum(comm) + update
    end = 0.0
    for r, c in zip(ready, comm, strict=True):
        end = max(r, end) + c
    return forward + max(backward, end) + update


def fit_alpha_beta(nbytes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """(alpha s, bandwidth bytes/s) of t = alpha + bytes/bandwidth, least squares on relative
    residuals (every size counts alike); alpha >= 0."""
    x, t = np.asarray(nbytes, float), np.asarray(seconds, float)
    a_mat = np.stack([1 / t, x / t], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(a_mat, np.ones_like(t), rcond=None)
    if alpha < 0:
        alpha, beta = 0.0, float(np.sum(x / t) / np.sum((x / t) ** 2))
    return float(alpha), 1 / beta if beta > 0 else math.inf


@dataclass(frozen=True)
class Compute:
    """One worker's step, seconds: forward (with the loss), the end of each layer's backward
    from the start of backward (`layer_end[i]`), the whole backward, the update."""
    forward: float
    layer_end: Sequence[float]
    backward: float
    update: float

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.update


def bucket_ready(compute: Compute, buckets: Sequence[Bucket]) -> list[float]:
    """When each bucket is final (non-decreasing in send order); a bucket of the region's end
    padding alone (ready past the last layer) is final at once."""
    out, t = [], 0.0
    for b in buckets:
        if b.ready < len(compute.layer_end):
            t = max(t, compute.layer_end[b.ready])
        out.append(t)
    return out


def model_buckets(ranges: Sequence[tuple[int, int, int]], region: int, layers: int,
         bucket_mb: float | None) -> list[Bucket]:
    """distnn's buckets (train/buckets.py `cut`) of a region of `region` float32 elements with
    the step's scalar slots in bucket 0: of about `bucket_mb` MB, or one for the whole region
    (None: the step with one allreduce after backward)."""
    step = (-(-region // BLOCK) * BLOCK if bucket_mb is None
            else bucket_elements(bucket_mb * MB, 4))
    return cut(list(ranges), region, step, EXTRA_SLOTS, layers)


def predict(compute: Compute, buckets: Sequence[Bucket], cost: Callable[[int], float],
            overlap: bool) -> float:
    """Step seconds with `cost(elements)` the communication of one bucket."""
    return step_time(compute.forward, compute.backward, compute.update,
                     bucket_ready(compute, buckets), [cost(b.hi - b.lo) for b in buckets],
                     overlap)


def network_table(compute: Compute, buckets: Sequence[Bucket], alpha: float,
                  codec_per_float: float, links=LINKS_GBIT, nodes=NODES) -> dict:
    """{link Gbit/s: {N: {variant: step seconds}}}, variants fp32 / fp32+overlap / 16-bit /
    16-bit+overlap. The codec runs only when there is something to send (N > 1)."""
    out: dict = {}
    for gbit in links:
        bw = gbit * 1e9 / 8
        out[gbit] = {}
        for n in nodes:
            def fp32(e, n=n, bw=bw):
                return ring_time(n, 4 * e, alpha, bw)

            def half(e, n=n, bw=bw):
                return ring_time(n, 2 * e, alpha, bw) + (codec_per_float * e if n > 1 else 0.0)

            out[gbit][n] = {"fp32": predict(compute, buckets, fp32, False),
                            "fp32+overlap": predict(compute, buckets, fp32, True),
                            "16bit": predict(compute, buckets, half, False),
                            "16bit+overlap": predict(compute, buckets, half, True)}
    return out


def markdown_tables(table: dict, batch: int, compress: str) -> list[str]:
    """One markdown table per link: N, then each variant as `step ms (efficiency %)`;
    efficiency = img/s per node relative to N=1 = step(1) / step(N)."""
    lines = []
    names = {"fp32": "fp32", "fp32+overlap": "fp32 + overlap", "16bit": compress,
             "16bit+overlap": f"{compress} + overlap"}
    for gbit, rows in table.items():
        base = rows[min(rows)]
        lines += [f"\n{gbit} Gbit/s links, per-node batch {batch}: step ms (scaling efficiency)\n",
                  "| nodes | " + " | ".join(names.values()) + " |",
                  "|---:|" + "---:|" * len(names)]
        for n, row in rows.items():
            cells = [f"{1e3 * row[v]:.1f} ({100 * base[v] / row[v]:.1f} %)" for v in names]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


# -- the run: measure, fit, model, calibrate, print -----------------------------------------------
def settings(quick: bool) -> dict:
    """Steps, repetitions and sizes (floats: 4 KB .. 8 MB) of a run."""
    ks = (0, 3, 6, 9, 11) if quick else tuple(range(12))
    return {"steps": 3 if quick else 30, "reps": 5 if quick else 20,
            "sizes": [1024 * 2 ** k for k in ks]}


def fitted(allreduce_s: dict, min_bytes: int = 0) -> dict:
    """The alpha-beta fit of a measured curve {floats: s} on the sizes above `min_bytes`, and
    the residuals of every size."""
    n = sorted(allreduce_s)
    t = [allreduce_s[k] for k in n]
    used = [(4 * k, m) for k, m in zip(n, t, strict=True) if 4 * k > min_bytes]
    alpha, bw = fit_alpha_beta(*zip(*used, strict=True))
    model = [alpha + 4 * k / bw for k in n]
    return {"alpha_s": alpha, "bandwidth_Bps": bw, "min_bytes": min_bytes,
            "points": [{"floats": k, "bytes": 4 * k, "measured_s": m, "fit_s": f,
                        "residual": (f - m) / m, "fitted": 4 * k > min_bytes}
                       for k, m, f in zip(n, t, model, strict=True)]}


def fit_cost(fit: dict, itemsize: int = 4) -> Callable[[int], float]:
    return lambda e: fit["alpha_s"] + itemsize * e / fit["bandwidth_Bps"]


def job_compute(vec: Sequence[float]) -> Compute:
    """A Compute from scaling_measure.pass_times' vector."""
    return Compute(vec[0], list(vec[3:]), vec[1], vec[2])


def calibration(alone: Compute, one: list[Bucket], buckets: list[Bucket], m1: dict,
                runs: dict, fits: dict) -> list[dict]:
    """Measured step (and allreduce) times next to the model's predictions from the fitted
    curve of the same transport, with the compute measured alone (the model's input) and
    with the compute measured in the same job, pass and steps in turn (which
    takes out the load of this shared machine and the contention of the ranks' cores)."""
    rows = [{"point": "1 worker, DataParallelStep (no communication)",
             "measured_s": m1["step"][0], "model_s": alone.total,
             "model_job_s": job_compute(m1["pass"]).total}]
    for name, run in runs.items():
        cost, job = fit_cost(fits[name]), job_compute(run["pass"])
        whole = cost(run["region"] + EXTRA_SLOTS)
        rows.append({"point": f"2 {name}: allreduce of the whole gradient buffer",
                     "measured_s": run["allreduce_s"][run["region"] + EXTRA_SLOTS],
                     "model_s": whole, "model_job_s": whole})
        rows.append({"point": f"2 {name}: step, one allreduce after backward",
                     "measured_s": run["step"][0], "model_s": predict(alone, one, cost, False),
                     "model_job_s": predict(job, one, cost, False)})
        if run.get("overlap_step"):
            rows.append({"point": f"2 {name}: step, overlapped buckets",
                         "measured_s": run["overlap_step"][0],
                         "model_s": predict(alone, buckets, cost, True),
                         "model_job_s": predict(job, buckets, cost, True)})
    for r in rows:
        r["error"] = (r["model_s"] - r["measured_s"]) / r["measured_s"]
        r["error_job"] = (r["model_job_s"] - r["measured_s"]) / r["measured_s"]
    return rows


def run(args) -> dict:
    """Everything measured and modelled, printed; the report as a dict."""
    import os

    from benchmarks import scaling_measure as measure
    from benchmarks.scaling_report import print_report, readme

    cfg, load = settings(args.quick), [os.getloadavg()[0]]
    comp = measure.compute(args.batch, cfg["reps"])
    codec = measure.codec(comp["region"], cfg["reps"])
    m1 = measure.mpi(1, args.batch, cfg["steps"], [], cfg["reps"], args.bucket_mb)
    runs = {"MPI ranks": measure.mpi(2, args.batch, cfg["steps"], cfg["sizes"], cfg["reps"],
                                     args.bucket_mb)}
    if not args.no_ray:
        try:
            runs["Ray actors, 2 nodes"] = measure.ray_two_nodes(
                args.batch, cfg["steps"], cfg["sizes"], cfg["reps"], args.bucket_mb)
        except Exception as exc:  # noqa: BLE001  the rest of the report stands without it
            print(f"note: the two-node Ray measurement failed: {exc!r}")
    load.append(os.getloadavg()[0])
    # Ray: buffers up to 64 KiB go inline through the rendezvous, larger ones (every bucket)
    # through the object store; the fit is the object store's
    fits = {name: fitted(r["allreduce_s"], 0 if name.startswith("MPI") else RAY_INLINE)
            for name, r in runs.items()}
    # CPU time: the pass on a node's own core (the wall clock here also counts the other
    # processes on these 2 cores); a shorter compute is also the conservative input (it hides
    # less communication)
    compute = job_compute(comp["cpu_s"])
    layout = (comp["ranges"], comp["region"], len(comp["layers"]))
    buckets, one = model_buckets(*layout, args.bucket_mb), model_buckets(*layout, None)
    per_float = codec[f"{args.compress}_total"]
    table = network_table(compute, buckets, args.alpha_us * 1e-6, per_float)
    report = {"settings": {**vars(args), **cfg}, "load_avg_1min": load, "compute": comp,
              "codec_s_per_float": codec, "runs": {"1 worker": m1, **runs}, "fits": fits,
              "buckets": [vars(b) for b in buckets],
              "table_s": table, "calibration": calibration(compute, one, buckets, m1, runs, fits)}
    report["sensitivity"] = {us: network_table(compute, buckets, us * 1e-6, per_float,
                                               links=(10,), nodes=(1, 256))[10]
                             for us in (1, 5, 25, 100)}
    print_report(report, compute, buckets, args)
    if args.markdown:
        Path(args.markdown).write_text(readme(report, args) + "\n")
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps, sizes and repetitions")
    p.add_argument("--batch", type=int, default=64, help="per-worker batch")
    p.add_argument("--bucket-mb", type=float, default=1.0, help="bucket size, MB (1e6 bytes)")
    p.add_argument("--alpha-us", type=float, default=5.0,
                   help="assumed latency of one network message, microseconds")
    p.add_argument("--compress", choices=("bf16", "fp16"), default="bf16")
    p.add_argument("--no-ray", action="store_true", help="skip the two-node Ray cluster")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None, help="write the README paragraph here")
    args = p.parse_args(argv)
    if not args.bucket_mb > 0:  # a bad size fails before anything is measured
        p.error(f"--bucket-mb: {args.bucket_mb!r}, expected > 0")
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
