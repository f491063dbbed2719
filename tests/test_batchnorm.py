"""Batch norm as MAML uses it (tinymeta.nn.batchnorm): values, derivatives to second order,
the BN MLP, the adapt= mask, and the second-order MAML term through the batch statistics."""

from __future__ import annotations

import numpy as np
import pytest

import tinymeta as tm
from tinymeta import meta, nn
from tinymeta.nn.batchnorm import BN_EPS
from tinymeta.tasks.base import TaskBatch
from tinymeta.testing import check_grads


def reference_bn(x, shift=None, scale=None, eps=BN_EPS):
    """A plain NumPy loop over tasks: each task normalised with its own points' statistics."""
    out = np.empty_like(x)
    for e in range(x.shape[0]):
        mu = x[e].mean(axis=0)
        var = ((x[e] - mu) ** 2).mean(axis=0)
        y = (x[e] - mu) / np.sqrt(var + eps)
        g = 1.0 if scale is None else (scale[e] if scale.ndim == 2 else scale)
        b = 0.0 if shift is None else (shift[e] if shift.ndim == 2 else shift)
        out[e] = g * y + b
    return out


@pytest.mark.parametrize("task_batched", [False, True])
def test_values_match_a_per_task_reference(task_batched):
    rng = np.random.default_rng(0)
    B = M = 4  # B = M: statistics over the wrong axis would go unnoticed otherwise
    x = rng.normal(size=(B, M, 3)) * 3 + rng.normal(size=(B, 1, 3))
    pshape = (B, 3) if task_batched else (3,)
    shift, scale = rng.normal(size=pshape), rng.normal(size=pshape)
    got = nn.batch_norm(x, shift, scale)
    np.testing.assert_allclose(np.asarray(got), reference_bn(x, shift, scale), rtol=1e-12)


def test_each_task_comes_out_centred_and_unit_variance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 20, 5)) * np.array([[[0.1]], [[1.0]], [[10.0]]]) + 4.0
    y = np.asarray(nn.batch_norm(x, eps=1e-12))
    np.testing.assert_allclose(y.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=1), 1.0, rtol=1e-9)


def test_hard_coded_numbers():
    x = np.array([[[1.0], [3.0]]])  # μ = 2, σ² = 1
    y = np.asarray(nn.batch_norm(x, shift=np.array([0.5]), eps=0.0))
    np.testing.assert_allclose(y[0, :, 0], [-0.5, 1.5])


def test_bad_parameter_shapes_name_the_fix():
    x = np.zeros((2, 5, 3))
    with pytest.raises(ValueError, match=r"shift of shape \(4,\).*\(3,\).*\(2, 3\)"):
        nn.batch_norm(x, shift=np.zeros(4))
    with pytest.raises(ValueError, match="needs inputs"):
        nn.batch_norm(np.zeros(3))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_check_grads_to_second_order(backend):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 4, 3))
    shift, scale = rng.normal(size=(2, 3)), rng.normal(size=(2, 3)) + 1.5
    with tm.set_backend(backend):
        check_grads(lambda x, b, g: nn.batch_norm(x, b, g), (x, shift, scale), order=2,
                    modes=("rev", "fwd"), name="batch_norm")
        check_grads(lambda x: nn.batch_norm(x, eps=0.1), (x,), order=3, modes=("rev",),
                    name="batch_norm, no params")


def test_bn_mlp_init_has_no_bias_under_bn_and_the_bias_would_cancel():
    params = nn.bn_mlp_init((6, 5, 4, 3), seed=0, dtype=np.float64, scale=True)
    assert [sorted(layer) for layer in params] == [["W", "scale", "shift"]] * 2 + [["W", "b"]]
    assert params[0]["W"].shape == (6, 5) and params[0]["shift"].shape == (5,)
    rng = np.random.default_rng(3)
    h = rng.normal(size=(2, 7, 5))
    np.testing.assert_allclose(np.asarray(nn.batch_norm(h + rng.normal(size=5))),
                               np.asarray(nn.batch_norm(h)), atol=1e-12)
    plain = nn.bn_mlp_init((6, 5, 3), bn=False)
    assert [sorted(layer) for layer in plain] == [["W", "b"], ["W", "b"]]


def test_bn_mlp_task_batched_equals_per_task():
    params = nn.bn_mlp_init((6, 5, 4, 3), seed=1, dtype=np.float64)
    rng = np.random.default_rng(4)
    params = tm.tree_map(lambda p: p + 0.1 * rng.normal(size=p.shape), params)
    x = rng.normal(size=(3, 3, 6))
    batched = tm.tree_map(lambda p: np.broadcast_to(p, (3,) + p.shape), params)
    whole = np.asarray(nn.bn_mlp(batched, x))
    for e in range(3):
        one = np.asarray(nn.bn_mlp(params, x[e:e + 1]))
        np.testing.assert_allclose(whole[e], one[0], rtol=1e-12)


