"""The printed report and the README paragraph of benchmarks/scaling_model.py (run that): what
was measured, the model's assumptions, its tables per link, the sensitivity to alpha, the
allreduce curves and their fits, and the calibration against the points measured here."""

from __future__ import annotations

from benchmarks.scaling_model import MB, Bucket, Compute, bucket_ready, job_compute, markdown_tables
from distnn.train.buckets import bucket_elements
from distnn.train.step import EXTRA_SLOTS


def assumptions(report: dict, args) -> list[str]:
    c = report["codec_s_per_float"]
    return [
        f"- alpha (latency of one ring message on the network) = {args.alpha_us:g} us "
        "(assumed: MPI over RDMA is ~1-3 us, over a kernel TCP stack ~10-30 us; "
        "see the sensitivity line); B = the link's line rate, fully used, full duplex, "
        "one worker per node, a non-blocking switch (no contention between rings)",
        f"- per-node compute = one worker's one-thread pass measured here in CPU time (batch "
        f"{args.batch} per node, weak scaling; {{:.1f}} ms: the pass on a core of its own), "
        "unchanged by N and not slowed by communication (the transfer costs the worker no "
        "CPU)".format(1e3 * job_compute(report["compute"]["cpu_s"]).total),
        f"- buckets of {args.bucket_mb:g} MB as distnn/train/buckets.py plans them (neighbouring "
        "pieces final at the same layer are one bucket), sent one at a time in order; the "
        f"update waits for all; the {EXTRA_SLOTS} metric slots ride in the first bucket",
        f"- {args.compress}: 2 bytes an element on the wire and the sum done in 16 bits (as "
        "Horovod's fp16 allreduce), plus {:.2f} ns per element (measured, distnn's code: "
        "ErrorFeedback.encode, i.e. the residual add, the encode, the sender's decode and the "
        "new residual, then the receiver's Codec.decode) added to each bucket's "
        "communication, not to the backward pass".format(
            1e9 * c[f"{args.compress}_total"]),
        "- not modelled: the reduction arithmetic, (N-1)/N x elements x {:.2f} ns = at most "
        "{:.2f} ms per step here; stragglers; the input pipeline".format(
            1e9 * c["sum"], 1e3 * c["sum"] * report["compute"]["region"]),
    ]


