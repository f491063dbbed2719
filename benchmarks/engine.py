"""The engine's own cost: per-primitive overhead and gradient/forward, HVP/gradient ratios.

Run from a checkout:  OPENBLAS_NUM_THREADS=1 python benchmarks/engine.py [--json out.json]

(a) Overhead per primitive on tiny arrays (shape (4,)): a chain of N = 200 tanh
    calls, timed bare (np.tanh), recorded on a tape (forward under a GradTrace),
    and recorded plus swept (a full ``grad``), set against the bare NumPy forward
    plus the bare NumPy backward (one multiply-subtract per step).
(b) Ratios for two MLP losses: 1-40-40-1 on a batch of 25×10 points, and
    784-256-128-64-64-5 on a batch of 25: grad / forward and HVP / grad.

Timings are medians of repeated runs (``tinymeta.bench.measure``, on ``timeit``), in
one process, side by side.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import tinymeta as tm
from tinymeta import bench, bench_history
from tinymeta.tape import GradTrace


def median_seconds(fn, name: str, timings: dict) -> float:
    """Median seconds per call (the shipped harness, :func:`tinymeta.bench.measure`); the
    median and IQR are kept in ``timings[name]`` (what ``tinymeta bench compare`` reads)."""
    t = bench.measure(fn, repeat=15)
    timings[name] = {"median_s": t.median, "iqr_s": t.iqr}
    return t.median


def overhead(timings: dict, n: int = 200) -> dict:
    x = np.linspace(-1.0, 1.0, 4)

    def bare_forward():
        y = x
        for _ in range(n):
            y = np.tanh(y)
        return y

    def bare_forward_backward():
        ys = [x]
        y = x
        for _ in range(n):
            y = np.tanh(y)
            ys.append(y)
        g = np.ones_like(x)
        for y in reversed(ys[1:]):
            g = g * (1.0 - y * y)
        return g

    def chain(t):
        for _ in range(n):
            t = tm.tanh(t)
        return t

    def recorded_forward():
        trace = GradTrace()
        return chain(trace.new_leaf(x))

    def full_grad():
        return tm.grad(lambda t: tm.sum(chain(t)))(x)

    t_bare = median_seconds(bare_forward, "overhead bare forward", timings)
    t_bare_fb = median_seconds(bare_forward_backward, "overhead bare forward+backward", timings)
    t_rec = median_seconds(recorded_forward, "overhead recorded forward", timings)
    t_grad = median_seconds(full_grad, "overhead grad", timings)
    return {
        "n_primitives": n,
        "bare_numpy_us_per_call": 1e6 * t_bare / n,
        "recorded_us_per_primitive": 1e6 * t_rec / n,
        "recording_overhead_us": 1e6 * (t_rec - t_bare) / n,
        "bare_fwd_bwd_us_per_primitive": 1e6 * t_bare_fb / n,
        "grad_us_per_primitive": 1e6 * t_grad / n,
        "record_plus_sweep_overhead_us": 1e6 * (t_grad - t_bare_fb) / n,
    }


def mlp_ratios(sizes: list[int], x_shape: tuple, timings: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    params = []
    for i, o in zip(sizes[:-1], sizes[1:]):
        params += [rng.uniform(-1, 1, size=(i, o)) / np.sqrt(i), np.zeros(o)]
    params = [p.astype(np.float32) for p in params]
    x = rng.normal(size=x_shape).astype(np.float32)
    y = rng.normal(size=x_shape[:-1] + (sizes[-1],)).astype(np.float32)

    def loss(params):
        h = x
        n = len(params) // 2
        for k in range(n):
            h = h @ params[2 * k] + params[2 * k + 1]
            if k < n - 1:
                h = tm.relu(h)
        return tm.mean((h - y) ** 2)

    g = tm.grad(loss)
    v = [rng.normal(size=p.shape).astype(np.float32) for p in params]
    key = "mlp " + "-".join(map(str, sizes))
    t_fwd = median_seconds(lambda: loss(params), key + " forward", timings)
    t_grad = median_seconds(lambda: g(params), key + " grad", timings)
    t_hvp = median_seconds(lambda: tm.hvp(loss, (params,), (v,)), key + " hvp", timings)
    # the same gradient replayed as a flat program (tm.compile): the kernels alone, no tape
    cg = tm.compile(g)
    cg(params)
    t_replay = median_seconds(lambda: cg(params), key + " grad replayed", timings)
    return {
        "sizes": sizes,
        "x_shape": list(x_shape),
        "forward_ms": 1e3 * t_fwd,
        "grad_ms": 1e3 * t_grad,
        "hvp_ms": 1e3 * t_hvp,
        "grad_over_forward": t_grad / t_fwd,
        "hvp_over_grad": t_hvp / t_grad,
        "grad_replay_ms": 1e3 * t_replay,
        "replay_over_forward": t_replay / t_fwd,
    }


def machine() -> dict:
    return {
        "cpu": bench.cpu_name(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "backend": tm.backend_name(),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the results here as JSON")
    ap.add_argument("--backend", default=None, help="numpy or numba (default: tinymeta's)")
    args = ap.parse_args(argv)
    if args.backend:
        tm.set_backend(args.backend)
    timings: dict = {}
    res = {"machine": machine(), "overhead": overhead(timings),
           "mlp": [mlp_ratios([1, 40, 40, 1], (25, 10, 1), timings),
                   mlp_ratios([784, 256, 128, 64, 64, 5], (25, 784), timings)],
           "timings": timings}
    o = res["overhead"]
    print(f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, "
          f"backend {res['machine']['backend']}, numpy {res['machine']['numpy']}")
    print("\nper-primitive cost on shape (4,), chain of", o["n_primitives"], "tanh calls (µs)")
    print(f"  bare np.tanh                     {o['bare_numpy_us_per_call']:7.2f}")
    print(f"  recorded tm.tanh                 {o['recorded_us_per_primitive']:7.2f}"
          f"   (+{o['recording_overhead_us']:.2f} over bare)")
    print(f"  bare numpy forward + backward    {o['bare_fwd_bwd_us_per_primitive']:7.2f}")
    print(f"  tm.grad (record + sweep)         {o['grad_us_per_primitive']:7.2f}"
          f"   (+{o['record_plus_sweep_overhead_us']:.2f} over bare)")
    print("\nMLP losses (float32)            forward ms   grad ms    hvp ms   grad/fwd  hvp/grad"
          "  replay/fwd")
    for m in res["mlp"]:
        name = "-".join(map(str, m["sizes"])) + " x" + "x".join(map(str, m["x_shape"][:-1]))
        print(f"  {name:30s} {m['forward_ms']:9.3f} {m['grad_ms']:9.3f} {m['hvp_ms']:9.3f}"
              f" {m['grad_over_forward']:9.2f} {m['hvp_over_grad']:9.2f}"
              f" {m['replay_over_forward']:10.2f}")
    print("  (replay/fwd: the gradient replayed by tm.compile, kernels only, over the forward)")
    if args.json:
        # atomically, with the commit, the machine and the library versions
        bench_history.write_results(args.json, res, os.path.dirname(os.path.abspath(__file__)),
                                    indent=2)
    return res


if __name__ == "__main__":
    main()
