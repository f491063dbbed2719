"""The engine: transforms against closed forms and finite differences, nesting,
errors, tape release, make_tape."""

from __future__ import annotations

import gc
import tracemalloc
from typing import NamedTuple

import numpy as np
import pytest

import tinymeta as tm


def fd_grad(f, x, eps=1e-6):
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (float(f(x + e)) - float(f(x - e))) / (2 * eps)
    return g


# ---- closed forms -------------------------------------------------------------------

def test_grad_of_cubic_hard_coded():
    # f(x) = x0^3 + x0 x1^2; ∇f = (3x0² + x1², 2 x0 x1); H = [[6x0, 2x1], [2x1, 2x0]]
    def f(x):
        return x[0] ** 3 + x[0] * x[1] ** 2

    x = np.array([2.0, -1.0])
    np.testing.assert_allclose(tm.grad(f)(x), [13.0, -4.0])
    np.testing.assert_allclose(tm.hessian(f)(x), [[12.0, -2.0], [-2.0, 4.0]])
    np.testing.assert_allclose(tm.hvp(f, (x,), (np.array([1.0, 1.0]),)), [10.0, 2.0])
    out, t = tm.jvp(f, (x,), (np.array([1.0, 0.0]),))
    assert float(out) == 10.0 and float(t) == 13.0


def test_third_derivative_of_exp_sin_like():
    # d³/dx³ tanh(x) = -2 sech²(x) (1 - 3 tanh²(x)) ... checked at x = 0.3 against the formula
    d3 = tm.grad(tm.grad(tm.grad(tm.tanh)))
    x = 0.3
    t = np.tanh(x)
    expected = -2 * (1 - t**2) * (1 - 3 * t**2)
    np.testing.assert_allclose(d3(np.array(x)), expected, rtol=1e-12)


def mlp_loss(params, x, y):
    W1, b1, W2, b2 = params
    h = tm.tanh(x @ W1 + b1)
    return tm.mean((h @ W2 + b2 - y) ** 2)


def _mlp_problem(seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(3, 5)), rng.normal(size=5), rng.normal(size=(5, 2)),
              rng.normal(size=2)]
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    return params, x, y


def test_hvp_of_mlp_equals_hessian_times_v():
    params, x, y = _mlp_problem()
    flat, unravel = tm.ravel_pytree(params)

    def f(theta):
        return mlp_loss(unravel(theta), x, y)

    rng = np.random.default_rng(1)
    v = rng.normal(size=flat.shape)
    H = tm.hessian(f)(flat)
    np.testing.assert_allclose(H, H.T, atol=1e-12)
    np.testing.assert_allclose(tm.hvp(f, (flat,), (v,)), H @ v, rtol=1e-10, atol=1e-10)
    # the pytree form gives the same numbers
    hv_tree = tm.hvp(lambda p: mlp_loss(p, x, y), (params,), (unravel(v),))
    np.testing.assert_allclose(np.concatenate([a.ravel() for a in hv_tree]), H @ v,
                               rtol=1e-10, atol=1e-10)


def test_grad_matches_finite_differences_pytree():
    params, x, y = _mlp_problem(2)
    g = tm.grad(mlp_loss)(params, x, y)
    assert isinstance(g, list) and len(g) == 4
    for i in range(4):
        def fi(p, i=i):
            q = list(params)
            q[i] = p
            return mlp_loss(q, x, y)
        np.testing.assert_allclose(g[i], fd_grad(fi, params[i]), rtol=1e-6, atol=1e-8)


def test_jvp_and_vjp_agree():
    params, x, y = _mlp_problem(3)
    W = params[0]

    def f(W):
        return tm.tanh(x @ W)

    rng = np.random.default_rng(0)
    u, v = rng.normal(size=W.shape), rng.normal(size=(7, 5))
    out, Ju = tm.jvp(f, (W,), (u,))
    _, vjp_fn = tm.vjp(f, W)
    (JTv,) = vjp_fn(v)
    np.testing.assert_allclose(np.sum(v * Ju), np.sum(JTv * u), rtol=1e-12)


