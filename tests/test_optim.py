"""SGD and Adam against update formulas worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tinymeta import optim


def test_sgd_step():
    opt = optim.SGD(0.1)
    params = [np.array([1.0, 2.0]), {"b": np.array(3.0)}]
    grads = [np.array([0.5, -1.0]), {"b": np.array(2.0)}]
    state = opt.init(params)
    new, state = opt.update(grads, state, params)
    np.testing.assert_allclose(new[0], [0.95, 2.1])
    np.testing.assert_allclose(new[1]["b"], 2.8)
    assert int(state["step"]) == 1
    np.testing.assert_array_equal(params[0], [1.0, 2.0])  # functional: inputs untouched


def test_sgd_momentum_two_steps():
    opt = optim.SGD(0.1, momentum=0.9)
    p = [np.array([1.0])]
    s = opt.init(p)
    p, s = opt.update([np.array([1.0])], s, p)  # m = 1, p = 0.9
    p, s = opt.update([np.array([1.0])], s, p)  # m = 1.9, p = 0.71
    np.testing.assert_allclose(p[0], [0.71])


def test_adam_first_step_moves_by_lr():
    opt = optim.Adam(0.1)
    p = [np.array([1.0, -2.0])]
    s = opt.init(p)
    p, s = opt.update([np.array([0.5, -3.0])], s, p)
    # bias-corrected m̂ = g and v̂ = g², so the step is lr·g/(|g| + ε)
    np.testing.assert_allclose(p[0], [0.9, -1.9], atol=1e-7)


def test_adam_second_step_hand_worked():
    opt = optim.Adam(0.1, b1=0.9, b2=0.999, eps=1e-8)
    p = [np.array([1.0])]
    s = opt.init(p)
    p, s = opt.update([np.array([0.5])], s, p)
    p, s = opt.update([np.array([1.0])], s, p)
    m = 0.9 * 0.05 + 0.1 * 1.0  # 0.145
    v = 0.999 * 0.00025 + 0.001 * 1.0  # 0.00124975
    m_hat, v_hat = m / (1 - 0.81), v / (1 - 0.998001)
    p1 = 1.0 - 0.1 * 0.5 / (0.5 + 1e-8)  # the first step, ε included
    expected = p1 - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(p[0], [expected], rtol=1e-12)
    np.testing.assert_allclose(p[0], [0.8034820], atol=1e-6)
    np.testing.assert_allclose(s["m"][0], [m])
    np.testing.assert_allclose(s["v"][0], [v])
    assert int(s["step"]) == 2


def test_adam_keeps_float32():
    opt = optim.Adam(1e-3)
    p = [np.ones(3, np.float32)]
    s = opt.init(p)
    p, s = opt.update([np.ones(3, np.float32)], s, p)
    assert p[0].dtype == np.float32 and s["m"][0].dtype == np.float32


def test_linear_decay_schedule():
    sched = optim.linear_decay(0.1, 10)
    assert sched(0) == 0.1
    assert sched(5) == pytest.approx(0.05)
    assert sched(10) == 0.0 and sched(20) == 0.0
    opt = optim.SGD(sched)
    p = [np.array([1.0])]
    s = opt.init(p)
    for _ in range(10):
        p, s = opt.update([np.array([1.0])], s, p)
    np.testing.assert_allclose(p[0], [1.0 - 0.1 * sum(1 - k / 10 for k in range(10))])


def test_bad_hyperparameters():
    with pytest.raises(ValueError):
        optim.Adam(0.1, b1=1.0)
    with pytest.raises(ValueError):
        optim.SGD(0.1, momentum=-1)
