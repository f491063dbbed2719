"""The convolution kernels behind the seam: the NumPy reference against a direct loop, the
numba kernels against the reference and their own ``.py_func``, and the binding of the
primitives to each backend's kernels.

The reference (``conv_numpy``: a strided view, kh·kw strided adds) is held to a loop over
every patch entry written here; the numba kernels (``_numba_conv``, through the wrappers of
``conv_numba``) to the reference on hypothesis-drawn geometries (odd padding after, padding
wider than the window, windows in the padding only, strides larger than the window,
non-contiguous and read-only inputs), and each njit kernel to its pure-Python ``.py_func``.
The cupy kernels are checked in ``test_cuda_sources.py`` (host emulator, nvcc) and
``test_cupy_backend.py``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("numba")

import tinymeta as tm  # noqa: E402
from tinymeta.kernels import _numba_conv as nc  # noqa: E402
from tinymeta.kernels import conv_numba, conv_numpy, numba_backend, numpy_backend  # noqa: E402
from tinymeta.ops import conv as conv_ops  # noqa: E402

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def loop_im2col(x, kernel, stride, padding):
    """Every patch entry, one at a time: out[…, i, j, (a, b, c)] = x̃[…, i·sh + a, j·sw + b, c]."""
    (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = kernel, stride, padding
    *lead, H, W, C = x.shape
    Ho, Wo = (H + pt + pb - kh) // sh + 1, (W + pl + pr - kw) // sw + 1
    flat = x.reshape(-1, H, W, C)
    out = np.zeros((flat.shape[0], Ho, Wo, kh, kw, C), x.dtype)
    for n in range(flat.shape[0]):
        for i in range(Ho):
            for j in range(Wo):
                for a in range(kh):
                    for b in range(kw):
                        r, s = i * sh + a - pt, j * sw + b - pl
                        if 0 <= r < H and 0 <= s < W:
                            out[n, i, j, a, b] = flat[n, r, s]
    return out.reshape(*lead, Ho, Wo, kh * kw * C)


def loop_col2im(cols, x_shape, kernel, stride, padding):
    """Every patch entry added, one at a time, to the pixel it was read from."""
    (kh, kw), (sh, sw), ((pt, _), (pl, _)) = kernel, stride, padding
    *lead, H, W, C = x_shape
    Ho, Wo = cols.shape[-3], cols.shape[-2]
    patches = cols.reshape(-1, Ho, Wo, kh, kw, C)
    out = np.zeros((patches.shape[0], H, W, C), cols.dtype)
    for n in range(patches.shape[0]):
        for i in range(Ho):
            for j in range(Wo):
                for a in range(kh):
                    for b in range(kw):
                        r, s = i * sh + a - pt, j * sw + b - pl
                        if 0 <= r < H and 0 <= s < W:
                            out[n, r, s] += patches[n, i, j, a, b]
    return out.reshape(x_shape)


@st.composite
def geometries(draw):
    """(x shape, kernel, stride, padding), normalised as the primitives pass them."""
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding = tuple((draw(st.integers(0, 5)), draw(st.integers(0, 5))) for _ in range(2))
    hw = tuple(draw(st.integers(max(1, k - sum(p)), 8)) for k, p in zip(kernel, padding))
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    return lead + hw + (draw(st.integers(1, 5)),), kernel, stride, padding


def make(rng, shape, dtype, layout):
    """Standard-normal entries: contiguous, a non-contiguous view, or read-only."""
    if layout == "strided":
        return rng.standard_normal(shape[:-1] + (2 * shape[-1],)).astype(dtype)[..., ::2]
    a = rng.standard_normal(shape).astype(dtype)
    if layout == "readonly":
        a.flags.writeable = False
    return a


def assert_close(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    rtol = RTOL[np.dtype(want.dtype)]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol, err_msg=what)


@contextlib.contextmanager
def py_funcs():
    """The numba wrappers with each njit kernel swapped for its pure-Python original."""
    saved = conv_numba.nc

    class PyFuncs:
        def __getattr__(self, name):
            return getattr(nc, name).py_func

    conv_numba.nc = PyFuncs()
    try:
        yield
    finally:
        conv_numba.nc = saved


# ---- the reference against the loop --------------------------------------------------------


@given(geometry=geometries(), seed=st.integers(0, 2**32 - 1))
def test_reference_equals_the_loop(geometry, seed):
    shape, kernel, stride, padding = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    cols = conv_numpy.im2col(x, kernel, stride, padding)
    np.testing.assert_array_equal(cols, loop_im2col(x, kernel, stride, padding))
    g = rng.standard_normal(cols.shape)
    np.testing.assert_allclose(conv_numpy.col2im(g, shape, kernel, stride, padding),
                               loop_col2im(g, shape, kernel, stride, padding), rtol=1e-13,
                               atol=1e-13)


def test_reference_hard_coded_same_padding():
    """H = W = 4, a 3 × 3 window at stride 2, "same": 2 × 2 outputs, the one row and column
    of padding after (TensorFlow's SAME): the window sums are 45, 39, 66, 50."""
    x = np.arange(16.0).reshape(1, 4, 4, 1)
    pads = conv_ops.conv_padding((4, 4), (3, 3), (2, 2), "same")
    assert pads == ((0, 1), (0, 1))
    cols = conv_numpy.im2col(x, (3, 3), (2, 2), pads)
    np.testing.assert_array_equal(cols.sum(-1)[0], [[45.0, 39.0], [66.0, 50.0]])
    counts = conv_numpy.col2im(np.ones_like(cols), x.shape, (3, 3), (2, 2), pads)[0, ..., 0]
    np.testing.assert_array_equal(counts, [[1, 1, 2, 1], [1, 1, 2, 1], [2, 2, 4, 2],
                                           [1, 1, 2, 1]])


# ---- numba against the reference and .py_func ----------------------------------------------


@given(geometry=geometries(), dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(["contiguous", "strided", "readonly"]),
       seed=st.integers(0, 2**32 - 1))
def test_numba_equals_reference_and_py_func(geometry, dtype, layout, seed):
    shape, kernel, stride, padding = geometry
    rng = np.random.default_rng(seed)
    x = make(rng, shape, dtype, layout)
    want = conv_numpy.im2col(x, kernel, stride, padding)
    got = conv_numba.im2col(x, kernel, stride, padding)
    with py_funcs():
        got_py = conv_numba.im2col(x, kernel, stride, padding)
    np.testing.assert_array_equal(got, want)  # copies: exact
    np.testing.assert_array_equal(got_py, want)
    assert got.dtype == want.dtype
    g = make(rng, want.shape, dtype, layout)
    want = conv_numpy.col2im(g, shape, kernel, stride, padding)
    got = conv_numba.col2im(g, shape, kernel, stride, padding)
    with py_funcs():
        got_py = conv_numba.col2im(g, shape, kernel, stride, padding)
    assert_close(got, want, "col2im: numba vs the reference")  # sums in another order
    assert_close(got_py, got, "col2im: njit vs .py_func")


def test_numba_takes_its_kernels_and_falls_back_for_other_dtypes(monkeypatch):
    calls = []
    for name in ("im2col_rows", "col2im_rows"):
        kernel = getattr(nc, name)
        monkeypatch.setattr(nc, name, lambda *a, _k=kernel, _n=name: (calls.append(_n), _k(*a)))
    conv = ((3, 3), (2, 2), ((0, 1), (0, 1)))
    x = np.ones((2, 5, 5, 3), np.float32)
    cols = conv_numba.im2col(x, *conv)
    conv_numba.col2im(cols, x.shape, *conv)
    assert calls == ["im2col_rows", "col2im_rows"]
    ints = np.arange(2 * 5 * 5 * 3).reshape(2, 5, 5, 3)
    icols = conv_numba.im2col(ints, *conv)
    back = conv_numba.col2im(icols, ints.shape, *conv)
    assert calls == ["im2col_rows", "col2im_rows"]  # the reference's, not a numba kernel
    np.testing.assert_array_equal(icols, conv_numpy.im2col(ints, *conv))
    np.testing.assert_array_equal(back, conv_numpy.col2im(icols, ints.shape, *conv))


def test_every_njit_kernel_is_tested_here():
    njit = {n for n, f in vars(nc).items() if hasattr(f, "py_func")}
    assert njit == {"im2col_rows", "col2im_rows"}


def test_each_backend_binds_its_own_kernels():
    """The primitives call the numba kernels on the numba backend and the reference on the
    NumPy one (an import order that let the reference shadow them went unnoticed once)."""
    assert numba_backend.im2col is conv_numba.im2col
    assert numba_backend.col2im is conv_numba.col2im
    assert numpy_backend.im2col is conv_numpy.im2col
    with tm.set_backend("numba"):
        assert conv_ops._im2col.impl is conv_numba.im2col
        assert conv_ops._col2im.impl is conv_numba.col2im
    with tm.set_backend("numpy"):
        assert conv_ops._im2col.impl is conv_numpy.im2col
        assert conv_ops._col2im.impl is conv_numpy.col2im
