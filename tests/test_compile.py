"""Capture and replay: tm.compile against eager execution."""

from __future__ import annotations

import numpy as np
import pytest

import tinymeta as tm


def mlp_loss(params, x, y):
    W1, b1, W2, b2 = params
    h = tm.relu(x @ W1 + b1)
    return tm.mean((h @ W2 + b2 - y) ** 2)


def _problem(seed, dtype=np.float64, n=7):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(3, 5)), rng.normal(size=5), rng.normal(size=(5, 2)),
              rng.normal(size=2)]
    params = [p.astype(dtype) for p in params]
    return params, rng.normal(size=(n, 3)).astype(dtype), rng.normal(size=(n, 2)).astype(dtype)


def test_replay_equals_eager_bitwise(backend):
    f = tm.value_and_grad(mlp_loss)
    cf = tm.compile(f)
    p0, x0, y0 = _problem(0)
    cf(p0, x0, y0)  # records
    for seed in (1, 2, 3):
        p, x, y = _problem(seed)
        val, g = cf(p, x, y)
        ref_val, ref_g = f(p, x, y)
        assert val == ref_val
        for a, b in zip(g, ref_g):
            np.testing.assert_array_equal(a, b)
    assert len(cf.tapes) == 1


def test_second_order_and_hvp_replay(backend):
    def meta(params, x, y):
        g = tm.grad(mlp_loss)(params, x, y)
        adapted = [p - 0.1 * gi for p, gi in zip(params, g)]
        return mlp_loss(adapted, x, y)

    f = tm.grad(meta)
    cf = tm.compile(f)
    p0, x0, y0 = _problem(0)
    cf(p0, x0, y0)
    p, x, y = _problem(5)
    for a, b in zip(cf(p, x, y), f(p, x, y)):
        np.testing.assert_array_equal(a, b)
    hv = tm.compile(lambda p, v: tm.hvp(lambda q: mlp_loss(q, x, y), (p,), (v,)))
    hv(p0, p0)
    for a, b in zip(hv(p, p), tm.hvp(lambda q: mlp_loss(q, x, y), (p,), (p,))):
        np.testing.assert_array_equal(a, b)


def test_change_of_shape_or_dtype_records_again():
    cf = tm.compile(tm.grad(mlp_loss))
    p, x, y = _problem(0)
    cf(p, x, y)
    p2, x2, y2 = _problem(0, n=11)
    g = cf(p2, x2, y2)
    assert len(cf.tapes) == 2
    np.testing.assert_array_equal(g[0], tm.grad(mlp_loss)(p2, x2, y2)[0])
    p3, x3, y3 = _problem(0, dtype=np.float32)
    g3 = cf(p3, x3, y3)
    assert len(cf.tapes) == 3 and g3[0].dtype == np.float32


def test_python_scalars_are_part_of_the_signature():
    cf = tm.compile(lambda x, s: tm.sum(x * s))
    x = np.arange(3.0)
    assert cf(x, 2.0) == 6.0
    assert cf(x, 3.0) == 9.0  # a new scalar value records a new tape, not a stale one
    assert len(cf.tapes) == 2


def test_data_dependent_branch_is_refused_naming_the_line():
    def f(x):
        if x.sum() > 0:  # the offending line
            return tm.sum(x * 2.0)
        return tm.sum(x)

    with pytest.raises(TypeError, match=r"test_compile\.py:\d+.*tm\.where"):
        tm.compile(f)(np.ones(3))
    with pytest.raises(TypeError, match="make_tape/compile"):
        tm.compile(lambda x: tm.sum(x) * float(x[0]))(np.ones(3))
    with pytest.raises(TypeError, match="make_tape/compile"):
        tm.compile(lambda x: tm.sum(x) + x.data[0])(np.ones(3))
    with pytest.raises(TypeError, match="make_tape/compile"):
        tm.compile(lambda x: tm.sum(x) + np.asarray(x)[0])(np.ones(3))
    with pytest.raises(TypeError, match="make_tape/compile"):
        tm.compile(lambda x: tm.sum(x) + x[0].item())(np.ones(3))
    # the same branch written with where is fine, and replays right for both signs
    cf = tm.compile(lambda x: tm.where(tm.sum(x) > 0, tm.sum(x * 2.0), tm.sum(x)))
    assert cf(np.ones(3)) == 6.0
    assert cf(-np.ones(3)) == -3.0


