"""Convolution and pooling layers, task-batched, in the NHWC layout (B, M, H, W, C).

A convolution is a matmul of the patches with the filters:

    conv2d(x, W, b)[…, i, j, :] = im2col(x)[…, i, j, :] · W.reshape(kh·kw·C_in, C_out) + b,

so its derivatives of every order are those of :func:`tinymeta.im2col` (whose VJP is
:func:`tinymeta.col2im`, whose VJP is im2col again) and of matmul. Filters are
(kh, kw, C_in, C_out), one set shared by every task, or (B, kh, kw, C_in, C_out), one per
task (as the inner loop adapts them), broadcast over the task's M images as
:func:`tinymeta.nn.linear` broadcasts its weights; biases (C_out,) or (B, C_out).

Pooling takes windows of the same patches: ``max_pool2d`` the largest entry of each
size × size window (ties split the cotangent equally, as :func:`tinymeta.max` does:
PyTorch and JAX route it to one element), ``avg_pool2d`` their mean, both "valid" (no
padding); ``global_avg_pool2d`` the mean over all H × W positions.
"""

from __future__ import annotations

from typing import Any

from .. import ops
from ..ops.conv import conv_params, refuse_unsupported


def _filters(x: Any, W: Any) -> tuple[int | None, tuple]:
    """(B or None for shared filters, (kh, kw, C_in, C_out)), checked against x."""
    xs, ws = ops.shape(x), ops.shape(W)
    if len(ws) == 4:
        tasks = None
    elif len(ws) == 5:
        tasks = ws[0]
        if len(xs) != 5 or xs[0] != tasks:
            raise ValueError(f"conv2d: per-task filters of shape {ws} need inputs "
                             f"(B={tasks}, M, H, W, C); got shape {xs}")
    else:
        raise ValueError(f"conv2d: filters must be (kh, kw, C_in, C_out) or (B, kh, kw, C_in, "
                         f"C_out); got shape {ws}")
    if len(xs) < 3 or xs[-1] != ws[-2]:
        raise ValueError(f"conv2d: inputs of shape {xs} do not have the filters' {ws[-2]} "
                         f"input channels (expected (B, M, H, W, {ws[-2]}))")
    return tasks, tuple(ws[-4:])


def _bias_rows(b: Any, tasks: int | None, xs: tuple, c_out: int) -> Any:
    """b ready to add to the output rows: (C_out,), or (B, 1, C_out) for one bias a task."""
    bs = ops.shape(b)
    if bs == (c_out,):
        return b
    if len(xs) == 5 and bs == (xs[0], c_out):
        return ops.reshape(b, (xs[0], 1, c_out))
    want = f"({c_out},)" + (f" or ({xs[0]}, {c_out})" if len(xs) == 5 else "")
    raise ValueError(f"conv2d: bias of shape {bs} does not fit {c_out} output channels; "
                     f"expected {want}")


def conv2d(x: Any, W: Any, b: Any = None, stride: Any = 1, padding: Any = "same",
           dilation: Any = 1, groups: int = 1) -> Any:
    """z = im2col(x) · W + b: the 2-D convolution (cross-correlation, as in every framework).

    z[…, i, j, o] = Σ_{a, b, c} x̃[…, i·sh + a, j·sw + b, c] W[a, b, c, o] + b[o], x̃ the
    zero-padded input.

    Args:
        x: images (B, M, H, W, C_in) (any leading axes with shared filters).
        W: filters (kh, kw, C_in, C_out), shared, or (B, kh, kw, C_in, C_out), per task.
        b: bias (C_out,) or (B, C_out); None for none.
        stride: sh, or (sh, sw).
        padding: "same" (TensorFlow's / JAX's SAME: H' = ⌈H / sh⌉, the odd padding after),
            "valid" (H' = ⌊(H − kh) / sh⌋ + 1), an int, or ((top, bottom), (left, right)).
        dilation, groups: 1 only; others are refused with a ValueError.

    Returns:
        (B, M, H', W', C_out).
    """
    refuse_unsupported("conv2d", dilation, groups)
    tasks, (kh, kw, c_in, c_out) = _filters(x, W)
    xs = ops.shape(x)
    params = conv_params(xs, (kh, kw), stride, padding, "conv2d")
    cols = ops.im2col(x, **params)  # (…, H', W', kh·kw·C_in)
    K = kh * kw * c_in
    bias = None if b is None else _bias_rows(b, tasks, xs, c_out)
    if tasks is None and ops.ndim(bias) != 3:  # one GEMM on all the patches
        Wm = ops.reshape(W, (K, c_out))
        return ops.matmul(cols, Wm) if bias is None else ops.linear(cols, Wm, bias)
    lead = ops.shape(cols)[:-1]  # (B, M, H', W')
    rows = ops.reshape(cols, (xs[0], -1, K))  # (B, M·H'·W', K): one GEMM per task
    Wt = ops.reshape(W, (K, c_out) if tasks is None else (tasks, K, c_out))
    z = ops.matmul(rows, Wt) if bias is None else ops.linear(rows, Wt, bias)
    return ops.reshape(z, lead + (c_out,))


def _windows(x: Any, size: Any, stride: Any, op: str) -> tuple[Any, tuple]:
    """The size × size windows of x (…, H, W, C) as (…, H', W', size², C), "valid"."""
    if stride is None:
        stride = size
    params = conv_params(ops.shape(x), size, stride, "valid", op)
    (kh, kw), (sh, sw) = params["kernel"], params["stride"]
    *lead, H, W, C = ops.shape(x)
    Ho, Wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    if (kh, kw) == (sh, sw):  # windows that tile the image: a reshape of its cropped rows
        if (Ho * sh, Wo * sw) != (H, W):
            x = ops.getitem(x, (Ellipsis, slice(0, Ho * sh), slice(0, Wo * sw), slice(None)))
        x = ops.reshape(x, (*lead, Ho, sh, Wo, sw, C))
        return x, (-4, -2)
    cols = ops.im2col(x, **params)
    return ops.reshape(cols, (*lead, Ho, Wo, kh * kw, C)), (-2,)


def max_pool2d(x: Any, size: Any, stride: Any = None) -> Any:
    """The largest entry of each size × size window, per channel ("valid": no padding).

    y[…, i, j, c] = max_{a, b} x[…, i·sh + a, j·sw + b, c] with H' = ⌊(H − size)/sh⌋ + 1.
    Its VJP routes ḡ to the window's maximum and splits it equally among tied maxima (the
    rule of :func:`tinymeta.max`).

    Args:
        x: (…, H, W, C), e.g. (B, M, H, W, C).
        size: the window, an int or (kh, kw).
        stride: an int or a pair; None (default): the window size.

    Returns:
        (…, H', W', C).
    """
    windows, axes = _windows(x, size, stride, "max_pool2d")
    return ops.max(windows, axis=axes)


def avg_pool2d(x: Any, size: Any, stride: Any = None) -> Any:
    """The mean of each size × size window, per channel ("valid": no padding); arguments and
    shapes as :func:`max_pool2d`."""
    windows, axes = _windows(x, size, stride, "avg_pool2d")
    return ops.mean(windows, axis=axes)


def global_avg_pool2d(x: Any) -> Any:
    """The mean over all spatial positions: (…, H, W, C) → (…, C)."""
    if ops.ndim(x) < 3:
        raise ValueError(f"global_avg_pool2d: needs images (…, H, W, C); got shape "
                         f"{ops.shape(x)}")
    return ops.mean(x, axis=(-3, -2))
