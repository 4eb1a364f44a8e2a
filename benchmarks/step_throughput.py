"""One full training step of distnn vs PyTorch CPU on the same CNN, batch and thread count.

    python -m benchmarks.step_throughput --model {seed,cifar} --batch 128 --threads {1,2} \
        [--json OUT.json] [--profile]

A step is forward, softmax cross-entropy, backward and a momentum-SGD update, in float32, on
random CIFAR-shaped input (distnn NHWC (N,32,32,3), torch NCHW (N,3,32,32)), 10 classes. The two
are timed in alternating rounds in the same process, so machine noise hits both alike; the
median step time of each is reported. torch comes from the `bench` extra
(`pip install torch==2.13.0`); without it the torch fields are null.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np


def conv(f):
    return {"type": "conv", "filters": f, "kernel": 3, "pad": 1}


RELU, POOL, FLAT = {"type": "relu"}, {"type": "maxpool", "size": 2}, {"type": "flatten"}
MODELS = {
    "seed": [conv(10), RELU, conv(10), RELU, POOL] * 3 + [FLAT, {"type": "dense", "units": 10}],
    "cifar": [conv(32), RELU, conv(32), RELU, POOL, conv(64), RELU, conv(64), RELU, POOL, FLAT,
              {"type": "dense", "units": 256}, RELU, {"type": "dense", "units": 10}],
}


def training_flops(model) -> float:
    """FLOPs of one training step per image: 2*MACs forward, and as much again for dW and for
    dx (except the first layer, which computes no input gradient)."""
    total = 0.0
    for layer in model.layers:
        w = layer.p.get("W")
        if w is None:
            continue
        positions = int(np.prod(layer.out_shape[:-1])) if len(layer.out_shape) == 3 else 1
        macs = positions * w.size
        total += 2 * macs * (2 if not layer.input_grad else 3)
    return total


def distnn_step(spec, batch: int):
    from distnn.nn import Sequential
    from distnn.optim import make_optimizer

    model = Sequential(spec, (32, 32, 3), seed=0)
    opt = make_optimizer("momentum", mu=0.9)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, batch)

    def step():
        model.forward_backward(x, y)
        opt.step(model.params, model.grads, 0.01)

    return step, model


def torch_step(name: str, batch: int):
    import torch
    import torch.nn as tnn

    layers, channels = [], 3
    for spec in MODELS[name]:
        kind = spec["type"]
        if kind == "conv":
            layers.append(tnn.Conv2d(channels, spec["filters"], 3, padding=1))
            channels = spec["filters"]
        elif kind == "relu":
            layers.append(tnn.ReLU())
        elif kind == "maxpool":
            layers.append(tnn.MaxPool2d(2))
        elif kind == "flatten":
            layers.append(tnn.Flatten())
        else:
            layers.append(tnn.LazyLinear(spec["units"]))
    net = tnn.Sequential(*layers)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    net(x)  # materialise the lazy layers before the optimizer sees them
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=False)
        tnn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def profile(model, batch: int, reps: int = 5) -> None:
    """Per-layer forward/backward milliseconds of distnn (wrapped here, not in the library)."""
    from distnn.nn import softmax_cross_entropy

    rng = np.random.default_rng(1)
    x = rng.random((batch, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    fwd = {layer.name: 0.0 for layer in model.layers}
    bwd = dict(fwd)
    for _ in range(reps):
        h = x
        for layer in model.layers:
            t0 = time.perf_counter()
            h = layer.forward(h, True)
            fwd[layer.name] += time.perf_counter() - t0
        _, d = softmax_cross_entropy(h, y)
        for layer in reversed(model.layers):
            t0 = time.perf_counter()
            d = layer.backward(d)
            bwd[layer.name] += time.perf_counter() - t0
    print(f"{'layer':<12}{'forward ms':>12}{'backward ms':>13}")
    for name in fwd:
        print(f"{name:<12}{1000 * fwd[name] / reps:>12.2f}{1000 * bwd[name] / reps:>13.2f}")


def run(name: str, batch: int, threads: int, rounds: int, reps: int) -> dict:
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    with threadpool_limits(threads):
        d_step, model = distnn_step(MODELS[name], batch)
        try:
            import torch

            torch.set_num_threads(threads)
            t_step = torch_step(name, batch)
        except ImportError:
            t_step = None
            print("torch is not installed (pip install 'distnn[bench]'): distnn figures only")
        for fn in (d_step, t_step):
            if fn:
                timed(fn, 2)  # warm-up: Numba compilation, allocator, oneDNN primitives
        d_times, t_times = [], []
        for _ in range(rounds):  # alternate so that noise hits both
            d_times += timed(d_step, reps)
            if t_step:
                t_times += timed(t_step, reps)
        blas = [f"{i['internal_api']} {i.get('architecture', '?')}" for i in threadpool_info()]
    d_med = statistics.median(d_times)
    t_med = statistics.median(t_times) if t_times else None
    return {
        "model": name, "batch": batch, "threads": threads,
        "distnn_img_s": batch / d_med,
        "torch_img_s": batch / t_med if t_med else None,
        "ratio": t_med / d_med if t_med else None,
        "distnn_gflops": training_flops(model) * batch / d_med / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "blas": blas, "_model": model,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="cifar")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    result = run(args.model, args.batch, args.threads, args.rounds, args.reps)
    model = result.pop("_model")
    torch_s = f"{result['torch_img_s']:.0f}" if result["torch_img_s"] else "n/a"
    ratio_s = f"{result['ratio']:.2f}" if result["ratio"] else "n/a"
    print(f"{args.model} net, batch {args.batch}, {args.threads} thread(s), BLAS {result['blas']}")
    print(f"  distnn {result['distnn_img_s']:.0f} img/s ({result['distnn_gflops']:.1f} GFLOP/s)"
          f"   torch {torch_s} img/s   ratio distnn/torch {ratio_s}"
          f"   peak RSS {result['peak_rss_mb']:.0f} MB")
    if args.profile:
        profile(model, args.batch)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
