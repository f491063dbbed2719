"""Conjugate gradients, batched over a task axis: one system per task, solved together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import kernels, ops
from ..tensor import Tensor
from ..tree import tree_leaves, tree_map

# Written in tinymeta ops (not raw array calls), so that cg runs under make_tape and
# tm.compile too: its per-task branches are masks (ops.where), not Python ifs.


def task_dot(a: Any, b: Any) -> Any:
    """Per-task inner products ⟨a_e, b_e⟩ of two pytrees whose leaves are (B, …): shape (B,)."""
    total = 0.0
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        total = total + ops.sum(ops.reshape(x * y, (ops.shape(x)[0], -1)), axis=1)
    return total


def _axpy(s: Any, x: Any, y: Any) -> Any:
    """y + s_e x_e leafwise, with per-task scalars s of shape (B,)."""

    def one(xi: Any, yi: Any) -> Any:
        si = ops.reshape(s, (-1,) + (1,) * (ops.ndim(xi) - 1))
        return yi + ops.astype(si, xi.dtype) * xi

    return tree_map(one, x, y)


def _captured(x: Any) -> bool:
    return type(x) is Tensor and x._captured()


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
    backend = kernels.get_backend()
    where, sqrt = ops.where, ops.sqrt
    leaves = tree_leaves(b)
    if not leaves:
        raise ValueError("cg: b has no arrays")
    B = ops.shape(leaves[0])[0]
    if x0 is None:
        x = tree_map(lambda v: backend.zeros(ops.shape(v), v.dtype), b)
        r = b
    else:
        x = x0
        r = tree_map(lambda bi, ai: bi - ai, b, matvec(x0))
    p = r
    rr = task_dot(r, r)
    b_norm = sqrt(task_dot(b, b))
    has_b = b_norm > 0
    safe_b = where(has_b, b_norm, 1.0)
    rel = where(has_b, sqrt(rr) / safe_b, 0.0)
    residuals = [rel]
    active = (rel > tol) & has_b
    neg = backend.zeros((B,), bool)
    iterations = 0
    for k in range(int(maxiter)):
        # all tasks done: stop early (not while recording a tape, whose length must not
        # depend on values; the remaining iterations then change no task)
        if not _captured(active) and not bool(ops.stop_gradient(active).any()):
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
        alpha = where(step, rr / where(pAp != 0, pAp, 1.0), 0.0)
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, Ap, r)
        rr_new = task_dot(r, r)
        beta = where(step, rr_new / where(rr > 0, rr, 1.0), 0.0)
        p = _axpy(beta, p, r)
        rr = where(step, rr_new, rr)
        rel = where(has_b, sqrt(rr) / safe_b, 0.0)
        residuals.append(rel)
        active = step & (rel > tol) & ~stop_now
    info = {
        "residuals": ops.stack(residuals),
        "neg_curvature": neg,
        "iterations": iterations,
        "converged": residuals[-1] <= tol,
    }
    return x, info
