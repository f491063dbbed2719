"""Meta-SGD: per-parameter inner learning rates, learned with θ_0."""

from __future__ import annotations

from typing import Any

from ..transforms import value_and_grad
from .common import LossFn, meta_objective


def metasgd(loss_fn: LossFn, params: Any, lrs: Any, batch: Any, inner_steps: int = 1) -> tuple:
    """Meta-gradients of (1/B) Σ_e L_Q^e(θ_T^e) in θ_0 and in the learning rates a.

    Learner: θ_{t+1} = θ_t − a ⊙ ∇L_S(θ_t), with a a pytree like θ_0 (one rate per
    parameter, shared by the tasks, not adapted). Reverse mode through the recorded inner
    loop gives both gradients (second order in θ_0, as MAML).

    Args:
        loss_fn: ``loss_fn(params, x, y) -> (B,)`` per-task losses, params task-batched.
        params: θ_0, a pytree of arrays without the task axis.
        lrs: a, a pytree like params.
        batch: a TaskBatch (task axis first).
        inner_steps: T (Li et al. use 1).

    Returns:
        ((g_params, g_lrs), info): info "support_loss" L_S(θ_0), "query_loss" L_Q(θ_T),
        both (B,), and "loss".

    References:
        Li, Zhou, Chen and Li 2017, Meta-SGD: Learning to Learn Quickly for Few-Shot
        Learning.
    """
    if int(inner_steps) < 1:
        raise ValueError(f"metasgd: inner_steps must be >= 1; got {inner_steps}")
    objective = meta_objective(loss_fn, batch, int(inner_steps))
    (loss, (support, query)), grads = value_and_grad(objective, argnums=(0, 1),
                                                     has_aux=True)(params, lrs)
    return grads, {"support_loss": support, "query_loss": query, "loss": loss}
