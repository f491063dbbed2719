"""The numba CPU backend: the NumPy reference, with numba kernels where they pay.

Measured facts this file is built on (speed issue): numba loop kernels lose to
OpenBLAS matmul at every size, so every matmul stays with NumPy's BLAS; numba wins
where it fuses the elementwise work around a BLAS call (bias, activation, masks,
reductions, vector updates) into one pass and removes Python calls. Every kernel
here has the signature of the reference kernel of the same name and is tested
against it. Arrays a kernel cannot take (mixed dtypes, odd layouts or broadcasts)
go to the reference.
"""

from __future__ import annotations

import numpy as np

from . import _numba_kernels as nk
from .numpy_backend import *  # noqa: F403  (the reference kernels this backend does not replace)
from .numpy_backend import array_types, matmul, ndarray, xp  # noqa: F401
from .numpy_backend import relu_grad as _ref_relu_grad
from .numpy_backend import sq_err_mean as _ref_sq_err_mean
from .numpy_backend import sq_err_mean_grad as _ref_sq_err_mean_grad
from .numpy_backend import sub_scaled as _ref_sub_scaled

name = "numba"
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


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


def _bias_epilogue(z, b, relu: bool):
    """Add b to z in place (then relu) with a numba kernel; False where it cannot."""
    if not _same_float(z, b) or not z.flags.c_contiguous:
        return False
    if b.ndim == 1 and z.ndim >= 1 and b.shape[0] == z.shape[-1]:
        nk.bias_rows(z.reshape(-1, z.shape[-1]), b, relu)
        return True
    if z.ndim == 3 and b.ndim == 3 and b.shape == (z.shape[0], 1, z.shape[2]):
        nk.bias_tasks(z, np.ascontiguousarray(b), relu)
        return True
    return False


def linear(x, W, b):
    """x W + b: the GEMM in BLAS, the bias in one numba pass."""
    z = matmul(x, W)
    if isinstance(z, np.ndarray) and z.flags.writeable and _bias_epilogue(z, b, False):
        return z
    z += b  # the reference epilogue on the product already computed (not a second GEMM)
    return z


def linear_relu(x, W, b):
    """relu(x W + b): the GEMM in BLAS, bias and relu in one numba pass."""
    z = matmul(x, W)
    if isinstance(z, np.ndarray) and z.flags.writeable and _bias_epilogue(z, b, True):
        return z
    z += b
    np.maximum(z, 0, out=z)
    return z


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


def sub_scaled(x, d, scale):
    if not _same_float(x, d) or x.shape != d.shape or x.ndim == 0:
        return _ref_sub_scaled(x, d, scale)
    out = np.empty_like(x, order="C")
    nk.sub_scaled_flat(np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(d).reshape(-1),
                       x.dtype.type(scale), out.reshape(-1))
    return out
