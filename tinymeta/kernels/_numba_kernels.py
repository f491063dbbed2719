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


@njit(cache=True)
def linear_outer(x, W, b, relu, out):
    """out[t, i, j] = x[t, i, 0] W[t, 0, j] + b[t, 0, j] (then relu): a layer of one input.

    The product has an inner dimension of 1, so it is an outer product: one multiply and
    one add per output, in one pass (the reference makes a broadcast product, then adds).
    """
    B, M, _ = x.shape
    N = W.shape[2]
    for t in range(B):
        for i in range(M):
            xv = x[t, i, 0]
            for j in range(N):
                v = xv * W[t, 0, j] + b[t, 0, j]
                if relu and v < 0:
                    v = 0.0
                out[t, i, j] = v


@njit(cache=True, fastmath={"reassoc"})
def linear_dot(x, W, b, relu, out):
    """out[t, i, 0] = Σ_k x[t, i, k] W[t, k, 0] + b[t, 0, 0] (then relu): a layer of one output.

    Each output is a dot product of length K; ``reassoc`` lets the sum vectorise (the
    order of a BLAS sum is unspecified too). The sum runs in the inputs' dtype, as BLAS's.
    """
    B, M, K = x.shape
    for t in range(B):
        bt = b[t, 0, 0]
        for i in range(M):
            s = x.dtype.type(0)
            for k in range(K):
                s += x[t, i, k] * W[t, k, 0]
            v = s + bt
            if relu and v < 0:
                v = 0.0
            out[t, i, 0] = v


@njit(cache=True)
def matmul_tn_tasks(x, y, out):
    """out[t] = x[t]ᵀ y[t] for x (B, M, K), y (B, M, N) with K = 1 or N = 1 (the weight
    cotangent of a layer of one input or one output): a sum over the M rows, with the
    long axis (N, or K when N = 1) innermost, in one pass over the tasks."""
    B, M, K = x.shape
    N = y.shape[2]
    for t in range(B):
        for k in range(K):
            for j in range(N):
                out[t, k, j] = 0.0
        if N == 1:
            for i in range(M):
                yv = y[t, i, 0]
                for k in range(K):
                    out[t, k, 0] += x[t, i, k] * yv
        else:
            for i in range(M):
                xv = x[t, i, 0]
                for j in range(N):
                    out[t, 0, j] += xv * y[t, i, j]


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
