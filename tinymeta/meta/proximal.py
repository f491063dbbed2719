"""iMAML's inner problem, per task: φ* = argmin_φ G(φ) = L_S(φ) + (λ/2)‖φ − θ_0‖².

Two solvers, both task-batched and both stopping each task at its own stationarity:

- ``"gd"``: gradient descent on the whole proximal objective,
  φ_{t+1} = φ_t − α ∇G(φ_t) = φ_t − α(∇L_S(φ_t) + λ(φ_t − θ_0)), where a step that does not
  decrease G is refused and halves that task's α (a fixed α diverges once the curvature
  passes 2/α, and meta-training sharpens θ_0: docs/maths.md);
- ``"newton-cg"``: Hessian-free Newton: (H_S(φ_t) + λI) d = −∇G(φ_t) by a few iterations of
  :func:`~tinymeta.meta.cg.cg` on Hessian-vector products (the same ``cg`` and ``hvp`` as
  iMAML's implicit solve), then a backtracking (Armijo) line search
  φ_{t+1} = φ_t + 2^{−j} d, j the least of 0 … ``max_halvings`` with
  G(φ_t + 2^{−j} d) ≤ G(φ_t) + c·2^{−j}⟨∇G(φ_t), d⟩, c = 10⁻⁴.

The stationarity of a task is ‖∇G(φ)‖ / ‖∇L_S(θ_0)‖ (the gradient norm relative to where the
solver starts, φ_0 = θ_0): the number that says whether iMAML's implicit gradient, exact only
at a stationary point, can be trusted (docs/maths.md). A task stops when it is ≤ ``tol``.

Written in tinymeta ops with masks and a fixed most of iterations and halvings, as ``cg``
is, so that ``tm.compile`` and ``make_tape`` record and replay them: a task that has stopped
keeps its iterate (``ops.where``), and the only Python branches on values are early exits
when every task is done, skipped while recording.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from .. import kernels, ops
from ..transforms import grad, hvp
from ..tree import tree_map
from .cg import cg, task_dot
from .common import (
    LossFn,
    all_done,
    broadcast_tasks,
    support_objective,
    support_sum,
    task_axpy,
    task_select,
)

SOLVERS = ("gd", "newton-cg")
ARMIJO = 1e-4  # the line search's sufficient-decrease constant c


class ProximalState(NamedTuple):
    """One iterate of a proximal solver, every field per task (B leading)."""

    phi: Any  # φ_t
    g_support: Any  # ∇L_S(φ_t)
    objective: Any  # G(φ_t), (B,)
    stationarity: Any  # ‖∇G(φ_t)‖ / ‖∇L_S(θ_0)‖, (B,)
    active: Any  # (B,) bool: still iterating
    neg_curvature: Any  # (B,) bool: Newton's CG met ⟨p, (H_S + λI) p⟩ ≤ 0
    breakdown: Any  # (B,) bool: stopped at its last good iterate (see the solvers)
    iterations: Any  # (B,) int: the iterations this task took
    scale: Any  # (B,) gd: the factor (1, 1/2, …) of α for this task
    hvps: int  # Hessian-vector products made so far (all tasks at once count one)


class _Problem(NamedTuple):
    loss_fn: LossFn
    theta0: Any
    x: Any
    y: Any
    lam: float
    g0_norm: Any  # ‖∇L_S(θ_0)‖, (B,) (1 where it is 0)
    g0_zero: Any  # ∇L_S(θ_0) = 0: stationary from the start




def _proximal_terms(prob: _Problem, phi: Any) -> tuple:
    """(φ − θ_0, (λ/2)‖φ − θ_0‖² per task)."""
    diff = tree_map(lambda p, p0: p - p0, phi, prob.theta0)
    return diff, 0.5 * prob.lam * task_dot(diff, diff)


def _evaluate(prob: _Problem, phi: Any) -> tuple:
    """(∇L_S(φ), G(φ), relative stationarity) per task: one gradient of the support loss."""
    g, losses = grad(support_objective(prob.loss_fn, prob.x, prob.y), has_aux=True)(phi)
    diff, prox = _proximal_terms(prob, phi)
    g_full = tree_map(lambda gi, di: gi + prob.lam * di, g, diff)
    norm = ops.sqrt(task_dot(g_full, g_full))
    rel = ops.where(prob.g0_zero, 0.0, norm / prob.g0_norm)
    return g, losses + prox, rel


def _objective(prob: _Problem, phi: Any) -> Any:
    """G(φ) per task: one forward pass of the support loss."""
    return prob.loss_fn(phi, prob.x, prob.y) + _proximal_terms(prob, phi)[1]


def _start(loss_fn: LossFn, theta0: Any, x: Any, y: Any, lam: float,
           tol: float) -> tuple:
    """(the problem, the state at φ_0 = θ_0)."""
    g, losses = grad(support_objective(loss_fn, x, y), has_aux=True)(theta0)
    norm = ops.sqrt(task_dot(g, g))
    zero = norm == 0
    prob = _Problem(loss_fn, theta0, x, y, float(lam), ops.where(zero, 1.0, norm), zero)
    rel = ops.where(zero, 0.0, norm / prob.g0_norm)
    backend = kernels.get_backend()
    B = ops.shape(losses)[0]
    falses = backend.zeros((B,), bool)
    state = ProximalState(theta0, g, losses, rel, rel > tol, falses, falses,
                          backend.zeros((B,), "int64"), backend.ones((B,), losses.dtype), 0)
    return prob, state


def _finish_step(prob: _Problem, state: ProximalState, phi: Any, accept: Any, tol: float,
                 neg: Any = False, hvps: int = 0, retries: int | None = None) -> ProximalState:
    """The next state: the active tasks that ``accept`` move to ``phi``, the others keep
    their iterate. With ``retries`` (gd, an int), a ``phi`` whose G is not finite or not below G at
    the iterate (up to rounding, √ε relative) is refused too, and a task refused halves its
    step, giving up (breakdown) once halved ``retries`` times; without, a task that does
    not accept stops at once with a breakdown (Newton's failed line search)."""
    g, objective, rel = _evaluate(prob, phi)
    active = state.active
    scale = state.scale
    if retries is not None:
        slack = float(np.sqrt(np.finfo(np.dtype(objective.dtype)).eps))
        accept = accept & ops.isfinite(objective) & (
            objective <= state.objective + slack * ops.abs(state.objective))
        scale = ops.where(active & ~accept, 0.5 * scale, scale)
    moved = active & accept
    broke = active & ~accept
    if retries is not None:
        broke = broke & (scale < 0.5 ** retries)
    return ProximalState(
        phi=task_select(moved, phi, state.phi),
        g_support=task_select(moved, g, state.g_support),
        objective=ops.where(moved, objective, state.objective),
        stationarity=ops.where(moved, rel, state.stationarity),
        active=(moved & (rel > tol)) | (active & ~accept & ~broke),
        neg_curvature=state.neg_curvature | (active & neg),
        breakdown=state.breakdown | broke,
        iterations=state.iterations + ops.astype(moved, "int64"),
        scale=scale,
        hvps=state.hvps + hvps)


def _gd_step(prob: _Problem, state: ProximalState, lr: float, tol: float,
             max_halvings: int, **_: Any) -> ProximalState:
    """φ ← φ − α∇L_S(φ) − αλ(φ − θ_0): today's iMAML inner loop, op for op.

    A step that does not decrease G (α above 2/L where the task is: it would oscillate,
    then diverge) is not taken, and that task's α is halved from then on; after
    ``max_halvings`` halvings it stops at its iterate (breakdown). A task never refused runs
    exactly today's steps, with the fused kernel.
    """
    stepped = tree_map(lambda p, gp: ops.sub_scaled(p, gp, lr), state.phi, state.g_support)
    phi = tree_map(lambda s, p, p0: s - lr * prob.lam * (p - p0), stepped, state.phi,
                   prob.theta0)
    halved = state.scale < 1.0
    if not all_done(halved):  # some task's α was halved: its own step
        diff = tree_map(lambda p, p0: p - p0, state.phi, prob.theta0)
        g_full = tree_map(lambda gi, di: gi + prob.lam * di, state.g_support, diff)
        smaller = task_axpy(-lr * state.scale, g_full, state.phi)
        phi = task_select(halved, smaller, phi)
    return _finish_step(prob, state, phi, state.active, tol, retries=max_halvings)


def _newton_step(prob: _Problem, state: ProximalState, tol: float, cg_steps: int,
                 max_halvings: int, **_: Any) -> ProximalState:
    """One Newton-CG iteration with its line search (see the module's docstring).

    The direction: CG from d = 0 on (H_S(φ) + λI) d = −∇G(φ), stopping a task at
    negative curvature with its last iterate, or −∇G at the first iteration (Nocedal and
    Wright, Algorithm 7.1), so that d is a descent direction. Breakdown: no step length
    2^{−j}, j ≤ ``max_halvings``, decreases G enough (or d is not a descent direction):
    the task stops at φ_t.
    """
    phi, lam, active = state.phi, prob.lam, state.active
    diff = tree_map(lambda p, p0: p - p0, phi, prob.theta0)
    g_full = tree_map(lambda gi, di: gi + lam * di, state.g_support, diff)
    backend = kernels.get_backend()
    zeros = tree_map(lambda gi: backend.zeros(ops.shape(gi), gi.dtype), g_full)
    rhs = task_select(active, tree_map(lambda gi: -gi, g_full), zeros)
    summed = support_sum(prob.loss_fn, prob.x, prob.y)
    calls = [0]

    def matvec(v: Any) -> Any:
        calls[0] += 1
        return tree_map(lambda hv, vi: hv + lam * vi, hvp(summed, (phi,), (v,)), v)

    d, info = cg(matvec, rhs, maxiter=cg_steps, on_negative_curvature="stop")
    slope = task_dot(g_full, d)
    size = _line_search(prob, state, d, slope, max_halvings)
    found = size > 0
    trial = task_select(found, task_axpy(size, d, phi), phi)
    return _finish_step(prob, state, trial, found, tol, info["neg_curvature"], calls[0])


def _line_search(prob: _Problem, state: ProximalState, d: Any, slope: Any,
                 max_halvings: int) -> Any:
    """The accepted step length per task: the first 2^{−j} with sufficient decrease, else 0."""
    where = ops.where
    searching = state.active & (slope < 0)
    size = kernels.get_backend().zeros(ops.shape(slope), state.objective.dtype)
    s = 1.0
    for _ in range(int(max_halvings) + 1):
        if all_done(searching):
            break
        trial = _objective(prob, task_axpy(where(searching, s, 0.0), d, state.phi))
        ok = searching & ops.isfinite(trial) & (trial <= state.objective + ARMIJO * s * slope)
        size = where(ok, s, size)
        searching = searching & ~ok
        s *= 0.5
    return size


_STEPS = {"gd": _gd_step, "newton-cg": _newton_step}


def _check(solver: str, lam: float, steps: int, lr: float, tol: float, cg_steps: int,
           max_halvings: int) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"proximal_adapt: solver must be one of {list(SOLVERS)}; got "
                         f"{solver!r}")
    if lam < 0:
        raise ValueError(f"proximal_adapt: lam must be >= 0; got {lam}")
    if int(steps) < 0 or int(cg_steps) < 1 or int(max_halvings) < 0:
        raise ValueError(f"proximal_adapt: needs steps >= 0, cg_steps >= 1 and max_halvings "
                         f">= 0; got {steps}, {cg_steps}, {max_halvings}")
    if solver == "gd" and not lr > 0:
        raise ValueError(f"proximal_adapt: the gd solver needs lr > 0; got {lr}")
    if tol < 0:
        raise ValueError(f"proximal_adapt: tol must be >= 0; got {tol}")


