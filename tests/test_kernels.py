"""The numba backend against the NumPy reference, and each njit kernel against its ``.py_func``.

Every function the numba backend replaces is run three ways on the same inputs: the NumPy
reference kernel, the numba backend with its compiled kernels, and the numba backend with
each kernel swapped for its pure-Python ``.py_func`` (same wrapper, same arguments). They
must agree (float32 to 1e-5 relative, float64 to 1e-12), keep the dtype, and give no NaN.
A recorder in place of the kernel module says which kernels ran, so a test also checks that
a supported layout reaches its numba kernel and an unsupported one falls back to the
reference, not silently the other way.

Below that: each njit kernel called directly (strided and read-only inputs included), relu's
kink, the numba cache from a read-only package folder, and backend selection.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

pytest.importorskip("numba")

import tinymeta as tm  # noqa: E402
from tinymeta import bench, kernels  # noqa: E402
from tinymeta.kernels import _numba_kernels as nk  # noqa: E402
from tinymeta.kernels import numba_backend as nb  # noqa: E402
from tinymeta.kernels import numpy_backend as ref  # noqa: E402

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
FLOATS = (np.float32, np.float64)
LAYOUTS = ("contiguous", "transposed", "sliced", "readonly")

# the functions the numba backend replaces, and the njit kernels each may call
BACKEND_KERNELS = {
    "relu": {"relu_flat"},
    "relu_grad": {"relu_grad_flat"},
    "linear": {"bias_rows", "bias_tasks", "linear_outer", "linear_dot"},
    "linear_relu": {"bias_rows", "bias_tasks", "linear_outer", "linear_dot"},
    "sq_err_mean": {"sq_err_mean_2d"},
    "sq_err_mean_grad": {"sq_err_mean_grad_2d"},
    "sub_scaled": {"sub_scaled_flat"},
    "matmul": set(),  # BLAS; a task-broadcast matrix taken as one (one GEMM)
    "matmul_nt": set(),
    "matmul_tn": {"matmul_tn_tasks"},  # per task where one operand has one column
}

# the sinusoid MLP 1-40-40-1 on 25 tasks of K = 10 points: per-task (B, …) and shared params
SINUSOID_LINEAR = [
    ((25, 10, 1), (25, 1, 40), (25, 1, 40)),
    ((25, 10, 40), (25, 40, 40), (25, 1, 40)),
    ((25, 10, 40), (25, 40, 1), (25, 1, 1)),
    ((25, 10, 1), (1, 40), (40,)),
    ((25, 10, 40), (40, 40), (40,)),
    ((25, 10, 40), (40, 1), (1,)),
]
SINUSOID_ARRAYS = [(25, 10, 1), (25, 10, 40), (25, 1, 40), (25, 40, 40)]


# ---- helpers ---------------------------------------------------------------------------


def make(rng, shape, dtype, layout="contiguous", zeros=0.0):
    """A standard-normal array of ``shape``: contiguous, a transposed or a strided view, or
    read-only; ``zeros`` is the fraction of entries set to exactly 0."""
    shape = tuple(shape)
    if layout == "transposed" and len(shape) >= 2:
        base_shape = shape[:-2] + (shape[-1], shape[-2])
    elif layout == "sliced" and len(shape) >= 1:
        base_shape = shape[:-1] + (2 * shape[-1],)
    else:
        base_shape = shape
    base = rng.standard_normal(base_shape).astype(dtype)
    if zeros:
        base[rng.random(base_shape) < zeros] = 0
    if layout == "transposed" and len(shape) >= 2:
        a = base.swapaxes(-1, -2)
    elif layout == "sliced" and len(shape) >= 1:
        a = base[..., ::2]
    else:
        a = base
    if layout == "readonly":
        a.flags.writeable = False
    assert a.shape == shape
    return a


@contextlib.contextmanager
def kernels_seen(py_func: bool = False):
    """Swap the numba backend's kernel module for a recorder; yield the list of kernel names
    the backend calls. With ``py_func=True`` each kernel runs as its pure-Python original."""
    calls: list[str] = []

    class Recorder:
        def __getattr__(self, name):
            calls.append(name)
            kernel = getattr(nk, name)
            return kernel.py_func if py_func else kernel

    saved = nb.nk
    nb.nk = Recorder()
    try:
        yield calls
    finally:
        nb.nk = saved


def assert_close(got, want, what=""):
    rtol = RTOL.get(np.dtype(want.dtype), 1e-3)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-3, err_msg=what)


def assert_sum_close(got, want, bound, what=""):
    """|got − want| <= 4 K ε Σ|terms|: two sums of the same K terms in different orders
    (BLAS's and a vectorised loop's) differ by at most this much, whatever the cancellation."""
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    tol = np.asarray(bound, dtype=np.float64) * np.finfo(want.dtype).eps + 1e-300
    assert np.all(err <= tol), f"{what}: max error / bound {np.max(err / tol):.3g}"


def linear_bound(x, W, b):
    """4 K ε-free scale of x W + b: 4 K (|x| |W| + |b|) in float64."""
    K = W.shape[-2]
    ax, aW, ab = (np.abs(np.asarray(a, dtype=np.float64)) for a in (x, W, b))
    return 4 * (K + 1) * (ref.matmul(ax, aW) + ab)


def three_ways(name, *args, **kwargs):
    """Run kernel ``name`` as the reference, as numba and as numba's .py_func; check they
    agree, keep the dtype and shape, leave the inputs alone and give no NaN. Returns the
    numba kernels called. The fused linear kernels sum in another order than BLAS: they
    are held to the error bound of a reordered sum (:func:`assert_sum_close`)."""
    before = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
    want = getattr(ref, name)(*args, **kwargs)
    with kernels_seen() as calls:
        got = getattr(nb, name)(*args, **kwargs)
    with kernels_seen(py_func=True) as py_calls:
        got_py = getattr(nb, name)(*args, **kwargs)
    for a, b in zip(args, before):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} changed an input")
    assert calls == py_calls
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, reference {want.dtype}"
    assert got.shape == want.shape
    assert not np.isnan(got).any(), f"{name}: NaN in the output"
    if name in ("linear", "linear_relu", "matmul", "matmul_nt", "matmul_tn"):
        x, W = args[:2]
        if name == "matmul_nt":
            W = W.swapaxes(-1, -2)
        if name == "matmul_tn":
            x = x.swapaxes(-1, -2)
        bound = linear_bound(x, W, args[2] if len(args) > 2 else np.zeros((), x.dtype))
        assert_sum_close(got, want, bound, f"{name}: numba vs NumPy reference")
        assert_sum_close(got_py, got, bound, f"{name}: njit vs .py_func")
    else:
        assert_close(got, want, f"{name}: numba vs NumPy reference")
        assert_close(got_py, got, f"{name}: njit vs .py_func")
    assert set(calls) <= BACKEND_KERNELS[name]
    return calls


dtypes = st.sampled_from(FLOATS)
layouts = st.sampled_from(LAYOUTS)
seeds = st.integers(0, 2**32 - 1)
sides = st.integers(1, 9)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9)


def test_the_tables_cover_every_kernel():
    """A kernel added to the numba backend without a test here fails this test."""
    njit = {n for n, f in vars(nk).items() if hasattr(f, "py_func")}
    assert njit == set().union(*BACKEND_KERNELS.values()) == set(DIRECT)
    replaced = {n for n, f in vars(nb).items()
                if callable(f) and not n.startswith("_") and getattr(ref, n, None) is not f
                and getattr(f, "__module__", None) == nb.__name__}
    assert replaced == set(BACKEND_KERNELS)


# ---- fused linear: x W + b (then relu) --------------------------------------------------------


@st.composite
def linear_cases(draw):
    kind = draw(st.sampled_from(["shared", "batched_shared", "tasks", "tasks_shared_bias",
                                 "vector"]))
    B, K, n_in, n_out = draw(sides), draw(sides), draw(sides), draw(sides)
    if kind == "shared":
        return (K, n_in), (n_in, n_out), (n_out,)
    if kind == "batched_shared":
        return (B, K, n_in), (n_in, n_out), (n_out,)
    if kind == "tasks":
        return (B, K, n_in), (B, n_in, n_out), (B, 1, n_out)
    if kind == "tasks_shared_bias":
        return (B, K, n_in), (B, n_in, n_out), (n_out,)
    return (n_in,), (n_in, n_out), (n_out,)


def expected_linear_calls(x, W, b):
    """The kernel the numba backend should pick for x W + b (stated independently of it)."""
    if (W.ndim == 3 and x.ndim == 3 and b.ndim == 3 and b.shape[1] == 1
            and W.strides[0] == 0 and b.strides[0] == 0):
        W, b = W[0], b[0, 0]  # one matrix and one bias broadcast over the tasks
    plain = all(a.flags.c_contiguous for a in (x, W, b))
    if plain and W.ndim == 3 and b.ndim == 3 and (W.shape[1] == 1 or W.shape[2] == 1):
        return ["linear_outer"] if W.shape[1] == 1 else ["linear_dot"]
    if plain and W.ndim == 2 and x.ndim >= 2 and b.ndim == 1 and W.shape[0] == 1:
        return ["linear_outer"]
    return ["bias_rows"] if b.ndim == 1 else ["bias_tasks"]


@pytest.mark.parametrize("name", ["linear", "linear_relu"])
@given(case=linear_cases(), dtype=dtypes, lx=layouts, lw=layouts, lb=layouts, seed=seeds)
def test_linear_matches_reference_and_py_func(name, case, dtype, lx, lw, lb, seed):
    rng = np.random.default_rng(seed)
    xs, ws, bs = case
    x, W, b = make(rng, xs, dtype, lx), make(rng, ws, dtype, lw), make(rng, bs, dtype, lb)
    calls = three_ways(name, x, W, b)
    assert calls == expected_linear_calls(x, W, b)


@pytest.mark.parametrize("name", ["linear", "linear_relu"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shapes", SINUSOID_LINEAR, ids=str)
def test_linear_sinusoid_shapes(name, dtype, shapes):
    rng = np.random.default_rng(0)
    x, W, b = (make(rng, s, dtype) for s in shapes)
    calls = three_ways(name, x, W, b)
    assert calls == expected_linear_calls(x, W, b)
    # the layers of one input and the per-task layer of one output take one numba pass
    one_pass = (W.shape[-2] == 1) or (W.ndim == 3 and W.shape[-1] == 1)
    assert (calls[0] in ("linear_outer", "linear_dot")) == one_pass


@pytest.mark.parametrize("name", ["linear", "linear_relu"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shapes", SINUSOID_LINEAR[3:], ids=str)
def test_linear_task_broadcast_params(name, dtype, shapes):
    """θ_0 broadcast over 25 tasks (the first inner step) is taken as one matrix and bias."""
    rng = np.random.default_rng(3)
    xs, ws, bs = shapes
    x, W, b = make(rng, xs, dtype), make(rng, ws, dtype), make(rng, bs, dtype)
    Wb = np.broadcast_to(W, (25,) + W.shape)
    bb = np.broadcast_to(b, (25,) + b.shape).reshape(25, 1, -1)
    assert Wb.strides[0] == 0 and bb.strides[0] == 0
    calls = three_ways(name, x, Wb, bb)
    assert calls == expected_linear_calls(x, W, b)  # as for the shared matrix itself


@pytest.mark.parametrize("name", ["matmul", "matmul_nt"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(25, 10, 40, 40), (25, 10, 40, 1), (3, 4, 5, 6)], ids=str)
def test_matmul_task_broadcast_matrix(name, dtype, shape):
    B, M, K, N = shape
    rng = np.random.default_rng(4)
    x = make(rng, (B, M, K), dtype)
    ws = (K, N) if name == "matmul" else (N, K)  # x @ W, or x @ Wᵀ with W (N, K)
    three_ways(name, x, np.broadcast_to(make(rng, ws, dtype), (B,) + ws))
    three_ways(name, x, make(rng, (B,) + ws, dtype))  # per-task matrices: unchanged


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("xs, ys", [((25, 10, 1), (25, 10, 40)), ((25, 10, 40), (25, 10, 1)),
                                    ((3, 4, 1), (3, 4, 1)), ((25, 10, 40), (25, 10, 40)),
                                    ((10, 40), (10, 1))], ids=str)
def test_matmul_tn(dtype, xs, ys):
    """xᵀ y: one numba pass per task where x or y has one column, BLAS otherwise."""
    rng = np.random.default_rng(5)
    x, y = make(rng, xs, dtype), make(rng, ys, dtype)
    calls = three_ways("matmul_tn", x, y)
    one = len(xs) == 3 and (xs[-1] == 1 or ys[-1] == 1)
    assert calls == (["matmul_tn_tasks"] if one else [])
    x, y = make(rng, xs, dtype, "transposed"), make(rng, ys, dtype, "sliced")
    assert three_ways("matmul_tn", x, y) == []  # other layouts: the reference


@given(B=sides, M=sides, K=sides, dtype=dtypes, seed=seeds, which=st.booleans())
def test_matmul_tn_drawn_shapes(B, M, K, dtype, seed, which):
    rng = np.random.default_rng(seed)
    xs, ys = ((B, M, 1), (B, M, K)) if which else ((B, M, K), (B, M, 1))
    assert three_ways("matmul_tn", make(rng, xs, dtype), make(rng, ys, dtype)) == [
        "matmul_tn_tasks"]


# bias layouts and dtypes the numba epilogue does not take: the reference runs, bit for bit
LINEAR_FALLBACKS = [
    ((7, 3), (3, 5), (1, 5), np.float32, np.float32),
    ((4, 7, 3), (3, 5), (7, 5), np.float64, np.float64),
    ((4, 7, 3), (4, 3, 5), (4, 7, 5), np.float32, np.float32),
    ((4, 7, 3), (4, 3, 5), (1, 1, 5), np.float64, np.float64),
    ((2, 3, 7, 3), (3, 5), (2, 3, 1, 5), np.float32, np.float32),
    ((7, 3), (3, 5), (), np.float64, np.float64),
    ((7, 3), (3, 5), (5,), np.float32, np.float64),  # mixed dtypes
    ((7, 3), (3, 5), (5,), np.float16, np.float16),  # not a numba float
]


@pytest.mark.parametrize("name", ["linear", "linear_relu"])
@pytest.mark.parametrize("xs, ws, bs, dt, bdt", LINEAR_FALLBACKS, ids=str)
def test_linear_unsupported_layouts_fall_back(name, xs, ws, bs, dt, bdt):
    rng = np.random.default_rng(1)
    x, W, b = make(rng, xs, dt), make(rng, ws, dt), make(rng, bs, bdt)
    want = getattr(ref, name)(x, W, b)
    with kernels_seen() as calls:
        got = getattr(nb, name)(x, W, b)
    assert calls == []
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bs, bdt", [((1, 5), np.float32), ((5,), np.float64)], ids=str)
def test_linear_fallback_does_one_matmul(monkeypatch, bs, bdt):
    calls = []

    def counting(x, y, _matmul=ref.matmul):
        calls.append((x.shape, y.shape))
        return _matmul(x, y)

    monkeypatch.setattr(ref, "matmul", counting)
    monkeypatch.setattr(nb, "matmul", counting)
    monkeypatch.setattr(nb, "_ref_matmul", counting)
    rng = np.random.default_rng(2)
    x, W, b = make(rng, (7, 3), np.float32), make(rng, (3, 5), np.float32), make(rng, bs, bdt)
    nb.linear(x, W, b)
    assert len(calls) == 1, f"{len(calls)} matmuls for one linear: {calls}"


# ---- relu and its VJP ------------------------------------------------------------------------


@given(shape=shapes, dtype=dtypes, layout=layouts, seed=seeds)
def test_relu(shape, dtype, layout, seed):
    x = make(np.random.default_rng(seed), shape, dtype, layout, zeros=0.2)
    calls = three_ways("relu", x)
    assert calls == (["relu_flat"] if x.flags.c_contiguous else [])


@given(shape=shapes, dtype=dtypes, lg=layouts, lx=layouts, seed=seeds)
def test_relu_grad(shape, dtype, lg, lx, seed):
    rng = np.random.default_rng(seed)
    g, x = make(rng, shape, dtype, lg), make(rng, shape, dtype, lx, zeros=0.3)
    assert three_ways("relu_grad", g, x) == ["relu_grad_flat"]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SINUSOID_ARRAYS, ids=str)
def test_relu_sinusoid_shapes(dtype, shape):
    rng = np.random.default_rng(3)
    assert three_ways("relu", make(rng, shape, dtype, zeros=0.1)) == ["relu_flat"]
    g, x = make(rng, shape, dtype), make(rng, shape, dtype, zeros=0.1)
    assert three_ways("relu_grad", g, x) == ["relu_grad_flat"]


@pytest.mark.parametrize("backend", [ref, nb], ids=["numpy", "numba"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_relu_grad_is_zero_at_zero(backend, dtype):
    x = np.array([-1.0, -0.0, 0.0, 1e-30, 2.0], dtype=dtype)
    g = np.full_like(x, 3.0)
    out = backend.relu_grad(g, x)
    np.testing.assert_array_equal(out, np.array([0, 0, 0, 3, 3], dtype=dtype))
    assert out.dtype == dtype


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_relu_kink_through_the_engine(backend):
    """relu'(0) = 0 through grad (hard-coded)."""
    with tm.set_backend(backend):
        g = tm.grad(lambda x: tm.sum(tm.relu(x)))(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_linear_relu_kink_through_the_engine(backend):
    """The fused linear_relu's mask is 1[z > 0]: a bias entry with z = 0 gets 0 (hard-coded)."""
    x, W = np.zeros((2, 3)), np.ones((3, 4))
    with tm.set_backend(backend):
        gb = tm.grad(lambda b: tm.sum(tm.ops.linear_relu(x, W, b)))(np.array([0.0, 0, 1, -1]))
    np.testing.assert_array_equal(gb, [0.0, 0.0, 2.0, 0.0])


@pytest.mark.parametrize("dtype", FLOATS)
def test_relu_propagates_nan_like_the_reference(dtype):
    x = np.array([np.nan, -1.0, 1.0], dtype=dtype)
    np.testing.assert_array_equal(nb.relu(x), ref.relu(x))


@pytest.mark.parametrize("dtype", FLOATS)
def test_linear_relu_propagates_nan_like_the_reference(dtype):
    x, W, b = np.array([[np.nan, 1.0]], dtype), np.ones((2, 3), dtype), np.zeros(3, dtype)
    np.testing.assert_array_equal(nb.linear_relu(x, W, b), ref.linear_relu(x, W, b))


def test_relu_family_fallbacks():
    rng = np.random.default_rng(4)
    for x in (make(rng, (3, 4), np.float16), np.arange(-3, 3), np.array(-2.0)):
        with kernels_seen() as calls:
            got = nb.relu(x)
        assert calls == [] and got.dtype == ref.relu(x).dtype
        np.testing.assert_array_equal(got, ref.relu(x))
    cases = [(make(rng, (3, 4), np.float32), make(rng, (3, 4), np.float64)),
             (make(rng, (3, 4), np.float32), make(rng, (1, 4), np.float32)),
             (np.array(2.0), np.array(1.0))]
    for g, x in cases:
        with kernels_seen() as calls:
            got = nb.relu_grad(g, x)
        assert calls == [] and got.dtype == ref.relu_grad(g, x).dtype
        np.testing.assert_array_equal(got, ref.relu_grad(g, x))


# ---- per-task squared error and its VJP ---------------------------------------------------


@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
       dtype=dtypes, lp=layouts, ly=layouts, seed=seeds)
