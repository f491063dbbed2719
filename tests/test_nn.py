"""The task-batched MLP, its initialisers and the per-task losses."""

from __future__ import annotations

import numpy as np
import pytest

import tinymeta as tm
from tinymeta import nn


def test_mlp_init_shapes_dtype_and_fan_in_bounds():
    p = nn.mlp_init([1, 40, 40, 1], seed=3)
    assert [a.shape for a in p] == [(1, 40), (40,), (40, 40), (40,), (40, 1), (1,)]
    assert all(a.dtype == np.float32 for a in p)
    assert np.abs(p[2]).max() <= 1 / np.sqrt(40) and np.abs(p[2]).max() > 0.9 / np.sqrt(40)
    assert np.abs(p[1]).max() <= 1.0
    np.testing.assert_array_equal(p[0], nn.mlp_init([1, 40, 40, 1], seed=3)[0])
    assert not np.array_equal(p[0], nn.mlp_init([1, 40, 40, 1], seed=4)[0])


def test_finn_init_is_truncated_normal_with_zero_bias():
    p = nn.mlp_init([30, 200, 1], init="finn", dtype=np.float64)
    W = p[0]
    assert np.abs(W).max() <= 0.02
    assert 0.007 < W.std() < 0.0095  # a normal truncated at 2σ has std 0.88σ
    np.testing.assert_array_equal(p[1], 0.0)


def test_mlp_init_rejects_bad_arguments():
    with pytest.raises(ValueError, match="init"):
        nn.mlp_init([1, 2], init="xavier")
    with pytest.raises(ValueError, match="sizes"):
        nn.mlp_init([3])


def test_linear_batched_bias_is_per_task_when_B_equals_K():
    rng = np.random.default_rng(0)
    B = K = 4
    x = rng.normal(size=(B, K, 3))
    W = rng.normal(size=(B, 3, 2))
    b = rng.normal(size=(B, 2))
    out = nn.linear(x, W, b)
    for e in range(B):
        np.testing.assert_allclose(out[e], x[e] @ W[e] + b[e], atol=1e-14)


def test_linear_unbatched_and_shape_errors():
    rng = np.random.default_rng(1)
    x, W, b = rng.normal(size=(5, 3)), rng.normal(size=(3, 2)), rng.normal(size=(2,))
    np.testing.assert_allclose(nn.linear(x, W, b), x @ W + b)
    with pytest.raises(ValueError, match="bias"):
        nn.linear(rng.normal(size=(4, 4, 3)), rng.normal(size=(4, 3, 2)), rng.normal(size=(2,)))
    with pytest.raises(ValueError, match="input shape"):
        nn.linear(rng.normal(size=(3, 4, 3)), rng.normal(size=(4, 3, 2)),
                  rng.normal(size=(4, 2)))


def test_mlp_batched_equals_a_loop_over_tasks():
    rng = np.random.default_rng(2)
    p = nn.mlp_init([2, 5, 3], seed=0, dtype=np.float64)
    B = K = 3
    pb = [a[None] + 0.1 * rng.normal(size=(B,) + a.shape) for a in p]
    x = rng.normal(size=(B, K, 2))
    out = nn.mlp(pb, x)
    for e in range(B):
        h = np.maximum(x[e] @ pb[0][e] + pb[1][e], 0)
        np.testing.assert_allclose(out[e], h @ pb[2][e] + pb[3][e], atol=1e-14)
    out_tanh = nn.mlp(pb, x, activation=tm.tanh)
    np.testing.assert_allclose(out_tanh[0], np.tanh(x[0] @ pb[0][0] + pb[1][0]) @ pb[2][0]
                               + pb[3][0], atol=1e-14)
    with pytest.raises(ValueError, match="params"):
        nn.mlp(p[:3], x)


def test_mse_per_task_and_refuses_broadcasting():
    pred = np.arange(12.0).reshape(2, 3, 2)
    y = np.zeros((2, 3, 2))
    np.testing.assert_allclose(nn.mse(pred, y), [np.mean(pred[0] ** 2), np.mean(pred[1] ** 2)])
    with pytest.raises(ValueError, match="shape"):
        nn.mse(np.zeros((2, 3, 1)), np.zeros((2, 3)))


def test_mse_gradient_hand_worked():
    pred = np.array([[[1.0], [3.0]]])
    y = np.array([[[0.0], [1.0]]])
    g = tm.grad(lambda p: tm.sum(nn.mse(p, y)))(pred)
    np.testing.assert_allclose(g, [[[1.0], [2.0]]])  # 2 (p − y) / 2


def log_softmax_np(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def test_cross_entropy_equals_numpy_and_its_gradient():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 5, 4))
    labels = rng.integers(0, 4, size=(3, 5))
    ls = log_softmax_np(logits)
    expected = -np.take_along_axis(ls, labels[..., None], -1)[..., 0].mean(-1)
    np.testing.assert_allclose(nn.cross_entropy(logits, labels), expected, atol=1e-14)
    g = tm.grad(lambda z: tm.sum(nn.cross_entropy(z, labels)))(logits)
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(g, (np.exp(ls) - onehot) / 5, atol=1e-14)


def test_cross_entropy_works_under_capture_and_accuracy():
    logits = np.array([[[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]]])
    labels = np.array([[0, 1, 1]])
    tape = tm.make_tape(lambda z: tm.sum(nn.cross_entropy(z, labels)), backward=True)(logits)
    assert len(tape) > 0
    np.testing.assert_allclose(nn.accuracy(logits, labels), [2 / 3])
    with pytest.raises(ValueError, match="labels"):
        nn.cross_entropy(logits, labels[0])
