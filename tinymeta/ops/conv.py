"""Convolution as a matrix product: patch extraction ``im2col`` and its adjoint ``col2im``.

Images are NHWC with any leading axes, (…, H, W, C); in tinymeta's task-batched layout
(B, M, H, W, C), M images per task. For a kh × kw window, strides (sh, sw) and zero
padding of pt rows above, pb below, pl columns left and pr right, with x̃ the padded image,

    im2col(x)[…, i, j, (a, b, c)] = x̃[…, i·sh + a, j·sw + b, c],

i < H' = ⌊(H + pt + pb − kh) / sh⌋ + 1 and j < W' = ⌊(W + pl + pr − kw) / sw⌋ + 1, the
column index (a, b, c) running row-major over (kh, kw, C): the order of
``W.reshape(kh·kw·C_in, C_out)`` for filters W of shape (kh, kw, C_in, C_out). So

    conv2d(x, W) = im2col(x) · W.reshape(kh·kw·C_in, C_out),

one matmul (:func:`tinymeta.nn.conv2d`).

im2col is linear in x, x ↦ P x with P a 0/1 matrix (each patch entry copies one pixel, or is
a zero of the padding), so its VJP is the adjoint Pᵀ, the scatter-add of the patches back
to where they came from (overlapping patches add up):

    col2im(g)[…, r, s, c] = Σ over (i, a) with i·sh + a = r + pt, and (j, b) with
                            j·sw + b = s + pl, of g[…, i, j, (a, b, c)].

col2im is linear too, and its VJP is P again: im2col. Each is its own JVP rule's map
(the JVP of a linear map is the map applied to the tangent). Every derivative of a
convolution, of any order, then comes from these two rules and matmul's: the input
gradient of conv2d is col2im(ḡ Wᵀ), a scatter of the output cotangent through the
filters (a convolution with the flipped filters, read as a gather); the filter gradient is
im2col(x)ᵀ ḡ, a correlation of the inputs with the output cotangent.

Padding: ``"same"`` is TensorFlow's and JAX's "SAME": the output has ⌈H / sh⌉ rows, the
total padding max((H' − 1)·sh + kh − H, 0), half of it before and the odd one after;
``"valid"`` is none; an int p is p on every side; explicit pairs ((pt, pb), (pl, pr)).
Dilation and feature groups are refused.
"""

from __future__ import annotations

import math
from typing import Any

from ..tape import Primitive, defjvp, defvjp
from .numpy_ops import shape

# ---- the parameters, checked and normalised ------------------------------------------------


def _pair(value: Any, what: str, op: str) -> tuple[int, int]:
    """(v, v) for an int v ≥ 1, or a pair of ints ≥ 1, as a tuple of Python ints."""
    if isinstance(value, bool):
        raise TypeError(f"{op}: {what} must be an int or a pair of ints; got {value!r}")
    try:
        pair = (int(value), int(value)) if not hasattr(value, "__len__") else tuple(
            int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: {what} must be an int or a pair of ints; got {value!r}") \
            from None
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{op}: {what} must be an int >= 1 or a pair of them; got {value!r}")
    return pair


def refuse_unsupported(op: str, dilation: Any = 1, groups: Any = 1) -> None:
    """A ValueError naming ``op`` for a dilation or a feature-group count other than 1."""
    if _pair(dilation, "dilation", op) != (1, 1):
        raise ValueError(f"{op}: dilation {dilation!r} is not supported (only 1); a dilated "
                         "kernel is a larger kernel with zeros between its taps")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups != 1:
        raise ValueError(f"{op}: groups={groups!r} is not supported (only 1): split the "
                         "channels and call it once per group")


def _explicit_padding(padding: Any, op: str) -> tuple:
    """((pt, pb), (pl, pr)) from an int or a pair of pairs, every entry an int ≥ 0."""
    if isinstance(padding, bool):
        raise TypeError(f"{op}: padding {padding!r} is neither 'same', 'valid', an int nor "
                        "((top, bottom), (left, right))")
    if isinstance(padding, int) or hasattr(padding, "__index__"):
        p = int(padding)
        pads = ((p, p), (p, p))
    else:
        try:
            pads = tuple((int(a), int(b)) for a, b in padding)
        except (TypeError, ValueError):
            raise TypeError(f"{op}: padding {padding!r} is neither 'same', 'valid', an int "
                            "nor ((top, bottom), (left, right))") from None
        if len(pads) != 2:
            raise ValueError(f"{op}: explicit padding needs two (before, after) pairs, "
                             f"((top, bottom), (left, right)); got {padding!r}")
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"{op}: padding must be >= 0; got {padding!r}")
    return pads


