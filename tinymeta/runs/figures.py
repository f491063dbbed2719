"""Finn et al.'s two sinusoid figures (needs matplotlib): predictions and MSE against steps.

``predictions.png``: a few test tasks, the true curve y = A sin(x − φ), the K support points,
and the model before adaptation and after 1 and 10 steps θ_t = θ_{t−1} − α ∇L_S(θ_{t−1})
(a row per model). ``mse_vs_steps.png``: the test MSE (± 95% interval) against the
number of test-time gradient steps, from each run's ``eval.json`` (made when missing).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import kernels
from ..meta.common import adapt_path
from .evaluation import evaluate, load_model
from .folder import RunFolder
from .sinusoid import SinusoidSetup


def make_figures(out: str, baseline: str | None = None, n_tasks: int = 3,
                 eval_seed: int = 1000, dest: str | None = None) -> list[str]:
    """Write ``predictions.png`` and ``mse_vs_steps.png`` of the run ``out`` into ``dest``
    (default ``out`` itself); return their paths.

    Raises:
        ImportError: matplotlib is not installed (the message says what to install).
        ValueError: a run that is not a sinusoid run.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot needs matplotlib: pip install 'tinymeta[plot]'") from None
    runs = [out] + ([baseline] if baseline else [])
    dest = out if dest is None else dest
    os.makedirs(dest, exist_ok=True)
    fig, axes = plt.subplots(len(runs), n_tasks, figsize=(4 * n_tasks, 3.2 * len(runs)),
                             squeeze=False)
    for row, run in enumerate(runs):
        _prediction_row(axes[row], run, n_tasks, eval_seed)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    pred_path = os.path.join(dest, "predictions.png")
    fig.savefig(pred_path, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for run in runs:
        folder = RunFolder(run)
        exists = os.path.exists(folder.file("eval.json"))
        report = folder.read_eval() if exists else evaluate(run, eval_seed=eval_seed)
        rows = sorted((int(t), r) for t, r in report["mse"].items() if r["mean"] is not None)
        ax.errorbar([t for t, _ in rows], [r["mean"] for _, r in rows],
                    yerr=[r["ci95"] for _, r in rows], marker="o", capsize=3,
                    label=f"{report['algo']} (K = {report['shots']})")
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("mean squared error")
    ax.legend()
    fig.tight_layout()
    mse_path = os.path.join(dest, "mse_vs_steps.png")
    fig.savefig(mse_path, dpi=120)
    plt.close(fig)
    return [pred_path, mse_path]


def _prediction_row(axes: Any, run: str, n_tasks: int, eval_seed: int) -> None:
    """One model's panels: truth, support points, and the learner at 0, 1 and 10 steps."""
    cfg, model = load_model(run)
    if cfg.task != "sinusoid":
        raise ValueError(f"plot draws sinusoid runs; {run} is a {cfg.task} run")
    setup = SinusoidSetup(cfg)
    lr = model.get("lrs", cfg.inner_lr)
    batch = setup.sample(np.random.default_rng(eval_seed), n_tasks, cfg.shots, 1)
    grid = np.linspace(-5, 5, 200)
    x = np.broadcast_to(grid[None, :, None], (n_tasks, grid.size, 1)).astype(setup.dtype)
    truth = setup.dist.function(x, batch.params["amplitude"], batch.params["phase"])
    to_np = kernels.get_backend().to_numpy
    curves = {}
    path = adapt_path(setup.loss_fn, model["theta"], batch.support_x, batch.support_y, lr, 10)
    for t, params in enumerate(path):
        if t in (0, 1, 10):
            curves[t] = to_np(setup.predict(params, x))
    sx, sy = to_np(batch.support_x), to_np(batch.support_y)
    for e in range(n_tasks):
        ax = axes[e]
        ax.plot(grid, truth[e, :, 0], "k-", label="ground truth")
        ax.plot(grid, curves[0][e, :, 0], ":", label="pre-update")
        ax.plot(grid, curves[1][e, :, 0], "--", label="1 grad step")
        ax.plot(grid, curves[10][e, :, 0], "-", alpha=0.7, label="10 grad steps")
        ax.plot(sx[e, :, 0], sy[e, :, 0], "^", color="purple", label="support points")
        ax.set_title(f"{cfg.algo}, K = {cfg.shots}, task {e}")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
