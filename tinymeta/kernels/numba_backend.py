"""The numba CPU backend: the NumPy reference, with numba kernels where they pay.

Measured facts this file is built on (benchmarks/RESULTS.md, "The speed work"):
numba loop kernels lose to OpenBLAS matmul at every size, so every matmul stays with
NumPy's BLAS; numba wins where it fuses the elementwise work around a BLAS call (bias,
activation, masks, reductions, vector updates) into one pass and removes Python calls.
Every kernel here has the signature of the reference kernel of the same name and is
tested against it. Arrays a kernel cannot take (mixed dtypes, odd layouts or broadcasts)
go to the reference.
"""

from __future__ import annotations

import numpy as np

from . import _numba_kernels as nk
from . import conv_numba
from .numpy_backend import *  # noqa: F403  (the reference kernels this backend does not replace)
from .numpy_backend import array_types, ndarray, xp  # noqa: F401
from .numpy_backend import matmul as _ref_matmul
from .numpy_backend import matmul_nt as _ref_matmul_nt
from .numpy_backend import matmul_tn as _ref_matmul_tn
from .numpy_backend import relu_grad as _ref_relu_grad
from .numpy_backend import sq_err_mean as _ref_sq_err_mean
from .numpy_backend import sq_err_mean_grad as _ref_sq_err_mean_grad
from .numpy_backend import sub_scaled as _ref_sub_scaled

name = "numba"
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

# the convolution's patch extraction and its adjoint, fused (in place of the reference's,
# which the * import above brought in)
im2col = conv_numba.im2col
col2im = conv_numba.col2im


def _same_float(*arrays) -> bool:
    dt = arrays[0].dtype
    if dt not in _FLOATS:
        return False
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype != dt:
            return False
    return True


def relu(x):
    if not isinstance(x, np.ndarray) or x.ndim == 0 or not x.flags.c_contiguous \
            or x.dtype not in _FLOATS:
        return np.maximum(x, 0)
    out = np.empty_like(x)
    nk.relu_flat(x.reshape(-1), out.reshape(-1))
    return out


def relu_grad(g, x):
    """g where x > 0, else 0, in one pass (the VJP of relu)."""
    if not _same_float(g, x) or g.shape != x.shape or x.ndim == 0:
        return _ref_relu_grad(g, x)
    x = np.ascontiguousarray(x)
    g = np.ascontiguousarray(g)
    out = np.empty_like(g)
    nk.relu_grad_flat(g.reshape(-1), x.reshape(-1), out.reshape(-1))
    return out


def _shared(x, W):
    """W[0] where W is one matrix broadcast over x's task axis (stride 0 there, as
    ``broadcast_to`` makes for the first inner step), else W: x (B, M, K) against one
    (K, N) matrix is then one GEMM on the B·M stacked rows instead of B small ones."""
    if W.ndim == 3 and x.ndim == 3 and W.strides[0] == 0 and type(W) is np.ndarray:
        return W[0]
    return W


def matmul(x, y):
    """x @ y (the reference's), with a task-broadcast y taken as the one matrix it is."""
    return _ref_matmul(x, _shared(x, y))


def matmul_nt(x, y):
    """x @ yᵀ (the reference's), with a task-broadcast y taken as the one matrix it is."""
    return _ref_matmul_nt(x, _shared(x, y))


def matmul_tn(x, y):
    """xᵀ @ y over the last two axes; per task in one numba pass where x or y has one
    column (a weight cotangent of a layer of one input or one output: B small GEMMs
    or matrix-vector products in BLAS, each costing more in the call than in the work)."""
    if x.ndim == 3 and y.ndim == 3 and x.shape[:2] == y.shape[:2] \
            and (x.shape[2] == 1 or y.shape[2] == 1) and _same_float(x, y) \
            and x.flags.c_contiguous and y.flags.c_contiguous:
        out = np.empty((x.shape[0], x.shape[2], y.shape[2]), dtype=x.dtype)
        nk.matmul_tn_tasks(x, y, out)
        return out
    return _ref_matmul_tn(x, y)


def _bias_epilogue(z, b, relu: bool):
    """Add b to z in place (then relu) with a numba kernel; False where it cannot."""
    dt = z.dtype
    if type(b) is not np.ndarray or b.dtype != dt or dt not in _FLOATS \
            or not z.flags.c_contiguous:
        return False
    if b.ndim == 1 and z.ndim >= 1 and b.shape[0] == z.shape[-1]:
        nk.bias_rows(z if z.ndim == 2 else z.reshape(-1, z.shape[-1]), b, relu)
        return True
    if z.ndim == 3 and b.ndim == 3 and b.shape == (z.shape[0], 1, z.shape[2]):
        nk.bias_tasks(z, np.ascontiguousarray(b), relu)
        return True
    return False