def proximal_path(loss_fn: LossFn, params: Any, x: Any, y: Any, lam: float, steps: int,
                  solver: str = "gd", lr: float = 0.01, tol: float = 0.0, cg_steps: int = 5,
                  max_halvings: int = 10, batched: bool = False) -> Iterator[ProximalState]:
    """Yield the solver's states at φ_0 = θ_0, φ_1, …, φ_steps (see :func:`proximal_adapt`).

    Lazily, one state alive at a time: evaluation scores φ_t after several numbers of
    iterations from one run. Once every task has stopped, the last state repeats.
    """
    _check(solver, lam, steps, lr, tol, cg_steps, max_halvings)
    theta0 = params if batched else broadcast_tasks(params, int(ops.shape(x)[0]))
    prob, state = _start(loss_fn, theta0, x, y, lam, tol)
    yield state
    step = _STEPS[solver]
    for _ in range(int(steps)):
        if not all_done(state.active):
            state = step(prob, state, lr=lr, tol=tol, cg_steps=cg_steps,
                         max_halvings=max_halvings)
        yield state


def proximal_adapt(loss_fn: LossFn, params: Any, x: Any, y: Any, lam: float, steps: int,
                   solver: str = "gd", lr: float = 0.01, tol: float = 0.0, cg_steps: int = 5,
                   max_halvings: int = 10, batched: bool = False) -> tuple:
    """Adapt to each task by solving min_φ L_S(φ) + (λ/2)‖φ − θ_0‖² from φ = θ_0.

    ``solver="gd"``: ``steps`` iterations of φ ← φ − α ∇G(φ) (α = ``lr``); with λ = 0 this
    is plain fine-tuning (:func:`~tinymeta.meta.adapt`). ``solver="newton-cg"``: ``steps``
    Newton iterations, each ``cg_steps`` CG iterations (HVPs) on (H_S(φ) + λI) d = −∇G(φ)
    and at most ``max_halvings`` halvings of the step 1 (``lr`` is not used). A task stops
    once ‖∇G(φ)‖/‖∇L_S(θ_0)‖ ≤ ``tol`` (0: every iteration runs), or at a breakdown, or
    after ``steps``.

    Args:
        loss_fn: ``loss_fn(params, x, y) -> (B,)`` per-task losses, params task-batched.
        params: θ_0 without the task axis (broadcast to B = x.shape[0] tasks), or with it
            when ``batched``.
        x, y: the support set, task axis first.
        lam: λ ≥ 0, the proximal strength (0: minimise L_S alone).
        steps: the most iterations of the solver.
        solver: "gd" or "newton-cg".
        lr: α of "gd".
        tol: the relative stationarity at which a task stops.
        cg_steps: CG iterations per Newton step.
        max_halvings: the line search's most halvings.
        batched: ``params`` already has the task axis.

    Returns:
        (φ with the task axis on every leaf, info): "stationarity" (B,) relative
        ‖∇L_S(φ) + λ(φ − θ_0)‖/‖∇L_S(θ_0)‖; "objective" G(φ) (B,); "neg_curvature" (B,)
        bool (Newton's CG met ⟨p, (H_S + λI) p⟩ ≤ 0: the step fell back on the CG iterate
        before it, or on −∇G); "breakdown" (B,) bool (a task stopped at its last good
        iterate: gd refused a step that did not decrease G ``max_halvings`` + 1 times, its
        α halved at each; Newton's line search found no decrease); "iterations" (B,) the
        iterations each task took;
        "hvps", the Hessian-vector products made (batched over tasks).

    References:
        Rajeswaran, Finn, Kakade and Levine 2019 (iMAML-GD and iMAML-HF); Nocedal and
        Wright, Numerical Optimization, Algorithm 7.1 (line-search Newton-CG) and 3.1.
    """
    path = proximal_path(loss_fn, params, x, y, lam, steps, solver, lr, tol, cg_steps,
                         max_halvings, batched)
    last = collections.deque(path, maxlen=1)[0]  # one state alive at a time
    return last.phi, proximal_info(last)


def proximal_info(state: ProximalState) -> dict:
    """The info dict of a solver's final state (see :func:`proximal_adapt`)."""
    return {"stationarity": state.stationarity, "objective": state.objective,
            "neg_curvature": state.neg_curvature, "breakdown": state.breakdown,
            "iterations": state.iterations, "hvps": state.hvps}


def stationarity(loss_fn: LossFn, theta0: Any, phi: Any, x: Any, y: Any,
                 lam: float) -> Any:
    """‖∇L_S(φ) + λ(φ − θ_0)‖ / ‖∇L_S(θ_0)‖ per task, θ_0 and φ task-batched (two gradients)."""
    prob, _ = _start(loss_fn, theta0, x, y, lam, 0.0)
    return _evaluate(prob, phi)[2]
