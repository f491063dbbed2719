"""numba kernels (``cache=True``), each serving a kernel of the same role in
:mod:`tinymeta.kernels.numpy_backend`; the tests compare them with that reference and
with their own ``.py_func``.

They run on one thread (no ``parallel=True``): on small arrays numba's thread pool
costs more than it saves, and mixed with OpenBLAS threads on two cores it stalls.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True)
def relu_flat(x, out):
    for i in range(x.size):
        v = x[i]
        out[i] = 0.0 if v <= 0 else v  # NaN stays NaN, as np.maximum(x, 0) keeps it


@njit(cache=True)
def relu_grad_flat(g, x, out):
    for i in range(x.size):
        out[i] = g[i] if x[i] > 0 else 0.0


@njit(cache=True)
def bias_rows(z, b, relu):
    """z[r, j] += b[j] (then relu), in place; z is (rows, out)."""
    rows, cols = z.shape
    for r in range(rows):
        for j in range(cols):
            v = z[r, j] + b[j]
            if relu and v < 0:
                v = 0.0
            z[r, j] = v


@njit(cache=True)
def bias_tasks(z, b, relu):
    """z[t, k, j] += b[t, 0, j] (then relu), in place; z is (B, K, out), b is (B, 1, out)."""
    B, K, cols = z.shape
    for t in range(B):
        for k in range(K):
            for j in range(cols):
                v = z[t, k, j] + b[t, 0, j]
                if relu and v < 0:
                    v = 0.0
                z[t, k, j] = v


@njit(cache=True, fastmath={"reassoc"})
def sq_err_mean_2d(p, y, out):
    """out[t] = mean_j (p[t, j] − y[t, j])², summed in float64.

    ``reassoc`` lets the sum vectorise (measured 2.2–3.5× faster at rows of 256 to
    4M entries); the float64 accumulator keeps the error at float32 rounding.
    """
    B, n = p.shape
    for t in range(B):
        s = 0.0
        for j in range(n):
            d = p[t, j] - y[t, j]
            s += d * d
        out[t] = s / n


@njit(cache=True)
def sq_err_mean_grad_2d(g, p, y, out):
    """out[t, j] = g[t] · 2 (p[t, j] − y[t, j]) / n."""
    B, n = p.shape
    for t in range(B):
        c = g[t] * (2.0 / n)
        for j in range(n):
            out[t, j] = c * (p[t, j] - y[t, j])


@njit(cache=True)
def sub_scaled_flat(x, d, scale, out):
    for i in range(x.size):
        out[i] = x[i] - scale * d[i]
