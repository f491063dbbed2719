"""Conjugate gradients, batched over a task axis: one system per task, solved together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import kernels
from ..tree import tree_leaves, tree_map


def task_dot(a: Any, b: Any) -> Any:
    """Per-task inner products ⟨a_e, b_e⟩ of two pytrees whose leaves are (B, …): shape (B,)."""
    xp = kernels.get_backend().xp
    total = 0.0
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        total = total + xp.sum((x * y).reshape(x.shape[0], -1), axis=1)
    return total


def _axpy(s: Any, x: Any, y: Any) -> Any:
    """y + s_e x_e leafwise, with per-task scalars s of shape (B,)."""

    def one(xi: Any, yi: Any) -> Any:
        return yi + s.reshape((-1,) + (1,) * (xi.ndim - 1)).astype(xi.dtype) * xi

    return tree_map(one, x, y)


def cg(matvec: Callable[[Any], Any], b: Any, x0: Any = None, maxiter: int = 10,
       tol: float = 0.0, on_negative_curvature: str = "continue") -> tuple:
    """Solve A_e x_e = b_e for every task e by conjugate gradients.

    A is symmetric and block-diagonal over the task axis: ``matvec(p)`` maps a pytree
    whose leaves are (B, …) to A p of the same shape, each task's block acting on its
    own slice (for iMAML, A = I + H_S(φ)/λ). Each task has its own step sizes
    α_e = ⟨r_e, r_e⟩ / ⟨p_e, A p_e⟩ and β_e = ⟨r_{e,new}, r_{e,new}⟩ / ⟨r_e, r_e⟩.

    Stopping, per task: after ``maxiter`` iterations, or when the relative residual
    ‖r_e‖/‖b_e‖ falls to ``tol`` or below (a task with b_e = 0 returns x_e = x0_e at
    once). Iterations continue while any task is still running.

    Negative curvature: CG needs A positive definite. Where ⟨p_e, A p_e⟩ ≤ 0 the task is
    flagged in ``neg_curvature``; with ``on_negative_curvature="continue"`` it goes on as
    plain CG (the iterate is still the Krylov-space stationary point), with ``"stop"``
    it stops and returns its last iterate, or, at the first iteration, x0 + p_0
    (= b for x0 = 0: the steepest-descent direction, as in Nocedal and Wright's
    line-search Newton-CG). ⟨p_e, A p_e⟩ = 0 exactly stops that task in either mode, so
    no step ever divides by zero: never a silent NaN.

    Args:
        matvec: p ↦ A p on task-batched pytrees.
        b: the right-hand sides, a pytree whose every leaf has the task axis first.
        x0: the starting point (default zeros).
        maxiter: the most iterations.
        tol: relative-residual tolerance (0: run all ``maxiter`` iterations).
        on_negative_curvature: "continue" or "stop".

    Returns:
        (x, info): x like b; info "residuals" the relative residuals of every task at
        every iteration, shape (iterations+1, B); "neg_curvature" (B,) bool; "iterations"
        the number run; "converged" (B,) bool (relative residual ≤ tol).

    References:
        Hestenes and Stiefel 1952; Nocedal and Wright, Numerical Optimization, ch. 5 and 7.
    """
    if on_negative_curvature not in ("continue", "stop"):
        raise ValueError("cg: on_negative_curvature must be 'continue' or 'stop'; got "
                         f"{on_negative_curvature!r}")
    xp = kernels.get_backend().xp
    leaves = tree_leaves(b)
    if not leaves:
        raise ValueError("cg: b has no arrays")
    B = leaves[0].shape[0]
    if x0 is None:
        x = tree_map(lambda v: xp.zeros_like(v), b)
        r = b
    else:
        x = x0
        r = tree_map(lambda bi, ai: bi - ai, b, matvec(x0))
    p = r
    rr = task_dot(r, r)
    b_norm = xp.sqrt(task_dot(b, b))
    safe_b = xp.where(b_norm > 0, b_norm, 1.0)
    rel = xp.where(b_norm > 0, xp.sqrt(rr) / safe_b, 0.0)
    residuals = [rel]
    active = (rel > tol) & (b_norm > 0)
    neg = xp.zeros(B, dtype=bool)
    iterations = 0
    for k in range(int(maxiter)):
        if not bool(active.any()):
            break
        iterations += 1
        Ap = matvec(p)
        pAp = task_dot(p, Ap)
        curved = pAp <= 0
        neg = neg | (curved & active)
        if on_negative_curvature == "stop":
            stop_now = active & curved
            if k == 0:
                x = _axpy(stop_now, p, x)
            step = active & ~curved
        else:
            step = active & (pAp != 0)
            stop_now = active & (pAp == 0)
        alpha = xp.where(step, rr / xp.where(pAp != 0, pAp, 1.0), 0.0)
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, Ap, r)
        rr_new = task_dot(r, r)
        beta = xp.where(step, rr_new / xp.where(rr > 0, rr, 1.0), 0.0)
        p = _axpy(beta, p, r)
        rr = xp.where(step, rr_new, rr)
        rel = xp.where(b_norm > 0, xp.sqrt(rr) / safe_b, 0.0)
        residuals.append(rel)
        active = step & (rel > tol) & ~stop_now
    info = {
        "residuals": xp.stack(residuals),
        "neg_curvature": neg,
        "iterations": iterations,
        "converged": residuals[-1] <= tol,
    }
    return x, info
