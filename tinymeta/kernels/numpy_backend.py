"""The NumPy reference backend: every kernel the primitives call, in plain NumPy.

Each function here is the forward of the primitive of the same name in
:mod:`tinymeta.ops` (arguments already unwrapped to arrays, axes normalised).
Other backends provide the same names with the same signatures and are tested
against these.
"""

from __future__ import annotations

import numpy as np

from . import conv_numpy

xp = np
name = "numpy"
ndarray = np.ndarray
array_types: tuple = (np.ndarray, np.generic)


def asarray(x, dtype=None):
    return np.asarray(x, dtype=dtype)


def to_numpy(x):
    return np.asarray(x)


def zeros(shape, dtype):
    return np.zeros(shape, dtype)


def ones(shape, dtype):
    return np.ones(shape, dtype)


# ---- elementwise -----------------------------------------------------------
add = np.add
subtract = np.subtract
multiply = np.multiply
true_divide = np.true_divide
negative = np.negative
power = np.power
exp = np.exp
log = np.log
sqrt = np.sqrt
tanh = np.tanh
absolute = np.abs
sign = np.sign
maximum = np.maximum
minimum = np.minimum
where = np.where
greater = np.greater
greater_equal = np.greater_equal
less = np.less
less_equal = np.less_equal
equal = np.equal
not_equal = np.not_equal
isfinite = np.isfinite
logical_and = np.logical_and
logical_or = np.logical_or
logical_not = np.logical_not


def sigmoid(x):
    # 1 / (1 + e^{-x}) written to stay finite for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def relu(x):
    return np.maximum(x, 0)


def relu_grad(g, x):
    """g where x > 0, else 0: the VJP of relu (relu'(0) = 0)."""
    return np.where(x > 0, g, 0).astype(np.result_type(g, x), copy=False)


def maximum_share(x, y):
    """d max(x, y)/dx: 1 where x > y, 0.5 at ties, 0 where x < y."""
    share = (x > y) + 0.5 * (x == y)
    return share.astype(np.result_type(x, y), copy=False)


def cast(x, dtype):
    return x.astype(dtype)


# ---- reductions --------------------------------------------------------------
def sum(x, axis, keepdims):  # noqa: A001  (the primitive's own name)
    return np.add.reduce(x, axis=axis, keepdims=keepdims)


def amax(x, axis, keepdims):
    return np.maximum.reduce(x, axis=axis, keepdims=keepdims)


def logsumexp(x, axis, keepdims):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    s = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return s if keepdims else np.squeeze(s, axis=axis)


def log_softmax(x, axis):
    return x - logsumexp(x, (axis,), True)


# ---- shapes --------------------------------------------------------------------
def reshape(x, shape):
    return x.reshape(shape)


def transpose(x, axes):
    return np.transpose(x, axes)


def broadcast_to(x, shape):
    """np.broadcast_to(x, shape): a read-only view with stride 0 along the broadcast axes.

    For a C-contiguous array the view is built directly from the strides (≈ 0.6 µs against
    np.broadcast_to's ≈ 2.3 µs, measured; the engine broadcasts θ_0 to every task at
    every meta-step); anything else, and every shape error, goes to np.broadcast_to.
    """
    if type(x) is np.ndarray and x.flags.c_contiguous and x.ndim:
        shape = tuple(shape)
        lead = len(shape) - x.ndim
        if lead >= 0:
            strides = [0] * lead
            for s, t, st in zip(x.shape, shape[lead:], x.strides):
                if s == 1:  # (numpy gives every axis of length 1 stride 0, broadcast or not)
                    strides.append(0)
                elif s == t:
                    strides.append(st)
                else:
                    break
            else:
                if all(isinstance(t, int) and t >= 0 for t in shape[:lead]):
                    v = np.ndarray(shape, x.dtype, x, 0, tuple(strides))
                    v.flags.writeable = False
                    return v
    return np.broadcast_to(x, shape)


def getitem(x, index):
    return x[index]


def scatter_add(g, index, shape):
    """zeros(shape) with g added at x[index]; duplicate indices accumulate."""
    out = np.zeros(shape, dtype=g.dtype)
    np.add.at(out, index, g)
    return out


def concatenate(*xs, axis):
    return np.concatenate(xs, axis=axis)


def stop_gradient(x):
    return x


# ---- convolution: patch extraction and its adjoint (in conv_numpy.py) -------------------
im2col = conv_numpy.im2col
col2im = conv_numpy.col2im


# ---- linear algebra ------------------------------------------------------------
def matmul(x, y):
    """x @ y (NumPy's batched, broadcasting rules).

    With an inner dimension of 1 the product is an outer product, computed as a
    broadcast multiply (faster than a GEMM call there, and the same numbers: each
    entry is a single product). A stack of inputs against one matrix is one GEMM
    on the stacked rows, not a loop of small ones.
    """
    if x.ndim >= 2 and y.ndim >= 2 and x.shape[-1] == 1 and y.shape[-2] == 1:
        return np.multiply(x, y)
    if y.ndim == 2 and x.ndim > 2:
        # a batch of inputs against one matrix: one GEMM on the stacked rows
        return np.matmul(x.reshape(-1, x.shape[-1]), y).reshape(x.shape[:-1] + y.shape[-1:])
    return np.matmul(x, y)


def matmul_nt(x, y):
    """x @ yᵀ over the last two axes (both operands 2-D or more)."""
    yt = y.swapaxes(-1, -2)
    if x.shape[-1] == 1 and yt.shape[-2] == 1:  # an outer product: a broadcast multiply
        return np.multiply(x, yt)
    if yt.ndim == 2 and x.ndim > 2:
        return np.matmul(x.reshape(-1, x.shape[-1]), yt).reshape(x.shape[:-1] + yt.shape[-1:])
    return np.matmul(x, yt)


def matmul_tn(x, y):
    """xᵀ @ y over the last two axes (both operands 2-D or more)."""
    return matmul(x.swapaxes(-1, -2), y)


# ---- fused kernels (reference versions) ------------------------------------------------
def linear(x, W, b):
    """x W + b."""
    z = matmul(x, W)
    z += b
    return z


def linear_relu(x, W, b):
    """relu(x W + b)."""
    z = matmul(x, W)
    z += b
    np.maximum(z, 0, out=z)
    return z


def sq_err_mean(p, y):
    """Per-task mean of (p − y)² over all axes but the first."""
    d = p - y
    d *= d
    return np.add.reduce(d.reshape(d.shape[0], -1), axis=1) / (d.size // d.shape[0])


def sq_err_mean_grad(g, p, y):
    """g[:, None, ...] · 2 (p − y) / n: the VJP of sq_err_mean with respect to p."""
    n = p.size // p.shape[0]
    d = p - y
    d *= (2.0 / n) * g.reshape(g.shape + (1,) * (p.ndim - 1))
    return d


def sub_scaled(x, d, scale):
    """x − scale · d."""
    return x - scale * d
