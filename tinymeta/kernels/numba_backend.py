"""The numba CPU backend: the NumPy reference, with numba kernels where they pay.

Measured facts this file is built on (speed issue): numba loop kernels lose to
OpenBLAS matmul at every size, so matmuls stay with NumPy/BLAS; numba wins where
it fuses the elementwise work around a BLAS call or removes Python calls.
Every kernel here has the signature of the reference kernel of the same name
and is tested against it and against its ``.py_func``.
"""

from __future__ import annotations

import numpy as np

from . import _numba_kernels as nk
from .numpy_backend import *  # noqa: F403  (the reference kernels this backend does not replace)
from .numpy_backend import array_types, ndarray, xp  # noqa: F401

name = "numba"


def relu(x):
    if x.ndim == 0 or not x.flags.c_contiguous:
        return np.maximum(x, 0)
    out = np.empty_like(x)
    nk.relu_flat(x.reshape(-1), out.reshape(-1))
    return out


def relu_grad(g, x):
    """g where x > 0, else 0, in one pass (the VJP of relu)."""
    if g.shape != x.shape or g.dtype != x.dtype or x.ndim == 0:
        return np.where(x > 0, g, 0).astype(np.result_type(g, x), copy=False)
    x = np.ascontiguousarray(x)
    g = np.ascontiguousarray(g)
    out = np.empty_like(g)
    nk.relu_grad_flat(g.reshape(-1), x.reshape(-1), out.reshape(-1))
    return out
