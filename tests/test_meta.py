"""Meta-gradients against independent references, in float64 (numpy and numba backends)."""

from __future__ import annotations

import numpy as np
import pytest

import tinymeta as tm
from tinymeta import meta, nn
from tinymeta.tasks.base import TaskBatch


def tanh_loss(params, x, y):
    return nn.mse(nn.mlp(params, x, activation=tm.tanh), y)


def make_problem(B=3, K=3, sizes=(1, 4, 4, 1), seed=0):
    """B = K on purpose: a bias broadcast over the wrong axis would go unnoticed otherwise."""
    rng = np.random.default_rng(seed)
    params = nn.mlp_init(sizes, seed=seed, dtype=np.float64)
    params = [p + 0.3 * rng.normal(size=p.shape) for p in params]  # biases non-zero

    def f(*s):
        return rng.normal(size=s)

    batch = TaskBatch(f(B, K, sizes[0]), f(B, K, sizes[-1]), f(B, K, sizes[0]),
                      f(B, K, sizes[-1]))
    return params, batch


def meta_objective(loss_fn, batch, alpha, T):
    def objective(flat, unravel):
        theta_T = meta.adapt(loss_fn, unravel(flat), batch.support_x, batch.support_y, alpha, T)
        return float(np.mean(loss_fn(theta_T, batch.query_x, batch.query_y)))

    return objective


def central_differences(fun, params, h=1e-5):
    flat, unravel = tm.ravel_pytree(params)
    flat = np.asarray(flat)
    g = np.zeros_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = h
        g[i] = (fun(flat + e, unravel) - fun(flat - e, unravel)) / (2 * h)
    return g


def flat(tree):
    return np.asarray(tm.ravel_pytree(tree)[0])


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5])
def test_hvp_chain_equals_unrolled(backend, T):
    params, batch = make_problem()
    g_u, info_u = meta.maml(tanh_loss, params, batch, 0.3, T, method="unrolled")
    g_c, info_c = meta.maml(tanh_loss, params, batch, 0.3, T, method="hvp_chain")
    assert [a.shape for a in g_u] == [p.shape for p in params]
    np.testing.assert_allclose(flat(g_c), flat(g_u), rtol=0, atol=1e-10)
    np.testing.assert_allclose(info_u["query_loss"], info_c["query_loss"], atol=1e-12)
    assert info_u["query_loss"].shape == (3,) and info_u["support_loss"].shape == (3,)


@pytest.mark.parametrize("T", [1, 3, 5])
@pytest.mark.parametrize("method", ["unrolled", "hvp_chain"])
def test_maml_equals_central_differences(T, method):
    tm.set_backend("numpy")
    params, batch = make_problem()
    g, _ = meta.maml(tanh_loss, params, batch, 0.3, T, method=method)
    fd = central_differences(meta_objective(tanh_loss, batch, 0.3, T), params)
    np.testing.assert_allclose(flat(g), fd, rtol=1e-6, atol=1e-8)


def test_maml_second_order_differs_from_first_order():
    tm.set_backend("numpy")
    params, batch = make_problem()
    g2, _ = meta.maml(tanh_loss, params, batch, 0.3, 2)
    g1, _ = meta.maml(tanh_loss, params, batch, 0.3, 2, order=1)
    assert np.abs(flat(g2) - flat(g1)).max() > 1e-3


