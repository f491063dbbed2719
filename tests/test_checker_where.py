"""The checker says where a derivative is wrong (argument, leaf, entry), and checks plain
NumPy functions with hand-written rules (check_vjp, check_jvp).

The planted rules are wrong in one known place; the tests read the failure message and
hold its numbers against that place: the listed entry's autodiff value over its finite
difference is the planted factor, whatever the random directions were.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np
import pytest

import tinymeta as tm
from tinymeta.testing import check_grads, check_hvp, check_jvp, check_vjp

X = np.array([0.3, -1.2, 0.7, 1.5])
BETA = np.array([1.0, 2.0, 0.5, 1.5])
WRONG = np.array([1.0, 1.0, 0.1, 1.0])  # the planted error: entry 2 scaled by 0.1


def softplus_np(x: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """log(1 + exp(βx)) / β."""
    return np.log1p(np.exp(beta * x)) / beta


def sigmoid_np(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def dsoftplus_dbeta(x: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """∂/∂β of log(1 + exp(βx)) / β = (x σ(βx) − softplus) / β."""
    return (x * sigmoid_np(beta * x) - softplus_np(x, beta)) / beta


# softplus whose VJP in β is wrong at entry 2 only; its JVP rules are right
softplus = tm.primitive(softplus_np, name="softplus")
tm.defvjp(softplus, lambda g, ans, x, beta: g * tm.sigmoid(beta * x),
          lambda g, ans, x, beta: g * ((x * tm.sigmoid(beta * x) - ans) / beta) * WRONG)

# softplus whose JVP in β is wrong at entry 2 only; its VJP rules are right
softplus_fwd = tm.primitive(softplus_np, name="softplus_fwd")
tm.defvjp(softplus_fwd, lambda g, ans, x, beta: g * tm.sigmoid(beta * x),
          lambda g, ans, x, beta: g * ((x * tm.sigmoid(beta * x) - ans) / beta))
tm.defjvp(softplus_fwd, lambda t, ans, x, beta: t * tm.sigmoid(beta * x),
          lambda t, ans, x, beta: t * ((x * tm.sigmoid(beta * x) - ans) / beta) * WRONG)

LINE = re.compile(r"^  (.+) with respect to (.+), (output entry|entry) (\(.*?\)): autodiff "
                  r"(\S+), (finite differences|hessian\(f\) @ v) (\S+)$")


def _entries(message: str) -> list[tuple]:
    """(label, where, index, autodiff, numeric) of every entry line of a failure message."""
    out = []
    for line in message.splitlines():
        m = LINE.match(line)
        if m:
            out.append((m[1], m[2], m[4], float(m[5]), float(m[7])))
    return out


def test_a_wrong_vjp_is_located_at_its_argument_and_entry() -> None:
    with pytest.raises(AssertionError) as info:
        check_grads(softplus, (X, BETA), order=1, modes=("rev",))
    message = str(info.value)
    assert message.startswith("VJP of softplus: the dot-product test")
    entries = _entries(message)
    assert [(e[0], e[1], e[2]) for e in entries] == [("VJP of softplus", "argument 1", "(2,)")]
    autodiff, numeric = entries[0][3:]
    assert autodiff / numeric == pytest.approx(0.1, rel=2e-3)  # the planted factor
    assert "  argument 1: 1 of 4 entries off" in message
    assert "  argument 0: agrees" in message


def test_a_wrong_jvp_is_located_at_its_argument_and_output_entry() -> None:
    check_grads(softplus_fwd, (X, BETA), order=1, modes=("rev",))
    with pytest.raises(AssertionError) as info:
        check_grads(softplus_fwd, (X, BETA), order=1, modes=("fwd",))
    message = str(info.value)
    assert message.startswith("JVP of softplus_fwd: the tangent J u failed at output index (2,)")
    entries = _entries(message)
    assert [(e[1], e[2]) for e in entries] == [("argument 1", "(2,)")]
    assert entries[0][3] / entries[0][4] == pytest.approx(0.1, rel=2e-3)
    assert "  argument 0: agrees" in message


def test_a_pytree_leaf_is_named_by_its_path() -> None:
    exp_scaled = tm.primitive(np.exp, name="exp_scaled")
    tm.defvjp(exp_scaled, lambda g, ans, x: g * ans * 1.01)

    def f(params: dict) -> Any:
        return tm.sum(exp_scaled(params["W"])) + tm.sum(tm.tanh(params["b"]))

    W = np.array([[0.1, -0.2, 0.3, 0.0], [0.5, 0.2, -0.1, 0.4], [0.0, 0.1, 0.2, -0.3]])
    with pytest.raises(AssertionError) as info:
        check_grads(f, ({"W": W, "b": np.zeros(4)},), order=1, modes=("rev",))
    message = str(info.value)
    entries = _entries(message)
    assert entries and {e[1] for e in entries} == {"argument 0, leaf ['W'] (shape (3, 4))"}
    # f is a sum: v is one number, so entry (i, j) is v·1.01·exp(W_ij) against v·exp(W_ij)
    # (the message prints 4 significant digits: ratios hold to 2e-3)
    vs = []
    for _, _, index, autodiff, numeric in entries:
        i, j = (int(k) for k in index.strip("()").split(","))
        assert autodiff / numeric == pytest.approx(1.01, rel=2e-3)
        vs.append(numeric / np.exp(W[i, j]))
    assert np.allclose(vs, vs[0], rtol=2e-3)
    assert "  argument 0, leaf ['W'] (shape (3, 4)): 12 of 12 entries off" in message
    assert "  argument 0, leaf ['b'] (shape (4,)): agrees" in message


def test_a_second_order_failure_names_the_chain_and_the_cotangent_argument() -> None:
    exp_frozen = tm.primitive(np.exp, name="exp_frozen")
    tm.defvjp(exp_frozen, lambda g, ans, x: g * tm.stop_gradient(ans))
    with pytest.raises(AssertionError) as info:
        check_grads(exp_frozen, (X,), order=2, modes=("rev",))
    message = str(info.value)
    assert message.startswith("VJP of VJP of exp_frozen: ")
    entries = _entries(message)
    assert {(e[0], e[1]) for e in entries} == {("VJP of VJP of exp_frozen", "argument 0")}
    assert all(e[3] == 0.0 and abs(e[4]) > 1e-3 for e in entries)  # the frozen factor
    assert "  argument 1 (the cotangent v of the VJP of exp_frozen): agrees" in message


def test_a_large_leaf_is_sampled_and_says_so() -> None:
    exp_scaled = tm.primitive(np.exp, name="exp_scaled")
    tm.defvjp(exp_scaled, lambda g, ans, x: g * ans * 1.01)
    x = np.linspace(-1.0, 1.0, 300).reshape(20, 15)
    with pytest.raises(AssertionError, match=r"200 of its 300 entries compared, at random"):
        check_grads(exp_scaled, (x,), order=1, modes=("rev",))


def test_check_hvp_names_the_leaf_and_entry() -> None:
    tanh_half = tm.primitive(np.tanh, name="tanh_half")
    tm.defvjp(tanh_half, lambda g, ans, x: g * (1.0 - tm.stop_gradient(ans) * ans))

    def loss(params: list) -> Any:
        return tm.sum(tanh_half(params[0]) * X) + tm.sum(params[1] ** 2)

    with pytest.raises(AssertionError) as info:
        check_hvp(loss, ([X, BETA],))
    entries = _entries(str(info.value))
    assert entries and all(e[1] == "argument 0, leaf [0] (shape (4,))" for e in entries)
    for e in entries:
        assert e[3] / e[4] == pytest.approx(0.5, rel=2e-3)  # the Hessian lost its factor 2


# =====================================================================================
# check_vjp, check_jvp: NumPy functions, hand-written rules
# =====================================================================================


def softplus_vjp(x: np.ndarray, beta: np.ndarray) -> tuple:
    out = softplus_np(x, beta)
    return out, lambda v: (v * sigmoid_np(beta * x), v * dsoftplus_dbeta(x, beta))


def softplus_jvp(primals: tuple, tangents: tuple) -> tuple:
    (x, beta), (tx, tb) = primals, tangents
    return softplus_np(x, beta), tx * sigmoid_np(beta * x) + tb * dsoftplus_dbeta(x, beta)


def test_check_vjp_and_check_jvp_pass_on_right_numpy_rules() -> None:
    check_vjp(softplus_np, softplus_vjp, (X, BETA))
    check_jvp(softplus_np, softplus_jvp, (X, BETA))
    # one argument: the rule may return its cotangent alone
    check_vjp(np.tanh, lambda x: (np.tanh(x), lambda v: v * (1 - np.tanh(x) ** 2)), (X,))
    # tinymeta's own transforms in the same harness
    check_vjp(tm.tanh, functools.partial(tm.vjp, tm.tanh), (X,))
    check_jvp(tm.tanh, functools.partial(tm.jvp, tm.tanh), (X,))


def test_check_vjp_locates_a_wrong_numpy_rule() -> None:
    def wrong_vjp(x: np.ndarray, beta: np.ndarray) -> tuple:
        out = softplus_np(x, beta)
        return out, lambda v: (v * sigmoid_np(beta * x), v * dsoftplus_dbeta(x, beta) * WRONG)

    with pytest.raises(AssertionError) as info:
        check_vjp(softplus_np, wrong_vjp, (X, BETA), name="softplus")
    message = str(info.value)
    assert message.startswith("VJP of softplus: the dot-product test")
    entries = _entries(message)
    assert [(e[1], e[2]) for e in entries] == [("argument 1", "(2,)")]
    assert entries[0][3] / entries[0][4] == pytest.approx(0.1, rel=2e-3)


def test_check_jvp_locates_a_wrong_numpy_rule() -> None:
    def wrong_jvp(primals: tuple, tangents: tuple) -> tuple:
        (x, beta), (tx, tb) = primals, tangents
        # the tangent of x gets the derivative of log(1 + exp(x)), ignoring β
        return softplus_np(x, beta), tx * sigmoid_np(x) + tb * dsoftplus_dbeta(x, beta)

    with pytest.raises(AssertionError) as info:
        check_jvp(softplus_np, wrong_jvp, (X, BETA))
    message = str(info.value)
    assert message.startswith("JVP of softplus_np: the tangent J u failed")
    entries = _entries(message)
    # β = 1 at entry 0, where the wrong rule happens to be right
    assert {e[1] for e in entries} == {"argument 0"}
    assert "(0,)" not in {e[2] for e in entries}
    for e in entries:
        k = int(e[2].strip("(,)"))
        want = sigmoid_np(X[k]) / sigmoid_np(BETA[k] * X[k])
        assert e[3] / e[4] == pytest.approx(want, rel=2e-3)
    assert "  argument 1: agrees" in message


def test_check_vjp_reports_a_wrong_forward_and_wrong_shapes() -> None:
    with pytest.raises(AssertionError, match="traced forward pass differs"):
        check_vjp(np.tanh, lambda x: (np.tanh(x) + 1e-3, lambda v: (v,)), (X,))
    with pytest.raises(AssertionError, match="cotangent of argument 0 has shapes"):
        check_vjp(np.tanh, lambda x: (np.tanh(x), lambda v: (v[:2],)), (X,))