def test_sq_err_mean(shape, dtype, lp, ly, seed):
    rng = np.random.default_rng(seed)
    p, y = make(rng, shape, dtype, lp), make(rng, shape, dtype, ly)
    assert three_ways("sq_err_mean", p, y) == ["sq_err_mean_2d"]


@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
       dtype=dtypes, lg=layouts, lp=layouts, ly=layouts, seed=seeds)
def test_sq_err_mean_grad(shape, dtype, lg, lp, ly, seed):
    rng = np.random.default_rng(seed)
    g = make(rng, shape[:1], dtype, lg)
    p, y = make(rng, shape, dtype, lp), make(rng, shape, dtype, ly)
    assert three_ways("sq_err_mean_grad", g, p, y) == ["sq_err_mean_grad_2d"]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SINUSOID_ARRAYS, ids=str)
def test_sq_err_sinusoid_shapes(dtype, shape):
    rng = np.random.default_rng(5)
    p, y, g = make(rng, shape, dtype), make(rng, shape, dtype), make(rng, shape[:1], dtype)
    assert three_ways("sq_err_mean", p, y) == ["sq_err_mean_2d"]
    assert three_ways("sq_err_mean_grad", g, p, y) == ["sq_err_mean_grad_2d"]


def test_sq_err_hard_coded():
    p = np.array([[1.0, 2.0], [0.0, 0.0]])
    y = np.array([[0.0, 0.0], [3.0, -1.0]])
    np.testing.assert_allclose(nb.sq_err_mean(p, y), [2.5, 5.0], rtol=1e-15)
    np.testing.assert_allclose(nb.sq_err_mean_grad(np.array([1.0, 2.0]), p, y),
                               [[1.0, 2.0], [-6.0, 2.0]], rtol=1e-15)