def _one_pass(x, W, b, relu: bool):
    """x W + b (then relu) in one numba pass where the layer has one input, or one output
    and per-task weights (the product is then an outer product or dot products, and a BLAS
    call costs more than the work); None where it does not apply. numba compiles one
    version per layout, so only C-contiguous float arrays of one dtype take it (read-only
    ones too: the task-broadcast θ_0 of the first inner step is a read-only view)."""
    ws = W.shape
    if len(ws) == 3:  # per-task weights and bias: x (B, M, K), W (B, K, N), b (B, 1, N)
        if (ws[1] != 1 and ws[2] != 1) or x.ndim != 3 or x.shape[0] != ws[0] \
                or x.shape[2] != ws[1] or b.shape != (ws[0], 1, ws[2]):
            return None
    elif len(ws) == 2:  # one weight matrix, one input: x (…, 1), W (1, N), b (N,)
        # (with one output, K > 1, the rows of x make one BLAS matrix-vector product)
        if ws[0] != 1 or x.ndim < 2 or x.shape[-1] != ws[0] \
                or b.shape != (ws[1],):
            return None
    else:
        return None
    dt = x.dtype
    for a in (x, W, b):
        if type(a) is not np.ndarray or a.dtype != dt or not a.flags.c_contiguous:
            return None
    if dt not in _FLOATS:
        return None
    K, N = ws[-2], ws[-1]
    out = np.empty(x.shape[:-1] + (N,), dtype=dt)
    kernel = nk.linear_outer if K == 1 else nk.linear_dot
    if len(ws) == 3:
        kernel(x, W, b, relu, out)
    else:  # the rows of x as one task
        kernel(x.reshape(1, -1, K), W.reshape(1, K, N), b.reshape(1, 1, N), relu,
               out.reshape(1, -1, N))
    return out


def _shared_layer(x, W, b):
    # W and b both broadcast over the tasks (the first inner step): one matrix, one bias
    if W.ndim == 3 and b.ndim == 3 and b.shape[1] == 1 and b.strides[0] == 0:
        V = _shared(x, W)
        if V is not W and type(b) is np.ndarray:
            return V, b[0, 0]
    return W, b


def _linear(x, W, b, relu: bool):
    if W.ndim != 2 or W.shape[0] == 1:  # (the common 2-D case goes straight to BLAS)
        W, b = _shared_layer(x, W, b)
        z = _one_pass(x, W, b, relu)
        if z is not None:
            return z
    z = matmul(x, W) if W.ndim == 3 else _ref_matmul(x, W)
    if type(z) is np.ndarray and z.flags.writeable and _bias_epilogue(z, b, relu):
        return z
    z += b  # the reference epilogue on the product already computed (not a second GEMM)
    if relu:
        np.maximum(z, 0, out=z)
    return z


def linear(x, W, b):
    """x W + b: one numba pass for a layer of one input or one output, else the GEMM in
    BLAS and the bias in one numba pass."""
    return _linear(x, W, b, False)


def linear_relu(x, W, b):
    """relu(x W + b): as :func:`linear`, with the relu in the same pass."""
    return _linear(x, W, b, True)


def sq_err_mean(p, y):
    if not _same_float(p, y) or p.ndim < 1 or p.shape != y.shape or p.size == 0:
        return _ref_sq_err_mean(p, y)
    B = p.shape[0]
    out = np.empty(B, dtype=p.dtype)
    nk.sq_err_mean_2d(np.ascontiguousarray(p).reshape(B, -1),
                      np.ascontiguousarray(y).reshape(B, -1), out)
    return out


def sq_err_mean_grad(g, p, y):
    if not _same_float(g, p, y) or p.shape != y.shape or g.shape != p.shape[:1] \
            or p.size == 0:
        return _ref_sq_err_mean_grad(g, p, y)
    B = p.shape[0]
    out = np.empty(p.shape, dtype=p.dtype)
    nk.sq_err_mean_grad_2d(g, np.ascontiguousarray(p).reshape(B, -1),
                           np.ascontiguousarray(y).reshape(B, -1), out.reshape(B, -1))
    return out


#: Below this many entries ``sub_scaled`` is NumPy's: numba's call and the wrapper's
#: reshapes (≈ 1.5 µs) cost more than the pass saves (measured: 0.4× at 250 entries, 0.96× at
#: 4,000, 1.2× at 10,000, 1.8× at 40,000, float32: the crossover lies between 4,000 and 10,000).
SUB_SCALED_MIN_SIZE = 8192


def sub_scaled(x, d, scale):
    """x − scale · d in one pass (the inner-loop update θ − α g)."""
    if x.size < SUB_SCALED_MIN_SIZE or not _same_float(x, d) or x.shape != d.shape \
            or x.ndim == 0:
        return _ref_sub_scaled(x, d, scale)
    out = np.empty(x.shape, dtype=x.dtype)
    nk.sub_scaled_flat(np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(d).reshape(-1),
                       x.dtype.type(scale), out.reshape(-1))
    return out
