"""MAML: second order (unrolled, or as a chain of Hessian-vector products) and first order."""

from __future__ import annotations

from typing import Any

from .. import ops
from ..transforms import grad, hvp, value_and_grad
from ..tree import tree_map
from .common import (
    LossFn,
    broadcast_tasks,
    check_mask,
    inner_step,
    num_tasks,
    support_objective,
)


def maml(loss_fn: LossFn, params: Any, batch: Any, inner_lr: float, inner_steps: int,
         order: int = 2, method: str = "unrolled", adapt: Any = None) -> tuple:
    """The MAML meta-gradient of the mean query loss after T inner steps.

    Learner: θ_{t+1} = θ_t − α ∇L_S(θ_t), t = 0 … T−1, from θ_0 (per task).
    Meta-objective: (1/B) Σ_e L_Q^e(θ_T^e). Its gradient (order 2):

        ∂L_Q(θ_T)/∂θ_0 = (I − αH_S(θ_0)) (I − αH_S(θ_1)) ⋯ (I − αH_S(θ_{T−1})) ∇L_Q(θ_T),

    H_S the Hessian of the support loss. ``method="unrolled"`` takes reverse mode through
    the recorded inner loop (the inner gradients are themselves taped);
    ``method="hvp_chain"`` applies the product right to left, v ← v − αH_S(θ_t)v, one
    batched Hessian-vector product per step, keeping only the θ_t. ``order=1``
    (first-order MAML) drops the product: ∂L_Q(θ_T)/∂θ_0 ≈ ∇L_Q(θ_T).

    With ``adapt`` (a pytree of bools like params), the False leaves are held fixed in
    the inner loop (ANIL: only the head adapts); then each factor is (I − αH_S M), M the
    mask, and the chain step is v ← v − αH_S(θ_t)(M v).

    Args:
        loss_fn: ``loss_fn(params, x, y) -> (B,)`` per-task losses, params task-batched.
        params: θ_0, a pytree of arrays without the task axis.
        batch: a TaskBatch with support_x, support_y, query_x, query_y (task axis first).
        inner_lr: α.
        inner_steps: T ≥ 0.
        order: 2 (exact) or 1 (first-order MAML).
        method: "unrolled" or "hvp_chain" (order 2 only).
        adapt: optional mask of the leaves the inner loop adapts.

    Returns:
        (meta_gradient, info): the meta-gradient is a pytree like params; info holds
        "support_loss" L_S(θ_0) and "query_loss" L_Q(θ_T), each of shape (B,), and
        "loss", the meta-objective (their query mean).

    References:
        Finn, Abbeel and Levine 2017, Model-Agnostic Meta-Learning for Fast Adaptation of
        Deep Networks (ICML). Raghu et al. 2020 (ANIL).
    """
    if order not in (1, 2):
        raise ValueError(f"maml: order must be 1 or 2; got {order!r}")
    if method not in ("unrolled", "hvp_chain"):
        raise ValueError(f"maml: method must be 'unrolled' or 'hvp_chain'; got {method!r}")
    if int(inner_steps) < 0:
        raise ValueError(f"maml: inner_steps must be >= 0; got {inner_steps}")
    mask = check_mask(adapt, params)
    if order == 1:
        return _first_order(loss_fn, params, batch, inner_lr, int(inner_steps), mask)
    if method == "unrolled":
        return _unrolled(loss_fn, params, batch, inner_lr, int(inner_steps), mask)
    return _hvp_chain(loss_fn, params, batch, inner_lr, int(inner_steps), mask)


def fomaml(loss_fn: LossFn, params: Any, batch: Any, inner_lr: float, inner_steps: int,
           adapt: Any = None) -> tuple:
    """First-order MAML: meta-gradient ≈ (1/B) Σ_e ∇L_Q^e(θ_T^e), θ_T held constant.

    The same as ``maml(..., order=1)``; see :func:`maml` for Args and Returns.

    References:
        Finn, Abbeel and Levine 2017 (section 5.2); Nichol, Achiam and Schulman 2018.
    """
    return maml(loss_fn, params, batch, inner_lr, inner_steps, order=1, adapt=adapt)


