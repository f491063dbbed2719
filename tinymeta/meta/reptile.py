"""Reptile: the meta-update is the mean parameter difference of the adapted learners."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .. import ops
from ..tree import tree_map
from .common import LossFn, broadcast_tasks, num_tasks, unroll


def reptile(loss_fn: LossFn, params: Any, batch: Any, inner_lr: float, inner_steps: int,
            use_query: bool = False, inner_batch: int | None = None) -> tuple:
    """Reptile's "meta-gradient": (1/B) Σ_e (θ_0 − θ_T^e).

    Learner: θ_{t+1} = θ_t − α ∇L_{D_t}(θ_t) for T steps from θ_0, where D_t is the
    support set S (S ∪ Q with ``use_query``), or with ``inner_batch = b`` its t-th block
    of b consecutive points, cycling (the sets are drawn in random order, so a block is a
    random minibatch). Minibatches that differ from step to step are what give Reptile
    its generalisation term: to second order in α its meta-gradient contains, in
    expectation, −(α²/2)∇(∇L_{D_i}·∇L_{D_j}) for i < j, which rewards gradients that agree
    across different data (Nichol et al.'s Taylor-series analysis).

    Reptile's update θ_0 ← θ_0 + ε (1/B) Σ_e (θ_T^e − θ_0) is then the outer optimizer's
    SGD step with learning rate ε on the returned value.

    Errata of the lecture: the slide's θ_0 − ∂L(θ_T)/∂θ_T is not Reptile; the update uses
    the parameter difference θ_0 − θ_T (Nichol et al. 2018). And θ_0 − θ_T = α Σ_t ∇L(θ_t)
    is the sum of the inner gradients along the path, so with T = 1 Reptile is plain
    joint training on the tasks' losses; its meta-learning effect needs T > 1.

    Args:
        loss_fn: ``loss_fn(params, x, y) -> (B,)`` per-task losses, params task-batched.
        params: θ_0, a pytree of arrays without the task axis.
        batch: a TaskBatch (task axis first).
        inner_lr: α.
        inner_steps: T ≥ 1.
        use_query: run the learner on the support and query points together.
        inner_batch: points per inner step (None: all of them every step).

    Returns:
        (meta_gradient like params, info): "support_loss" L_S(θ_0) and "query_loss"
        L_Q(θ_T), both (B,) (the query loss is only watched, never used).

    References:
        Nichol, Achiam and Schulman 2018, On First-Order Meta-Learning Algorithms.
    """
    if int(inner_steps) < 1:
        raise ValueError(f"reptile: inner_steps must be >= 1; got {inner_steps}")
    B = num_tasks(batch)
    x, y = batch.support_x, batch.support_y
    if use_query:
        x = ops.concatenate([x, batch.query_x], axis=1)
        y = ops.concatenate([y, batch.query_y], axis=1)
    n = int(ops.shape(x)[1])
    if inner_batch is not None and not 1 <= int(inner_batch) <= n:
        raise ValueError(f"reptile: inner_batch must be in 1..{n} (the learner's points per "
                         f"task); got {inner_batch}")
    data = _minibatches(x, y, int(inner_steps), inner_batch)
    thetas, support = unroll(loss_fn, broadcast_tasks(params, B), data, inner_lr)
    theta = thetas[-1]
    query = loss_fn(theta, batch.query_x, batch.query_y)
    g = tree_map(lambda p0, pT: p0 - ops.mean(pT, axis=0), params, theta)
    return g, {"support_loss": support, "query_loss": query, "loss": ops.mean(query)}


def _minibatches(x: Any, y: Any, steps: int, size: int | None) -> Iterator[tuple]:
    """D_t, t = 0 … T−1: every point, or with ``size`` = b the t-th block of b consecutive
    points, cycling over the whole blocks; each sliced when the learner reaches step t."""
    for t in range(steps):
        if size is None:
            yield x, y
        else:
            b = int(size)
            lo = (t % (int(ops.shape(x)[1]) // b)) * b
            yield x[:, lo:lo + b], y[:, lo:lo + b]
