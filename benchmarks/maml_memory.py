"""Peak memory and time of one meta-gradient against the inner depth T.

    OPENBLAS_NUM_THREADS=1 python benchmarks/maml_memory.py --json out.json [--plot m.png]

Methods: second-order MAML ``unrolled`` and ``hvp_chain``, first-order MAML, iMAML with T
steps of gradient descent on the proximal objective and 5 CG iterations (``imaml``, the
function's default) and with T Newton-CG iterations (5 CG steps each, no early stop) and 5
MINRES iterations (``imaml_newton``, the CLI's solvers); T in {1, 5, 10, 20, 40}. Two shapes:

- ``omniglot``: the 784-256-128-64-64-5 MLP, meta-batch 4, 5-way 5-shot sets (25 support
  and 25 query points): the parameters dominate;
- ``sinusoid``: the 1-40-40-1 MLP, meta-batch 25, K = 2,000 support points: the
  activations dominate.

Peak memory is tracemalloc's (it sees NumPy's allocations), above what is allocated
before the call. The prediction beside it: hvp_chain keeps the θ_t, T·B·P floats, and
one graph at a time; unrolled keeps the θ_t too plus every inner step's graph, about
T·B·P floats plus T times the bytes of the (B, K, ·) arrays one inner step puts on the
tape (counted from the recorded tapes of T = 1 and T = 2).
Time: one run each (these are large calls; the point is the trend in T).
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np

import tinymeta as tm
from tinymeta import bench_history

DEPTHS = (1, 5, 10, 20, 40)


def _problem(shape: str):
    rng = np.random.default_rng(0)
    if shape == "omniglot":
        sizes, B, K = [784, 256, 128, 64, 64, 5], 4, 25
        x = rng.random((B, K, 784), dtype=np.float32)
        y = rng.integers(0, 5, size=(B, K))

        def loss_fn(p, x, y):
            return tm.nn.cross_entropy(tm.nn.mlp(p, x), y)
    else:
        sizes, B, K = [1, 40, 40, 1], 25, 2000
        x = rng.uniform(-5, 5, size=(B, K, 1)).astype(np.float32)
        y = np.sin(x).astype(np.float32)

        def loss_fn(p, x, y):
            return tm.nn.mse(tm.nn.mlp(p, x), y)
    params = tm.nn.mlp_init(sizes, seed=0, dtype=np.float32)
    batch = tm.tasks.TaskBatch(x, y, x, y)
    P = sum(p.size for p in params)
    H = sum(sizes[1:-1])
    return loss_fn, params, batch, B, K, P, H


def _call(method: str, loss_fn, params, batch, T: int):
    if method == "unrolled":
        return tm.meta.maml(loss_fn, params, batch, 0.01, T, method="unrolled")
    if method == "hvp_chain":
        return tm.meta.maml(loss_fn, params, batch, 0.01, T, method="hvp_chain")
    if method == "first_order":
        return tm.meta.maml(loss_fn, params, batch, 0.01, T, order=1)
    if method == "imaml_newton":
        return tm.meta.imaml(loss_fn, params, batch, 0.01, T, 1.0, 5, inner_solver="newton-cg",
                             newton_cg_steps=5, inner_tol=0.0, linear_solver="minres")
    return tm.meta.imaml(loss_fn, params, batch, 0.01, T, 1.0, 5)


def _activation_bytes_per_step(loss_fn, params, batch, B: int, K: int) -> tuple[int, int]:
    """Count and bytes of the (B, K, ·) arrays one more unrolled inner step puts on the tape."""
    def count(T):
        tape = tm.make_tape(lambda p, b: tm.meta.maml(loss_fn, p, b, 0.01, T))(params, batch)
        outs = [e.out for e in tape.eqns if len(e.out.shape) == 3 and e.out.shape[:2] == (B, K)]
        return len(outs), sum(int(np.prod(o.shape)) * np.dtype(o.dtype).itemsize for o in outs)
    (n2, b2), (n1, b1) = count(2), count(1)
    return n2 - n1, b2 - b1


def measure(shape: str, methods, depths) -> list[dict]:
    loss_fn, params, batch, B, K, P, H = _problem(shape)
    a, act_bytes = _activation_bytes_per_step(loss_fn, params, batch, B, K)
    rows = []
    for method in methods:
        for T in depths:
            _call(method, loss_fn, params, batch, 1)  # warm kernels
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            t0 = time.perf_counter()
            _call(method, loss_fn, params, batch, T)
            dt = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
            theta = T * B * P * 4
            pred = {"hvp_chain": theta, "unrolled": theta + T * act_bytes}.get(method)
            rows.append({"shape": shape, "method": method, "T": T, "peak_mib": peak / 2**20,
                         "seconds": dt, "predicted_theta_mib": theta / 2**20,
                         "predicted_mib": None if pred is None else pred / 2**20,
                         "B": B, "K": K, "P": P, "arrays_per_step": a})
            print(f"{shape:9s} {method:12s} T={T:3d}  peak {peak / 2**20:9.1f} MiB  "
                  f"{dt * 1e3:9.1f} ms  (θ_t alone {theta / 2**20:8.1f} MiB)", flush=True)
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--quick", action="store_true", help="T in {1, 5} only")
    ap.add_argument("--shapes", default="omniglot,sinusoid")
    ap.add_argument("--methods", default="unrolled,hvp_chain,first_order,imaml,imaml_newton")
    args = ap.parse_args(argv)
    depths = (1, 5) if args.quick else DEPTHS
    methods = tuple(args.methods.split(","))
    rows = []
    for shape in args.shapes.split(","):
        rows += measure(shape, methods, depths)
    if args.json:
        # atomically, with the commit, the machine and the library versions
        bench_history.write_results(args.json, {"rows": rows},
                                    os.path.dirname(os.path.abspath(__file__)), indent=1)
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("plot skipped: matplotlib is not installed (pip install 'tinymeta[plot]')")
            return rows
        shapes = args.shapes.split(",")
        fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4))
        axes = np.atleast_1d(axes)
        for ax, shape in zip(axes, shapes):
            for method in methods:
                r = [x for x in rows if x["shape"] == shape and x["method"] == method]
                ax.plot([x["T"] for x in r], [x["peak_mib"] for x in r], "o-", label=method)
            ax.set(title=shape, xlabel="inner steps T", ylabel="peak MiB (tracemalloc)")
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
    return rows


if __name__ == "__main__":
    main()
