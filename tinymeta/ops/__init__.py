"""Every primitive, as one namespace (``tm.ops``): its forward, and right under it its rules.

- :mod:`~tinymeta.ops.numpy_ops`: the primitives under NumPy's names (elementwise,
  reductions, shapes, indexing, linear algebra), and ``unbroadcast``;
- :mod:`~tinymeta.ops.fused`: the fused model primitives ``linear``, ``linear_relu``,
  ``sq_err_mean`` and ``sub_scaled``, built on the first;
- :mod:`~tinymeta.ops.conv`: the convolution primitives ``im2col`` and its adjoint
  ``col2im``, each the other's VJP.

The tables import the tape below them; this namespace imports the tables, and nothing
below imports it.
"""

from __future__ import annotations

from .conv import col2im, im2col
from .fused import linear, linear_relu, sq_err_mean, sub_scaled
from .numpy_ops import (
    abs,
    add,
    astype,
    broadcast_to,
    concatenate,
    divide,
    dot,
    equal,
    exp,
    expand_dims,
    getitem,
    greater,
    greater_equal,
    isfinite,
    less,
    less_equal,
    log,
    log_softmax,
    logical_and,
    logical_not,
    logical_or,
    logsumexp,
    matmul,
    matmul_nt,
    matmul_tn,
    max,
    maximum,
    mean,
    minimum,
    multiply,
    ndim,
    negative,
    not_equal,
    power,
    relu,
    reshape,
    shape,
    sigmoid,
    sign,
    softmax,
    sqrt,
    squeeze,
    stack,
    stop_gradient,
    subtract,
    sum,
    swapaxes,
    tanh,
    transpose,
    unbroadcast,
    vdot,
    where,
)
