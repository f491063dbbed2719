"""Batch normalisation as MAML uses it, and the fully connected Omniglot network.

For the M = N·K points x_1 … x_M of one task's current set (support in the inner loop,
query in the outer objective), feature by feature:

    μ = (1/M) Σ_m x_m,    σ² = (1/M) Σ_m (x_m − μ)²,
    BN(x_m) = γ ⊙ (x_m − μ) / √(σ² + ε) + β.

The statistics are those of the set being processed, per task, at training and at test
time alike (no running averages): evaluation is transductive, as in Finn et al.'s code.
BN is a composition of tinymeta ops (mean, subtract, multiply, sqrt, divide), so μ and σ²
are functions of the parameters below them and their derivatives of every order enter
the inner-loop gradients and MAML's second-order term (docs/maths.md, "Batch normalisation
in the inner loop").

The shift β (and the optional scale γ) are parameters like any other: the inner loop may
adapt them, or hold them at θ_0 through the ``adapt=`` mask of the algorithms
(:func:`bn_adapt_mask`). The default here is Finn et al.'s: β held out of the inner loop
(their batch-norm variables are not among the fast weights) and no γ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import ops
from .mlp import linear, mlp_init

#: ε of the normalisation: TensorFlow's batch_norm default, which Finn et al.'s code uses.
BN_EPS = 1e-3


def _per_task(p: Any, x: Any, name: str) -> Any:
    """A per-feature parameter ready to broadcast against x (…, M, C)."""
    ps, xs = ops.shape(p), ops.shape(x)
    if len(ps) == 1 and ps[0] == xs[-1]:
        return p
    if len(xs) == 3 and ps == (xs[0], xs[2]):
        return ops.expand_dims(p, -2)  # (B, C) -> (B, 1, C): one value per task and feature
    raise ValueError(f"batch_norm: {name} of shape {ps} does not fit inputs of shape {xs}; "
                     f"expected ({xs[-1]},) or, task-batched, ({xs[0]}, {xs[-1]})")


def batch_norm(x: Any, shift: Any = None, scale: Any = None, eps: float = BN_EPS) -> Any:
    """γ ⊙ (x − μ) / √(σ² + ε) + β with μ, σ² over the points of each set (axis −2).

    μ = mean_m x_m and σ² = mean_m (x_m − μ)² (the biased variance, 1/M) are taken over
    axis −2 of x, so over the M = N·K points of each task for x of shape (B, M, C): every
    task is normalised with its own statistics.

    Args:
        x: (B, M, C) task-batched features, or (M, C).
        shift: β, shape (C,) (shared) or (B, C) (per task, as inside the inner loop);
            None for none.
        scale: γ, the same shapes; None for none (γ = 1).
        eps: ε > 0, added to σ² (it also bounds the derivative when σ² → 0, e.g. M = 1).

    Returns:
        The normalised features, shaped like x.

    References:
        Ioffe and Szegedy 2015, Batch Normalization (ICML). Finn, Abbeel and Levine 2017
        (their code normalises with the current batch's statistics, in both loops).
    """
    if ops.ndim(x) < 2:
        raise ValueError(f"batch_norm: needs inputs (…, M, C); got shape {ops.shape(x)}")
    mu = ops.mean(x, axis=-2, keepdims=True)
    xc = x - mu
    var = ops.mean(xc * xc, axis=-2, keepdims=True)
    y = xc / ops.sqrt(var + eps)
    if scale is not None:
        y = y * _per_task(scale, x, "scale")
    if shift is not None:
        y = y + _per_task(shift, x, "shift")
    return y


# ---- the fully connected Omniglot network --------------------------------------------

#: Finn et al.'s hidden widths for Omniglot: 784-256-128-64-64-N.
OMNIGLOT_HIDDEN = (256, 128, 64, 64)


def bn_mlp_init(sizes: Sequence[int], seed: int = 0, dtype: Any = np.float32,
                init: str = "fan_in", bn: bool = True, scale: bool = False) -> list:
    """Params of ``linear → [BN] → ReLU`` hidden layers and a linear output layer.

    A hidden layer with batch norm has no bias: BN(xW + b) = BN(xW), since b shifts every
    point alike and μ takes it away, so the shift β plays its role.

    Args:
        sizes: widths, input first: ``(784, 256, 128, 64, 64, N)`` for Omniglot.
        seed, dtype, init: as :func:`tinymeta.nn.mlp_init` (which draws the weights).
        bn: batch norm after every hidden linear map.
        scale: a learned scale γ (initial 1) besides the shift β (initial 0).

    Returns:
        A list with one dict per layer: ``{"W", "shift"[, "scale"]}`` for a hidden layer
        with BN, ``{"W", "b"}`` otherwise (always for the output layer).
    """
    flat = mlp_init(sizes, seed=seed, dtype=dtype, init=init)
    layers = []
    n = len(flat) // 2
    for i in range(n):
        W, b = flat[2 * i], flat[2 * i + 1]
        if bn and i < n - 1:
            layer = {"W": W, "shift": np.zeros_like(b)}
            if scale:
                layer["scale"] = np.ones_like(b)
        else:
            layer = {"W": W, "b": b}
        layers.append(layer)
    return layers


def bn_mlp(params: Sequence[dict], x: Any, eps: float = BN_EPS) -> Any:
    """The network of :func:`bn_mlp_init` applied to x: ReLU(BN(h W)) per hidden layer.

    Args:
        params: the list of layer dicts, every leaf with or without a leading task axis.
        x: inputs (B, M, in), each task's M points normalised together.
        eps: ε of :func:`batch_norm`.

    Returns:
        The logits (B, M, out).
    """
    if len(params) == 0:
        raise ValueError("bn_mlp: params has no layers")
    h = x
    for i, layer in enumerate(params):
        last = i == len(params) - 1
        if "shift" in layer or "scale" in layer:
            if last:
                raise ValueError("bn_mlp: the output layer takes no batch norm")
            h = ops.relu(batch_norm(ops.matmul(h, layer["W"]), layer.get("shift"),
                                    layer.get("scale"), eps))
        else:
            h = linear(h, layer["W"], layer["b"], relu=not last)
    return h


def bn_adapt_mask(params: Sequence[dict], adapt_bn: bool = False) -> list:
    """The ``adapt=`` mask for :func:`bn_mlp` params: weights and biases adapt; the BN
    shift and scale adapt only with ``adapt_bn`` (default False: held out, as Finn et al.)."""
    return [{k: (adapt_bn if k in ("shift", "scale") else True) for k in layer}
            for layer in params]