def test_maml_zero_steps_is_the_query_gradient():
    tm.set_backend("numpy")
    params, batch = make_problem()
    g, _ = meta.maml(tanh_loss, params, batch, 0.3, 0)
    fd = central_differences(meta_objective(tanh_loss, batch, 0.3, 0), params)
    np.testing.assert_allclose(flat(g), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("T", [1, 3])
def test_first_order_maml_holds_theta_T_constant(backend, T):
    params, batch = make_problem()
    B = batch.support_x.shape[0]

    def objective(theta0):
        theta = meta.broadcast_tasks(theta0, B)
        for _ in range(T):
            theta, _ = meta.inner_step(tanh_loss, theta, batch.support_x, batch.support_y, 0.3)
        # θ_T = θ_0 + const: the path's dependence on θ_0 is cut
        theta0_b = meta.broadcast_tasks(theta0, B)
        held = [p0 + tm.stop_gradient(pt - p0) for p0, pt in zip(theta0_b, theta)]
        return tm.mean(tanh_loss(held, batch.query_x, batch.query_y))

    expected = tm.grad(objective)(params)
    g, _ = meta.maml(tanh_loss, params, batch, 0.3, T, order=1)
    np.testing.assert_allclose(flat(g), flat(expected), atol=1e-12)
    g_fo, _ = meta.fomaml(tanh_loss, params, batch, 0.3, T)
    np.testing.assert_allclose(flat(g_fo), flat(expected), atol=1e-12)


def test_per_task_loop_agrees_with_the_batched_meta_gradient():
    tm.set_backend("numpy")
    params, batch = make_problem(B=4, K=4)
    g, info = meta.maml(tanh_loss, params, batch, 0.3, 2)
    total = 0.0
    for e in range(4):
        one = TaskBatch(*(a[e:e + 1] for a in batch[:4]))
        ge, _ = meta.maml(tanh_loss, params, one, 0.3, 2)
        total = total + flat(ge)
    np.testing.assert_allclose(flat(g), total / 4, atol=1e-12)


def test_adapt_mask_holds_leaves_fixed_and_matches_differences():
    tm.set_backend("numpy")
    params, batch = make_problem()
    mask = [False, False, False, False, True, True]  # ANIL: the head adapts
    g_u, _ = meta.maml(tanh_loss, params, batch, 0.3, 3, adapt=mask)
    g_c, _ = meta.maml(tanh_loss, params, batch, 0.3, 3, method="hvp_chain", adapt=mask)
    np.testing.assert_allclose(flat(g_c), flat(g_u), atol=1e-10)

    def objective(v, unravel):
        theta = meta.adapt(tanh_loss, unravel(v), batch.support_x, batch.support_y, 0.3, 3,
                           mask=mask)
        return float(np.mean(tanh_loss(theta, batch.query_x, batch.query_y)))

    np.testing.assert_allclose(flat(g_u), central_differences(objective, params), rtol=1e-6,
                               atol=1e-8)
    adapted = meta.adapt(tanh_loss, params, batch.support_x, batch.support_y, 0.3, 3, mask=mask)
    np.testing.assert_array_equal(adapted[0][1], params[0])


def test_maml_rejects_bad_arguments():
    params, batch = make_problem()
    with pytest.raises(ValueError, match="order"):
        meta.maml(tanh_loss, params, batch, 0.1, 1, order=3)
    with pytest.raises(ValueError, match="method"):
        meta.maml(tanh_loss, params, batch, 0.1, 1, method="magic")
    with pytest.raises(ValueError, match="mask"):
        meta.maml(tanh_loss, params, batch, 0.1, 1, adapt=[True])


# ---- Reptile -------------------------------------------------------------------------


def linear_loss(params, x, y):
    return nn.mse(nn.linear(x, params[0], params[1]), y)


def test_reptile_equals_hand_written_numpy_loop(backend):
    rng = np.random.default_rng(3)
    B, K, d = 4, 4, 3
    W, b = rng.normal(size=(d, 1)), rng.normal(size=(1,))
    batch = TaskBatch(rng.normal(size=(B, K, d)), rng.normal(size=(B, K, 1)),
                      rng.normal(size=(B, K, d)), rng.normal(size=(B, K, 1)))
    alpha, T = 0.1, 4
    diffs_W, diffs_b = [], []
    for e in range(B):
        x, y = batch.support_x[e], batch.support_y[e]
        We, be = W.copy(), b.copy()
        for _ in range(T):
            r = x @ We + be - y  # (K, 1)
            gW = 2.0 / K * x.T @ r
            gb = 2.0 / K * r.sum(axis=0)
            We, be = We - alpha * gW, be - alpha * gb
        diffs_W.append(W - We)
        diffs_b.append(b - be)
    g, info = meta.reptile(linear_loss, [W, b], batch, alpha, T)
    np.testing.assert_allclose(g[0], np.mean(diffs_W, axis=0), atol=1e-13)
    np.testing.assert_allclose(g[1], np.mean(diffs_b, axis=0), atol=1e-13)
    assert info["support_loss"].shape == (B,)


def test_reptile_with_one_step_is_joint_training():
    tm.set_backend("numpy")
    params, batch = make_problem()
    g, _ = meta.reptile(tanh_loss, params, batch, 0.3, 1)
    joint = tm.grad(lambda p: tm.mean(tanh_loss(meta.broadcast_tasks(p, 3), batch.support_x,
                                                batch.support_y)))(params)
    np.testing.assert_allclose(flat(g), 0.3 * flat(joint), atol=1e-12)


def test_reptile_use_query_pools_the_points():
    tm.set_backend("numpy")
    params, batch = make_problem()
    g, _ = meta.reptile(tanh_loss, params, batch, 0.3, 2, use_query=True)
    pooled = TaskBatch(np.concatenate([batch.support_x, batch.query_x], 1),
                       np.concatenate([batch.support_y, batch.query_y], 1),
                       batch.query_x, batch.query_y)
    g2, _ = meta.reptile(tanh_loss, params, pooled, 0.3, 2)
    np.testing.assert_allclose(flat(g), flat(g2), atol=1e-13)


def test_reptile_minibatches_by_hand():
    """inner_batch = 2 on K = 5 points: steps use rows 0-1, 2-3, 0-1, … (two whole blocks),
    the linear model's steps written out by hand per task in NumPy."""
    tm.set_backend("numpy")
    params, batch = linear_problem(B=3, K=5)
    W, b = params
    alpha, T, bs = 0.1, 4, 2
    diffs_W, diffs_b = [], []
    for e in range(3):
        We, be = W.copy(), b.copy()
        for t in range(T):
            lo = (t % 2) * bs
            x, y = batch.support_x[e, lo:lo + bs], batch.support_y[e, lo:lo + bs]
            r = x @ We + be - y
            We, be = We - alpha * (2.0 / bs) * x.T @ r, be - alpha * (2.0 / bs) * r.sum(0)
        diffs_W.append(W - We)
        diffs_b.append(b - be)
    g, _ = meta.reptile(linear_loss, [W, b], batch, alpha, T, inner_batch=bs)
    np.testing.assert_allclose(g[0], np.mean(diffs_W, axis=0), atol=1e-13)
    np.testing.assert_allclose(g[1], np.mean(diffs_b, axis=0), atol=1e-13)
    full, _ = meta.reptile(linear_loss, [W, b], batch, alpha, T, inner_batch=5)
    plain, _ = meta.reptile(linear_loss, [W, b], batch, alpha, T)
    np.testing.assert_allclose(flat(full), flat(plain), atol=1e-15)
    with pytest.raises(ValueError, match="inner_batch must be in 1..5"):
        meta.reptile(linear_loss, [W, b], batch, alpha, T, inner_batch=6)


# ---- iMAML on a quadratic inner problem ----------------------------------------------------


def linear_problem(B=3, K=5, d=3, seed=1):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(d, 1)), rng.normal(size=(1,))]
    batch = TaskBatch(rng.normal(size=(B, K, d)), rng.normal(size=(B, K, 1)),
                      rng.normal(size=(B, K, d)), rng.normal(size=(B, K, 1)))
    return params, batch


