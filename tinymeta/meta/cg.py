"""Conjugate gradients, batched over a task axis: one system per task, solved together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import kernels, ops
from ..tree import tree_leaves, tree_map
from .common import all_done, task_axpy, task_select

# Written in tinymeta ops (not raw array calls), so that cg runs under make_tape and
# tm.compile too: its per-task branches are masks (ops.where), not Python ifs.


def task_dot(a: Any, b: Any) -> Any:
    """Per-task inner products ⟨a_e, b_e⟩ of two pytrees whose leaves are (B, …): shape (B,)."""
    total = 0.0
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        total = total + ops.sum(ops.reshape(x * y, (ops.shape(x)[0], -1)), axis=1)
    return total


def cg(matvec: Callable[[Any], Any], b: Any, x0: Any = None, maxiter: int = 10,
       tol: float = 0.0, on_negative_curvature: str = "continue",
       breakdown_tol: float | None = None) -> tuple:
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
    line-search Newton-CG).

    Breakdown (a singular or nearly singular A, e.g. I + H/λ with an eigenvalue of H at
    −λ), in either mode: task e breaks down when

    - |⟨p_e, A p_e⟩| ≤ δ ‖p_e‖² s_e, s_e the largest Rayleigh quotient |⟨p, Ap⟩|/‖p‖²
      the task has met (a scale of A): the step α_e would divide by a curvature that is
      zero to rounding (⟨p, Ap⟩ = 0 exactly included); or
    - a step would make ‖r_e‖² exceed ‖r_{e,0}‖²/δ, or not finite: for A positive
      definite with condition number κ ≤ 1/δ, ‖r_k‖ ≤ √κ ‖r_0‖, so such growth is never
      convergence.

    The task then stops at its last good iterate (the step is not taken, or undone), is
    flagged in ``breakdown``, and its residuals stay at that iterate's: never a silent
    10⁶⁸. δ is ``breakdown_tol``, by default 10 machine epsilons of b's dtype (2.2e-15 in
    float64, 1.2e-6 in float32): about the rounding of a computed Rayleigh quotient, so
    that a curvature that is merely small (an indefinite A, whose CG iterate recovers at
    the next step) is not taken for zero; a larger δ flags more. On systems that do not
    break down the iterates are exactly those of plain CG. Every branch is a mask, so cg
    records and replays (``make_tape``, ``tm.compile``) with a fixed iteration count.

    Args:
        matvec: p ↦ A p on task-batched pytrees.
        b: the right-hand sides, a pytree whose every leaf has the task axis first.
        x0: the starting point (default zeros).
        maxiter: the most iterations.
        tol: relative-residual tolerance (0: run all ``maxiter`` iterations).
        on_negative_curvature: "continue" or "stop".
        breakdown_tol: δ above, in (0, 1) (None: 10 machine epsilons).

    Returns:
        (x, info): x like b; info "residuals" the relative residuals of every task at
        every iteration, shape (iterations+1, B); "neg_curvature" (B,) bool; "breakdown"
        (B,) bool; "iterations" the number run; "converged" (B,) bool (relative residual
        ≤ tol).

    References:
        Hestenes and Stiefel 1952; Nocedal and Wright, Numerical Optimization, ch. 5 and 7.
    """
    if on_negative_curvature not in ("continue", "stop"):
        raise ValueError("cg: on_negative_curvature must be 'continue' or 'stop'; got "
                         f"{on_negative_curvature!r}")
    leaves = tree_leaves(b)
    if not leaves:
        raise ValueError("cg: b has no arrays")
    delta = _breakdown_tol(breakdown_tol, leaves[0])
    stop_mode = on_negative_curvature == "stop"
    where, sqrt = ops.where, ops.sqrt
    x, r, rr, safe_b, has_b = _start(matvec, b, x0)
    p = r
    rel = where(has_b, sqrt(rr) / safe_b, 0.0)
    rr_limit = rr / delta  # a residual above this is breakdown, not convergence
    residuals = [rel]
    active = (rel > tol) & has_b
    B = ops.shape(leaves[0])[0]
    neg = broke = kernels.get_backend().zeros((B,), bool)
    scale = 0.0 * rr
    iterations = 0
    for k in range(int(maxiter)):
        # all tasks done: stop early (not while recording a tape, whose length must not
        # depend on values; the remaining iterations then change no task)
        if all_done(active):
            break
        iterations += 1
        Ap = matvec(p)
        pAp = task_dot(p, Ap)
        pp = task_dot(p, p)
        scale = ops.maximum(scale, ops.abs(pAp) / where(pp > 0, pp, 1.0))
        tiny = ops.abs(pAp) <= delta * pp * scale  # pAp = 0 to rounding: breakdown
        curved = pAp <= 0
        neg = neg | (curved & active)
        if stop_mode:
            stop_now = active & (curved | tiny)
            if k == 0:
                x = task_axpy(active & curved, p, x)
            step = active & ~curved & ~tiny
        else:
            step = active & ~tiny
            stop_now = active & tiny
        alpha = where(step, rr / where(pAp != 0, pAp, 1.0), 0.0)
        x_new = task_axpy(alpha, p, x)
        r_new = task_axpy(-alpha, Ap, r)
        rr_new = task_dot(r_new, r_new)
        grew = step & ~(rr_new <= rr_limit)  # (a NaN fails the comparison: grew)
        good = step & ~grew
        x, r = task_select(grew, x, x_new), task_select(grew, r, r_new)
        beta = where(good, rr_new / where(rr > 0, rr, 1.0), 0.0)
        p = task_axpy(beta, p, r)
        rr = where(good, rr_new, rr)
        rel = where(has_b, sqrt(rr) / safe_b, 0.0)
        residuals.append(rel)
        broke = broke | (active & tiny) | grew
        active = good & (rel > tol) & ~stop_now
    info = {
        "residuals": ops.stack(residuals),
        "neg_curvature": neg,
        "breakdown": broke,
        "iterations": iterations,
        "converged": residuals[-1] <= tol,
    }
    return x, info


def _breakdown_tol(breakdown_tol: float | None, leaf: Any) -> float:
    """δ: the given one, or 10 machine epsilons of the right-hand side's dtype."""
    if breakdown_tol is None:
        dt = np.dtype(leaf.dtype)
        return 10.0 * float(np.finfo(dt if dt.kind in "fc" else np.float64).eps)
    delta = float(breakdown_tol)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"cg: breakdown_tol must be in (0, 1); got {breakdown_tol!r}")
    return delta


def _start(matvec: Callable, b: Any, x0: Any) -> tuple:
    """x_0, r_0 = b − A x_0, ‖r_0‖², ‖b‖ (1 where b = 0), and b ≠ 0, per task."""
    if x0 is None:
        backend = kernels.get_backend()
        x = tree_map(lambda v: backend.zeros(ops.shape(v), v.dtype), b)
        r = b
    else:
        x = x0
        r = tree_map(lambda bi, ai: bi - ai, b, matvec(x0))
    rr = task_dot(r, r)
    b_norm = ops.sqrt(task_dot(b, b))
    has_b = b_norm > 0
    return x, r, rr, ops.where(has_b, b_norm, 1.0), has_b