def test_jacobian_shape_and_values():
    x = np.array([1.0, 2.0, 3.0])
    J = tm.jacobian(lambda x: tm.reshape(x[:, None] * x[None, :], (9,)))(x)
    assert J.shape == (9, 3)
    ref = np.zeros((3, 3, 3))
    for i in range(3):
        for j in range(3):
            ref[i, j, i] += x[j]
            ref[i, j, j] += x[i]
    np.testing.assert_allclose(J, ref.reshape(9, 3))


# ---- pytrees, argnums, has_aux ----------------------------------------------------------

class Pair(NamedTuple):
    a: np.ndarray
    b: np.ndarray


def test_pytree_structures_are_kept():
    tree = {"w": np.ones(3), "rest": [np.ones(2), (np.ones(1),)], "nt": Pair(np.ones(2),
                                                                               np.ones(2))}

    def f(t):
        return (tm.sum(t["w"] * 2.0) + tm.sum(t["rest"][0] ** 2) + tm.sum(t["rest"][1][0])
                + tm.sum(t["nt"].a * t["nt"].b))

    g = tm.grad(f)(tree)
    assert isinstance(g["rest"], list) and isinstance(g["rest"][1], tuple)
    assert isinstance(g["nt"], Pair)
    np.testing.assert_allclose(g["w"], 2.0)
    np.testing.assert_allclose(g["rest"][0], 2.0)
    np.testing.assert_allclose(g["nt"].a, 1.0)


def test_argnums_tuple_and_has_aux():
    def f(x, y, z):
        return tm.sum(x * y) + z, {"aux": x * 1.0}

    x, y = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    (gx, gy), aux = tm.grad(f, argnums=(0, 1), has_aux=True)(x, y, 1.0)
    np.testing.assert_allclose(gx, y)
    np.testing.assert_allclose(gy, x)
    np.testing.assert_allclose(aux["aux"], x)
    (val, aux2), g = tm.value_and_grad(f, argnums=1, has_aux=True)(x, y, 1.0)
    assert float(val) == 12.0
    np.testing.assert_allclose(g, x)


def test_unconnected_input_gives_zeros():
    g = tm.grad(lambda x, y: tm.sum(x * 3.0), argnums=1)(np.ones(2), np.ones((2, 2)))
    np.testing.assert_array_equal(g, np.zeros((2, 2)))
    g = tm.grad(lambda x: 4.0)(np.ones(3))
    np.testing.assert_array_equal(g, np.zeros(3))


def test_ravel_pytree_roundtrip():
    tree = {"a": np.arange(6.0).reshape(2, 3), "b": [np.array(7.0), np.ones(2)]}
    flat, unravel = tm.ravel_pytree(tree)
    assert flat.shape == (9,)
    back = unravel(flat)
    np.testing.assert_array_equal(back["a"], tree["a"])
    np.testing.assert_array_equal(back["b"][1], tree["b"][1])


# ---- nesting --------------------------------------------------------------------------

def test_grad_inside_grad_closure_over_outer_value():
    # d/dy [ ∂/∂x (x y)² at x = 1 ] = d/dy 2y² = 4y
    def f(y):
        return tm.grad(lambda x: (x * y) ** 2)(np.array(1.0))

    np.testing.assert_allclose(tm.grad(f)(np.array(3.0)), 12.0)


def test_perturbation_confusion_is_avoided():
    # The classic test (Siskind & Pearlmutter): d/dx [x · d/dy (x + y)] at y = 1 is 1.
    def f(x):
        inner = tm.grad(lambda y: x + y)(np.array(1.0))
        return x * inner

    np.testing.assert_allclose(tm.grad(f)(np.array(2.0)), 1.0)


def test_inner_loop_of_several_steps_against_fd():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 3))
    b = rng.normal(size=4)

    def inner_loss(w):
        return tm.sum(tm.tanh(A @ w - b) ** 2)

    def outer(w0):
        w = w0
        for _ in range(3):
            w = w - 0.1 * tm.grad(inner_loss)(w)
        return tm.sum(w ** 3)

    w0 = rng.normal(size=3)
    np.testing.assert_allclose(tm.grad(outer)(w0), fd_grad(outer, w0), rtol=1e-6, atol=1e-8)


# ---- errors ---------------------------------------------------------------------------

def test_grad_of_nonscalar_suggests_vjp():
    with pytest.raises(TypeError, match=r"scalar output; got shape \(3,\).*vjp"):
        tm.grad(lambda x: x * 2.0)(np.ones(3))