def conv_padding(image: tuple, kernel: tuple, stride: tuple, padding: Any,
                 op: str = "im2col") -> tuple:
    """The zero padding ((pt, pb), (pl, pr)) of an image of (H, W) for ``padding``.

    ``"same"``: ⌈H / sh⌉ output rows, total max((⌈H/sh⌉ − 1)·sh + kh − H, 0), the odd
    one after (TensorFlow's and JAX's "SAME"); ``"valid"``: none; an int, or explicit
    ((top, bottom), (left, right)).
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0), (0, 0))
        if mode != "same":
            raise ValueError(f"{op}: padding {padding!r} is neither 'same', 'valid', an int "
                             "nor ((top, bottom), (left, right))")
        pads = []
        for n, k, s in zip(image, kernel, stride):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    return _explicit_padding(padding, op)


def out_size(n: int, k: int, s: int, before: int, after: int) -> int:
    """⌊(n + before + after − k) / s⌋ + 1: the output length along one axis."""
    return (n + before + after - k) // s + 1


def conv_params(x_shape: tuple, kernel: Any, stride: Any, padding: Any, op: str) -> dict:
    """The primitives' parameters: ``kernel`` (kh, kw), ``stride`` (sh, sw) and ``padding``
    ((pt, pb), (pl, pr)), as tuples of Python ints, checked against an input of ``x_shape``."""
    if len(x_shape) < 3:
        raise ValueError(f"{op}: needs images (…, H, W, C), e.g. (B, M, H, W, C); got shape "
                         f"{tuple(x_shape)}")
    kernel = _pair(kernel, "kernel", op)
    stride = _pair(stride, "stride", op)
    H, W = x_shape[-3], x_shape[-2]
    pads = conv_padding((H, W), kernel, stride, padding, op)
    for n, k, (lo, hi), name in zip((H, W), kernel, pads, ("height", "width")):
        if n + lo + hi < k:
            raise ValueError(f"{op}: a kernel of {kernel} does not fit an image of (H, W) = "
                             f"({H}, {W}) padded by {pads} (the {name} is too small)")
    return {"kernel": kernel, "stride": stride, "padding": pads}


def cols_shape(x_shape: tuple, kernel: tuple, stride: tuple, padding: tuple) -> tuple:
    """(…, H', W', kh·kw·C): the shape of the patches of an input of ``x_shape``."""
    *lead, H, W, C = x_shape
    Ho = out_size(H, kernel[0], stride[0], *padding[0])
    Wo = out_size(W, kernel[1], stride[1], *padding[1])
    return (*lead, Ho, Wo, kernel[0] * kernel[1] * C)


# ---- the two primitives, each the other's VJP ----------------------------------------------

_im2col = Primitive("im2col", kernel="im2col")
_col2im = Primitive("col2im", kernel="col2im")


def _vjp_im2col(g, ans, x, kernel, stride, padding):
    """x̄ = Pᵀ ḡ: the patches' cotangents scattered back onto the image."""
    return _col2im(g, x_shape=tuple(shape(x)), kernel=kernel, stride=stride, padding=padding)


def _vjp_col2im(g, ans, cols, x_shape, kernel, stride, padding):
    """c̄ = P ḡ: the image cotangent's patches."""
    return _im2col(g, kernel=kernel, stride=stride, padding=padding)


defvjp(_im2col, _vjp_im2col)
defvjp(_col2im, _vjp_col2im)
defjvp(_im2col, lambda t, ans, x, kernel, stride, padding:
       _im2col(t, kernel=kernel, stride=stride, padding=padding))
defjvp(_col2im, lambda t, ans, cols, x_shape, kernel, stride, padding:
       _col2im(t, x_shape=x_shape, kernel=kernel, stride=stride, padding=padding))


def im2col(x: Any, kernel: Any, stride: Any = 1, padding: Any = "valid",
           dilation: Any = 1) -> Any:
    """The patches of the images x: (…, H, W, C) → (…, H', W', kh·kw·C).

    Entry (…, i, j, (a, b, c)) is the padded image's pixel (i·sh + a, j·sw + b) in channel
    c, the columns in (kh, kw, C) order: ``im2col(x) @ W.reshape(-1, C_out)`` is the
    convolution with filters W (kh, kw, C_in, C_out).

    Args:
        x: images (…, H, W, C), e.g. (B, M, H, W, C).
        kernel: kh, or (kh, kw).
        stride: sh, or (sh, sw).
        padding: "same" (TensorFlow's / JAX's SAME: ⌈H/sh⌉ output rows, the odd padding
            after), "valid" (none), an int, or ((top, bottom), (left, right)).
        dilation: 1 only (others are refused).

    Returns:
        The patch matrix (…, H', W', kh·kw·C); its VJP is :func:`col2im`.
    """
    refuse_unsupported("im2col", dilation)
    params = conv_params(tuple(shape(x)), kernel, stride, padding, "im2col")
    return _im2col(x, **params)


def col2im(cols: Any, x_shape: Any, kernel: Any, stride: Any = 1,
           padding: Any = "valid") -> Any:
    """The adjoint of :func:`im2col`: each patch of ``cols`` added back onto an image.

    ⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩ for every x of shape ``x_shape`` and every c.

    Args:
        cols: patches (…, H', W', kh·kw·C), as :func:`im2col` makes them for ``x_shape``.
        x_shape: the image shape (…, H, W, C); its leading axes are those of ``cols``.
        kernel, stride, padding: as for :func:`im2col`.

    Returns:
        An array of ``x_shape``; its VJP is :func:`im2col`.
    """
    x_shape = tuple(int(n) for n in x_shape)
    params = conv_params(x_shape, kernel, stride, padding, "col2im")
    want = cols_shape(x_shape, **params)
    if tuple(shape(cols)) != want:
        raise ValueError(f"col2im: patches of shape {tuple(shape(cols))} do not come from "
                         f"images {x_shape} with kernel {params['kernel']}, stride "
                         f"{params['stride']} and padding {params['padding']}: expected {want}")
    return _col2im(cols, x_shape=x_shape, **params)