def calibration_lines(report: dict) -> list[str]:
    lines = ["| measured point (wall clock, median) | measured ms | model ms, the table's "
             "compute | error | model ms, the job's own pass | error |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in report["calibration"]:
        lines.append(f"| {r['point']} | {1e3 * r['measured_s']:.1f} | {1e3 * r['model_s']:.1f} "
                     f"| {100 * r['error']:+.1f} % | {1e3 * r['model_job_s']:.1f} | "
                     f"{100 * r['error_job']:+.1f} % |")
    return lines


def curve_lines(report: dict) -> list[str]:
    fits = report["fits"]
    lines = ["| bytes | " + " | ".join(f"{n} ms | fit ms | residual" for n in fits) + " |",
             "|---:|" + "---:|---:|---:|" * len(fits)]
    rows: dict = {}
    for f in fits.values():
        for pt in f["points"]:
            rows.setdefault(pt["bytes"], []).append(
                f"{1e3 * pt['measured_s']:.3f} | {1e3 * pt['fit_s']:.3f} | "
                f"{100 * pt['residual']:+.0f} %{'' if pt['fitted'] else ' (not fitted)'}")
    for b in sorted(rows):
        if len(rows[b]) == len(fits):
            lines.append(f"| {b} | " + " | ".join(rows[b]) + " |")
    for name, f in fits.items():
        lines.append(f"\n{name}: alpha = {1e6 * f['alpha_s']:.1f} us, B = "
                     f"{f['bandwidth_Bps'] / 1e9:.2f} GB/s ({8 * f['bandwidth_Bps'] / 1e9:.1f} "
                     "Gbit/s), fitted on relative residuals")
    return lines


def sensitivity_line(report: dict) -> str:
    return ("Sensitivity to alpha, 10 Gbit/s, 256 nodes, efficiency fp32 / fp32 + overlap: "
            + "; ".join(f"{us} us: {100 * r[1]['fp32'] / r[256]['fp32']:.1f} % / "
                        f"{100 * r[1]['fp32+overlap'] / r[256]['fp32+overlap']:.1f} %"
                        for us, r in report["sensitivity"].items()))


def print_report(report: dict, compute: Compute, buckets: list[Bucket], args) -> None:
    comp, codec = report["compute"], report["codec_s_per_float"]
    print(f"== 1. Measured here (1-min load average {report['load_avg_1min'][0]:.1f} at the "
          f"start, {report['load_avg_1min'][1]:.1f} at the end; 2 cores) ==")
    print(f"(a) compute: cifar net ({comp['model_note']}), {comp['params']} parameters, "
          f"per-worker batch {args.batch}, one thread, median CPU time of {comp['reps']} "
          f"passes (wall clock: median {1e3 * job_compute(comp['pass_s']).total:.1f} ms, "
          f"fastest {1e3 * job_compute(comp['fastest_s']).total:.1f} ms)")
    for name, v in (("forward + loss", compute.forward), ("backward", compute.backward),
                    ("update (momentum)", compute.update), ("step", compute.total)):
        print(f"    {name:<18}{1e3 * v:8.1f} ms")
    print(f"    = {args.batch / compute.total:.1f} img/s per worker")
    print("    the same pass inside each job, alternating with its steps (median, slowest "
          "rank): " + ", ".join(f"{name} {1e3 * job_compute(r['pass']).total:.1f} ms"
                                for name, r in report["runs"].items()))
    print(f"    {'layer':<34}{'parameters [first, end)':>26}{'backward done at':>18}")
    spans = {i: (a, b) for i, a, b in comp["ranges"]}
    for i in reversed(range(len(comp["layers"]))):
        rng = f"[{spans[i][0]}, {spans[i][1]})" if i in spans else ""
        print(f"    {comp['layers'][i]:<34}{rng:>26}{1e3 * compute.layer_end[i]:15.1f} ms")
    print(f"  buckets of {args.bucket_mb:g} MB ({bucket_elements(args.bucket_mb * MB, 4)} floats "
          "a piece), distnn/train/buckets.py's cut from the end (pieces final at the same layer "
          "are one bucket)")
    names = [layer.split()[0] for layer in comp["layers"]] + ["nothing (padding)"]
    for k, (b, t) in enumerate(zip(buckets, bucket_ready(compute, buckets), strict=True)):
        print(f"    bucket {k}: [{b.lo}, {b.hi}) {4 * (b.hi - b.lo) / MB:.3f} MB, final after "
              f"{names[b.ready]} at {1e3 * t:.1f} ms of backward")
    print("(b) codec, distnn/train/compress.py's Codec and ErrorFeedback, CPU ns per float on "
          "the gradient buffer (total: the error-feedback encode + the receiver's decode): "
          + ", ".join(f"{k} {1e9 * v:.2f}" for k, v in codec.items()))
    print("(c) allreduce, 2 workers, median per size (Ray: object store across two nodes; "
          "inline through the rendezvous up to 64 KiB)")
    print("\n".join(curve_lines(report)))
    ray = report["runs"].get("Ray actors, 2 nodes")
    if ray:
        print(f"Ray actors on nodes {[n[:8] for n in ray['nodes']]}, transport chosen: "
              f"{ray['transports']}")
    print("\n== 2. The model ==\n" + "\n".join(assumptions(report, args)))
    print("\n".join(markdown_tables(report["table_s"], args.batch, args.compress)))
    print("\n" + sensitivity_line(report))
    print("\n== 3. Calibration: measured here vs the model with the measured curve ==")
    print("\n".join(calibration_lines(report)))


def readme(report: dict, args) -> str:
    cmd = "python -m benchmarks.scaling_model" + (" --quick" if args.quick else "")
    return "\n".join([
        "### Scaling on paper (issue 16, part 4)", "",
        f"`{cmd}` measures one worker's step of the cifar net (batch {args.batch}, one thread: "
        "forward, the end of each layer's backward, the update), a 16-bit codec, and the "
        "allreduce time-vs-bytes on 2 MPI ranks and on 2 Ray actors on the two nodes of a "
        "real two-node Ray cluster on this machine, fits each curve to alpha + bytes/B, and "
        "models a step on N nodes with ring allreduce (2(N-1) alpha + 2(N-1)/N bytes/B) of "
        f"{args.bucket_mb:g} MB gradient buckets cut in reverse layer order; with overlap a "
        "bucket is sent once backward has finished its layers. Scaling efficiency = img/s "
        "per node relative to one node = step(1) / step(N). Measured curves (2 workers):",
        "", *(f"- {name}: alpha = {1e6 * f['alpha_s']:.1f} us, B = "
              f"{f['bandwidth_Bps'] / 1e9:.2f} GB/s (fitted on the sizes above "
              f"{f['min_bytes']} B)" for name, f in report["fits"].items()),
        "", "Assumptions:", "", *assumptions(report, args),
        *markdown_tables(report["table_s"], args.batch, args.compress), "",
        sensitivity_line(report) + ".", "",
        "Calibration, on the points this machine can measure. The model predicts each "
        "point from the fitted curve of its transport, once with the table's compute (CPU "
        "time of a pass alone) and once with the wall-clock pass measured in the same job, "
        "in turn with its steps: that one sees the same load (2 cores shared with other "
        "processes, and the two workers' contention), so its error is mostly the model's "
        "own (communication and overlap), plus the noise the 1-worker row shows:", "",
        *calibration_lines(report)])


