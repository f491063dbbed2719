"""MAML: second order (unrolled, or as a chain of Hessian-vector products) and first order."""

from __future__ import annotations

from typing import Any

from .. import ops
from ..transforms import hvp, value_and_grad
from ..tree import tree_map
from .common import (
    LossFn,
    broadcast_tasks,
    check_mask,
    meta_objective,
    num_tasks,
    query_objective,
    support_sum,
    unroll,
)


def maml(loss_fn: LossFn, params: Any, batch: Any, inner_lr: float, inner_steps: int,
         order: int = 2, method: str = "unrolled", adapt: Any = None) -> tuple:
    """The MAML meta-gradient ∂/∂θ_0 (1/B) Σ_e L_Q^e(θ_T^e), after T inner steps.

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
    steps = int(inner_steps)
    if order == 2 and method == "unrolled":
        objective = meta_objective(loss_fn, batch, steps, mask)
        (loss, (support, query)), g = value_and_grad(objective, has_aux=True)(params, inner_lr)
    else:
        g, (loss, (support, query)) = _back_along_path(loss_fn, params, batch, inner_lr,
                                                       steps, mask, order)
    if support is None:  # T = 0: no inner step took L_S(θ_0) on its way
        support = loss_fn(broadcast_tasks(params, num_tasks(batch)), batch.support_x,
                          batch.support_y)
    return g, {"support_loss": support, "query_loss": query, "loss": loss}


def fomaml(loss_fn: LossFn, params: Any, batch: Any, inner_lr: float, inner_steps: int,
           adapt: Any = None) -> tuple:
    """First-order MAML: meta-gradient ≈ (1/B) Σ_e ∇L_Q^e(θ_T^e), θ_T held constant.

    The same as ``maml(..., order=1)``; see :func:`maml` for Args and Returns.

    References:
        Finn, Abbeel and Levine 2017 (section 5.2); Nichol, Achiam and Schulman 2018.
    """
    return maml(loss_fn, params, batch, inner_lr, inner_steps, order=1, adapt=adapt)


def _back_along_path(loss_fn: LossFn, params: Any, batch: Any, inner_lr: float, steps: int,
                     mask: Any, order: int) -> tuple:
    """v ← ∇L_Q(θ_T); with order 2, v ← v − αH_S(θ_t)(M v) for t = T−1 … 0; then Σ_e v_e.

    No reverse sweep goes through the inner loop: the HVP chain keeps the θ_t, first order
    only θ_T. Returns (meta-gradient, (loss, (L_S(θ_0), or None when T = 0, L_Q(θ_T)))).
    """
    theta0 = broadcast_tasks(params, num_tasks(batch))
    data = [(batch.support_x, batch.support_y)] * steps
    thetas, support = unroll(loss_fn, theta0, data, inner_lr, mask, keep_path=order == 2)
    (loss, query), v = value_and_grad(query_objective(loss_fn, batch), has_aux=True)(thetas[-1])
    if order == 2:
        # the summed support loss is block-diagonal over tasks: one HVP serves all B tasks
        summed_support = support_sum(loss_fn, batch.support_x, batch.support_y)
        for t in range(steps - 1, -1, -1):
            mv = tree_map(lambda x, keep: x if keep else 0.0 * x, v, mask)
            hv = hvp(summed_support, (thetas[t],), (mv,))
            v = tree_map(lambda x, h: x - inner_lr * h, v, hv)
    g = tree_map(lambda x: ops.sum(x, axis=0), v)
    return g, (loss, (support, query))