def test_cotangent_shape_mismatch():
    _, vjp_fn = tm.vjp(lambda x: x * 2.0, np.ones(3))
    with pytest.raises(ValueError, match=r"cotangent shape \(2,\).*\(3,\)"):
        vjp_fn(np.ones(2))


def test_matmul_and_broadcast_mismatch_name_the_op_and_shapes():
    with pytest.raises(ValueError, match=r"matmul.*\[2, 3\].*\[4, 2\]"):
        tm.grad(lambda x: tm.sum(x @ np.ones((4, 2))))(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"add.*\[3\].*\[4\]"):
        tm.grad(lambda x: tm.sum(x + np.ones(4)))(np.ones(3))
    with pytest.raises(ValueError, match="broadcast_to"):
        tm.broadcast_to(np.ones(3), (2, 4))


def test_integer_and_boolean_inputs_are_refused():
    with pytest.raises(TypeError, match="int64"):
        tm.grad(lambda x: tm.sum(x))(np.ones(3, dtype=np.int64))
    with pytest.raises(TypeError, match="bool"):
        tm.grad(lambda x: tm.sum(x))(np.ones(3, dtype=bool))


def test_primitive_without_vjp_rule():
    p = tm.primitive(np.sin, name="my_sin")
    with pytest.raises(TypeError, match="my_sin has no VJP rule"):
        tm.grad(lambda x: tm.sum(p(x)))(np.ones(2))


def test_user_primitive_with_rule():
    sin = tm.primitive(np.sin, name="sin")
    cos = tm.primitive(np.cos, name="cos")
    tm.defvjp(sin, lambda g, ans, x: g * cos(x))
    tm.defvjp(cos, lambda g, ans, x: -g * sin(x))
    x = np.array([0.3, 1.2])
    np.testing.assert_allclose(tm.grad(lambda x: tm.sum(sin(x)))(x), np.cos(x))
    np.testing.assert_allclose(tm.hessian(lambda x: tm.sum(sin(x)))(x), np.diag(-np.sin(x)))


def test_defvjp_pre_runs_once_per_node_and_feeds_every_rule():
    """f(x, y) = exp(x·y) with the shared factor g·ans made once by ``pre``: ∂/∂x = y e^{xy},
    ∂/∂y = x e^{xy} (closed forms), second order through it, and one pre call per node."""
    calls = []

    def pre(g, ans, x, y):
        calls.append(1)
        return g * ans

    f = tm.primitive(lambda x, y: np.exp(x * y), name="exp_prod")
    tm.defvjp(f, lambda g, ans, x, y: g * y, lambda g, ans, x, y: g * x, pre=pre)
    x, y = np.array([0.3, -0.7]), np.array([1.1, 0.4])
    gx, gy = tm.grad(lambda x, y: tm.sum(f(x, y)), argnums=(0, 1))(x, y)
    assert len(calls) == 1
    np.testing.assert_allclose(gx, y * np.exp(x * y), rtol=1e-12)
    np.testing.assert_allclose(gy, x * np.exp(x * y), rtol=1e-12)
    # d²/dx² Σ e^{xy} = y² e^{xy} (the pre's g·ans is differentiated like any rule)
    hx = tm.hessian(lambda x: tm.sum(f(x, y)))(x)
    np.testing.assert_allclose(hx, np.diag(y * y * np.exp(x * y)), rtol=1e-12)


def test_tensor_data_is_read_only_and_immutable():
    t = tm.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="read-only"):
        t.data[0] = 5.0
    with pytest.raises(TypeError, match="immutable"):
        t[0] = 5.0
    src = np.array([1.0, 2.0])
    t = tm.tensor(src)
    src[0] = 9.0
    assert t.data[0] == 1.0  # a copy was taken

    def f(x):
        with pytest.raises(ValueError, match="read-only"):
            x.data[0] = 1.0
        return tm.sum(x)

    tm.grad(f)(np.ones(2))


def test_requires_grad_points_to_grad():
    with pytest.raises(ValueError, match="tm.grad"):
        tm.tensor([1.0], requires_grad=True)


def test_asarray_of_traced_tensor_raises_and_names_the_fix():
    with pytest.raises(TypeError, match="stop_gradient"):
        tm.grad(lambda x: float(np.asarray(x).sum()))(np.ones(3))
    with pytest.raises(TypeError, match="float"):
        tm.grad(lambda x: float(tm.sum(x)))(np.ones(3))