def test_sq_err_fallbacks():
    rng = np.random.default_rng(6)
    p32, p64 = make(rng, (3, 4), np.float32), make(rng, (3, 4), np.float64)
    p16 = make(rng, (3, 4), np.float16)
    g32, g64 = make(rng, (3,), np.float32), make(rng, (3,), np.float64)
    for args in [(p32, p64), (p16, p16)]:
        with kernels_seen() as calls:
            got = nb.sq_err_mean(*args)
        assert calls == [] and got.dtype == ref.sq_err_mean(*args).dtype
        np.testing.assert_array_equal(got, ref.sq_err_mean(*args))
    for args in [(g64, p32, p32), (g32, p32, p64), (make(rng, (1,), np.float32), p32, p32)]:
        with kernels_seen() as calls:
            got = nb.sq_err_mean_grad(*args)
        assert calls == [] and got.dtype == ref.sq_err_mean_grad(*args).dtype
        np.testing.assert_array_equal(got, ref.sq_err_mean_grad(*args))


# ---- the inner-loop step x − scale · d -------------------------------------------------------


@contextlib.contextmanager
def sub_scaled_min_size(n):
    saved = nb.SUB_SCALED_MIN_SIZE
    nb.SUB_SCALED_MIN_SIZE = n
    try:
        yield
    finally:
        nb.SUB_SCALED_MIN_SIZE = saved


