"""The fused model primitives: one kernel each on the numba and cupy backends.

Each is a composition of primitives of :mod:`tinymeta.ops.numpy_ops`, given its own
kernel and its own rules, so that the hot paths of an MLP and of the inner loop cost
one call, not four:

- ``linear(x, W, b) = x W + b`` and ``linear_relu(x, W, b) = relu(x W + b)``;
- ``sq_err_mean(pred, y) = (1/n) Σ (pred − y)²`` per task (over all axes but the first);
- ``sub_scaled(x, d, scale) = x − scale · d``, a gradient step θ − α∇L.

Their rules reuse the matmul rules of the NumPy-named table and are written in its
ops, so higher orders hold as for any other primitive.
"""

from __future__ import annotations

import math
from typing import Any

from ..tape import Primitive, defjvp, defvjp
from .numpy_ops import (
    _relu_grad,
    _sum,
    _vjp_matmul_0,
    _vjp_matmul_1,
    broadcast_to,
    matmul,
    ndim,
    negative,
    reshape,
    shape,
    unbroadcast,
)


def _check_linear(x: Any, W: Any, b: Any, op: str) -> None:
    xs, ws, bs = shape(x), shape(W), shape(b)
    if len(xs) < 1 or len(ws) < 2 or xs[-1] != ws[-2]:
        raise ValueError(f"{op}: x of shape {xs} and W of shape {ws} do not chain "
                         "(x's last axis must equal W's second-to-last)")
    if len(bs) > max(len(xs), len(ws)) or (bs and bs[-1] not in (1, ws[-1])):
        raise ValueError(f"{op}: bias of shape {bs} does not broadcast to the output "
                         f"of x {xs} and W {ws}")
    # (a bias that broadcasts wrongly in a batch axis is caught by the kernel, named)


_linear = Primitive("linear", kernel="linear")
defvjp(_linear,
       lambda g, ans, x, W, b: _vjp_matmul_0(g, None, x, W),
       lambda g, ans, x, W, b: _vjp_matmul_1(g, None, x, W),
       lambda g, ans, x, W, b: unbroadcast(g, shape(b)))
defjvp(_linear,
       lambda t, ans, x, W, b: matmul(t, W),
       lambda t, ans, x, W, b: matmul(x, t),
       lambda t, ans, x, W, b: t)


def linear(x: Any, W: Any, b: Any) -> Any:
    """z = x W + b in one kernel (b broadcast over the rows of z)."""
    _check_linear(x, W, b, "linear")
    return _linear(x, W, b)


_linear_relu = Primitive("linear_relu", kernel="linear_relu")
# the rules of relu(x W + b): linear's, on the cotangent of x W + b, ḡ·1[ans > 0], made
# once per node (``pre``) for the three arguments
defvjp(_linear_relu, *_linear.vjps, pre=lambda g, ans, x, W, b: _relu_grad(g, ans))
defjvp(_linear_relu,
       lambda t, ans, x, W, b: _relu_grad(matmul(t, W), ans),
       lambda t, ans, x, W, b: _relu_grad(matmul(x, t), ans),
       lambda t, ans, x, W, b: _relu_grad(broadcast_to(t, shape(ans)), ans))


def linear_relu(x: Any, W: Any, b: Any) -> Any:
    """relu(x W + b) in one kernel: the GEMM, then bias and relu in one pass.

    relu'(0) = 0: the mask 1[ans > 0] of the output equals 1[z > 0].
    """
    _check_linear(x, W, b, "linear_relu")
    return _linear_relu(x, W, b)


def _task_axes(x: Any) -> tuple:
    return tuple(range(1, ndim(x)))


def _per_task_size(x: Any) -> int:
    return math.prod(shape(x)[1:])


_sq_err_mean = Primitive("sq_err_mean", kernel="sq_err_mean")
# ∂/∂pred of mean_k (pred − y)² is 2 (pred − y) / n, scaled by each task's ḡ
_sq_err_mean_grad = Primitive("sq_err_mean_grad", kernel="sq_err_mean_grad")


def _expand_tasks(g: Any, like: Any) -> Any:
    return reshape(g, shape(g) + (1,) * (ndim(like) - 1))


defvjp(_sq_err_mean,
       lambda g, ans, p, y: _sq_err_mean_grad(g, p, y),
       lambda g, ans, p, y: negative(_sq_err_mean_grad(g, p, y)))
defjvp(_sq_err_mean,
       lambda t, ans, p, y: _sum((p - y) * t, axis=_task_axes(p), keepdims=False)
       * (2.0 / _per_task_size(p)),
       lambda t, ans, p, y: _sum((y - p) * t, axis=_task_axes(p), keepdims=False)
       * (2.0 / _per_task_size(p)))
# sq_err_mean_grad(g, p, y) = expand(g) · 2 (p − y) / n is linear in g and in p − y
_SQ_GRAD_RULES = (
    lambda c, ans, g, p, y: _sum(c * (p - y), axis=_task_axes(p), keepdims=False)
    * (2.0 / _per_task_size(p)),
    lambda c, ans, g, p, y: _expand_tasks(g, p) * c * (2.0 / _per_task_size(p)),
    lambda c, ans, g, p, y: negative(_expand_tasks(g, p) * c) * (2.0 / _per_task_size(p)),
)
defvjp(_sq_err_mean_grad, *_SQ_GRAD_RULES)
defjvp(_sq_err_mean_grad,
       lambda t, ans, g, p, y: _sq_err_mean_grad(t, p, y),
       _SQ_GRAD_RULES[1], _SQ_GRAD_RULES[2])


def sq_err_mean(pred: Any, y: Any) -> Any:
    """Per-task mean squared error (1/n) Σ (pred − y)² over all axes but the first: (B,)."""
    if shape(pred) != shape(y):
        raise ValueError(f"sq_err_mean: prediction shape {shape(pred)} differs from the "
                         f"target shape {shape(y)}")
    if ndim(pred) < 1:
        raise ValueError("sq_err_mean: needs a leading task axis; got a scalar")
    return _sq_err_mean(pred, y)


_sub_scaled = Primitive("sub_scaled", kernel="sub_scaled")
defvjp(_sub_scaled,
       lambda g, ans, x, d, scale: g,
       lambda g, ans, x, d, scale: g * (-scale))
defjvp(_sub_scaled,
       lambda t, ans, x, d, scale: t,
       lambda t, ans, x, d, scale: t * (-scale))


def sub_scaled(x: Any, d: Any, scale: float) -> Any:
    """x − scale · d in one pass (a gradient step θ − α∇L; ``scale`` a Python number)."""
    if shape(x) != shape(d):
        raise ValueError(f"sub_scaled: shapes differ: {shape(x)} and {shape(d)}")
    return _sub_scaled(x, d, scale=float(scale))
