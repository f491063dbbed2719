"""The tester is tested: check_grads and check_hvp must fail on wrong rules, at the
order where they are wrong, and pass on correct functions."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinymeta as tm
from tinymeta.testing import (
    arrays,
    broadcastable_shapes,
    check_grads,
    check_hvp,
    float_arrays,
    separated_arrays,
    shapes,
)

X = np.array([[0.3, -1.2, 0.7], [1.1, 0.05, -0.4]])


# =====================================================================================
# Deliberately wrong primitives
# =====================================================================================


def _exp_with_rule(rule: Any, name: str) -> Any:
    prim = tm.primitive(np.exp, name=name)
    tm.defvjp(prim, rule)
    return prim


# first order wrong
exp_scaled = _exp_with_rule(lambda g, ans, x: g * ans * 1.01, "exp_scaled")
exp_wrong_sign = _exp_with_rule(lambda g, ans, x: -(g * ans), "exp_wrong_sign")

# first order right, second order wrong: the rule's factor is a constant of the tape
exp_frozen = _exp_with_rule(lambda g, ans, x: g * tm.stop_gradient(ans), "exp_frozen")

# first order right, but written in raw NumPy: fine on arrays, refused on traced values
exp_numpy = _exp_with_rule(lambda g, ans, x: g * np.exp(x), "exp_numpy")

# the same with a raw NumPy JVP rule: forward mode fails at order 2
exp_numpy_jvp = _exp_with_rule(lambda g, ans, x: g * ans, "exp_numpy_jvp")
tm.defjvp(exp_numpy_jvp, lambda t, ans, x: t * np.exp(x))

# sin whose derivative cos has a wrong derivative: right to order 2, wrong at order 3
my_cos = tm.primitive(np.cos, name="my_cos")
my_sin = tm.primitive(np.sin, name="my_sin")
tm.defvjp(my_sin, lambda g, ans, x: g * my_cos(x))
tm.defvjp(my_cos, lambda g, ans, x: -(g * tm.stop_gradient(my_sin(x))))

# tanh whose Hessian is wrong: d/dx (1 − tanh²) loses its factor 2
tanh_half = tm.primitive(np.tanh, name="tanh_half")
tm.defvjp(tanh_half, lambda g, ans, x: g * (1.0 - tm.stop_gradient(ans) * ans))

# add that forgets to undo broadcasting: the cotangent has the output's shape
add_no_unbroadcast = tm.primitive(np.add, name="add_no_unbroadcast")
tm.defvjp(add_no_unbroadcast, lambda g, ans, x, y: g, lambda g, ans, x, y: g)


# right VJP, wrong JVP rule: only forward mode sees it
exp_bad_jvp = _exp_with_rule(lambda g, ans, x: g * ans, "exp_bad_jvp")
tm.defjvp(exp_bad_jvp, lambda t, ans, x: t * ans * 0.99)


@pytest.mark.parametrize("prim", [exp_scaled, exp_wrong_sign], ids=["scaled", "sign"])
@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_a_wrong_first_order_rule_fails_at_order_one(prim: Any, mode: str) -> None:
    label = "VJP of " if mode == "rev" else "JVP of "
    with pytest.raises(AssertionError, match="^" + label + prim.name + ": ") as info:
        check_grads(prim, (X,), order=1, modes=(mode,))
    message = str(info.value)
    assert "autodiff gives" in message and "central differences give" in message
    assert "tolerance" in message


def test_a_wrong_jvp_rule_fails_in_forward_mode_only() -> None:
    check_grads(exp_bad_jvp, (X,), order=1, modes=("rev",))
    with pytest.raises(AssertionError, match="^JVP of exp_bad_jvp: the tangent J u failed"):
        check_grads(exp_bad_jvp, (X,), order=1)


def test_check_hvp_sees_a_wrong_jvp_rule_through_forward_over_reverse() -> None:
    # tm.hvp runs forward over reverse: the wrong JVP rule of exp is on its path
    def f(x: Any) -> Any:
        return tm.sum(exp_bad_jvp(x * x))

    with pytest.raises(AssertionError, match="^HVP of f: hvp: "):
        check_hvp(f, (X,))


def test_a_frozen_second_order_passes_order_one_and_fails_order_two() -> None:
    check_grads(exp_frozen, (X,), order=1)
    with pytest.raises(AssertionError, match="^VJP of VJP of exp_frozen: "):
        check_grads(exp_frozen, (X,), order=2)
    with pytest.raises(AssertionError, match="^JVP of JVP of exp_frozen: "):
        check_grads(exp_frozen, (X,), order=2, modes=("fwd",))


def test_a_raw_numpy_rule_passes_order_one_and_is_refused_at_order_two() -> None:
    check_grads(exp_numpy, (X,), order=1)
    with pytest.raises(TypeError, match="ufunc") as info:
        check_grads(exp_numpy, (X,), order=2)
    if sys.version_info >= (3, 11):
        assert any("VJP of VJP of exp_numpy" in note for note in info.value.__notes__)
    # the error names the primitive, the rule and where it is, and how to write it
    message = str(info.value)
    assert message.startswith("exp_numpy: its VJP rule for argument 0, <lambda> "
                              "(test_checker.py, line ")
    assert "must be written in tinymeta ops: tm.exp(x)" in message


def test_a_raw_numpy_jvp_rule_is_named_at_order_two() -> None:
    check_grads(exp_numpy_jvp, (X,), order=1, modes=("fwd",))
    with pytest.raises(TypeError, match="^exp_numpy_jvp: its JVP rule for argument 0, "
                                        "<lambda> .*must be written in tinymeta ops"):
        check_grads(exp_numpy_jvp, (X,), order=2, modes=("fwd",))


def test_a_type_error_of_a_rule_on_arrays_names_the_rule_without_the_hint() -> None:
    broken = _exp_with_rule(lambda g, ans, x: g * ans + "s", "exp_broken")
    with pytest.raises(TypeError, match="^exp_broken: its VJP rule for argument 0") as info:
        tm.grad(lambda x: tm.sum(broken(x)))(X)
    assert "tinymeta ops" not in str(info.value)


def test_a_third_order_error_is_found_at_order_three_only() -> None:
    x = np.array([0.4, -1.3, 2.0])
    check_grads(my_sin, (x,), order=2)
    with pytest.raises(AssertionError, match="^VJP of VJP of VJP of my_sin: "):
        check_grads(my_sin, (x,), order=3)


def test_the_lowest_failing_order_is_reported_first() -> None:
    # exp_scaled is wrong at every order; order 1 must be the one named
    with pytest.raises(AssertionError, match="^VJP of exp_scaled: "):
        check_grads(exp_scaled, (X,), order=3)


def test_a_cotangent_of_the_wrong_shape_is_reported() -> None:
    x, y = np.ones((2, 3)), np.ones((3,))
    with pytest.raises(AssertionError, match="cotangent of argument 1 has shapes"):
        check_grads(add_no_unbroadcast, (x, y), order=1)
    check_grads(add_no_unbroadcast, (x, x), order=2)  # no broadcasting: the rule is right


def test_check_hvp_catches_a_wrong_hessian() -> None:
    def loss(x: Any) -> Any:
        return tm.sum(tanh_half(x) * X)

    check_grads(loss, (X,), order=1)  # the gradient is right
    with pytest.raises(AssertionError, match="^HVP of loss: hvp: H v against central differences"):
        check_hvp(loss, (X,))


def test_check_hvp_compares_with_the_dense_hessian(monkeypatch: pytest.MonkeyPatch) -> None:
    cube = tm.primitive(lambda x: x ** 3, name="cube")
    tm.defvjp(cube, lambda g, ans, x: g * 3.0 * x * x)

    def f(x: Any) -> Any:
        return tm.sum(cube(x))

    x = np.array([0.5, -1.0, 2.0])
    check_hvp(f, (x,), with_hessian=True)
    np.testing.assert_allclose(tm.hessian(f)(x), np.diag(6.0 * x), rtol=1e-14)

    # a hessian transform that disagrees with hvp is reported by the dense comparison
    import tinymeta.testing as testing

    def wrong_hessian(fun: Any) -> Any:
        return lambda x: np.diag(6.0 * x) * 1.01

    monkeypatch.setattr(testing, "hessian", wrong_hessian)
    with pytest.raises(AssertionError, match="^HVP of f: hvp: H v against hessian"):
        check_hvp(f, (x,), with_hessian=True)


# =====================================================================================
# Correct functions pass
# =====================================================================================


def mlp_loss(params: list, x: Any, y: Any) -> Any:
    """Mean squared error of a 2-layer tanh MLP, plus a softmax cross-entropy term."""
    W1, b1, W2, b2 = params
    h = tm.tanh(x @ W1 + b1)
    out = h @ W2 + b2
    mse = tm.mean((out - y) ** 2)
    xent = -tm.mean(tm.sum(tm.log_softmax(out, axis=-1) * tm.softmax(y, axis=-1), axis=-1))
    return mse + xent


def _mlp_point(seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal((3, 4)) * 0.5, rng.standard_normal(4) * 0.1,
              rng.standard_normal((4, 2)) * 0.5, rng.standard_normal(2) * 0.1]
    return params, rng.standard_normal((5, 3)), rng.standard_normal((5, 2))


def test_check_grads_passes_on_an_mlp_loss() -> None:
    params, x, y = _mlp_point()
    check_grads(mlp_loss, (params, x, y), order=2)
    check_grads(lambda p: mlp_loss(p, x, y), (params,), order=3, modes=("rev",), name="mlp")


def test_check_hvp_passes_on_an_mlp_loss() -> None:
    params, x, y = _mlp_point(1)
    check_hvp(mlp_loss, (params, x, y))
    W1 = params[0]
    check_hvp(lambda W: mlp_loss([W, *params[1:]], x, y), (W1,))  # with the dense Hessian


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_check_grads_passes_for_any_seed(seed: int) -> None:
    check_grads(lambda a, b: tm.tanh(a @ b) * tm.exp(a[:, :1]), (X, X.T), order=2, seed=seed)


def test_check_grads_casts_float32_arguments_to_float64() -> None:
    check_grads(tm.tanh, (X.astype(np.float32),), order=2)


def test_check_grads_accepts_pytree_outputs() -> None:
    check_grads(lambda x: (tm.exp(x), {"s": tm.sum(x * x)}), (X,), order=2, name="pair")
    with pytest.raises(AssertionError, match="^VJP of pair: "):
        check_grads(lambda x: (tm.exp(x), exp_scaled(x)), (X,), order=1, name="pair")


def test_check_grads_is_exact_on_a_linear_map() -> None:
    # central differences of a linear map are exact up to rounding: a tight tolerance holds
    A = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    check_grads(lambda x: tm.matmul(A, x), (np.array([1.0, 2.0, 3.0]),), order=3,
                rtol=1e-8, atol=1e-8)


def test_check_grads_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="order must be at least 1"):
        check_grads(tm.exp, (X,), order=0)
    with pytest.raises(ValueError, match="unknown modes"):
        check_grads(tm.exp, (X,), modes=("backward",))


def test_check_grads_works_without_hypothesis() -> None:
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "import numpy as np, tinymeta as tm\n"
        "from tinymeta.testing import check_grads, check_hvp\n"
        "check_grads(tm.tanh, (np.array([0.1, -0.5]),), order=2)\n"
        "check_hvp(lambda x: tm.sum(tm.exp(x)), (np.array([0.1, -0.5]),))\n"
        "print('ok')\n"
    )
    env = dict(os.environ, TINYMETA_BACKEND="numpy")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


# =====================================================================================
# The strategies
# =====================================================================================


@given(broadcastable_shapes(3))
def test_broadcastable_shapes_broadcast(ss: tuple) -> None:
    assert len(ss) == 3
    np.broadcast_shapes(*ss)


@given(shapes(1, 2, 2, 3).flatmap(lambda s: st.tuples(st.just(s), arrays(s, np.float32))))
def test_arrays_have_the_shape_and_dtype(case: tuple) -> None:
    s, a = case
    assert a.shape == s and a.dtype == np.float32
    assert 1 <= a.ndim <= 2 and all(2 <= n <= 3 for n in a.shape)


@given(float_arrays((4,), (-1.0, 1.0), avoid=(0.0,), margin=0.2))
def test_float_arrays_keep_the_margin(a: np.ndarray) -> None:
    assert np.all((np.abs(a) >= 0.2) & (np.abs(a) <= 1.0))


@given(separated_arrays((2, 3), gap=0.25))
def test_separated_arrays_have_no_near_ties(a: np.ndarray) -> None:
    v = np.sort(a.ravel())
    assert np.all(np.diff(v) >= 0.25 - 1e-12)