@given(shape=shapes, dtype=dtypes, lx=layouts, ld=layouts, seed=seeds,
       scale=st.floats(-10, 10, allow_nan=False))
def test_sub_scaled(shape, dtype, lx, ld, seed, scale):
    """The numba pass at every size (its size threshold lowered to 0 here)."""
    rng = np.random.default_rng(seed)
    x, d = make(rng, shape, dtype, lx), make(rng, shape, dtype, ld)
    with sub_scaled_min_size(0):
        assert three_ways("sub_scaled", x, d, scale) == ["sub_scaled_flat"]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SINUSOID_ARRAYS, ids=str)
def test_sub_scaled_sinusoid_shapes(dtype, shape):
    """At the threshold's default, arrays under it take NumPy's two operations."""
    rng = np.random.default_rng(7)
    x, d = make(rng, shape, dtype), make(rng, shape, dtype)
    small = x.size < nb.SUB_SCALED_MIN_SIZE
    assert three_ways("sub_scaled", x, d, 0.01) == ([] if small else ["sub_scaled_flat"])
    with sub_scaled_min_size(0):
        assert three_ways("sub_scaled", x, d, 0.01) == ["sub_scaled_flat"]


def test_sub_scaled_fallbacks():
    rng = np.random.default_rng(8)
    cases = [(make(rng, (3, 4), np.float32), make(rng, (3, 4), np.float64)),
             (make(rng, (3, 4), np.float16), make(rng, (3, 4), np.float16)),
             (np.array(1.5), np.array(2.0))]
    for x, d in cases:
        with kernels_seen() as calls:
            got = nb.sub_scaled(x, d, 0.5)
        want = ref.sub_scaled(x, d, 0.5)
        assert calls == [] and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


