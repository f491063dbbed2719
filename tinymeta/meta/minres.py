"""Krylov solvers for symmetric systems that may be indefinite, batched over a task axis.

:func:`minres` (Paige and Saunders 1975) and :func:`normal_cg` (conjugate gradients on the
normal equations A² x = A b) beside :func:`~tinymeta.meta.cg.cg`, with the same calling
convention: ``matvec(p)`` maps a pytree whose leaves are (B, …) to A p, one symmetric block
per task, and every task has its own scalars, its own stopping test and its own flags.
:func:`linear_solve` picks one of the three by name (iMAML's ``linear_solver``).

Like ``cg`` they are written in tinymeta ops with masks (``ops.where``) and a fixed most
iterations, so that ``make_tape`` and ``tm.compile`` record and replay them; the only Python
branch on values is the early exit when every task is done, skipped while recording.

What each reports per task, in the same keys as ``cg``: "residuals" (iterations+1, B) the
relative residual ‖b_e − A x_e‖/‖b_e‖ of the original system (MINRES's recursive estimate;
normal-CG's recursively updated b − Ax), "neg_curvature" (B,) a certificate that A_e is not
positive definite was met, "breakdown" (B,) the task stopped at its last good iterate because
A_e is (numerically) singular where it was probed, "converged" and "iterations".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import kernels, ops
from ..tree import tree_leaves, tree_map
from .cg import cg, task_dot
from .common import all_done, task_axpy, task_scale, task_select

LINEAR_SOLVERS = ("cg", "normal-cg", "minres")


def linear_solve(method: str, matvec: Callable[[Any], Any], b: Any, maxiter: int,
                 tol: float = 0.0, on_negative_curvature: str = "continue") -> tuple:
    """Solve A_e x_e = b_e per task from x = 0 by ``method``: "cg", "normal-cg" or "minres".

    "cg" is :func:`~tinymeta.meta.cg.cg` (``on_negative_curvature`` applies to it only:
    the other two are built for indefinite A). Returns (x, info) as the solvers do, with
    "breakdown" present for every method (all False where ``cg`` does not report one) and
    "matvecs", the number of products with A made.
    """
    if method == "cg":
        calls = _Counted(matvec)
        x, info = cg(calls, b, maxiter=maxiter, tol=tol,
                     on_negative_curvature=on_negative_curvature)
        info = dict(info)
        if info.get("breakdown") is None:  # cg without its own breakdown test
            info["breakdown"] = _falses(b)
        info["matvecs"] = calls.count
        return x, info
    if on_negative_curvature != "continue":
        raise ValueError(f"on_negative_curvature={on_negative_curvature!r} applies to the "
                         f"'cg' solver only; {method!r} handles indefinite systems itself")
    if method == "normal-cg":
        return normal_cg(matvec, b, maxiter=maxiter, tol=tol)
    if method == "minres":
        return minres(matvec, b, maxiter=maxiter, tol=tol)
    raise ValueError(f"linear_solver must be one of {list(LINEAR_SOLVERS)}; got {method!r}")


class _Counted:
    """A matvec that counts its calls (the HVPs of a solve)."""

    def __init__(self, matvec: Callable[[Any], Any]) -> None:
        self.matvec, self.count = matvec, 0

    def __call__(self, p: Any) -> Any:
        self.count += 1
        return self.matvec(p)


def breakdown_threshold(b: Any) -> float:
    """ε^(2/3) of the dtype of b: below this, relative to ‖A‖, a quantity counts as zero.

    (float64: 3.7e-11, float32: 2.5e-5.) A legitimately ill-conditioned system passes
    up to condition numbers of about its inverse.
    """
    return float(np.finfo(np.dtype(tree_leaves(b)[0].dtype)).eps) ** (2.0 / 3.0)


def _sqrt_eps(b: Any) -> float:
    return float(np.sqrt(np.finfo(np.dtype(tree_leaves(b)[0].dtype)).eps))


def _falses(b: Any) -> Any:
    leaf = tree_leaves(b)[0]
    return kernels.get_backend().zeros((ops.shape(leaf)[0],), bool)






def _safe(x: Any) -> Any:
    """x where it is not 0, else 1 (a divisor that is never zero; masked results only)."""
    return ops.where(x != 0, x, 1.0)


def _start(matvec: Callable, b: Any, x0: Any) -> tuple:
    """(x, r = b − A x0, ‖b‖, b ≠ 0, ‖b‖ where ≠ 0 else 1): the common start."""
    backend = kernels.get_backend()
    if not tree_leaves(b):
        raise ValueError("the right-hand side b has no arrays")
    if x0 is None:
        x, r = tree_map(lambda v: backend.zeros(ops.shape(v), v.dtype), b), b
    else:
        x, r = x0, tree_map(lambda bi, ai: bi - ai, b, matvec(x0))
    b_norm = ops.sqrt(task_dot(b, b))
    has_b = b_norm > 0
    return x, r, b_norm, has_b, ops.where(has_b, b_norm, 1.0)




# ---- MINRES -------------------------------------------------------------------------------


def minres(matvec: Callable[[Any], Any], b: Any, x0: Any = None, maxiter: int = 10,
           tol: float = 0.0) -> tuple:
    """Solve A_e x_e = b_e per task by MINRES: x_k minimises ‖b − A x‖ over x0 + K_k(A, r_0).

    Lanczos builds an orthonormal basis v_1, v_2, … of the Krylov space with the
    tridiagonal T_k (diagonal α_j = v_jᵀ A v_j, off-diagonal β_{j+1}):

        A v_k = β_k v_{k−1} + α_k v_k + β_{k+1} v_{k+1},    v_1 = r_0/β_1, β_1 = ‖r_0‖.

    Givens rotations G_1 … G_k reduce the (k+1)×k matrix [T_k; β_{k+1} e_kᵀ] to upper
    triangular R_k with diagonal γ_j and rotate β_1 e_1 to (τ_1, …, τ_k, η_{k+1}); then
    x_k = x_{k−1} + τ_k w_k with w_k = (v_k − δ_k w_{k−1} − ε_k w_{k−2})/γ_k, and
    ‖b − A x_k‖ = |η_{k+1}|, which never grows. Only A's symmetry is needed: MINRES goes
    on through indefinite A, where CG may divide by pᵀAp ≈ 0.

    Per task:

    - negative curvature: the pivots d_1 = α_1, d_j = α_j − β_j²/d_{j−1} of T_k = L D Lᵀ
      (the ones CG divides by) are all positive iff A is positive definite on the Krylov
      space; a pivot d_j ≤ 0 flags the task (and the search goes on);
    - breakdown, the task stops at its last iterate: γ_k ≤ τ‖T_k‖, τ the
      :func:`breakdown_threshold` (T_k is singular: the step would divide by about zero;
      for a singular A and a b outside its range this happens once the Krylov space holds
      b's part in the null space, and x_{k−1} is then a least-squares solution), or a
      non-finite number;
    - stopping: ‖r_k‖/‖b‖ ≤ tol, or β_{k+1} ≤ τ‖T_k‖ (Lanczos found an invariant subspace:
      x_k is exact there), or ``maxiter``.

    Args:
        matvec: p ↦ A p on task-batched pytrees, A symmetric per task.
        b: the right-hand sides, task axis first on every leaf.
        x0: the starting point (default zeros).
        maxiter: the most iterations (one matvec each).
        tol: relative-residual tolerance (0: all ``maxiter`` iterations).

    Returns:
        (x, info): "residuals" (iterations+1, B) |η|/‖b‖, "neg_curvature", "breakdown",
        "converged" (B,) bool, "iterations", "matvecs".

    References:
        Paige and Saunders 1975, Solution of sparse indefinite systems of linear equations
        (SIAM J. Numer. Anal.).
    """
    x, r0, _, has_b, safe_b = _start(matvec, b, x0)
    tau_bd = breakdown_threshold(b)
    where, sqrt, absolute = ops.where, ops.sqrt, ops.abs
    beta1 = sqrt(task_dot(r0, r0))
    s = _Minres(x=x, v=task_scale(1.0 / _safe(beta1), r0), beta=beta1, eta=beta1)
    rel = where(has_b, beta1 / safe_b, 0.0)
    residuals = [rel]
    active = (rel > tol) & has_b
    neg = breakdown = _falses(b)
    matvecs = 0
    for k in range(int(maxiter)):
        if all_done(active):
            break
        matvecs += 1
        col = s.column(matvec, k)
        neg = neg | (active & (col.pivot <= 0))
        singular = col.gamma <= tau_bd * col.tnorm
        bad = active & (singular | ~ops.isfinite(col.gamma))
        breakdown = breakdown | bad
        step = active & ~bad
        s.advance(col, step)
        rel = where(has_b, absolute(s.eta) / safe_b, 0.0)
        residuals.append(rel)
        active = step & (rel > tol) & (col.beta_next > tau_bd * col.tnorm)
    info = {"residuals": ops.stack(residuals), "neg_curvature": neg, "breakdown": breakdown,
            "iterations": len(residuals) - 1, "converged": residuals[-1] <= tol,
            "matvecs": matvecs}
    return s.x, info


class _Column:
    """Column k of T_k after the earlier rotations, and the new rotation's numbers."""

    __slots__ = ("alpha", "beta_next", "v_next", "delta", "epsilon", "gamma_bar", "gamma",
                 "tnorm", "pivot")


class _Minres:
    """MINRES's state per task: iterate, Lanczos vectors, the last two rotations and w's."""

    def __init__(self, x: Any, v: Any, beta: Any, eta: Any) -> None:
        backend = kernels.get_backend()
        zeros = tree_map(lambda a: backend.zeros(ops.shape(a), a.dtype), v)
        self.x, self.v, self.v_old = x, v, zeros
        self.w1, self.w2 = zeros, zeros  # w_{k−1}, w_{k−2}
        self.beta, self.eta = beta, eta  # β_k, η_k
        zero = backend.zeros(ops.shape(beta), beta.dtype)
        one = zero + 1.0
        self.c1, self.s1, self.c2, self.s2 = one, zero, one, zero  # G_{k−1}, G_{k−2}
        self.tnorm2 = zero
        self.pivot = one

    def column(self, matvec: Callable, k: int) -> _Column:
        """One Lanczos step and column k of T rotated by G_{k−2}, G_{k−1}."""
        sqrt = ops.sqrt
        col = _Column()
        beta_t = self.beta if k > 0 else self.beta * 0.0  # T has no entry above column 1
        p = task_axpy(-self.beta, self.v_old, matvec(self.v))
        col.alpha = task_dot(self.v, p)
        p = task_axpy(-col.alpha, self.v, p)
        col.beta_next = sqrt(task_dot(p, p))
        col.v_next = task_scale(1.0 / _safe(col.beta_next), p)
        self.tnorm2 = self.tnorm2 + col.alpha * col.alpha + beta_t * beta_t + \
            col.beta_next * col.beta_next
        col.tnorm = sqrt(self.tnorm2)
        col.pivot = col.alpha if k == 0 else col.alpha - beta_t * beta_t / _safe(self.pivot)
        col.epsilon = self.s2 * beta_t
        d = self.c2 * beta_t
        col.delta = self.c1 * d + self.s1 * col.alpha
        col.gamma_bar = -self.s1 * d + self.c1 * col.alpha
        col.gamma = sqrt(col.gamma_bar * col.gamma_bar + col.beta_next * col.beta_next)
        return col

    def advance(self, col: _Column, step: Any) -> None:
        """Rotate, update x where ``step``; every task moves on to the next column."""
        where = ops.where
        g = _safe(where(step, col.gamma, 1.0))
        c = where(step, col.gamma_bar / g, 1.0)
        s = where(step, col.beta_next / g, 0.0)
        w = task_axpy(-col.epsilon, self.w2, task_axpy(-col.delta, self.w1, self.v))
        w = task_scale(1.0 / g, w)
        # x moves only where the task steps (a stopped task's Lanczos may run away)
        self.x = task_select(step, task_axpy(c * self.eta, w, self.x), self.x)
        self.eta = where(step, -s * self.eta, self.eta)
        self.w2, self.w1 = self.w1, w
        self.c2, self.s2, self.c1, self.s1 = self.c1, self.s1, c, s
        self.v_old, self.v, self.beta = self.v, col.v_next, col.beta_next
        self.pivot = col.pivot


# ---- CG on the normal equations -------------------------------------------------------------


def normal_cg(matvec: Callable[[Any], Any], b: Any, x0: Any = None, maxiter: int = 10,
              tol: float = 0.0) -> tuple:
    """Solve A_e x_e = b_e per task by CG on the normal equations A² x = A b (A symmetric).

    A² = AᵀA is positive semidefinite for every A, so CG never meets negative curvature
    there; the price is the squared condition number and two products with A per
    iteration. CG on A² x = A b with residual r = A s, s = b − A x the original residual
    (both updated recursively: s ← s − α A p, r ← r − α A² p):

        α = ⟨r, r⟩ / ‖A p‖²,   x ← x + α p,   β = ⟨r_new, r_new⟩ / ⟨r, r⟩,   p ← r + β p.

    Per task:

    - negative curvature: the products give pᵀAp for free; pᵀAp ≤ 0 certifies that A is
      not positive definite (the solve goes on: it does not need it);
    - breakdown, the task stops at its last iterate: ‖A p‖ ≤ τ‖A‖‖p‖ (p in A's numerical
      null space), or ‖A s‖ ≤ τ‖A‖‖s‖ with ‖s‖ > √ε‖b‖ (the normal equations are solved but
      the system is not: b is not in A's range, no solution), or a non-finite number; τ
      is :func:`breakdown_threshold` and ‖A‖ the largest ‖Ap‖/‖p‖ seen;
    - stopping: ‖s‖/‖b‖ ≤ tol (the original system's residual), or ``maxiter``.

    Args and returns as :func:`minres` ("matvecs" = 1 + 2·iterations).

    References:
        Hestenes and Stiefel 1952, section 10; TorchOpt's implicit differentiation
        (Ren et al. 2023) solves iMAML's system this way.
    """
    x, s, _, has_b, safe_b = _start(matvec, b, x0)
    tau_bd, floor = breakdown_threshold(b), _sqrt_eps(b)
    where, sqrt = ops.where, ops.sqrt
    r = matvec(s)
    p, rr = r, task_dot(r, r)
    ss = task_dot(s, s)
    anorm = sqrt(rr) / _safe(sqrt(ss))
    rel = where(has_b, sqrt(ss) / safe_b, 0.0)
    residuals = [rel]
    active = (rel > tol) & has_b
    neg = breakdown = _falses(b)
    matvecs = 1
    for _ in range(int(maxiter)):
        if all_done(active):
            break
        q = matvec(p)
        q2 = matvec(q)
        matvecs += 2
        qq, pp = task_dot(q, q), task_dot(p, p)
        neg = neg | (active & (task_dot(p, q) <= 0))
        anorm = ops.maximum(anorm, sqrt(qq / _safe(pp)))
        null = qq <= (tau_bd * anorm) ** 2 * pp
        lsq = (sqrt(rr) <= tau_bd * anorm * sqrt(ss)) & (sqrt(ss) > floor * safe_b)
        bad = active & (null | lsq | ~ops.isfinite(qq + rr))
        breakdown = breakdown | bad
        step = active & ~bad
        alpha = where(step, rr / _safe(qq), 0.0)
        x = task_axpy(alpha, p, x)
        s = task_axpy(-alpha, q, s)
        r = task_axpy(-alpha, q2, r)
        rr_new = task_dot(r, r)
        p = task_axpy(where(step, rr_new / _safe(rr), 0.0), p, r)
        rr = where(step, rr_new, rr)
        ss = where(step, task_dot(s, s), ss)
        rel = where(has_b, sqrt(ss) / safe_b, 0.0)
        residuals.append(rel)
        active = step & (rel > tol)
    info = {"residuals": ops.stack(residuals), "neg_curvature": neg, "breakdown": breakdown,
            "iterations": len(residuals) - 1, "converged": residuals[-1] <= tol,
            "matvecs": matvecs}
    return x, info
