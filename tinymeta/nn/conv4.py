"""Finn et al.'s Conv4: the convolutional backbone of the few-shot tables.

Four blocks, each a 3 × 3 convolution ("same" padding), batch norm, ReLU, then a linear head
on the last block's output, flattened:

- Omniglot (``pool=False``): 64 filters, stride 2: 28 → 14 → 7 → 4 → 2, so 2·2·64 = 256
  features;
- miniImageNet (``pool=True``, 84 × 84 × 3, ``hidden=32`` in Finn et al.): stride 1, then
  2 × 2 max-pooling ("valid"): 84 → 42 → 21 → 10 → 5, so 5·5·32 = 800 features.

Batch norm normalises each channel over the (M, H, W) positions of one task's images,
γ = 1 and β the block's shift: the per-task statistics of :func:`tinymeta.nn.batch_norm`
(the MLP's), in the inner loop and the outer objective alike. A convolution before batch
norm needs no bias (the mean takes it away), so each block has a filter W and a shift β:

    h_{l+1} = relu(BN(conv(h_l, W_l)) + β_l),    logits = flatten(h_4) W_5 + b_5.

Finn et al.'s code averages the Omniglot net's last 2 × 2 positions instead of flattening
them (64 features); the flattened head here is the one the issue's tables fix (256).

Initial weights: Glorot-uniform filters and head (Finn et al.'s ``xavier_initializer``),
zero shifts and head bias.

References: Finn, Abbeel and Levine 2017 (MAML, their ``conv_block``); Vinyals et al. 2016
(the four-block net).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import ops
from .batchnorm import BN_EPS, batch_norm
from .conv import conv2d, max_pool2d
from .mlp import linear

BLOCKS = 4
KERNEL = 3


def _glorot(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape)


def conv4_features(image: int, hidden: int, pool: bool) -> int:
    """The head's input width: the last block's H·W·hidden for square images of ``image``."""
    side = int(image)
    for _ in range(BLOCKS):
        side = side // 2 if pool else math.ceil(side / 2)
    if side < 1:
        raise ValueError(f"conv4: images of {image} x {image} vanish after {BLOCKS} "
                         f"{'poolings' if pool else 'stride-2 blocks'}")
    return side * side * int(hidden)


def conv4_init(ways: int, channels: int = 1, hidden: int = 64, image: int = 28,
               pool: bool = False, seed: int = 0, dtype: Any = np.float32) -> list:
    """Initial params [W1, β1, W2, β2, W3, β3, W4, β4, W_head, b_head] of Conv4.

    Args:
        ways: N, the head's outputs.
        channels: C_in of the images (1 for Omniglot, 3 for miniImageNet).
        hidden: filters per block (64; Finn et al.'s miniImageNet net has 32).
        image: the side of the square images (28 Omniglot, 84 miniImageNet).
        pool: False: stride-2 convolutions (Omniglot); True: stride 1 and 2 × 2 max-pooling.
        seed: seed of the NumPy Generator that draws the weights.
        dtype: the float dtype of every array.

    Returns:
        The flat list: W_l of shape (3, 3, C_l, hidden), β_l (hidden,), W_head
        (features, ways), b_head (ways,).
    """
    ways, channels, hidden = int(ways), int(channels), int(hidden)
    if min(ways, channels, hidden, int(image)) < 1:
        raise ValueError(f"conv4_init: ways, channels, hidden and image must be >= 1; got "
                         f"{ways}, {channels}, {hidden}, {image}")
    features = conv4_features(image, hidden, pool)
    rng = np.random.default_rng(seed)
    params = []
    c_in = channels
    for _ in range(BLOCKS):
        shape = (KERNEL, KERNEL, c_in, hidden)
        W = _glorot(rng, shape, KERNEL * KERNEL * c_in, KERNEL * KERNEL * hidden)
        params += [W.astype(dtype), np.zeros(hidden, dtype)]
        c_in = hidden
    W = _glorot(rng, (features, ways), features, ways)
    return params + [W.astype(dtype), np.zeros(ways, dtype)]


def _block(h: Any, W: Any, shift: Any, pool: bool, eps: float) -> Any:
    """relu(BN(conv(h, W)) + β) (then 2 × 2 max-pooling): statistics over (M, H, W)."""
    z = conv2d(h, W, stride=1 if pool else 2, padding="same")
    shape = ops.shape(z)
    rows = ops.reshape(z, (shape[0], -1, shape[-1]))  # (B, M·H'·W', C)
    h = ops.reshape(ops.relu(batch_norm(rows, shift, eps=eps)), shape)
    return max_pool2d(h, 2, 2) if pool else h


def conv4(params: Sequence[Any], x: Any, pool: bool = False, eps: float = BN_EPS) -> Any:
    """Conv4's logits for images x: four conv–BN–ReLU blocks, flattened, a linear head.

    Args:
        params: [W1, β1, …, W4, β4, W_head, b_head] as from :func:`conv4_init`, each with or
            without a leading task axis B (filters (B, 3, 3, C_in, C_out), shifts (B, C)).
        x: images (B, M, H, W, C), each task's M images normalised together.
        pool: as at init: False for the stride-2 Omniglot net, True for the pooled one.
        eps: ε of the batch norm.

    Returns:
        The logits (B, M, ways).
    """
    if len(params) != 2 * BLOCKS + 2:
        raise ValueError(f"conv4: params must be [W1, b1, …, W4, b4, W_head, b_head] "
                         f"({2 * BLOCKS + 2} arrays); got {len(params)}")
    if ops.ndim(x) != 5:
        raise ValueError(f"conv4: needs images (B, M, H, W, C); got shape {ops.shape(x)}")
    h = x
    for i in range(BLOCKS):
        h = _block(h, params[2 * i], params[2 * i + 1], pool, eps)
    W_head = params[-2]
    B, M, *rest = ops.shape(h)
    features = math.prod(rest)
    if ops.shape(W_head)[-2] != features:
        raise ValueError(f"conv4: the last block gives {features} features (shape "
                         f"{tuple(rest)}) but the head takes {ops.shape(W_head)[-2]}: init and "
                         f"apply with the same image size and pool={pool}")
    return linear(ops.reshape(h, (B, M, features)), W_head, params[-1])


def conv4_adapt_mask(params: Sequence[Any], head_only: bool = False,
                     adapt_bn: bool = False) -> list:
    """The ``adapt=`` mask of Conv4's params for the inner loop.

    Args:
        params: the flat list of :func:`conv4_init`.
        head_only: ANIL (Raghu et al. 2020): only the head (W_head, b_head) adapts; the
            body is held at θ_0 in the inner loop (and still meta-learned).
        adapt_bn: the shifts β adapt too (default False: held out, as Finn et al.'s
            batch-norm variables are not among the fast weights). Ignored with head_only.

    Returns:
        One bool per array of ``params``.
    """
    if len(params) != 2 * BLOCKS + 2:
        raise ValueError(f"conv4_adapt_mask: expected the {2 * BLOCKS + 2} arrays of "
                         f"conv4_init; got {len(params)}")
    body = [not head_only, adapt_bn and not head_only] * BLOCKS
    return body + [True, True]
