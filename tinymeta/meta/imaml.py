"""Implicit MAML: the meta-gradient from the implicit function theorem, solved by CG."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import kernels, ops
from ..transforms import grad, hvp
from ..tree import tree_map
from .common import LossFn, broadcast_tasks, num_tasks, query_objective, support_sum
from .minres import linear_solve
from .proximal import proximal_adapt, stationarity


def imaml(loss_fn: LossFn, params: Any, batch: Any, inner_lr: float, inner_steps: int,
          lam: float, cg_steps: int, cg_tol: float = 0.0, damping: float = 0.0,
          on_negative_curvature: str = "continue",
          inner_solver: str | Callable | None = None, inner_tol: float = 0.0,
          newton_cg_steps: int = 5, max_halvings: int = 10,
          linear_solver: str = "cg") -> tuple:
    """The iMAML meta-gradient (1/B) Σ_e (I + H_S(φ_e)/λ)^{-1} ∇L_Q(φ_e).

    Inner problem, per task: φ_e = argmin_φ G(φ) = L_S(φ) + (λ/2)‖φ − θ_0‖², from
    φ = θ_0, by ``inner_solver`` (:func:`~tinymeta.meta.proximal_adapt`): "gd" (the
    default), T steps of gradient descent φ ← φ − α (∇L_S(φ) + λ(φ − θ_0)); "newton-cg",
    T Hessian-free Newton iterations of ``newton_cg_steps`` CG iterations each, with a
    backtracking line search; or a callable. Each task stops at relative stationarity
    ‖∇G(φ)‖/‖∇L_S(θ_0)‖ ≤ ``inner_tol``. At an exact minimiser the implicit function
    theorem gives dφ/dθ_0 = (I + H_S(φ)/λ)^{-1}, so the meta-gradient of L_Q(φ(θ_0)) is
    x_e solving

        (I + H_S(φ_e)/λ + damping·I) x_e = ∇L_Q(φ_e),

    from x = 0 by ``linear_solver``: "cg" (:func:`cg`, the default), "minres" or
    "normal-cg" (CG on A² x = A b; :mod:`tinymeta.meta.minres`), each matvec one
    Hessian-vector product, each task with its own scalars. Errata of the lecture: its
    (1 + λ ∂²L/∂θ²)^{-1} uses λ for the paper's 1/λ, and this is not "the last gradient"
    but an identity at the inner optimum, exact when φ is the exact minimiser. I + H_S/λ
    is positive definite only near a minimiser; away from one CG may meet negative
    curvature (see ``on_negative_curvature`` and ``info["neg_curvature"]``). Where
    I + H_S(φ_e)/λ is singular to rounding (an eigenvalue of H_S at −λ), the solver breaks
    down: that task's solve stops at its last good iterate, which is its meta-gradient, and
    ``info["breakdown"]`` flags it; check it rather than trust such a task.

    Args:
        loss_fn: ``loss_fn(params, x, y) -> (B,)`` per-task losses, params task-batched.
        params: θ_0, a pytree of arrays without the task axis.
        batch: a TaskBatch (task axis first).
        inner_lr: α of the inner gradient descent ("gd").
        inner_steps: T, the inner solver's most iterations.
        lam: λ > 0, the strength of the proximal term.
        cg_steps: the most iterations of the implicit solve.
        cg_tol: stop a task's implicit solve when ‖r_e‖/‖b_e‖ ≤ cg_tol.
        damping: added to the diagonal of the system.
        on_negative_curvature: "continue" (plain CG, flagged) or "stop" (that task
            returns its last iterate), as in :func:`cg` (``linear_solver="cg"`` only).
        inner_solver: "gd" (None), "newton-cg", or ``inner_solver(loss_fn, theta, x, y,
            lam) -> φ`` with theta and φ task-batched (closed forms, tests).
        inner_tol: the relative stationarity at which a task's inner solver stops.
        newton_cg_steps, max_halvings: CG iterations per Newton step and the line
            search's most halvings ("newton-cg").
        linear_solver: "cg", "minres" or "normal-cg".

    Returns:
        (meta_gradient like params, info): "support_loss" L_S(θ_0) and "query_loss"
        L_Q(φ) (B,), "loss" their mean, "stationarity" (B,) the inner solver's relative
        stationarity at φ, "inner_neg_curvature" and "inner_breakdown" (B,) its flags,
        "cg_residuals" (iterations+1, B) the implicit solve's relative residuals,
        "neg_curvature" and "breakdown" (B,) its flags (breakdown: the system was singular
        to rounding on that task and its solve stopped at its last good iterate),
        "cg_iterations", and "hvps", the Hessian-vector products of the call (each batched
        over the tasks).

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
    phi, inner = _inner_solve(loss_fn, theta0, sx, sy, lam, inner_solver, inner_lr,
                              int(inner_steps), inner_tol, newton_cg_steps, max_halvings)
    g_query = grad(query_objective(loss_fn, batch), has_aux=True)(phi)[0]  # (1/B) ∇L_Q(φ_e)
    query = loss_fn(phi, batch.query_x, batch.query_y)
    summed_support = support_sum(loss_fn, sx, sy)

    def matvec(v: Any) -> Any:
        hv = hvp(summed_support, (phi,), (v,))
        return tree_map(lambda vi, hi: (1.0 + damping) * vi + hi / lam, v, hv)

    x, info = linear_solve(linear_solver, matvec, g_query, maxiter=cg_steps, tol=cg_tol,
                           on_negative_curvature=on_negative_curvature)
    g = tree_map(lambda xi: ops.sum(xi, axis=0), x)
    return g, {
        "support_loss": support,
        "query_loss": query,
        "loss": ops.mean(query),
        "stationarity": inner["stationarity"],
        "inner_neg_curvature": inner["neg_curvature"],
        "inner_breakdown": inner["breakdown"],
        "cg_residuals": info["residuals"],
        "neg_curvature": info["neg_curvature"],
        "breakdown": info["breakdown"],
        "cg_iterations": info["iterations"],
        "hvps": inner["hvps"] + info["matvecs"],
    }


def _inner_solve(loss_fn: LossFn, theta0: Any, x: Any, y: Any, lam: float,
                 solver: str | Callable | None, lr: float, steps: int, tol: float,
                 cg_steps: int, max_halvings: int) -> tuple:
    """(φ, the inner solver's info) for :func:`imaml`."""
    if callable(solver):
        phi = solver(loss_fn, theta0, x, y, lam)
        rel = stationarity(loss_fn, theta0, phi, x, y, lam)
        flags = kernels.get_backend().zeros(ops.shape(rel), bool)
        return phi, {"stationarity": rel, "neg_curvature": flags, "breakdown": flags,
                     "hvps": 0}
    return proximal_adapt(loss_fn, theta0, x, y, lam, steps, solver="gd" if solver is None
                          else solver, lr=lr, tol=tol, cg_steps=cg_steps,
                          max_halvings=max_halvings, batched=True)
