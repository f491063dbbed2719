"""Per-task losses: each returns one loss per task, shape (B,).

The meta-learning algorithms differentiate the *sum* of these in the inner loop (so
each task gets its own, unscaled gradient) and take their *mean* as the
meta-objective.
"""

from __future__ import annotations

from typing import Any

from .. import kernels, ops


def mse(pred: Any, y: Any) -> Any:
    """Mean squared error per task: (1/(K·d)) Σ_k Σ_j (pred − y)², shape (B,).

    Args:
        pred: predictions (B, K, d) (or any shape with the task axis first).
        y: targets of the same shape: no broadcasting, so that a (B, K) target against a
            (B, K, 1) prediction is an error rather than a (B, K, K) mistake.

    Returns:
        The per-task losses, shape (B,).
    """
    ps, ys = ops.shape(pred), ops.shape(y)
    if ps != ys:
        raise ValueError(f"mse: prediction shape {ps} differs from target shape {ys}")
    if len(ps) < 1:
        raise ValueError("mse: needs a leading task axis; got a scalar")
    return ops.sq_err_mean(pred, y)  # one fused kernel, forward and backward


def cross_entropy(logits: Any, labels: Any) -> Any:
    """Softmax cross-entropy per task: −(1/N) Σ_n log softmax(logits_n)[labels_n], shape (B,).

    The label is selected with a one-hot mask, ``labels[..., None] == arange(C)``, rather
    than with integer indexing, so no traced value is ever used as an index.

    Args:
        logits: (B, N, C) scores of N points over C classes.
        labels: (B, N) integer class labels in [0, C).

    Returns:
        The per-task losses, shape (B,).
    """
    ls, ys = ops.shape(logits), ops.shape(labels)
    if len(ls) < 2 or ls[:-1] != ys:
        raise ValueError(f"cross_entropy: logits of shape {ls} need labels of shape {ls[:-1]}; "
                         f"got {ys}")
    n_classes = ls[-1]
    classes = kernels.get_backend().xp.arange(n_classes)
    onehot = ops.astype(ops.equal(ops.expand_dims(labels, -1), classes), logits.dtype)
    picked = ops.sum(onehot * ops.log_softmax(logits, axis=-1), axis=-1)
    return -ops.mean(picked, axis=tuple(range(1, len(ys))))


def accuracy(logits: Any, labels: Any) -> Any:
    """Fraction of points whose largest logit is their label, per task, shape (B,).

    Not differentiable (a count); ties count as correct for every tied class.
    """
    top = ops.max(logits, axis=-1, keepdims=True)
    classes = kernels.get_backend().xp.arange(ops.shape(logits)[-1])
    onehot = ops.equal(ops.expand_dims(labels, -1), classes)
    hit = ops.astype(ops.equal(logits, top), logits.dtype) * ops.astype(onehot, logits.dtype)
    return ops.mean(ops.sum(hit, axis=-1), axis=tuple(range(1, ops.ndim(labels))))