def closed_form_solver(loss_fn, theta, x, y, lam):
    """φ* = argmin (1/K)‖Aφ − y‖² + (λ/2)‖φ − θ‖², A = [x, 1], per task."""
    W, b = np.asarray(theta[0]), np.asarray(theta[1])
    B, K, d = x.shape
    A = np.concatenate([x, np.ones((B, K, 1))], axis=2)
    theta_flat = np.concatenate([W[..., 0], b], axis=1)  # (B, d+1)
    H = 2.0 / K * np.einsum("bki,bkj->bij", A, A)
    rhs = 2.0 / K * np.einsum("bki,bk->bi", A, y[..., 0]) + lam * theta_flat
    phi = np.linalg.solve(H + lam * np.eye(d + 1), rhs[..., None])[..., 0]
    return [phi[:, :d, None], phi[:, d:]]


def ift_gradient(params, batch, lam):
    """(1/B) Σ_e (I + H_e/λ)^{-1} ∇L_Q(φ_e), H_e from tm.hessian, solved by numpy."""
    B = batch.support_x.shape[0]
    phi = closed_form_solver(None, meta.broadcast_tasks(params, B), batch.support_x,
                             batch.support_y, lam)
    total = 0.0
    for e in range(B):
        phi_e, unravel = tm.ravel_pytree([phi[0][e], phi[1][e]])
        phi_e = np.asarray(phi_e)

        def support(v, e=e, unravel=unravel):
            p = unravel(v)
            return linear_loss([p[0][None], p[1][None]], batch.support_x[e:e + 1],
                               batch.support_y[e:e + 1])[0]

        def query(v, e=e, unravel=unravel):
            p = unravel(v)
            return linear_loss([p[0][None], p[1][None]], batch.query_x[e:e + 1],
                               batch.query_y[e:e + 1])[0]

        H = np.asarray(tm.hessian(support)(phi_e))
        gq = np.asarray(tm.grad(query)(phi_e))
        total = total + np.linalg.solve(np.eye(H.shape[0]) + H / lam, gq)
    return total / B


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_imaml_equals_implicit_function_theorem(backend, lam):
    params, batch = linear_problem()
    g, info = meta.imaml(linear_loss, params, batch, 0.1, 0, lam=lam, cg_steps=20,
                         cg_tol=1e-14, inner_solver=closed_form_solver)
    np.testing.assert_allclose(flat(g), ift_gradient(params, batch, lam), rtol=0, atol=1e-8)
    assert info["cg_residuals"].shape[1] == 3
    assert info["cg_residuals"].shape[0] == info["cg_iterations"] + 1
    assert not info["neg_curvature"].any()


