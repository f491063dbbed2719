"""Engine numerics that used to go unreported (issue 13, items 11, 12, 15, 16).

- dtypes: a derivative has the dtype of the input it is taken with respect to (JAX's and
  PyTorch's rule), for every transform and the meta-algorithms;
- debug_nans checks the backward sweep and forward-mode tangents, naming the rule;
- forward and reverse mode split ties alike (maximum, minimum, max);
- tm.compile keeps a bounded number of recordings.

References are closed forms, hand-written NumPy, or the other mode: never the code itself.
"""

from __future__ import annotations

import gc
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinymeta as tm
from tinymeta import nn
from tinymeta.tasks import TaskBatch

F32, F64 = np.float32, np.float64
C64 = np.array([2.0, 3.0])  # a float64 constant that leaks into a float32 computation


@pytest.fixture
def debug_nans():
    tm.config.debug_nans = True
    try:
        yield
    finally:
        tm.config.debug_nans = False


# ---- dtypes: a derivative has its input's dtype -----------------------------------------


def test_gradient_of_float32_input_is_float32_where_a_float64_constant_leaks(backend):
    x = np.array([1.5, -2.0], F32)
    g = tm.grad(lambda x: tm.sum(x * C64))(x)
    assert g.dtype == F32
    np.testing.assert_array_equal(g, np.array([2.0, 3.0], F32))
    # several arguments keep each its own dtype
    gx, gy = tm.grad(lambda x, y: tm.sum(x * y * C64), argnums=(0, 1))(x, x.astype(F64))
    assert (gx.dtype, gy.dtype) == (F32, F64)
    np.testing.assert_allclose(gx, C64 * x, rtol=1e-6)  # ∂/∂x Σ x y c = y c, y = x
    # a pytree: each leaf its own dtype
    tree = {"a": x, "b": np.array([0.5, 0.25])}
    gt = tm.grad(lambda t: tm.sum(t["a"] * t["b"] * C64))(tree)
    assert gt["a"].dtype == F32 and gt["b"].dtype == F64


def test_vjp_cotangents_take_the_dtype_of_their_primal():
    x = np.array([1.5, -2.0], F32)
    out, vjp_fn = tm.vjp(lambda x: x * C64, x)
    assert out.dtype == F64  # the value follows NumPy's promotion
    (ct,) = vjp_fn(np.array([1.0, -1.0]))
    assert ct.dtype == F32
    np.testing.assert_array_equal(ct, np.array([2.0, -3.0], F32))
    # a float64 cotangent of a float32 output is cast on the way in, the result stays float32
    (ct2,) = tm.vjp(lambda x: x * 2.0, x)[1](np.ones(2))
    assert ct2.dtype == F32


def test_jvp_tangents_take_the_dtype_of_their_output():
    x = np.array([1.5, -2.0], F32)
    u64 = np.array([1.0, 0.5])
    out, t = tm.jvp(lambda x: tm.sum(x ** 3), (x,), (u64,))
    assert out.dtype == F32 and t.dtype == F32  # the tangent was cast to the primal's dtype
    np.testing.assert_allclose(t, np.sum(3 * x.astype(F64) ** 2 * u64), rtol=1e-6)
    out, t = tm.jvp(lambda x: x * C64, (x,), (u64,))
    assert out.dtype == F64 and t.dtype == F64  # a tangent has its output's dtype (JAX)
    np.testing.assert_allclose(t, C64 * u64)


@pytest.mark.parametrize("hvp", [tm.hvp, tm.hvp_rev])
def test_hvp_has_the_dtype_of_its_primal(backend, hvp):
    x = np.array([1.5, -2.0], F32)
    for v in (np.array([1.0, 0.5], F32), np.array([1.0, 0.5])):  # float32 and float64 tangents
        h = hvp(lambda x: tm.sum(x ** 3 * C64), (x,), (v,))
        assert h.dtype == F32
        np.testing.assert_allclose(h, 6.0 * C64 * x * v, rtol=1e-6)
        h = hvp(lambda x: tm.sum(x ** 3), (x,), (v,))
        assert h.dtype == F32
        np.testing.assert_allclose(h, 6.0 * x * v, rtol=1e-6)


def test_jacobian_and_hessian_have_the_dtype_of_their_input():
    x = np.array([1.5, -2.0], F32)
    J = tm.jacobian(lambda x: x * C64)(x)
    assert J.dtype == F32
    np.testing.assert_array_equal(J, np.diag(C64).astype(F32))
    H = tm.hessian(lambda x: tm.sum(x ** 3 * C64))(x)
    assert H.dtype == F32
    np.testing.assert_allclose(H, np.diag(6.0 * C64 * x), rtol=1e-6)


