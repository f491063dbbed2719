"""Why iMAML's implicit gradient needs stationarity: its cosine with the true gradient.

    OPENBLAS_NUM_THREADS=1 python benchmarks/imaml_stationarity.py \
        --json benchmarks/results/imaml_stationarity.json --plot docs/imaml_stationarity.png

For each task e and inner depth T, φ_T = T steps of gradient descent on the proximal
objective G(φ) = L_S(φ) + (λ/2)‖φ − θ_0‖² from θ_0 (:func:`tinymeta.meta.proximal_path`,
solver "gd"). Two meta-gradients of L_Q(φ_T(θ_0)), per task, in float64:

- the true one of the truncated inner loop: reverse mode through the T recorded steps;
- the implicit one, (I + H_S(φ_T)/λ)^{-1} ∇L_Q(φ_T), solved to a relative residual of 1e-10
  by MINRES (exact for the φ_T it is given: what is left is the use of φ_T for φ*).

The script prints and plots their cosine against the relative stationarity
‖∇G(φ_T)‖/‖∇L_S(θ_0)‖ reached. Model: the 1-20-20-1 tanh MLP (481 parameters), sinusoid
tasks with K = 10 support and 10 query points, θ_0 its initialisation (seed 0), α = 0.02,
λ in {1, 10}, T in {1, 2, 5, 10, 20, 50, 100, 200, 400}. About 10 s on one core.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import tinymeta as tm
from tinymeta import meta, nn
from tinymeta.meta.common import broadcast_tasks, support_sum
from tinymeta.tasks.sinusoid import Sinusoid

DEPTHS = (1, 2, 5, 10, 20, 50, 100, 200, 400)
LAMS = (1.0, 10.0)
ALPHA = 0.02
TASKS = 12


def loss_fn(params, x, y):
    return nn.mse(nn.mlp(params, x, activation=tm.tanh), y)


def per_task_flat(tree) -> np.ndarray:
    """(B, P): each task's slice of a task-batched pytree, flattened."""
    leaves = tm.tree_leaves(tree)
    return np.concatenate([np.asarray(a).reshape(a.shape[0], -1) for a in leaves], axis=1)


def measure(theta0, batch, lam: float, T: int) -> dict:
    """Per-task stationarity and cosine(implicit, true) after T GD steps."""
    B = batch.support_x.shape[0]
    start = broadcast_tasks(theta0, B)

    def query_after(theta):  # Σ_e L_Q^e(φ_T^e(θ_e)): slice e of its gradient is task e's
        *_, last = meta.proximal_path(loss_fn, theta, batch.support_x, batch.support_y, lam,
                                      T, solver="gd", lr=ALPHA, batched=True)
        return tm.sum(loss_fn(last.phi, batch.query_x, batch.query_y)), last

    true, last = tm.grad(query_after, has_aux=True)(start)
    phi = last.phi
    g_query = tm.grad(lambda p: tm.sum(loss_fn(p, batch.query_x, batch.query_y)))(phi)
    summed = support_sum(loss_fn, batch.support_x, batch.support_y)

    def matvec(v):
        hv = tm.hvp(summed, (phi,), (v,))
        return tm.tree_map(lambda vi, hi: vi + hi / lam, v, hv)

    implicit, info = meta.minres(matvec, g_query, maxiter=600, tol=1e-10)
    a, b = per_task_flat(implicit), per_task_flat(true)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"lam": lam, "T": T, "stationarity": np.asarray(last.stationarity).tolist(),
            "cosine": cos.tolist(), "minres_residual": np.asarray(info["residuals"][-1]).max(),
            "breakdown": int(np.asarray(last.breakdown).sum())}


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=100)
    for lam, marker in zip(LAMS, "os"):
        pts = [(s, c, r["T"]) for r in rows if r["lam"] == lam
               for s, c in zip(r["stationarity"], r["cosine"])]
        s, c, t = (np.array(v) for v in zip(*pts))
        sc = ax.scatter(s, c, c=np.log10(t), cmap="viridis", marker=marker, s=14,
                        label=f"λ = {lam:g}")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("relative stationarity ‖∇G(φ_T)‖ / ‖∇L_S(θ_0)‖")
    ax.set_ylabel("cos(implicit, true meta-gradient)")
    ax.set_title("iMAML: 1-20-20-1 tanh MLP, sinusoid, GD α = 0.02", fontsize=9)
    fig.colorbar(sc, ax=ax, label="log10 T (GD steps)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the measurements here")
    ap.add_argument("--plot", default=None, help="write the figure here (needs matplotlib)")
    args = ap.parse_args()
    tm.set_backend("numpy")
    theta0 = nn.mlp_init((1, 20, 20, 1), seed=0, dtype=np.float64)
    batch = Sinusoid().sample(TASKS, 10, 10, seed=3, dtype=np.float64)
    rows = []
    t0 = time.perf_counter()
    for lam in LAMS:
        for T in DEPTHS:
            r = measure(theta0, batch, lam, T)
            rows.append(r)
            print(f"λ = {lam:4g}  T = {T:3d}  stationarity median "
                  f"{np.median(r['stationarity']):.2e}  cosine median "
                  f"{np.median(r['cosine']):.4f} min {min(r['cosine']):.4f}"
                  f"  (gd breakdowns {r['breakdown']})", flush=True)
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        tm.io.write_json(args.json, {"rows": rows, "alpha": ALPHA, "tasks": TASKS,
                                     "model": "1-20-20-1 tanh"}, indent=1)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