def smooth_loss(params, x, y):
    """A BN network with tanh (no kinks, so that finite differences are clean)."""
    h = tm.tanh(nn.batch_norm(tm.matmul(x, params[0]["W"]), params[0]["shift"],
                              params[0]["scale"]))
    return nn.cross_entropy(nn.linear(h, params[1]["W"], params[1]["b"]), y)


def smooth_problem(seed=0, B=3, N=3):
    rng = np.random.default_rng(seed)
    params = nn.bn_mlp_init((4, 5, N), seed=seed, dtype=np.float64, scale=True)
    params = tm.tree_map(lambda p: p + 0.3 * rng.normal(size=p.shape), params)
    labels = np.tile(np.arange(N), (B, 1))
    batch = TaskBatch(rng.normal(size=(B, N, 4)), labels, rng.normal(size=(B, N, 4)), labels)
    return params, batch


@pytest.mark.parametrize("adapt_bn", [False, True])
def test_maml_meta_gradient_through_batch_statistics(adapt_bn):
    """The second-order meta-gradient (unrolled) agrees with the HVP chain and with finite
    differences of the meta-objective, BN adapted in the inner loop or held out."""
    params, batch = smooth_problem()
    mask = nn.bn_adapt_mask(params, adapt_bn)
    alpha, T = 0.3, 2
    g_unrolled, _ = meta.maml(smooth_loss, params, batch, alpha, T, adapt=mask)
    g_chain, _ = meta.maml(smooth_loss, params, batch, alpha, T, method="hvp_chain",
                           adapt=mask)
    for a, b in zip(tm.tree_leaves(g_unrolled), tm.tree_leaves(g_chain)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)

    flat0, unravel = tm.ravel_pytree(params)

    def objective(flat):
        theta = unravel(flat)
        path = meta.adapt_path(smooth_loss, theta, batch.support_x, batch.support_y, alpha, T,
                               mask)
        *_, last = path
        return tm.mean(smooth_loss(last, batch.query_x, batch.query_y))

    check_grads(objective, (np.asarray(flat0),), order=1, modes=("rev",), name="meta-objective")
    g_flat = np.asarray(tm.grad(objective)(np.asarray(flat0)))
    np.testing.assert_allclose(np.asarray(tm.ravel_pytree(g_unrolled)[0]), g_flat, rtol=1e-9)


def test_held_out_shift_stays_put_in_the_inner_loop():
    params, batch = smooth_problem(seed=5)
    held = meta.adapt(smooth_loss, params, batch.support_x, batch.support_y, 0.5, 3,
                      nn.bn_adapt_mask(params, adapt_bn=False))
    free = meta.adapt(smooth_loss, params, batch.support_x, batch.support_y, 0.5, 3)
    for key in ("shift", "scale"):
        np.testing.assert_array_equal(np.asarray(held[0][key]),
                                      np.broadcast_to(params[0][key], (3, 5)))
        assert not np.allclose(np.asarray(free[0][key]), params[0][key])
    assert not np.allclose(np.asarray(held[0]["W"]), params[0]["W"])


def test_bn_adapt_mask_structure():
    params = nn.bn_mlp_init((6, 5, 3), scale=True)
    assert nn.bn_adapt_mask(params) == [{"W": True, "scale": False, "shift": False},
                                        {"W": True, "b": True}]
    assert nn.bn_adapt_mask(params, True)[0] == {"W": True, "scale": True, "shift": True}


def test_scale_invariance_identity_in_the_hessian():
    """With ε → 0, L(cW) = L(W) for a weight matrix W feeding a BN, so ⟨∇L, W⟩ = 0 and
    H W = −∇L (docs/maths.md, "Batch normalisation in the inner loop")."""
    params, batch = smooth_problem(seed=7)
    W1 = params[0]["W"]

    def loss_of_w(W):
        h = tm.tanh(nn.batch_norm(tm.matmul(batch.support_x, W), params[0]["shift"],
                                  params[0]["scale"], eps=1e-14))
        return tm.sum(nn.cross_entropy(nn.linear(h, params[1]["W"], params[1]["b"]),
                                       batch.support_y))

    g = np.asarray(tm.grad(loss_of_w)(W1))
    hw = np.asarray(tm.hvp(loss_of_w, (W1,), (W1,)))
    assert abs(np.vdot(g, W1)) < 1e-9 * np.linalg.norm(g) * np.linalg.norm(W1)
    np.testing.assert_allclose(hw, -g, rtol=1e-7, atol=1e-9)