def test_nested_gradient_keeps_float32():
    x = np.array([1.5, -2.0], F32)
    inner = tm.grad(lambda x: tm.sum(x ** 3 * C64))
    gg = tm.grad(lambda x: tm.sum(inner(x) * C64))(x)  # d/dx Σ 3 c² x² = 6 c² x
    assert gg.dtype == F32
    np.testing.assert_allclose(gg, 6.0 * C64 ** 2 * x, rtol=1e-6)


def test_float64_gradients_are_unchanged_by_the_rule():
    x = np.array([1.5, -2.0])
    g = tm.grad(lambda x: tm.sum(tm.exp(x) * C64))(x)
    assert g.dtype == F64
    np.testing.assert_array_equal(g, C64 * np.exp(x))  # the same two roundings as NumPy


def _tanh_loss(params, x, y):
    return nn.mse(nn.mlp(params, x, activation=tm.tanh), y)


@pytest.mark.parametrize("algo", ["maml", "hvp_chain", "fomaml", "reptile", "imaml",
                                  "metasgd", "pretrain"])
def test_meta_gradients_of_float32_params_are_float32(algo):
    tm.set_backend("numpy")
    rng = np.random.default_rng(0)
    params64 = nn.mlp_init((1, 4, 4, 1), seed=0, dtype=F64)
    params32 = [p.astype(F32) for p in params64]

    def data(*s):
        return rng.normal(size=s)  # float64 data: a float64 constant in a float32 run

    batch = TaskBatch(data(3, 3, 1), data(3, 3, 1), data(3, 3, 1), data(3, 3, 1))

    def run(params):
        if algo == "metasgd":
            lrs = [np.full(p.shape, 0.1, p.dtype) for p in params]
            return tm.meta.metasgd(_tanh_loss, params, lrs, batch, 2)[0]
        if algo == "hvp_chain":
            return tm.meta.maml(_tanh_loss, params, batch, 0.1, 2, method="hvp_chain")[0]
        if algo == "imaml":
            return tm.meta.imaml(_tanh_loss, params, batch, 0.1, 2, lam=1.0, cg_steps=3)[0]
        if algo == "pretrain":
            return tm.meta.pretrain(_tanh_loss, params, batch)[0]
        return getattr(tm.meta, algo)(_tanh_loss, params, batch, 0.1, 2)[0]

    leaves32 = tm.tree_flatten(run(params32))[0]
    leaves64 = tm.tree_flatten(run(params64))[0]
    assert {a.dtype for a in leaves32} == {np.dtype(F32)}
    assert {a.dtype for a in leaves64} == {np.dtype(F64)}
    for a, b in zip(leaves32, leaves64):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


# ---- debug_nans: the backward sweep and forward mode too --------------------------------


def test_debug_nans_names_the_vjp_that_made_an_inf(debug_nans):
    with np.errstate(all="ignore"), pytest.raises(
            FloatingPointError, match=r"the VJP of sqrt produced inf \(the cotangent of its "
                                      r"argument 0\) in the backward sweep"):
        tm.grad(lambda x: tm.sum(tm.sqrt(x)))(np.array([0.0, 1.0]))


def test_debug_nans_off_leaves_the_inf_alone():
    with np.errstate(all="ignore"):
        g = tm.grad(lambda x: tm.sum(tm.sqrt(x)))(np.array([0.0, 1.0]))
    np.testing.assert_array_equal(g, [np.inf, 0.5])


def test_debug_nans_names_the_jvp_that_made_an_inf(debug_nans):
    with np.errstate(all="ignore"), pytest.raises(
            FloatingPointError, match="the JVP of sqrt produced inf .* in forward mode"):
        tm.jvp(tm.sqrt, (np.array([0.0, 1.0]),), (np.ones(2),))


def test_debug_nans_names_the_vjp_under_a_second_order_sweep(debug_nans):
    x = np.array([0.0, 1.0])
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="VJP of sqrt"):
        tm.hvp_rev(lambda x: tm.sum(tm.sqrt(x)), (x,), (np.ones(2),))
    # a NaN made in the second sweep: d²/dx² x^1.5 = 0.75 x^-0.5 at 0
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError,
                                                  match="VJP of power.*backward sweep"):
        tm.grad(lambda y: tm.sum(tm.grad(lambda x: tm.sum(x ** 1.5))(y)))(x)