def test_imaml_equals_finite_differences_of_the_exact_inner_solution():
    tm.set_backend("numpy")
    params, batch = linear_problem()
    lam = 1.0
    B = batch.support_x.shape[0]

    def objective(v, unravel):
        theta = meta.broadcast_tasks(unravel(v), B)
        phi = closed_form_solver(None, theta, batch.support_x, batch.support_y, lam)
        return float(np.mean(linear_loss(phi, batch.query_x, batch.query_y)))

    g, _ = meta.imaml(linear_loss, params, batch, 0.1, 0, lam=lam, cg_steps=20, cg_tol=1e-14,
                      inner_solver=closed_form_solver)
    np.testing.assert_allclose(flat(g), central_differences(objective, params), rtol=1e-7,
                               atol=1e-9)


def test_imaml_gradient_descent_inner_loop_converges_to_the_closed_form():
    tm.set_backend("numpy")
    params, batch = linear_problem()
    g_gd, info = meta.imaml(linear_loss, params, batch, 0.1, 400, lam=1.0, cg_steps=20,
                            cg_tol=1e-14)
    g_cf, _ = meta.imaml(linear_loss, params, batch, 0.1, 0, lam=1.0, cg_steps=20,
                         cg_tol=1e-14, inner_solver=closed_form_solver)
    np.testing.assert_allclose(flat(g_gd), flat(g_cf), atol=1e-9)
    assert info["query_loss"].shape == (3,)