# ---- each njit kernel called directly, against its .py_func --------------------------------
# Strided and read-only inputs reach the kernels as numba's 'A' layout and read-only types;
# in-place kernels get one copy each of the array they write.


def _direct_relu_flat(rng, dt, lay, n, m):
    return (make(rng, (n * m,), dt, lay, zeros=0.2), np.empty(n * m, dt)), 1


def _direct_relu_grad_flat(rng, dt, lay, n, m):
    x = make(rng, (n * m,), dt, lay, zeros=0.3)
    return (make(rng, (n * m,), dt, lay), x, np.empty(n * m, dt)), 2


def _direct_bias_rows(rng, dt, lay, n, m):
    return (make(rng, (n, m), dt, "sliced" if lay == "sliced" else "contiguous"),
            make(rng, (m,), dt, lay), bool(rng.integers(2))), 0


def _direct_bias_tasks(rng, dt, lay, n, m):
    return (make(rng, (3, n, m), dt), make(rng, (3, 1, m), dt, lay), bool(rng.integers(2))), 0


def _direct_sq_err_mean_2d(rng, dt, lay, n, m):
    return (make(rng, (n, m), dt, lay), make(rng, (n, m), dt, lay), np.empty(n, dt)), 2


def _direct_sq_err_mean_grad_2d(rng, dt, lay, n, m):
    return (make(rng, (n,), dt, lay), make(rng, (n, m), dt, lay), make(rng, (n, m), dt, lay),
            np.empty((n, m), dt)), 3


