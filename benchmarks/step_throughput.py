"""One full training step of distnn vs PyTorch CPU on the same CNN, batch and thread count.

    python -m benchmarks.step_throughput --model {seed,cifar} --batch 128 --threads {1,2} \
        [--json OUT.json] [--profile] [--gemm]

A step: forward, softmax cross-entropy, backward, momentum-SGD update (mu 0.9); float32; random
CIFAR-shaped input (distnn NHWC (N,32,32,3), torch NCHW (N,3,32,32)), 10 classes. Both run in
this process in alternating rounds (noise hits both alike); medians are reported, ratio =
distnn img/s / torch img/s. Threads: threadpoolctl (BLAS, OpenMP), numba, distnn.nn.threads
(the conv layers' threads) and torch set_num_threads.
The distnn update is distnn.optim's "momentum" rule if it passes a two-step check, else an inline
in-place update over the flat buffers (JSON "optimizer" says which). torch: the `bench` extra
(`pip install torch==2.13.0`); without it the torch fields are null. --profile: per-layer distnn
times, wrapped here (not in the library), and for each conv its algorithm and its effective and
real GFLOP/s (see conv_gflop). --gemm: raw numpy SGEMM GFLOP/s, conv-shaped GEMMs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np

MU, LR, CLASSES, IMAGE = 0.9, 0.01, 10, (32, 32, 3)


def conv(filters: int) -> dict:
    return {"type": "conv", "filters": filters, "kernel": 3, "pad": 1}


RELU, POOL, FLAT = {"type": "relu"}, {"type": "maxpool", "size": 2}, {"type": "flatten"}
MODELS = {
    "seed": [conv(10), RELU, conv(10), RELU, POOL] * 3 + [FLAT, {"type": "dense", "units": 10}],
    "cifar": [conv(32), RELU, conv(32), RELU, POOL, conv(64), RELU, conv(64), RELU, POOL, FLAT,
              {"type": "dense", "units": 256}, RELU, {"type": "dense", "units": 10}],
}


def training_flops(model) -> float:
    """FLOPs of one training step per image, counted analytically: 2*MACs for the forward pass,
    as much again for dW and for dx (the first layer computes no dx). Conv MACs = output
    positions * weight size; dense MACs = weight size. Pooling, ReLU, biases, loss: not counted."""
    total = 0.0
    for layer in model.layers:
        w = layer.p.get("W")
        if w is None:
            continue
        positions = int(np.prod(layer.out_shape[:-1])) if len(layer.out_shape) == 3 else 1
        total += 2.0 * positions * w.size * (3 if layer.input_grad else 2)
    return total


def batch_data(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch,) + IMAGE, dtype=np.float32), rng.integers(0, CLASSES, batch)


# -- distnn ------------------------------------------------------------------------------------
def momentum_update(params: np.ndarray, grads: np.ndarray):
    """(update(lr), description): distnn.optim's momentum rule if it exists and is right on a
    two-step check, else inline v = mu v - lr g; p += v with preallocated buffers."""
    try:
        from distnn.optim import make_optimizer

        p, g = np.zeros(4, np.float32), np.ones(4, np.float32)
        probe = make_optimizer("momentum", mu=MU)
        for _ in range(2):
            probe.step(p, g, 0.1)
        if not np.allclose(p, -0.1 - (MU * 0.1 + 0.1)):
            raise ValueError(f"momentum check gave {p}")
        opt = make_optimizer("momentum", mu=MU)
        return (lambda lr: opt.step(params, grads, lr)), "distnn.optim momentum"
    except Exception as exc:  # noqa: BLE001  absent or broken: fall back, and say so
        print(f"note: distnn.optim momentum unusable ({exc!r}); using the inline update")
    v, tmp = np.zeros_like(params), np.empty_like(params)

    def update(lr):  # all in place (out=): no allocation per step
        np.multiply(v, MU, out=v)
        np.multiply(grads, params.dtype.type(lr), out=tmp)
        np.subtract(v, tmp, out=v)
        np.add(params, v, out=params)

    return update, "inline momentum over the flat buffers"


def distnn_step(name: str, batch: int):
    from distnn.nn import Sequential

    model = Sequential(MODELS[name], IMAGE, seed=0, dtype=np.float32)
    x, y = batch_data(batch)
    update, how = momentum_update(model.params, model.grads)

    def step():
        model.forward_backward(x, y)
        update(LR)

    return step, model, update, how


# -- torch -------------------------------------------------------------------------------------
def torch_net(model):
    """nn.Sequential equivalent (NCHW) of the distnn model, shapes read off its weights:
    conv W (k, k, C_in, C_out), dense W (D_in, D_out)."""
    import torch.nn as tnn

    make = {"conv": lambda s, w: tnn.Conv2d(w.shape[2], w.shape[3], w.shape[0], padding=s["pad"]),
            "dense": lambda s, w: tnn.Linear(*w.shape), "relu": lambda s, w: tnn.ReLU(),
            "maxpool": lambda s, w: tnn.MaxPool2d(s["size"]), "flatten": lambda s, w: tnn.Flatten()}
    return tnn.Sequential(*(make[spec["type"]](spec, layer.p.get("W"))
                            for spec, layer in zip(model.specs, model.layers, strict=True)))


def torch_step(model, batch: int):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = torch_net(model)
    count = sum(p.numel() for p in net.parameters())
    if count != model.num_params:
        raise RuntimeError(f"torch net has {count} parameters, distnn {model.num_params}")
    x, y = batch_data(batch)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MU)

    def step():
        opt.zero_grad()
        F.cross_entropy(net(xt), yt).backward()
        opt.step()

    return step


# -- measurement -------------------------------------------------------------------------------
def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def interleaved(d_step, t_step, rounds: int, reps: int, settle: float, warmup: int = 3):
    """Warm both up (Numba compiles, oneDNN picks kernels), then alternate rounds of each.
    Each round starts after `settle` idle seconds: the other library's worker threads spin
    after their last job (OpenBLAS pthreads, torch's OpenMP) and, with 2 threads on 2 cores,
    would otherwise steal a core from the first steps of the next round."""
    for fn in (d_step, t_step):
        if fn:
            timed(fn, warmup)
    d_times, t_times = [], []
    for _ in range(rounds):
        for fn, out in ((d_step, d_times), (t_step, t_times)):
            if fn:
                time.sleep(settle)
                out += timed(fn, reps)
    return d_times, t_times


def profile(model, batch: int, update, reps: int = 5) -> dict:
    """Per-layer forward/backward ms of distnn: each layer call wrapped with perf_counter."""
    from distnn.nn import softmax_cross_entropy

    x, y = batch_data(batch, seed=1)
    rows = {name: [0.0, 0.0] for name in [lay.name for lay in model.layers] + ["loss", "update"]}

    def clock(name, phase, fn, *a):
        t0 = time.perf_counter()
        out = fn(*a)
        rows[name][phase] += 1e3 * (time.perf_counter() - t0) / reps
        return out

    for _ in range(reps):
        h = x
        # As Sequential.forward/backward do: linked layers hand data on in their own forms.
        with model.handing_over("forward"):
            for layer in model.layers:
                h = clock(layer.name, 0, layer.forward, h, True)
        _, d = clock("loss", 0, softmax_cross_entropy, h, y)
        with model.handing_over("backward"):
            for layer in reversed(model.layers):
                d = clock(layer.name, 1, layer.backward, d)
        clock("update", 1, update, LR)
    return {name: {"forward_ms": f, "backward_ms": b} for name, (f, b) in rows.items()}


# Winograd F(m x m, 3x3): (m, transformed tile side); its GEMMs do (m + 2)^2 multiply-adds per
# tile, channel and filter instead of the direct form's 9 m^2 (transforms not counted).
WINOGRAD_TILES = {"winograd": 2, "winograd4": 4}


def conv_gflop(layer, batch: int) -> tuple[float, float]:
    """(direct-convolution GFLOP, GFLOP of the multiply-adds its algorithm does) of one conv
    layer's forward + backward pass at this batch: 2 FLOPs per multiply-add, one pass each for
    out, dW and (unless it is the first layer) dx. im2col and direct do the direct form's."""
    ho, wo, f = layer.out_shape
    passes = 3 if layer.input_grad else 2
    direct = 2.0 * batch * ho * wo * layer.k2 * f * passes / 1e9
    m = WINOGRAD_TILES.get(layer.algorithm)
    if m is None:
        return direct, direct
    tiles = batch * -(-ho // m) * -(-wo // m)
    return direct, 2.0 * tiles * (m + 2) ** 2 * layer.channels * f * passes / 1e9


def add_conv_rates(rows: dict, model, batch: int) -> None:
    """Per conv layer of the profile: its algorithm, effective GFLOP/s (direct-convolution FLOPs
    / its forward + backward time) and real GFLOP/s (the multiply-adds its algorithm does)."""
    for layer in model.layers:
        if layer.kind == "conv":
            row = rows[layer.name]
            seconds = (row["forward_ms"] + row["backward_ms"]) / 1e3
            direct, real = conv_gflop(layer, batch)
            row.update(algorithm=layer.algorithm, effective_gflops=direct / seconds,
                       real_gflops=real / seconds)


def print_profile(rows: dict, model) -> None:
    desc = {layer.name: layer.describe() + (f" {layer.algorithm}" if layer.kind == "conv" else "")
            for layer in model.layers}
    ms = {name: (r["forward_ms"], r["backward_ms"]) for name, r in rows.items()}
    total = sum(f + b for f, b in ms.values())
    print(f"\n{'layer':<12}{'(convs: the algorithm)':<34}"
          f"{'fwd ms':>9}{'bwd ms':>9}{'sum ms':>9}{'share':>8}"
          f"{'eff GF/s':>10}{'real GF/s':>10}")
    for name, (f, b) in sorted(ms.items(), key=lambda kv: -sum(kv[1])):
        rates = "".join(f"{rows[name][k]:>10.1f}" for k in ("effective_gflops", "real_gflops")
                        if k in rows[name])
        print(f"{name:<12}{desc.get(name, '')[:33]:<34}{f:>9.2f}{b:>9.2f}{f + b:>9.2f}"
              f"{100 * (f + b) / total:>7.1f}%{rates}")
    print(f"{'total':<46}{sum(f for f, _ in ms.values()):>9.2f}"
          f"{sum(b for _, b in ms.values()):>9.2f}{total:>9.2f}")
    print("  convs: eff GF/s = direct-convolution FLOPs (2 per multiply-add; out, dW and, but in "
          "the first layer, dx) / (fwd + bwd); real GF/s = the multiply-adds the algorithm does "
          "(Winograd: its GEMMs) / (fwd + bwd)")


def sgemm_gflops(batch: int, reps: int = 5) -> dict:
    """Best-of-reps numpy SGEMM GFLOP/s on the cifar net's second conv as im2col GEMMs:
    forward (N*32*32, 288) @ (288, 32), dW (288, M) @ (M, 32), dx (M, 32) @ (32, 288)."""
    rng = np.random.default_rng(2)
    m, k, n = batch * 32 * 32, 9 * 32, 32
    col, w = rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)
    dout = rng.random((m, n), dtype=np.float32)
    cases = {f"fwd ({m},{k})@({k},{n})": (col, w, np.empty((m, n), np.float32)),
             f"dW ({k},{m})@({m},{n})": (col.T, dout, np.empty((k, n), np.float32)),
             f"dx ({m},{n})@({n},{k})": (dout, w.T, np.empty((m, k), np.float32))}
    out = {}
    for label, (a, b, c) in cases.items():
        best = min(timed(lambda a=a, b=b, c=c: np.matmul(a, b, out=c), reps))
        out[label] = 2.0 * m * k * n / best / 1e9
    return out


def measure(args) -> dict:
    """Everything timed, under the thread limits: steps, and optionally profile and SGEMM."""
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits

    from distnn.nn import threads as nn_threads

    def peak_rss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    # distnn: its own threads, BLAS on one (nn_threads.limit); torch: set_num_threads below.
    with threadpool_limits(limits=args.threads), nn_threads.limit(args.threads):
        d_step, model, update, how = distnn_step(args.model, args.batch)
        timed(d_step, 1)  # Numba compiles before the RSS reading and before torch loads
        out = {"model_obj": model, "optimizer": how, "rss_before_torch": peak_rss_mb()}
        try:
            import torch

            torch.set_num_threads(args.threads)
            t_step = torch_step(model, args.batch)
            out["torch_version"] = torch.__version__
        except ImportError:
            t_step, out["torch_version"] = None, None
            print("note: torch is not installed (pip install torch==2.13.0, the `bench` extra); "
                  "torch figures and the ratio are null")
        out["d_times"], out["t_times"] = interleaved(d_step, t_step, args.rounds, args.reps,
                                                   args.settle)
        out["blas"] = [{k: i.get(k) for k in ("internal_api", "architecture", "version",
                                                "num_threads")} for i in threadpool_info()]
        if args.profile:
            time.sleep(args.settle)  # torch's worker threads may still be spinning
        out["profile"] = profile(model, args.batch, update) if args.profile else None
        if out["profile"]:
            add_conv_rates(out["profile"], model, args.batch)
        out["rss"] = peak_rss_mb()
        out["gemm"] = sgemm_gflops(args.batch) if args.gemm else None
    return out


def summarize(args, m: dict) -> dict:
    flops, n = training_flops(m["model_obj"]), args.batch
    d_med = statistics.median(m["d_times"])
    t_med = statistics.median(m["t_times"]) if m["t_times"] else None

    def tor(f):
        return f(t_med) if t_med else None  # None without torch

    def quartiles(ts):
        return [1e3 * q for q in statistics.quantiles(ts)] if ts[1:] else None

    return {
        "model": args.model, "batch": n, "threads": args.threads,
        "distnn_img_s": n / d_med, "torch_img_s": tor(lambda t: n / t),
        "ratio": tor(lambda t: t / d_med),  # = distnn img/s / torch img/s
        "distnn_gflops": flops * n / d_med / 1e9,
        "torch_gflops": tor(lambda t: flops * n / t / 1e9),
        "peak_rss_mb": m["rss"], "peak_rss_mb_before_torch": m["rss_before_torch"],
        "distnn_step_ms": 1e3 * d_med, "torch_step_ms": tor(lambda t: 1e3 * t),
        "step_ms_quartiles": {"distnn": quartiles(m["d_times"]), "torch": quartiles(m["t_times"])},
        "steps_timed": len(m["d_times"]), "settle_s": args.settle,
        "train_mflop_per_image": flops / 1e6, "optimizer": m["optimizer"],
        "torch_version": m["torch_version"], "numpy_version": np.__version__, "blas": m["blas"],
        "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        "sgemm_gflops": m["gemm"], "profile": m["profile"],
    }


def report(r: dict, model) -> None:
    blas = ", ".join(f"{b['internal_api']} {b['architecture'] or ''}".strip() for b in r["blas"])

    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    print(f"{r['model']} net, batch {r['batch']}, {r['threads']} thread(s); {blas}; "
          f"env {r['openblas_env']}; update: {r['optimizer']}")
    print(f"  distnn {r['distnn_img_s']:.0f} img/s ({r['distnn_step_ms']:.1f} ms/step, "
          f"{r['distnn_gflops']:.1f} GFLOP/s)   torch {fmt(r['torch_img_s'], '.0f')} img/s "
          f"({fmt(r['torch_step_ms'], '.1f')} ms/step)   "
          f"ratio distnn/torch {fmt(r['ratio'], '.2f')}")
    print(f"  peak RSS {r['peak_rss_mb']:.0f} MB ({r['peak_rss_mb_before_torch']:.0f} MB before "
          f"torch loaded); median of {r['steps_timed']} steps each")
    for label, gf in (r["sgemm_gflops"] or {}).items():
        print(f"  numpy SGEMM {label}: {gf:.1f} GFLOP/s")
    if r["profile"]:
        print_profile(r["profile"], model)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="cifar")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7, help="alternating distnn/torch rounds")
    p.add_argument("--reps", type=int, default=3, help="timed steps per round")
    p.add_argument("--settle", type=float, default=0.2, help="idle seconds before each round")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--profile", action="store_true", help="per-layer distnn breakdown")
    p.add_argument("--gemm", action="store_true", help="raw numpy SGEMM GFLOP/s")
    args = p.parse_args(argv)
    measured = measure(args)
    result = summarize(args, measured)
    report(result, measured["model_obj"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