def _query_mean(loss_fn: LossFn, batch: Any, B: int):
    """θ_T ↦ ((1/B) Σ_e L_Q^e(θ_T^e), per-task query losses)."""

    def objective(theta: Any) -> tuple:
        losses = loss_fn(theta, batch.query_x, batch.query_y)
        return ops.sum(losses) / B, losses

    return objective


def _unrolled(loss_fn, params, batch, inner_lr, steps, mask):
    B = num_tasks(batch)

    def meta_objective(theta0: Any) -> tuple:
        theta = broadcast_tasks(theta0, B)
        support = None
        for _ in range(steps):
            theta, losses = inner_step(loss_fn, theta, batch.support_x, batch.support_y,
                                       inner_lr, mask)
            if support is None:
                support = losses
        loss, query = _query_mean(loss_fn, batch, B)(theta)
        return loss, (support, query)

    (loss, (support, query)), g = value_and_grad(meta_objective, has_aux=True)(params)
    if support is None:
        support = loss_fn(broadcast_tasks(params, B), batch.support_x, batch.support_y)
    return g, {"support_loss": support, "query_loss": query, "loss": loss}


def _forward(loss_fn, params, batch, inner_lr, steps, mask, keep=True):
    """θ_0 … θ_T (task-batched, plain arrays) and L_S(θ_0), with no graph kept.

    With ``keep=False`` only θ_T is kept (first-order MAML needs no other): memory
    then stays flat in T.
    """
    B = num_tasks(batch)
    theta = broadcast_tasks(params, B)
    thetas = [theta]
    support = None
    for _ in range(steps):
        theta, losses = inner_step(loss_fn, theta, batch.support_x, batch.support_y,
                                   inner_lr, mask)
        if keep:
            thetas.append(theta)
        else:
            thetas[0] = theta
        if support is None:
            support = losses
    if support is None:
        support = loss_fn(theta, batch.support_x, batch.support_y)
    return thetas, support


def _first_order(loss_fn, params, batch, inner_lr, steps, mask):
    B = num_tasks(batch)
    thetas, support = _forward(loss_fn, params, batch, inner_lr, steps, mask, keep=False)
    (loss, query), v = value_and_grad(_query_mean(loss_fn, batch, B), has_aux=True)(thetas[-1])
    g = tree_map(lambda x: ops.sum(x, axis=0), v)
    return g, {"support_loss": support, "query_loss": query, "loss": loss}


def _hvp_chain(loss_fn, params, batch, inner_lr, steps, mask):
    B = num_tasks(batch)
    thetas, support = _forward(loss_fn, params, batch, inner_lr, steps, mask)
    (loss, query), v = value_and_grad(_query_mean(loss_fn, batch, B), has_aux=True)(thetas[-1])

    def support_sum(theta: Any) -> Any:
        return support_objective(loss_fn, batch.support_x, batch.support_y)(theta)[0]

    # the summed support loss is block-diagonal over tasks: one HVP serves all B tasks
    for t in range(steps - 1, -1, -1):
        mv = tree_map(lambda x, keep: x if keep else 0.0 * x, v, mask)
        hv = hvp(support_sum, (thetas[t],), (mv,))
        v = tree_map(lambda x, h: x - inner_lr * h, v, hv)
    g = tree_map(lambda x: ops.sum(x, axis=0), v)
    return g, {"support_loss": support, "query_loss": query, "loss": loss}


def query_gradient(loss_fn: LossFn, theta: Any, batch: Any) -> Any:
    """∇_θ (1/B) Σ_e L_Q^e(θ^e) at task-batched θ, per task (B, …): the first-order term."""
    B = num_tasks(batch)
    return grad(_query_mean(loss_fn, batch, B), has_aux=True)(theta)[0]