def test_imaml_reports_negative_curvature_without_nans():
    tm.set_backend("numpy")
    params, batch = make_problem()
    g, info = meta.imaml(tanh_loss, params, batch, 0.3, 1, lam=0.01, cg_steps=10)
    assert info["neg_curvature"].shape == (3,)
    assert np.isfinite(flat(g)).all()
    g2, info2 = meta.imaml(tanh_loss, params, batch, 0.3, 1, lam=0.01, cg_steps=10,
                           on_negative_curvature="stop")
    assert np.isfinite(flat(g2)).all()
    assert info2["neg_curvature"].any() == info["neg_curvature"].any()


# ---- Meta-SGD ------------------------------------------------------------------------------


def test_metasgd_matches_central_differences_in_both_arguments():
    tm.set_backend("numpy")
    params, batch = make_problem()
    rng = np.random.default_rng(5)
    lrs = [0.2 + 0.1 * rng.random(p.shape) for p in params]
    (g_p, g_a), info = meta.metasgd(tanh_loss, params, lrs, batch, 2)

    def objective_params(v, unravel):
        theta = meta.adapt(tanh_loss, unravel(v), batch.support_x, batch.support_y, lrs, 2)
        return float(np.mean(tanh_loss(theta, batch.query_x, batch.query_y)))

    def objective_lrs(v, unravel):
        theta = meta.adapt(tanh_loss, params, batch.support_x, batch.support_y, unravel(v), 2)
        return float(np.mean(tanh_loss(theta, batch.query_x, batch.query_y)))

    np.testing.assert_allclose(flat(g_p), central_differences(objective_params, params),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(flat(g_a), central_differences(objective_lrs, lrs),
                               rtol=1e-6, atol=1e-8)


def test_metasgd_with_uniform_rates_is_maml():
    tm.set_backend("numpy")
    params, batch = make_problem()
    lrs = [np.full_like(p, 0.3) for p in params]
    (g_p, _), _ = meta.metasgd(tanh_loss, params, lrs, batch, 2)
    g, _ = meta.maml(tanh_loss, params, batch, 0.3, 2)
    np.testing.assert_allclose(flat(g_p), flat(g), atol=1e-12)


def test_pretrain_is_the_joint_gradient_on_all_points():
    tm.set_backend("numpy")
    params, batch = make_problem()
    g, info = meta.pretrain(tanh_loss, params, batch)
    pooled = TaskBatch(np.concatenate([batch.support_x, batch.query_x], 1),
                       np.concatenate([batch.support_y, batch.query_y], 1),
                       batch.query_x, batch.query_y)
    g0, _ = meta.maml(tanh_loss, params, pooled._replace(query_x=pooled.support_x,
                                                         query_y=pooled.support_y), 0.1, 0)
    np.testing.assert_allclose(flat(g), flat(g0), atol=1e-13)


def test_algorithms_run_in_float32_and_keep_the_dtype():
    tm.set_backend("numpy")
    params, batch = make_problem()
    params = [p.astype(np.float32) for p in params]
    batch = TaskBatch(*(a.astype(np.float32) for a in batch[:4]))
    for g, _ in [meta.maml(tanh_loss, params, batch, 0.1, 2),
                 meta.maml(tanh_loss, params, batch, 0.1, 2, method="hvp_chain"),
                 meta.reptile(tanh_loss, params, batch, 0.1, 2),
                 meta.imaml(tanh_loss, params, batch, 0.1, 2, lam=1.0, cg_steps=3)]:
        assert all(a.dtype == np.float32 for a in g)


@pytest.mark.parametrize("T", [1, 3])
def test_hvp_chain_equals_unrolled_on_a_relu_network(backend, T):
    params, batch = make_problem(B=4, K=4, sizes=(1, 8, 8, 1))

    def relu_loss(p, x, y):
        return nn.mse(nn.mlp(p, x), y)

    g_u, _ = meta.maml(relu_loss, params, batch, 0.1, T)
    g_c, _ = meta.maml(relu_loss, params, batch, 0.1, T, method="hvp_chain")
    np.testing.assert_allclose(flat(g_c), flat(g_u), rtol=0, atol=1e-10)