def test_debug_nans_checks_every_call_of_a_compiled_function():
    f = tm.compile(tm.grad(lambda x: tm.sum(tm.sqrt(x))))
    f(np.array([4.0, 1.0]))  # recorded, finite
    tm.config.debug_nans = True
    try:
        with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="VJP of sqrt"):
            f(np.array([0.0, 1.0]))
    finally:
        tm.config.debug_nans = False
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(f(np.array([0.0, 1.0])), [np.inf, 0.5])  # replayed


def test_debug_nans_passes_finite_derivatives(debug_nans):
    x = np.array([0.5, 2.0])
    np.testing.assert_allclose(tm.grad(lambda x: tm.sum(tm.sqrt(x)))(x), 0.5 / np.sqrt(x))
    np.testing.assert_allclose(tm.hvp(lambda x: tm.sum(tm.sqrt(x)), (x,), (np.ones(2),)),
                               -0.25 * x ** -1.5)


# ---- ties: forward and reverse mode split them alike ------------------------------------


def _pairings(f, x, u, w):
    """(⟨w, J u⟩ by forward mode, ⟨Jᵀ w, u⟩ by reverse mode) for f of a tuple of inputs."""
    _, Ju = tm.jvp(f, x, u)
    _, vjp_fn = tm.vjp(f, *x)
    JTw = vjp_fn(w)
    fwd = float(np.sum(np.asarray(Ju) * w))
    rev = float(sum(np.sum(np.asarray(a) * b) for a, b in zip(JTw, u)))
    return fwd, rev


def test_jvp_of_maximum_and_minimum_of_a_tie_is_the_tangent(backend):
    x = np.array([-1.0, 0.0, 2.5])
    ones = np.ones(3)
    for op in (tm.maximum, tm.minimum):
        _, t = tm.jvp(lambda a, op=op: op(a, a), (x,), (ones,))
        np.testing.assert_array_equal(t, ones)
        g = tm.grad(lambda a, op=op: tm.sum(op(a, a)))(x)
        np.testing.assert_array_equal(g, ones)
    u, v = np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])
    y = np.array([-1.0, 1.0, 2.5])  # ties at 0 and 2
    _, t = tm.jvp(tm.maximum, (x, y), (u, v))
    np.testing.assert_array_equal(t, [5.5, 20.0, 16.5])  # (u+v)/2 at a tie, else the larger's
    _, t = tm.jvp(tm.minimum, (x, y), (u, v))
    np.testing.assert_array_equal(t, [5.5, 2.0, 16.5])


def test_jvp_of_max_splits_tied_maxima_equally(backend):
    x = np.array([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 0.0]])
    u = np.array([[1.0, 2.0, 4.0, 8.0], [3.0, 6.0, 9.0, 1.0]])
    _, t = tm.jvp(tm.max, (x,), (u,))
    assert float(t) == 6.0  # the one maximum, 5, is tied three times: (3 + 6 + 9) / 3
    _, t = tm.jvp(lambda a: tm.max(a, axis=1), (x,), (u,))
    np.testing.assert_array_equal(t, [3.0, 6.0])
    _, t = tm.jvp(lambda a: tm.max(a, axis=0, keepdims=True), (x,), (u,))
    np.testing.assert_array_equal(t, [[3.0, 6.0, 9.0, 8.0]])


def test_second_order_at_ties_agrees_in_both_orders():
    # f = max(x)²: ∇f = 2 m s, s = the tie shares; H v = 2 s (sᵀ v)
    x = np.array([2.0, -1.0, 2.0])
    v = np.array([1.0, 4.0, 3.0])
    s = np.array([0.5, 0.0, 0.5])
    want = 2.0 * s * (s @ v)

    def f(a):
        return tm.max(a) ** 2

    np.testing.assert_array_equal(tm.hvp(f, (x,), (v,)), want)
    np.testing.assert_array_equal(tm.hvp_rev(f, (x,), (v,)), want)


_tied = hnp.arrays(F64, st.tuples(st.integers(1, 3), st.integers(1, 4)),
                   elements=st.sampled_from([-1.0, 0.0, 1.0]))  # ties everywhere


