"""numba kernels (``cache=True``), each with a NumPy reference of the same name in
:mod:`tinymeta.kernels.numpy_backend`."""

from __future__ import annotations

from numba import njit


@njit(cache=True)
def relu_flat(x, out):
    for i in range(x.size):
        v = x[i]
        out[i] = v if v > 0 else 0.0


@njit(cache=True)
def relu_grad_flat(g, x, out):
    for i in range(x.size):
        out[i] = g[i] if x[i] > 0 else 0.0
