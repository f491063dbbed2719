"""Fine-tuning: the learner alone, as used at test time."""

from __future__ import annotations

from typing import Any

from .. import ops
from .common import LossFn, broadcast_tasks, check_mask, unroll


def adapt(loss_fn: LossFn, params: Any, x: Any, y: Any, inner_lr: Any, steps: int,
          mask: Any = None) -> Any:
    """Per-task adapted params θ_T: θ_{t+1} = θ_t − α ∇L_S(θ_t), T steps from θ_0.

    Args:
        loss_fn: ``loss_fn(params, x, y) -> (B,)`` per-task losses, params task-batched.
        params: θ_0 without the task axis (broadcast here to B = x.shape[0] tasks).
        x, y: the support set, (B, K, …).
        inner_lr: α, a scalar, or a pytree like params (Meta-SGD's learned rates).
        steps: T ≥ 0.
        mask: optional pytree of bools: False leaves are not adapted.

    Returns:
        θ_T, a pytree like params with the task axis B on every leaf.

    References:
        Finn, Abbeel and Levine 2017.
    """
    if int(steps) < 0:
        raise ValueError(f"adapt: steps must be >= 0; got {steps}")
    theta0 = broadcast_tasks(params, int(ops.shape(x)[0]))
    thetas, _ = unroll(loss_fn, theta0, [(x, y)] * int(steps), inner_lr, check_mask(mask, params))
    return thetas[-1]
