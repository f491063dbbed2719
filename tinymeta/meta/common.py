"""What the algorithms share: the task axis and the inner step.

Everything here works both on plain arrays (at top level) and on Tensors (inside a
transform), because it is written in tinymeta ops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .. import kernels, ops
from ..transforms import grad
from ..tree import tree_flatten, tree_leaves, tree_map, tree_unflatten

LossFn = Callable[[Any, Any, Any], Any]


def num_tasks(batch: Any) -> int:
    """The meta-batch size B: the leading axis of the support inputs."""
    s = ops.shape(batch.support_x)
    if len(s) < 1:
        raise ValueError(f"the support inputs need a leading task axis; got shape {s}")
    return int(s[0])


def broadcast_tasks(params: Any, B: int) -> Any:
    """θ_0 broadcast to (B, …) leafwise; the VJP of the broadcast sums over the B tasks."""
    return tree_map(lambda p: ops.broadcast_to(p, (B,) + ops.shape(p)), params)


def tree_is_finite(tree: Any) -> bool:
    """True when every leaf of a pytree of plain arrays is finite."""
    xp = kernels.get_backend().xp
    return all(bool(xp.all(xp.isfinite(leaf))) for leaf in tree_leaves(tree))


def check_mask(adapt: Any, params: Any) -> Any:
    """The adaptation mask as a pytree of bools like ``params`` (None: adapt everything)."""
    leaves, treedef = tree_flatten(params)
    if adapt is None:
        return tree_unflatten(treedef, [True] * len(leaves))
    mleaves, mdef = tree_flatten(adapt)
    if mdef != treedef or not all(isinstance(m, bool) for m in mleaves):
        raise ValueError(
            "adapt: the mask must be a pytree of Python bools with the structure of params "
            f"({len(leaves)} leaves); got {adapt!r}"
        )
    return adapt


def support_objective(loss_fn: LossFn, x: Any, y: Any) -> Callable:
    """θ ↦ (Σ_e L_S^e(θ^e), per-task losses): the sum gives each task its own gradient."""

    def objective(theta: Any) -> tuple:
        losses = loss_fn(theta, x, y)
        if ops.ndim(losses) != 1:
            raise ValueError(
                f"loss_fn must return per-task losses of shape (B,); got {ops.shape(losses)}"
            )
        return ops.sum(losses), losses

    return objective


def inner_step(loss_fn: LossFn, theta: Any, x: Any, y: Any, lr: Any,
               mask: Any = None) -> tuple:
    """One learner step θ_{t+1} = θ_t − α ∇L_S(θ_t) on task-batched params.

    Args:
        loss_fn: ``loss_fn(params, x, y) -> (B,)``.
        theta: params with the leading task axis on every leaf.
        x, y: the support set with the task axis.
        lr: α, a scalar or a pytree like ``theta`` without its task axis (Meta-SGD).
        mask: pytree of bools like ``theta``: False leaves are not adapted.

    Returns:
        (θ_{t+1}, the per-task support losses L_S(θ_t) of shape (B,)).
    """
    g, losses = grad(support_objective(loss_fn, x, y), has_aux=True)(theta)
    lrs = lr if isinstance(lr, (list, tuple, dict)) else tree_map(lambda _: lr, theta)
    m = mask if mask is not None else tree_map(lambda _: True, theta)
    new = tree_map(lambda p, gp, a, keep: _step(p, gp, a) if keep else p, theta, g, lrs, m)
    return new, losses


def _step(p: Any, gp: Any, a: Any) -> Any:
    """p − a·gp: one fused kernel for a Python step size, ops otherwise (Meta-SGD's arrays)."""
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return ops.sub_scaled(p, gp, a)
    return p - a * gp


def adapt_path(loss_fn: LossFn, params: Any, x: Any, y: Any, inner_lr: Any,
               steps: int, mask: Any = None, batched: bool = False) -> Iterator[Any]:
    """Yield θ_0, θ_1, …, θ_steps of the learner, each with the task axis.

    ``params`` is the shared θ_0 (broadcast here to B = x.shape[0] tasks) unless
    ``batched`` says it already has the task axis.
    """
    theta = params if batched else broadcast_tasks(params, int(ops.shape(x)[0]))
    yield theta
    for _ in range(int(steps)):
        theta, _ = inner_step(loss_fn, theta, x, y, inner_lr, mask)
        yield theta
