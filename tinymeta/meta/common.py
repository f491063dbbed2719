"""What the algorithms share: the task axis, the objectives, and the learner with its unroll.

Everything here works both on plain arrays (at top level) and on Tensors (inside a
transform), because it is written in tinymeta ops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import kernels, ops
from ..tensor import Tensor
from ..transforms import grad
from ..tree import tree_flatten, tree_leaves, tree_map, tree_unflatten

LossFn = Callable[[Any, Any, Any], Any]


# ---- the task axis -----------------------------------------------------------------------


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


# ---- per-task vector arithmetic (the solvers': cg, minres, proximal) -----------------------


def task_scale(s: Any, x: Any) -> Any:
    """s_e x_e leafwise: per-task scalars s of shape (B,) times a task-batched pytree."""

    def one(xi: Any) -> Any:
        si = ops.reshape(s, (-1,) + (1,) * (ops.ndim(xi) - 1))
        return ops.astype(si, xi.dtype) * xi

    return tree_map(one, x)


def task_axpy(s: Any, x: Any, y: Any) -> Any:
    """y_e + s_e x_e leafwise, per-task scalars s of shape (B,)."""
    return tree_map(lambda sx, yi: yi + sx, task_scale(s, x), y)


def task_select(mask: Any, a: Any, b: Any) -> Any:
    """a_e where mask_e else b_e leafwise, a per-task mask of shape (B,)."""

    def one(ai: Any, bi: Any) -> Any:
        return ops.where(ops.reshape(mask, (-1,) + (1,) * (ops.ndim(ai) - 1)), ai, bi)

    return tree_map(one, a, b)


def all_done(active: Any) -> bool:
    """No task is active: a solver's early exit. Always False while a tape records
    (``make_tape``, ``tm.compile``): a recorded program's length must not depend on values,
    so it runs every iteration, in which the finished tasks change nothing."""
    recording = type(active) is Tensor and active._captured()
    return not recording and not bool(ops.stop_gradient(active).any())


# ---- the objectives ----------------------------------------------------------------------


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


def support_sum(loss_fn: LossFn, x: Any, y: Any) -> Callable:
    """θ ↦ Σ_e L_S^e(θ^e), whose Hessian is block-diagonal over the tasks.

    One Hessian-vector product of it gives every task's H_S(θ^e) v_e at once (MAML's
    ``hvp_chain``, iMAML's CG).
    """
    objective = support_objective(loss_fn, x, y)

    def total(theta: Any) -> Any:
        return objective(theta)[0]

    return total


def query_objective(loss_fn: LossFn, batch: Any) -> Callable:
    """θ_T ↦ ((1/B) Σ_e L_Q^e(θ_T^e), per-task query losses): the meta-objective at θ_T."""
    B = num_tasks(batch)

    def objective(theta: Any) -> tuple:
        losses = loss_fn(theta, batch.query_x, batch.query_y)
        return ops.sum(losses) / B, losses

    return objective


def meta_objective(loss_fn: LossFn, batch: Any, steps: int, mask: Any = None) -> Callable:
    """(θ_0, α) ↦ F(θ_0, α) = (1/B) Σ_e L_Q^e(θ_T^e), θ_T the learner's T steps on S.

    Returns ``(F, (L_S(θ_0), L_Q(θ_T)))``, the per-task losses as aux (L_S(θ_0) is None
    when T = 0). Reverse mode through it is second-order MAML (in θ_0) and Meta-SGD (in
    θ_0 and the rates α): the inner steps are recorded by :func:`unroll`.
    """
    B = num_tasks(batch)
    data = [(batch.support_x, batch.support_y)] * int(steps)

    def objective(theta0: Any, lr: Any) -> tuple:
        thetas, support = unroll(loss_fn, broadcast_tasks(theta0, B), data, lr, mask)
        loss, query = query_objective(loss_fn, batch)(thetas[-1])
        return loss, (support, query)

    return objective


# ---- the learner -------------------------------------------------------------------------


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


def unroll(loss_fn: LossFn, theta: Any, data: Iterable[tuple], lr: Any, mask: Any = None,
           keep_path: bool = False) -> tuple:
    """The inner loop: θ_{t+1} = θ_t − α ∇L_{D_t}(θ_t), t = 0 … T−1, from task-batched θ_0.

    One :func:`inner_step` for each support set D_t = (x_t, y_t) of ``data``, so T is
    its length: MAML and Meta-SGD pass S T times, Reptile its minibatches. Under a
    transform every step is recorded, inner gradients included, so reverse mode through
    the loop gives the chain rule's product

        ∂L_Q(θ_T)/∂θ_0 = (I − αH_S(θ_0)) ⋯ (I − αH_S(θ_{T−1})) ∇L_Q(θ_T),

    and with a mask M each factor is (I − αH_S M). At top level nothing is recorded.

    Args:
        loss_fn: ``loss_fn(params, x, y) -> (B,)``.
        theta: θ_0 with the leading task axis on every leaf.
        data: the (x_t, y_t), task axis first, one per step, taken in order as the loop
            reaches step t (a generator may build them lazily).
        lr: α, a scalar or a pytree like θ without its task axis (Meta-SGD's rates).
        mask: pytree of bools like θ: False leaves are not adapted.
        keep_path: keep every θ_t (the HVP chain walks back along them); otherwise only
            the latest, so that memory stays flat in T.

    Returns:
        (thetas, support): thetas = [θ_0, …, θ_T] with ``keep_path``, else [θ_T];
        support = L_{D_0}(θ_0), the per-task losses (B,) the first step computes on its
        way, None when T = 0.
    """
    thetas = [theta]
    support = None
    for x, y in data:
        theta, losses = inner_step(loss_fn, theta, x, y, lr, mask)
        if keep_path:
            thetas.append(theta)
        else:
            thetas[0] = theta
        if support is None:
            support = losses
    return thetas, support


def adapt_path(loss_fn: LossFn, params: Any, x: Any, y: Any, inner_lr: Any,
               steps: int, mask: Any = None, batched: bool = False) -> Iterator[Any]:
    """Yield θ_0, θ_1, …, θ_steps of the learner, each with the task axis.

    The learner of :func:`unroll` walked lazily, one θ_t alive at a time, for evaluation
    after several numbers of steps. ``params`` is the shared θ_0 (broadcast here to
    B = x.shape[0] tasks) unless ``batched`` says it already has the task axis.
    """
    theta = params if batched else broadcast_tasks(params, int(ops.shape(x)[0]))
    yield theta
    for _ in range(int(steps)):
        theta, _ = inner_step(loss_fn, theta, x, y, inner_lr, mask)
        yield theta
