"""What crosses a transform's boundary: leaves in, values out.

A transform lifts each leaf x of its inputs onto a new trace of level ℓ (a primal:
a backend float array, or a Tensor of an outer trace of level < ℓ), runs the
function, and lowers each output leaf back one level, to the value it holds at
level ℓ − 1.

dtypes at the boundary (JAX's and PyTorch's rule): a tangent or cotangent has the dtype
of the value it pairs with. Cotangents and tangents coming in are cast to the dtype of
their output or primal (:func:`as_cotangent`), and derivatives going out are cast to the
dtype of the value they are taken with respect to (:func:`like_dtype`): the gradient of
a float32 input is float32 even where the function promotes to float64 inside (a float64
constant), and a JVP has the dtype of its output. Inside, values follow NumPy 2's
promotion.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import kernels, ops
from ..tensor import Tensor
from ..tree import tree_flatten, tree_unflatten


def as_primal(x: Any, op: str, argnum: int) -> Any:
    """A leaf to differentiate: a backend float array, or a Tensor of an outer trace."""
    if type(x) is Tensor:
        if x._trace is None:
            x = x._value
        else:
            dt = x.dtype
            if np.dtype(dt).kind not in "fc":
                raise TypeError(_int_message(op, argnum, dt))
            return x
    B = kernels.get_backend()
    if not isinstance(x, B.array_types):
        x = B.asarray(x)
    if np.dtype(x.dtype).kind not in "fc":
        raise TypeError(_int_message(op, argnum, x.dtype))
    return x


def _int_message(op: str, argnum: int, dtype: Any) -> str:
    return (
        f"{op}: argument {argnum} has dtype {dtype}; derivatives are taken with respect to "
        "float inputs only (cast with x.astype(float), or leave it out of argnums)"
    )


def as_cotangent(c: Any, v: Any) -> Any:
    """A cotangent (or tangent) ``c`` for the value ``v``: a float array of v's dtype."""
    if type(c) is not Tensor:
        B = kernels.get_backend()
        if not isinstance(c, B.array_types):
            c = B.asarray(c)
    dt = np.dtype(c.dtype)
    if dt.kind not in "fc":
        raise TypeError(f"vjp_fn: the cotangent must be a float array; got dtype {dt}")
    if dt != np.dtype(v.dtype):
        c = ops.astype(c, v.dtype)
    return c


def like_dtype(d: Any, v: Any) -> Any:
    """The derivative ``d`` in the dtype of the value ``v`` it belongs to (cast if it differs).

    A cast is a primitive (``ops.astype``), so under an outer transform it is recorded
    and differentiated like any other step.
    """
    dt = v.dtype
    if getattr(d, "dtype", dt) != dt:  # (a Python number, from a user's rule, stays one)
        d = ops.astype(d, dt)
    return d


def lower_leaf(x: Any, trace: Any) -> Any:
    """An output leaf one level down: the value a Tensor of ``trace`` holds."""
    if type(x) is Tensor and x._trace is trace:
        return x._value
    if type(x) is Tensor and x._trace is not None and x._trace.level > trace.level:
        raise ValueError("a Tensor of an inner transform escaped its transform")
    return x


def lower(tree: Any, trace: Any) -> Any:
    """:func:`lower_leaf` of every leaf of ``tree``."""
    leaves, treedef = tree_flatten(tree)
    return tree_unflatten(treedef, [lower_leaf(x, trace) for x in leaves])


def zeros_like(x: Any) -> Any:
    return kernels.get_backend().zeros(tuple(x.shape), x.dtype)


def argnums_tuple(argnums: Any, nargs: int, op: str) -> tuple[int, ...]:
    """``argnums`` (an int or a sequence, negative allowed) as a tuple of indices < nargs."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for n in nums:
        if not -nargs <= n < nargs:
            raise ValueError(f"{op}: argnums {argnums!r} out of range for {nargs} arguments")
    return tuple(n % nargs for n in nums)
