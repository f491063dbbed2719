"""A functional, task-batched multilayer perceptron.

A model is a function ``f(params, x)``; ``params`` is the flat list
``[W1, b1, W2, b2, ...]`` with ``W`` of shape (in, out). Under the meta-learning
algorithms every leaf carries a leading task axis B: ``W`` is (B, in, out), ``b`` is
(B, out), and the inputs are (B, K, in).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import ops


def mlp_init(sizes: Sequence[int], seed: int = 0, dtype: Any = np.float32,
             init: str = "fan_in") -> list:
    """Initial parameters ``[W1, b1, W2, b2, ...]`` of an MLP with layer widths ``sizes``.

    Args:
        sizes: the widths, input first: ``(1, 40, 40, 1)`` is Finn et al.'s sinusoid net.
        seed: seed of the NumPy Generator that draws the weights.
        dtype: the float dtype of every array.
        init: ``"fan_in"`` (default; PyTorch's ``nn.Linear``): W and b uniform on
            [−1/√fan_in, 1/√fan_in]. ``"finn"`` (Finn et al. 2017's reference code): W
            truncated normal with std 0.01 (redrawn beyond 2 std), b zero.

    Returns:
        The flat list of arrays, W of shape (in, out) and b of shape (out,).
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"mlp_init: sizes needs two or more positive widths; got {sizes}")
    if init not in ("fan_in", "finn"):
        raise ValueError(f"mlp_init: init must be 'fan_in' or 'finn'; got {init!r}")
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        if init == "fan_in":
            bound = 1.0 / np.sqrt(fan_in)
            W = rng.uniform(-bound, bound, size=(fan_in, fan_out))
            b = rng.uniform(-bound, bound, size=(fan_out,))
        else:
            W = _truncated_normal(rng, 0.01, (fan_in, fan_out))
            b = np.zeros(fan_out)
        params += [W.astype(dtype), b.astype(dtype)]
    return params


def _truncated_normal(rng: np.random.Generator, std: float, size: tuple) -> np.ndarray:
    """Normal(0, std²) draws, each redrawn until it lies within two standard deviations."""
    out = rng.normal(0.0, std, size=size)
    bad = np.abs(out) > 2 * std
    while bad.any():
        out[bad] = rng.normal(0.0, std, size=int(bad.sum()))
        bad = np.abs(out) > 2 * std
    return out


def linear(x: Any, W: Any, b: Any, relu: bool = False) -> Any:
    """x W + b, task-batched.

    With W of shape (B, in, out) and x of shape (B, K, in), the bias b of shape (B, out)
    is expanded to (B, 1, out) so that it broadcasts over the K points; a plain
    ``x @ W + b`` fails when B ≠ K and is silently wrong when B = K. Unbatched
    (W (in, out), b (out,)) works on any x of shape (..., in).
    """
    wshape, bshape = ops.shape(W), ops.shape(b)
    if len(wshape) == 3:
        if bshape != (wshape[0], wshape[2]):
            raise ValueError(f"linear: bias shape {bshape} does not match a task-batched "
                             f"weight of shape {wshape}; expected {(wshape[0], wshape[2])}")
        if ops.ndim(x) != 3 or ops.shape(x)[0] != wshape[0] or ops.shape(x)[2] != wshape[1]:
            raise ValueError(f"linear: input shape {ops.shape(x)} does not fit weight shape "
                             f"{wshape}; expected (B={wshape[0]}, K, {wshape[1]})")
        return _fused(x, W, ops.expand_dims(b, -2), relu)
    if len(wshape) == 2:
        if bshape != (wshape[1],):
            raise ValueError(f"linear: bias shape {bshape} does not match weight shape {wshape}")
        return _fused(x, W, b, relu)
    raise ValueError(f"linear: W must have shape (in, out) or (B, in, out); got {wshape}")


def mlp(params: Sequence[Any], x: Any, activation: Callable = ops.relu) -> Any:
    """The MLP ``linear ∘ act ∘ linear ∘ … ∘ act ∘ linear`` applied to ``x``.

    Args:
        params: ``[W1, b1, ..., Wn, bn]`` as from :func:`mlp_init`, each with or
            without a leading task axis (the same for all).
        x: inputs (B, K, in) for task-batched params, else (..., in).
        activation: the hidden nonlinearity (ReLU; tanh for smooth gradient checks).

    Returns:
        The outputs, of shape (B, K, out) or (..., out).
    """
    if len(params) == 0 or len(params) % 2:
        raise ValueError(f"mlp: params must be [W1, b1, W2, b2, ...]; got {len(params)} arrays")
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        hidden = i < n_layers - 1
        fuse = hidden and activation is ops.relu  # one kernel: GEMM, bias and relu
        h = linear(h, params[2 * i], params[2 * i + 1], relu=fuse)
        if hidden and not fuse:
            h = activation(h)
    return h


def _fused(x: Any, W: Any, b: Any, relu: bool) -> Any:
    """x W + b, or relu(x W + b), as one fused primitive."""
    return ops.linear_relu(x, W, b) if relu else ops.linear(x, W, b)