def test_source_is_straight_line_and_frees_intermediates():
    cf = tm.compile(tm.grad(mlp_loss))
    p, x, y = _problem(0)
    src = cf.source(p, x, y)
    assert src.startswith("def replay(")
    assert "# matmul" in src and "del " in src
    assert "for " not in src


def test_repeated_equations_are_computed_once():
    """exp(x) written twice is one exp in the replay; multiplying by 0.0 and by -0.0 are two
    different equations (equal keys would give -0.0·x the sign of 0.0·x)."""
    def f(x):
        return tm.sum(tm.exp(x) * 2.0 + tm.exp(x)), x * 0.0, x * -0.0

    cf = tm.compile(f)
    x = np.array([0.5, -1.0, 2.0])
    src = cf.source(x)
    assert src.count("# exp") == 1
    assert src.count("# multiply") == 3
    s, zero, negzero = cf(x)
    assert s == pytest.approx(3.0 * np.exp(x).sum(), rel=1e-15)
    np.testing.assert_array_equal(np.signbit(zero), np.signbit(x * 0.0))
    np.testing.assert_array_equal(np.signbit(negzero), np.signbit(x * -0.0))


def test_replay_refuses_wrong_inputs():
    tape = tm.make_tape(tm.grad(mlp_loss))(*_problem(0))
    p, x, y = _problem(1, n=4)
    with pytest.raises(ValueError, match="recorded as"):
        tape.replay(p, x, y)


@pytest.mark.parametrize("algo", ["maml", "maml_chain", "fomaml", "imaml", "reptile"])
def test_meta_algorithms_replay_bitwise(algo):
    with tm.set_backend("numpy"):
        loss_fn = lambda p, x, y: tm.nn.mse(tm.nn.mlp(p, x), y)  # noqa: E731
        params = tm.nn.mlp_init((1, 8, 8, 1), seed=0, dtype=np.float64)
        calls = {
            "maml": lambda p, b: tm.meta.maml(loss_fn, p, b, 0.01, 2),
            "maml_chain": lambda p, b: tm.meta.maml(loss_fn, p, b, 0.01, 2, method="hvp_chain"),
            "fomaml": lambda p, b: tm.meta.maml(loss_fn, p, b, 0.01, 2, order=1),
            "imaml": lambda p, b: tm.meta.imaml(loss_fn, p, b, 0.01, 3, 1.0, 3),
            "reptile": lambda p, b: tm.meta.reptile(loss_fn, p, b, 0.01, 3),
        }
        f = calls[algo]
        cf = tm.compile(f)
        task = tm.tasks.Sinusoid()
        first = tm.tasks.TaskBatch(*task.sample(4, 5, 5, seed=0)[:4])
        cf(params, first)
        batch = tm.tasks.TaskBatch(*task.sample(4, 5, 5, seed=1)[:4])
        g, info = cf(params, batch)
        g_ref, info_ref = f(params, batch)
        for a, b in zip(g, g_ref):
            np.testing.assert_array_equal(a, b)
        for key in info_ref:
            np.testing.assert_array_equal(np.asarray(info[key]), np.asarray(info_ref[key]))


def test_refusal_inside_numpy_names_the_calling_line():
    def f(x):
        return tm.sum(x) + np.zeros_like(x).sum()  # np.zeros_like calls np.asarray

    with pytest.raises(TypeError, match=r"test_compile\.py:\d+"):
        tm.compile(f)(np.ones(3))
