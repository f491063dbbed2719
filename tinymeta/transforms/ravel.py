"""``ravel_pytree``: a pytree of arrays as one vector, and back.

For leaves x_1 … x_m of sizes n_1 … n_m, ravel(x) = (vec x_1, …, vec x_m) ∈ ℝ^{Σ n_i},
and unravel is its inverse. Both are made of tinymeta ops (reshape, concatenate,
slicing), so they are linear maps the transforms differentiate like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import kernels, ops
from ..tree import tree_flatten, tree_unflatten


def ravel_pytree(tree: Any) -> tuple[Any, Callable[[Any], Any]]:
    """Flatten a pytree of arrays into one 1-D vector; return (vector, unravel).

    ``unravel(v)`` rebuilds a tree like ``tree`` from a vector of the same length.
    Both directions are made of tinymeta ops, so they are differentiable.
    """
    leaves, treedef = tree_flatten(tree)
    shapes = [tuple(np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(leaf.shape)
              for leaf in leaves]
    sizes = [int(np.prod(s)) for s in shapes]
    if leaves:
        flat = ops.concatenate([ops.reshape(leaf, (-1,)) for leaf in leaves], axis=0)
    else:
        flat = kernels.get_backend().zeros((0,), np.float64)

    def unravel(v: Any) -> Any:
        if tuple(v.shape) != (sum(sizes),):
            raise ValueError(
                f"unravel: expected a vector of shape ({sum(sizes)},); got {tuple(v.shape)}"
            )
        parts, start = [], 0
        for shape, size in zip(shapes, sizes):
            parts.append(ops.reshape(v[start:start + size], shape))
            start += size
        return tree_unflatten(treedef, parts)

    return flat, unravel
