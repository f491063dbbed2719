"""Implicit MAML: the meta-gradient from the implicit function theorem, solved by CG."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import ops
from ..transforms import grad, hvp
from ..tree import tree_map
from .cg import cg
from .common import LossFn, broadcast_tasks, inner_step, num_tasks, query_objective, support_sum


def imaml(loss_fn: LossFn, params: Any, batch: Any, inner_lr: float, inner_steps: int,
          lam: float, cg_steps: int, cg_tol: float = 0.0, damping: float = 0.0,
          on_negative_curvature: str = "continue",
          inner_solver: Callable | None = None) -> tuple:
    """The iMAML meta-gradient (1/B) Σ_e (I + H_S(φ_e)/λ)^{-1} ∇L_Q(φ_e).

    Inner problem, per task: φ_e = argmin_φ L_S(φ) + (λ/2)‖φ − θ_0‖², approximated by T
    steps of gradient descent φ ← φ − α (∇L_S(φ) + λ(φ − θ_0)) from φ = θ_0 (or solved by
    ``inner_solver``). At an exact minimiser the implicit function theorem gives
    dφ/dθ_0 = (I + H_S(φ)/λ)^{-1}, so the meta-gradient of L_Q(φ(θ_0)) is x_e solving

        (I + H_S(φ_e)/λ + damping·I) x_e = ∇L_Q(φ_e),

    by conjugate gradients on Hessian-vector products from x = 0 (:func:`cg`), each task
    with its own step sizes. Errata of the lecture: its (1 + λ ∂²L/∂θ²)^{-1} uses λ for the
    paper's 1/λ, and this is not "the last gradient" but an identity at the inner optimum,
    exact when φ is the exact minimiser. I + H_S/λ is positive definite only near a
    minimiser; away from one CG may meet negative curvature (see ``on_negative_curvature``
    and ``info["neg_curvature"]``). Where I + H_S(φ_e)/λ is singular to rounding (an
    eigenvalue of H_S at −λ), CG breaks down: that task's CG stops at its last good
    iterate, which is its meta-gradient, and ``info["breakdown"]`` flags it (see
    :func:`cg`); check it rather than trust such a task.

    Args:
        loss_fn: ``loss_fn(params, x, y) -> (B,)`` per-task losses, params task-batched.
        params: θ_0, a pytree of arrays without the task axis.
        batch: a TaskBatch (task axis first).
        inner_lr: α of the inner gradient descent.
        inner_steps: T, the inner gradient steps.
        lam: λ > 0, the strength of the proximal term.
        cg_steps: the most CG iterations.
        cg_tol: stop a task's CG when ‖r_e‖/‖b_e‖ ≤ cg_tol.
        damping: added to the diagonal of the system.
        on_negative_curvature: "continue" (plain CG, flagged) or "stop" (that task
            returns its last iterate), as in :func:`cg`.
        inner_solver: ``inner_solver(loss_fn, theta, x, y, lam) -> φ`` with theta and φ
            task-batched, replacing the gradient-descent inner loop (closed forms, tests).

    Returns:
        (meta_gradient like params, info): "support_loss" L_S(θ_0) and "query_loss"
        L_Q(φ) (B,), "loss", "cg_residuals" (iterations+1, B) relative residuals,
        "neg_curvature" (B,) bool, "breakdown" (B,) bool (CG broke down on that task's
        system and stopped at its last good iterate), "cg_iterations".

    References:
        Rajeswaran, Finn, Kakade and Levine 2019, Meta-Learning with Implicit Gradients
        (NeurIPS).
    """
    if lam <= 0:
        raise ValueError(f"imaml: lam must be > 0; got {lam}")
    B = num_tasks(batch)
    sx, sy = batch.support_x, batch.support_y
    theta0 = broadcast_tasks(params, B)
    support = loss_fn(theta0, sx, sy)
    if inner_solver is not None:
        phi = inner_solver(loss_fn, theta0, sx, sy, lam)
    else:
        phi = _proximal_descent(loss_fn, theta0, sx, sy, inner_lr, int(inner_steps), lam)
    g_query = grad(query_objective(loss_fn, batch), has_aux=True)(phi)[0]  # (1/B) ∇L_Q(φ_e)
    query = loss_fn(phi, batch.query_x, batch.query_y)
    summed_support = support_sum(loss_fn, sx, sy)

    def matvec(v: Any) -> Any:
        hv = hvp(summed_support, (phi,), (v,))
        return tree_map(lambda vi, hi: (1.0 + damping) * vi + hi / lam, v, hv)

    x, info = cg(matvec, g_query, maxiter=cg_steps, tol=cg_tol,
                 on_negative_curvature=on_negative_curvature)
    g = tree_map(lambda xi: ops.sum(xi, axis=0), x)
    return g, {
        "support_loss": support,
        "query_loss": query,
        "loss": ops.mean(query),
        "cg_residuals": info["residuals"],
        "neg_curvature": info["neg_curvature"],
        "breakdown": info["breakdown"],
        "cg_iterations": info["iterations"],
    }


def _proximal_descent(loss_fn: LossFn, theta0: Any, x: Any, y: Any, lr: float, steps: int,
                      lam: float) -> Any:
    """T steps of φ ← φ − α(∇L_S(φ) + λ(φ − θ_0)) from φ = θ_0, task-batched."""
    phi = theta0
    for _ in range(steps):
        stepped, _ = inner_step(loss_fn, phi, x, y, lr)
        phi = tree_map(lambda s, p, p0: s - lr * lam * (p - p0), stepped, phi, theta0)
    return phi