def _direct_sub_scaled_flat(rng, dt, lay, n, m):
    return (make(rng, (n * m,), dt, lay), make(rng, (n * m,), dt, lay), dt(rng.normal()),
            np.empty(n * m, dt)), 3


def _direct_linear_outer(rng, dt, lay, n, m):
    return (make(rng, (2, n, 1), dt, lay), make(rng, (2, 1, m), dt, lay),
            make(rng, (2, 1, m), dt, lay), bool(rng.integers(2)), np.empty((2, n, 1 * m), dt)), 4


def _direct_linear_dot(rng, dt, lay, n, m):
    # positive terms: the reordered sum (reassoc) then agrees with py_func's to K ε
    x, W = np.abs(make(rng, (2, n, m), dt, lay)), np.abs(make(rng, (2, m, 1), dt, lay))
    return (x, W, make(rng, (2, 1, 1), dt, lay), bool(rng.integers(2)),
            np.empty((2, n, 1), dt)), 4


def _direct_matmul_tn_tasks(rng, dt, lay, n, m):
    # positive terms (a reordered sum agrees to K ε); one operand of one column
    x, y = np.abs(make(rng, (2, n, m), dt, lay)), np.abs(make(rng, (2, n, 1), dt, lay))
    return (x, y, np.empty((2, m, 1), dt)), 2


# kernel name -> builder(rng, dtype, layout, n, m) -> (args, index of the array written)
DIRECT = {
    "relu_flat": _direct_relu_flat,
    "relu_grad_flat": _direct_relu_grad_flat,
    "bias_rows": _direct_bias_rows,
    "bias_tasks": _direct_bias_tasks,
    "linear_outer": _direct_linear_outer,
    "linear_dot": _direct_linear_dot,
    "matmul_tn_tasks": _direct_matmul_tn_tasks,
    "sq_err_mean_2d": _direct_sq_err_mean_2d,
    "sq_err_mean_grad_2d": _direct_sq_err_mean_grad_2d,
    "sub_scaled_flat": _direct_sub_scaled_flat,
}


@pytest.mark.parametrize("kernel", sorted(DIRECT))
@given(dtype=dtypes, layout=layouts, n=sides, m=sides, seed=seeds)
def test_njit_kernel_matches_its_py_func(kernel, dtype, layout, n, m, seed):
    args, written = DIRECT[kernel](np.random.default_rng(seed), dtype, layout, n, m)
    args_py = list(args)
    args_py[written] = args[written].copy()
    getattr(nk, kernel)(*args)
    getattr(nk, kernel).py_func(*args_py)
    out, out_py = args[written], args_py[written]
    assert out.dtype == dtype
    assert not np.isnan(out).any()
    assert_close(out, out_py, f"{kernel}: njit vs .py_func")


# ---- backend selection ---------------------------------------------------------------------

_SELECT = textwrap.dedent("""
    import json
    import tinymeta as tm
    from tinymeta.kernels import numba_backend, numpy_backend
    mods = {"numba": numba_backend, "numpy": numpy_backend}

    def state():
        name = tm.backend_name()
        return [name, tm.get_backend() is mods[name], tm.relu.impl is mods[name].relu]

    out = {"start": state()}
    with tm.set_backend("numpy"):
        out["with_numpy"] = state()
    out["after_with"] = state()
    tm.set_backend("numba")
    out["set_numba"] = state()
    print(json.dumps(out))
""")


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TINYMETA_BACKEND", "NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT",
                        "XDG_CACHE_HOME")}
    env.update(extra)
    return env


@pytest.mark.parametrize("env_backend, start", [(None, "numba"), ("numba", "numba"),
                                                ("numpy", "numpy")])