def test_ndarray_on_the_left_defers_to_tensor():
    A = np.arange(6.0).reshape(2, 3)
    g = tm.grad(lambda x: tm.sum(A @ x))(np.ones(3))
    np.testing.assert_allclose(g, A.sum(0))
    g = tm.grad(lambda x: tm.sum(A + x))(np.ones(3))
    np.testing.assert_allclose(g, [2.0, 2.0, 2.0])
    assert isinstance(np.ones(3) + tm.tensor(np.ones(3)), tm.Tensor)


def test_float32_is_not_upcast():
    x = np.ones(3, dtype=np.float32)
    g = tm.grad(lambda x: tm.sum(tm.exp(x * 2.0) / 3.0 + x ** 2))(x)
    assert g.dtype == np.float32
    h = tm.hvp(lambda x: tm.sum(tm.tanh(x) ** 3), (x,), (x,))
    assert h.dtype == np.float32


def test_debug_nans_names_the_primitive():
    tm.config.debug_nans = True
    try:
        with pytest.raises(FloatingPointError, match="log"):
            with np.errstate(all="ignore"):
                tm.grad(lambda x: tm.sum(tm.log(x)))(np.array([-1.0, 1.0]))
    finally:
        tm.config.debug_nans = False


def test_escaped_tracer_is_refused():
    leaked = []

    def f(x):
        leaked.append(x)
        return tm.sum(x)

    tm.grad(f)(np.ones(2))

    def g(y):
        return tm.sum(y * leaked[0])

    # the leaked Tensor belongs to a finished trace; combining it is refused
    with pytest.raises(ValueError, match="escaped"):
        tm.grad(lambda y: tm.sum(y) + tm.sum(tm.grad(g)(y)))(np.ones(2))


# ---- the tape -------------------------------------------------------------------------

def test_tape_is_released_memory_does_not_grow():
    params, x, y = _mlp_problem()
    f = tm.grad(mlp_loss)
    for _ in range(200):
        f(params, x, y)
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    for i in range(10_000):
        f(params, x, y)
        if i == 999:
            gc.collect()
            first, _ = tracemalloc.get_traced_memory()
    gc.collect()
    last, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # no growth between call 1,000 and call 10,000 (allowing small allocator noise)
    assert last - first < 64 * 1024, (base, first, last)


def test_no_reference_cycles_keep_tapes_alive():
    import weakref

    from tinymeta.tape import GradTrace

    refs = []
    orig = GradTrace.__init__

    def spy(self):
        orig(self)
        refs.append(weakref.ref(self))

    GradTrace.__init__ = spy
    try:
        gc.disable()
        params, x, y = _mlp_problem()
        tm.hvp(lambda p: mlp_loss(p, x, y), (params,), (params,))
        assert refs and all(r() is None for r in refs)  # freed by refcounting alone
    finally:
        gc.enable()
        GradTrace.__init__ = orig


def test_make_tape_lists_primitives_and_replays():
    def f(x, W):
        return tm.sum(tm.tanh(x @ W))

    x, W = np.ones((2, 3)), np.full((3, 4), 0.1)
    tape = tm.make_tape(f)(x, W)
    text = str(tape)
    assert "matmul a b" in text and "tanh" in text and "f64[2, 4]" in text
    assert len(tape) == 3
    rng = np.random.default_rng(0)
    x2, W2 = rng.normal(size=(2, 3)), rng.normal(size=(3, 4))
    assert tape.replay(x2, W2) == np.sum(np.tanh(x2 @ W2))
    full = tm.make_tape(f, backward=True, argnums=(0, 1))(x, W)
    text = str(full)
    assert "forward:" in text and "backward:" in text
    val, (gx, gW) = full.replay(x2, W2)
    ref_val, (rx, rW) = tm.value_and_grad(f, argnums=(0, 1))(x2, W2)
    assert val == ref_val
    np.testing.assert_array_equal(gx, rx)  # bitwise on the NumPy backend
    np.testing.assert_array_equal(gW, rW)
    with pytest.raises(ValueError, match="recorded as"):
        full.replay(np.ones((3, 3)), W2)