@given(a=_tied, data=st.data())
def test_forward_and_reverse_agree_at_ties(a, data):
    tm.set_backend("numpy")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    b = data.draw(hnp.arrays(F64, a.shape[-1:], elements=st.sampled_from([-1.0, 0.0, 1.0])))
    ua, ub = rng.normal(size=a.shape), rng.normal(size=b.shape)
    cases = [
        (tm.maximum, (a, b), (ua, ub), np.maximum(a, b).shape),
        (tm.minimum, (a, b), (ua, ub), np.minimum(a, b).shape),
        (lambda x: tm.maximum(x, x), (a,), (ua,), a.shape),
        (lambda x: tm.maximum(x, 0.0), (a,), (ua,), a.shape),
        (tm.max, (a,), (ua,), ()),
        (lambda x: tm.max(x, axis=1), (a,), (ua,), a.shape[:1]),
        (lambda x: tm.max(x, axis=0, keepdims=True), (a,), (ua,), (1, a.shape[1])),
        (tm.relu, (a,), (ua,), a.shape),
        (tm.abs, (a,), (ua,), a.shape),
    ]
    for f, x, u, out_shape in cases:
        w = rng.normal(size=out_shape)
        fwd, rev = _pairings(f, x, u, w)
        assert fwd == pytest.approx(rev, rel=1e-12, abs=1e-12)


def test_the_tie_check_catches_a_jvp_that_does_not_split_the_tie():
    # a planted bug: maximum's VJP splits a tie, its JVP gives it all to the first argument
    bad = tm.primitive(np.maximum, "bad_maximum")
    tm.defvjp(bad, lambda g, ans, x, y: g * (0.5 + 0.5 * tm.sign(x - y)),
              lambda g, ans, x, y: g * (0.5 - 0.5 * tm.sign(x - y)))
    tm.defjvp(bad, lambda t, ans, x, y: t * tm.astype(x >= y, np.float64),
              lambda t, ans, x, y: t * tm.astype(x < y, np.float64))
    x = np.array([1.0, 2.0])
    fwd, rev = _pairings(bad, (x, x), (np.ones(2), np.zeros(2)), np.ones(2))
    assert (fwd, rev) == (2.0, 1.0)
    fwd, rev = _pairings(tm.maximum, (x, x), (np.ones(2), np.zeros(2)), np.ones(2))
    assert (fwd, rev) == (1.0, 1.0)


# ---- tm.compile: a bounded number of recordings ------------------------------------------


def _scaled(x, s):
    return tm.grad(lambda y: tm.sum(tm.tanh(y * s) ** 2))(x)


def test_compile_keeps_at_most_cache_size_recordings_and_warns_once():
    f = tm.compile(_scaled, cache_size=8)
    x = np.linspace(-1.0, 1.0, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(40):
            f(x, 0.5 + n / 64)
    assert len(f.tapes) == 8
    assert (f.recordings, f.evictions) == (40, 32)
    assert len([w for w in caught if "cache_size=8" in str(w.message)]) == 1


def test_compile_evicts_the_least_recently_used_signature():
    f = tm.compile(_scaled, cache_size=2)
    x = np.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        f(x, 1.0)
        f(x, 2.0)
        f(x, 1.0)  # a hit: 1.0 becomes the most recent
        f(x, 3.0)  # drops 2.0
        assert f.recordings == 3
        f(x, 1.0)
        assert f.recordings == 3  # still kept
        f(x, 2.0)
        assert (f.recordings, f.evictions) == (4, 2)


def test_compile_results_are_bitwise_the_eager_ones_through_evictions(backend):
    f = tm.compile(_scaled, cache_size=3)
    rng = np.random.default_rng(0)
    scales = [0.25, 0.5, 1.0, 2.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for n in range(24):
            x = rng.normal(size=6)
            s = scales[n % 4] if n % 5 else scales[0]
            np.testing.assert_array_equal(f(x, s), _scaled(x, s))
    assert f.evictions > 0 and f.recordings < 24  # some calls replayed, some recorded again


def _memory_growth(cache_size: int, warm: int = 50, calls: int = 200) -> tuple:
    """Bytes held after ``calls`` new scalars, past ``warm`` first calls; and the cache."""
    f = tm.compile(_scaled, cache_size=cache_size)
    x = np.linspace(-1.0, 1.0, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gc.collect()
        tracemalloc.start()
        try:
            for n in range(warm):
                f(x, 1.0 + n / 1000)
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            for n in range(warm, warm + calls):
                f(x, 1.0 + n / 1000)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    return after - before, f


def test_compile_memory_stays_bounded_over_many_new_scalars():
    bounded, f = _memory_growth(cache_size=4)
    assert len(f.tapes) == 4 and f.recordings == 250
    unbounded, g = _memory_growth(cache_size=10**6)  # what the cache did before: keep all
    assert len(g.tapes) == 250
    assert bounded < 0.1 * unbounded


def test_compile_refuses_a_bad_cache_size():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="cache_size"):
            tm.compile(_scaled, cache_size=bad)
