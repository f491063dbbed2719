"""The pretrained baseline: one network trained on all tasks' points, no adaptation."""

from __future__ import annotations

from typing import Any

from .. import ops
from ..transforms import value_and_grad
from .common import LossFn, broadcast_tasks, num_tasks


def pretrain(loss_fn: LossFn, params: Any, batch: Any) -> tuple:
    """The joint-training gradient ∇_θ (1/B) Σ_e L_{S∪Q}^e(θ): one θ for every task.

    Finn et al.'s sinusoid baseline ("pretrained on all of the tasks"), fine-tuned at test
    time by :func:`tinymeta.meta.adapt` like the meta-learned models.

    Args:
        loss_fn: ``loss_fn(params, x, y) -> (B,)`` per-task losses, params task-batched.
        params: θ, a pytree of arrays without the task axis.
        batch: a TaskBatch (task axis first); support and query points are pooled.

    Returns:
        (gradient like params, info): "support_loss" and "query_loss" at θ, (B,), "loss"
        the mean of the query losses (as for every algorithm), "joint_loss" the objective
        (1/B) Σ_e L_{S∪Q}^e(θ) differentiated.

    References:
        Finn, Abbeel and Levine 2017, section 5.1.
    """
    B = num_tasks(batch)
    x = ops.concatenate([batch.support_x, batch.query_x], axis=1)
    y = ops.concatenate([batch.support_y, batch.query_y], axis=1)

    def objective(theta: Any) -> Any:
        return ops.mean(loss_fn(broadcast_tasks(theta, B), x, y))

    loss, g = value_and_grad(objective)(params)
    theta = broadcast_tasks(params, B)
    support = loss_fn(theta, batch.support_x, batch.support_y)
    query = loss_fn(theta, batch.query_x, batch.query_y)
    return g, {"support_loss": support, "query_loss": query, "loss": ops.mean(query),
               "joint_loss": loss}