def test_backend_selection_in_a_fresh_process(env_backend, start):
    env = _clean_env(**({"TINYMETA_BACKEND": env_backend} if env_backend else {}))
    proc = subprocess.run([sys.executable, "-c", _SELECT], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"start": [start, True, True], "with_numpy": ["numpy", True, True],
                   "after_with": [start, True, True], "set_numba": ["numba", True, True]}


def test_default_backend(monkeypatch):
    monkeypatch.delenv("TINYMETA_BACKEND", raising=False)
    assert kernels.default_backend() == "numba"  # numba is importable here
    monkeypatch.setitem(sys.modules, "numba", None)  # now `import numba` raises ImportError
    assert kernels.default_backend() == "numpy"
    monkeypatch.setenv("TINYMETA_BACKEND", "numba")
    assert kernels.default_backend() == "numba"


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backend 'fortran'"):
        tm.set_backend("fortran")
    assert tm.backend_name() in ("numpy", "numba")


# ---- the numba cache from a read-only package folder ---------------------------------------

_USE_KERNELS = textwrap.dedent("""
    import json, os, tempfile
    import numpy as np
    import tinymeta as tm
    from tinymeta.kernels import _numba_kernels as nk
    from tinymeta.kernels import numba_backend as nb

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 10, 3)).astype(np.float32)
    W, Wt = np.ones((3, 4), np.float32), np.ones((5, 3, 4), np.float32)
    b, bt = np.ones(4, np.float32), np.ones((5, 1, 4), np.float32)
    g = np.ones(5, np.float32)
    x1, W1, W1t, b1t = x[..., :1].copy(), W[:1].copy(), Wt[:, :, :1].copy(), bt[:, :, :1].copy()
    nb.SUB_SCALED_MIN_SIZE = 0  # its numba pass at any size
    outs = [nb.linear(x, W, b), nb.linear_relu(x, Wt, bt), nb.relu(x), nb.relu_grad(x, x),
            nb.sq_err_mean(x, x), nb.sq_err_mean_grad(g, x, x), nb.sub_scaled(x, x, 0.5),
            nb.linear(x1, W1, b), nb.linear(x, W1t, b1t), nb.matmul_tn(x, x1)]
    kernels = {n: f for n, f in vars(nk).items() if hasattr(f, "py_func")}
    try:  # the test numba's in-tree cache locator makes
        tempfile.TemporaryFile(dir=os.path.dirname(nk.__file__)).close()
        writable = True
    except OSError:
        writable = False
    print(json.dumps({
        "file": tm.__file__,
        "backend": tm.backend_name(),
        "package_writable": writable,
        "finite": all(bool(np.isfinite(o).all()) for o in outs),
        "cache_paths": {n: f.stats.cache_path for n, f in kernels.items()},
        "hits": {n: sum(f.stats.cache_hits.values()) for n, f in kernels.items()},
        "misses": {n: sum(f.stats.cache_misses.values()) for n, f in kernels.items()},
    }))
""")


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def _drop_dac_capabilities():
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
    bounding set, so that root obeys the permission bits (a-w) like any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_numba_cache_works_from_a_read_only_package():
    """numba cannot write the package's __pycache__; it must fall back to the user-wide
    cache (~/.cache/numba, HOME here a fresh folder), and a second process must load it."""
    # root writes through a-w: its child runs without the capabilities that allow that
    drop = {"preexec_fn": _drop_dac_capabilities} if os.geteuid() == 0 else {}
    top = Path(tempfile.mkdtemp(prefix="tinymeta-ro-"))
    try:
        home = top / "home"
        home.mkdir()
        site = top / "site"
        shutil.copytree(Path(tm.__file__).parent, site / "tinymeta",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for p in [site, *site.rglob("*")]:
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        before = _tree(site)
        env = _clean_env(HOME=str(home), PYTHONPATH=os.pathsep.join(
            [str(site)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))

        def run():
            proc = subprocess.run([sys.executable, "-c", _USE_KERNELS], env=env, cwd=top,
                                  capture_output=True, text=True, timeout=180, **drop)
            assert proc.returncode == 0, proc.stderr
            return json.loads(proc.stdout.strip().splitlines()[-1])

        first = run()
        assert first["file"] == str(site / "tinymeta" / "__init__.py")
        assert first["backend"] == "numba"
        assert first["package_writable"] is False, "the copy is writable: nothing is tested"
        assert first["finite"]
        user_cache = home / ".cache" / "numba"
        for name, path in first["cache_paths"].items():
            assert Path(path).is_relative_to(user_cache), f"{name} cached at {path}"
            assert glob.glob(os.path.join(path, f"_numba_kernels.{name}-*.nbi")), name
            assert first["misses"][name] >= 1
        assert _tree(site) == before, "something was written into the read-only package"

        second = run()
        assert all(n >= 1 for n in second["hits"].values()), second["hits"]
        assert not any(second["misses"].values()), second["misses"]
    finally:
        for p in [top, *top.rglob("*")]:
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(top)


# ---- the timing harness tinymeta.bench, and the kernel benchmark script -------------------


def test_bench_measure_and_compare():
    calls = []

    def f(a, b=0):
        calls.append((a, b))

    t = bench.measure(f, 1, b=2, repeat=3, min_time=1e-3, warmup=2)
    assert calls[:2] == [(1, 2), (1, 2)] and set(calls) == {(1, 2)}
    assert len(t.runs) == 3 and t.number >= 1
    assert min(t.runs) == t.best <= t.median <= max(t.runs) and t.iqr >= 0
    ts = bench.compare({"sum": np.sum, "max": np.max}, np.arange(100.0), repeat=2,
                       min_time=1e-3)
    assert list(ts) == ["sum", "max"] and all(len(x.runs) == 2 for x in ts.values())
    one = bench.measure(np.sum, np.arange(3.0), repeat=1, min_time=1e-3)
    assert one.iqr == 0 and one.median == one.runs[0]
    with pytest.raises(ValueError, match="repeat must be at least 1"):
        bench.measure(f, 1, repeat=0)
    with pytest.raises(ValueError, match="min_time must be positive"):
        bench.measure(f, 1, min_time=0)


def test_bench_flop_helpers():
    assert bench.gemm_flops(2, 3, 4, batch=5) == 240
    assert bench.gflops(3e9, 1.5) == 2.0
    with pytest.raises(ValueError, match="seconds must be positive"):
        bench.gflops(1.0, 0.0)
    assert bench.peak_gflops(n=64, repeat=2, min_time=1e-3) > 0


def test_kernel_benchmark_script_smoke(tmp_path):
    out = tmp_path / "k.json"
    script = Path(__file__).parents[1] / "benchmarks" / "kernels.py"
    png = tmp_path / "roofline.png"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--kernels",
                           "linear,sq_err_mean_grad", "--json", str(out), "--roofline",
                           str(png)],
                          env=_clean_env(OPENBLAS_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["machine"]["OPENBLAS_NUM_THREADS"] == "1" and data["peak_gflops"] > 0
    P, B = data["peak_gflops"], data["peak_gbytes"]
    assert B > 0 and data["quick"] and isinstance(data["warnings"], list)
    sizes = {(r["kernel"], r["size"]) for r in data["results"]}
    assert ("linear", "sin 40->40 per-task") in sizes and ("sq_err_mean_grad", "64^2") in sizes
    for r in data["results"]:
        assert r["intensity"] == r["flops"] / r["bytes"]
        assert r["bound"] == ("memory" if r["intensity"] < P / B else "compute")
        for backend in ("numpy", "numba"):
            t = r[backend]
            assert t["median_s"] > 0 and 0 < t["frac_peak"]
            assert t["gflops"] == pytest.approx(r["flops"] / t["median_s"] / 1e9, rel=1e-12)
            assert t["frac_roof"] == pytest.approx(t["gflops"] / min(P, r["intensity"] * B))
            assert t["frac_bandwidth"] == pytest.approx(r["bytes"] / t["median_s"] / 1e9 / B)
        assert r["speedup"] > 0
    assert "quick mode: P is a 1024³ GEMM" in proc.stdout
    # every figure above a roof is in the warnings (none is over 100% silently)
    for r in data["results"]:
        for backend in ("numpy", "numba"):
            if r[backend]["frac_peak"] > 1 or r[backend]["frac_bandwidth"] > 1:
                assert any(w.startswith(f"{backend} {r['kernel']} {r['size']}: ")
                           for w in data["warnings"]), (backend, r["kernel"], r["size"])
    prov = data["provenance"]
    assert prov["cores"] == os.cpu_count() and prov["versions"]["numpy"] == np.__version__
    head = subprocess.run(["git", "-C", str(script.parent), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode == 0:
        assert prov["commit"] == head.stdout.strip() and prov["dirty"] in (True, False)
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the script says what to install and writes no plot
        assert "pip install 'tinymeta[plot]'" in proc.stdout + proc.stderr
        assert not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "linear" in proc.stdout and not list(tmp_path.glob(".kernels-*"))


# ---- the reference's own fast path: broadcast_to ----------------------------------------------


@given(data=st.data(), dtype=dtypes)
def test_broadcast_to_equals_numpys(data, dtype):
    """The strided view of numpy_backend.broadcast_to: np.broadcast_to's shape, strides,
    values and read-only flag, and its errors, on drawn shapes (contiguous or not)."""
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    target = data.draw(hnp.broadcastable_shapes(shape, min_dims=len(shape), max_dims=4))
    target = tuple(s if s != 1 else data.draw(st.integers(1, 3)) for s in target)  # stretch
    layout = data.draw(st.sampled_from(["contiguous", "transposed"]))
    x = make(np.random.default_rng(0), shape, dtype, layout)
    try:
        want = np.broadcast_to(x, target)
    except ValueError:
        with pytest.raises(ValueError):
            ref.broadcast_to(x, target)
        return
    got = ref.broadcast_to(x, target)
    assert got.shape == want.shape and got.strides == want.strides
    assert not got.flags.writeable
    np.testing.assert_array_equal(got, want)
