"""iMAML's inner solvers and its implicit gradient against closed forms, numpy and central
differences, in float64."""

from __future__ import annotations

import numpy as np
import pytest

import tinymeta as tm
from tinymeta import meta, nn
from tinymeta.tasks.base import TaskBatch


def linear_loss(params, x, y):
    return nn.mse(nn.linear(x, params[0], params[1]), y)


def tanh_loss(params, x, y):
    return nn.mse(nn.mlp(params, x, activation=tm.tanh), y)


def flat(tree):
    return np.asarray(tm.ravel_pytree(tree)[0])


def task_flat(tree, e):
    return np.concatenate([np.asarray(leaf[e]).ravel() for leaf in tree])


def linear_problem(B=3, K=5, d=3, seed=1):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(d, 1)), rng.normal(size=(1,))]
    batch = TaskBatch(rng.normal(size=(B, K, d)), rng.normal(size=(B, K, 1)),
                      rng.normal(size=(B, K, d)), rng.normal(size=(B, K, 1)))
    return params, batch


def design(x):
    """A = [x, 1] per task: L_S(φ) = (1/K)‖Aφ − y‖², H = (2/K) AᵀA."""
    B, K, _ = x.shape
    return np.concatenate([x, np.ones((B, K, 1))], axis=2)


def closed_form_solver(loss_fn, theta, x, y, lam):
    """φ* = argmin (1/K)‖Aφ − y‖² + (λ/2)‖φ − θ‖², per task, by numpy.linalg.solve."""
    W, b = np.asarray(theta[0]), np.asarray(theta[1])
    A = design(x)
    K, n = A.shape[1], A.shape[2]
    H = 2.0 / K * np.einsum("bki,bkj->bij", A, A)
    rhs = 2.0 / K * np.einsum("bki,bk->bi", A, y[..., 0]) + lam * np.concatenate(
        [W[..., 0], b], axis=1)
    phi = np.linalg.solve(H + lam * np.eye(n), rhs[..., None])[..., 0]
    return [phi[:, :n - 1, None], phi[:, n - 1:]]


def hessians(x):
    A = design(x)
    return 2.0 / A.shape[1] * np.einsum("bki,bkj->bij", A, A)


# ---- the inner solvers on a quadratic --------------------------------------------------------


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_newton_cg_reaches_the_closed_form_in_one_newton_step(lam):
    tm.set_backend("numpy")
    params, batch = linear_problem()
    sx, sy = batch.support_x, batch.support_y
    phi, info = meta.proximal_adapt(linear_loss, params, sx, sy, lam, 1, solver="newton-cg",
                                    cg_steps=8)
    want = closed_form_solver(None, meta.broadcast_tasks(params, 3), sx, sy, lam)
    np.testing.assert_allclose(flat(phi), flat(want), rtol=0, atol=1e-10)
    np.testing.assert_array_equal(info["iterations"], [1, 1, 1])
    assert (info["stationarity"] < 1e-10).all()
    assert not info["neg_curvature"].any() and not info["breakdown"].any()
    assert info["hvps"] <= 8


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_gradient_descent_converges_at_the_rate_of_its_condition_number(lam):
    """φ_t − φ* = (I − αM)^t (θ_0 − φ*), M = H + λI, so ‖φ_t − φ*‖ ≤ ρ^t ‖θ_0 − φ*‖ with
    ρ = max_i |1 − α m_i|, = (κ − 1)/(κ + 1) at α = 2/(μ + L), and the error's ratio from one
    step to the next tends to ρ."""
    tm.set_backend("numpy")
    params, batch = linear_problem()
    sx, sy = batch.support_x, batch.support_y
    theta = meta.broadcast_tasks(params, 3)
    phi_star = closed_form_solver(None, theta, sx, sy, lam)
    eig = np.linalg.eigvalsh(hessians(sx)) + lam  # (B, n): the eigenvalues of M per task
    alpha = 2.0 / (eig.min() + eig.max())  # one α for all tasks
    rho = np.abs(1.0 - alpha * eig).max(axis=1)
    path = list(meta.proximal_path(linear_loss, params, sx, sy, lam, 60, solver="gd",
                                   lr=alpha))
    M = hessians(sx) + lam * np.eye(4)
    e0 = np.stack([task_flat(theta, e) - task_flat(phi_star, e) for e in range(3)])
    for t in (1, 10, 60):
        err = np.stack([task_flat(path[t].phi, e) - task_flat(phi_star, e) for e in range(3)])
        predicted = np.einsum("bij,bj->bi", np.linalg.matrix_power(np.eye(4) - alpha * M, t),
                              e0)
        np.testing.assert_allclose(err, predicted, rtol=0, atol=1e-10)
        assert (np.linalg.norm(err, axis=1) <= rho ** t * np.linalg.norm(e0, axis=1)
                * (1 + 1e-9)).all()
    err = [np.linalg.norm(np.stack([task_flat(path[t].phi, e) - task_flat(phi_star, e)
                                    for e in range(3)]), axis=1) for t in (49, 50)]
    np.testing.assert_allclose(err[1] / err[0], rho, rtol=1e-3)
    np.testing.assert_allclose(path[0].stationarity, 1.0)


def test_gradient_descent_refuses_a_rising_step_and_halves_that_tasks_rate():
    """G(φ) = ½ h φ² + (λ/2)(φ − θ)² with h = 30, λ = 1: α = 0.1 > 2/31 would diverge."""
    tm.set_backend("numpy")

    def quad(params, x, y):
        return 0.5 * tm.sum(x * params[0] * params[0], axis=1)

    x = np.array([[30.0], [1.0]])  # task 0 sharp, task 1 flat
    phi, info = meta.proximal_adapt(quad, [np.array([1.0])], x, x, 1.0, 80, solver="gd",
                                    lr=0.1)
    np.testing.assert_allclose(phi[0][:, 0], [1.0 / 31.0, 1.0 / 2.0], atol=1e-10)
    assert not info["breakdown"].any() and np.isfinite(info["objective"]).all()
    assert info["iterations"][0] < 80 and info["iterations"][1] == 80  # refused steps
    phi, info = meta.proximal_adapt(quad, [np.array([1.0])], x, x, 1.0, 5, solver="gd",
                                    lr=0.1, max_halvings=0)
    np.testing.assert_array_equal(info["breakdown"], [True, False])
    assert phi[0][0, 0] == 1.0  # stopped at its last good iterate, θ_0


def test_gradient_descent_with_lam_zero_is_fine_tuning():
    tm.set_backend("numpy")
    rng = np.random.default_rng(0)
    params = nn.mlp_init((1, 4, 4, 1), seed=0, dtype=np.float64)
    x, y = rng.normal(size=(3, 5, 1)), rng.normal(size=(3, 5, 1))
    phi, info = meta.proximal_adapt(tanh_loss, params, x, y, 0.0, 4, solver="gd", lr=0.1)
    want = meta.adapt(tanh_loss, params, x, y, 0.1, 4)
    np.testing.assert_allclose(flat(phi), flat(want), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(info["iterations"], 4)


@pytest.mark.parametrize("solver", ["gd", "newton-cg"])
def test_stationarity_is_the_relative_gradient_norm_of_the_proximal_objective(solver):
    tm.set_backend("numpy")
    rng = np.random.default_rng(1)
    params = nn.mlp_init((1, 4, 4, 1), seed=1, dtype=np.float64)
    x, y = rng.normal(size=(3, 5, 1)), rng.normal(size=(3, 5, 1))
    lam = 0.7
    phi, info = meta.proximal_adapt(tanh_loss, params, x, y, lam, 3, solver=solver, lr=0.05)
    for e in range(3):
        def support(p, e=e):
            return tanh_loss([leaf[None] for leaf in p], x[e:e + 1], y[e:e + 1])[0]

        phi_e = [leaf[e] for leaf in phi]
        g = flat(tm.grad(support)(phi_e)) + lam * (flat(phi_e) - flat(params))
        want = np.linalg.norm(g) / np.linalg.norm(flat(tm.grad(support)(params)))
        np.testing.assert_allclose(info["stationarity"][e], want, rtol=1e-12)
        G = support(phi_e) + 0.5 * lam * np.sum((flat(phi_e) - flat(params)) ** 2)
        np.testing.assert_allclose(info["objective"][e], G, rtol=1e-12)


def test_newton_cg_flags_negative_curvature_and_still_descends():
    tm.set_backend("numpy")
    rng = np.random.default_rng(2)
    params = [p + 0.5 * rng.normal(size=p.shape)
              for p in nn.mlp_init((1, 6, 6, 1), seed=2, dtype=np.float64)]
    x, y = rng.normal(size=(4, 6, 1)), 3 * rng.normal(size=(4, 6, 1))
    path = list(meta.proximal_path(tanh_loss, params, x, y, 1e-3, 6, solver="newton-cg"))
    assert path[-1].neg_curvature.any()
    objectives = np.stack([s.objective for s in path])
    assert np.isfinite(objectives).all()
    assert (np.diff(objectives, axis=0) <= 0).all()  # the line search never climbs


def test_proximal_adapt_rejects_bad_arguments():
    x = np.ones((1, 2, 1))
    params = nn.mlp_init((1, 2, 1), seed=0, dtype=np.float64)
    for kw, msg in [({"solver": "adam"}, "solver must be one of"), ({"lam": -1.0}, "lam"),
                    ({"steps": -1}, "steps >= 0"), ({"lr": 0.0}, "lr > 0"),
                    ({"tol": -1.0}, "tol")]:
        args = {"lam": 1.0, "steps": 1, **kw}
        with pytest.raises(ValueError, match=msg):
            meta.proximal_adapt(tanh_loss, params, x, x, **args)


# ---- the implicit gradient ---------------------------------------------------------------------


def ift_gradient(params, batch, lam, damping=0.0):
    """(1/B) Σ_e ((1 + d)I + H_e/λ)^{-1} ∇L_Q(φ*_e), every factor by numpy."""
    B = batch.support_x.shape[0]
    phi = closed_form_solver(None, meta.broadcast_tasks(params, B), batch.support_x,
                             batch.support_y, lam)
    H = hessians(batch.support_x)
    A = design(batch.query_x)
    K = A.shape[1]
    total = 0.0
    for e in range(B):
        resid = A[e] @ task_flat(phi, e) - batch.query_y[e, :, 0]
        g_query = 2.0 / K * A[e].T @ resid
        total = total + np.linalg.solve((1 + damping) * np.eye(4) + H[e] / lam, g_query)
    return total / B


@pytest.mark.parametrize("solver", ["cg", "minres", "normal-cg"])
@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_damping_and_every_linear_solver_against_numpy(solver, damping):
    tm.set_backend("numpy")
    params, batch = linear_problem()
    g, info = meta.imaml(linear_loss, params, batch, 0.1, 0, lam=0.5, cg_steps=40,
                         cg_tol=1e-13, damping=damping, inner_solver=closed_form_solver,
                         linear_solver=solver)
    np.testing.assert_allclose(flat(g), ift_gradient(params, batch, 0.5, damping), rtol=0,
                               atol=1e-8)
    assert not info["breakdown"].any()


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_imaml_default_gradient_descent_reaches_the_closed_form(lam):
    tm.set_backend("numpy")
    params, batch = linear_problem()
    g, info = meta.imaml(linear_loss, params, batch, 0.1, 800, lam=lam, cg_steps=20,
                         cg_tol=1e-14)
    np.testing.assert_allclose(flat(g), ift_gradient(params, batch, lam), rtol=0, atol=1e-9)
    assert (info["stationarity"] < 1e-9).all()


def test_implicit_gradient_equals_central_differences_on_a_tanh_network():
    """With the inner problem solved to tolerance (Newton-CG, stationarity ≤ 1e-12), the
    meta-gradient is the derivative of θ_0 ↦ (1/B) Σ_e L_Q(φ*_e(θ_0))."""
    tm.set_backend("numpy")
    rng = np.random.default_rng(4)
    sizes = (1, 3, 3, 1)
    params = nn.mlp_init(sizes, seed=4, dtype=np.float64)
    batch = TaskBatch(*(rng.normal(size=(2, 4, 1)) for _ in range(4)))
    lam, n = 2.0, flat(params).size
    solve = {"lam": lam, "steps": 40, "solver": "newton-cg", "tol": 1e-12, "cg_steps": n}
    g, info = meta.imaml(tanh_loss, params, batch, 0.1, 40, lam=lam, cg_steps=2 * n,
                         cg_tol=1e-14, inner_solver="newton-cg", inner_tol=1e-12,
                         newton_cg_steps=n, linear_solver="minres")
    assert (info["stationarity"] <= 1e-12).all() and not info["breakdown"].any()

    def objective(v, unravel):
        phi, _ = meta.proximal_adapt(tanh_loss, unravel(v), batch.support_x, batch.support_y,
                                     **solve)
        return float(np.mean(tanh_loss(phi, batch.query_x, batch.query_y)))

    v, unravel = tm.ravel_pytree(params)
    v = np.asarray(v)
    h = 1e-5
    fd = np.array([(objective(v + h * e, unravel) - objective(v - h * e, unravel)) / (2 * h)
                   for e in np.eye(n)])
    np.testing.assert_allclose(flat(g), fd, rtol=0, atol=1e-6)


# ---- info["loss"] is the mean of the query losses, for every algorithm -------------------------


ALGORITHMS = {
    "maml": lambda p, b: meta.maml(tanh_loss, p, b, 0.1, 2),
    "fomaml": lambda p, b: meta.fomaml(tanh_loss, p, b, 0.1, 2),
    "reptile": lambda p, b: meta.reptile(tanh_loss, p, b, 0.1, 2, use_query=True),
    "imaml": lambda p, b: meta.imaml(tanh_loss, p, b, 0.1, 2, lam=1.0, cg_steps=3),
    "imaml-newton": lambda p, b: meta.imaml(tanh_loss, p, b, 0.1, 2, lam=1.0, cg_steps=3,
                                            inner_solver="newton-cg", linear_solver="minres"),
    "metasgd": lambda p, b: meta.metasgd(tanh_loss, p, [np.full_like(a, 0.1) for a in p], b, 2),
    "pretrain": lambda p, b: meta.pretrain(tanh_loss, p, b),
}


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_info_loss_is_the_mean_of_the_query_losses(algo):
    tm.set_backend("numpy")
    rng = np.random.default_rng(6)
    params = nn.mlp_init((1, 4, 4, 1), seed=6, dtype=np.float64)
    batch = TaskBatch(*(rng.normal(size=(3, 4, 1)) for _ in range(4)))
    _, info = ALGORITHMS[algo](params, batch)
    query = np.asarray(info["query_loss"])
    assert query.shape == (3,) and np.ptp(query) > 0
    np.testing.assert_allclose(float(info["loss"]), np.mean(query), rtol=1e-14)


# ---- recorded once, replayed bitwise -----------------------------------------------------------


@pytest.mark.parametrize("kw", [
    {"inner_solver": "newton-cg", "linear_solver": "minres"},
    {"inner_solver": "gd", "inner_tol": 0.2, "linear_solver": "normal-cg"},
    {"inner_solver": "gd", "linear_solver": "cg"},  # α = 0.5: some tasks halve theirs
], ids=["newton-minres", "gd-tol-normal", "gd-halving"])
def test_imaml_solvers_replay_bitwise_under_compile(kw):
    tm.set_backend("numpy")
    params = nn.mlp_init((1, 8, 8, 1), seed=0, dtype=np.float64)
    task = tm.tasks.Sinusoid()

    def f(p, b):
        return meta.imaml(tanh_loss, p, b, 0.5, 4, 1.0, 4, **kw)

    compiled = tm.compile(f)
    compiled(params, TaskBatch(*task.sample(5, 5, 5, seed=0)[:4]))
    batch = TaskBatch(*task.sample(5, 5, 5, seed=1)[:4])
    g, info = compiled(params, batch)
    g_ref, info_ref = f(params, batch)
    for a, b in zip(g, g_ref):
        np.testing.assert_array_equal(a, b)
    for key in ("query_loss", "stationarity", "inner_breakdown", "inner_neg_curvature",
                "neg_curvature", "breakdown", "loss"):
        np.testing.assert_array_equal(np.asarray(info[key]), np.asarray(info_ref[key]))
    if kw.get("inner_tol") is None and kw["inner_solver"] == "gd":
        scales = [s.scale for s in meta.proximal_path(tanh_loss, params, batch.support_x,
                                                      batch.support_y, 1.0, 4, lr=0.5)]
        assert (scales[-1] < 1).any()  # the halving branch was exercised


# ---- the truncated loop's own gradient, and where the implicit one meets it ---------------------


def test_reverse_mode_through_the_gd_solver_equals_central_differences():
    """The 'true' meta-gradient of docs/maths.md's figure: reverse mode through T recorded
    steps of the proximal solver (benchmarks/imaml_stationarity.py)."""
    tm.set_backend("numpy")
    rng = np.random.default_rng(8)
    params = nn.mlp_init((1, 3, 3, 1), seed=8, dtype=np.float64)
    batch = TaskBatch(*(rng.normal(size=(2, 4, 1)) for _ in range(4)))

    def objective(theta):
        *_, last = meta.proximal_path(tanh_loss, theta, batch.support_x, batch.support_y, 0.7,
                                      3, solver="gd", lr=0.2)
        return tm.mean(tanh_loss(last.phi, batch.query_x, batch.query_y))

    g = flat(tm.grad(objective)(params))
    v, unravel = tm.ravel_pytree(params)
    v = np.asarray(v)
    fd = np.array([(float(objective(unravel(v + 1e-6 * e))) -
                    float(objective(unravel(v - 1e-6 * e)))) / 2e-6 for e in np.eye(v.size)])
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


def test_at_stationarity_the_implicit_gradient_is_the_unrolled_one():
    tm.set_backend("numpy")
    rng = np.random.default_rng(9)
    params = nn.mlp_init((1, 4, 4, 1), seed=9, dtype=np.float64)
    batch = TaskBatch(*(rng.normal(size=(2, 5, 1)) for _ in range(4)))
    lam, T, alpha = 10.0, 300, 0.05

    def objective(theta):
        *_, last = meta.proximal_path(tanh_loss, theta, batch.support_x, batch.support_y, lam,
                                      T, solver="gd", lr=alpha)
        return tm.mean(tanh_loss(last.phi, batch.query_x, batch.query_y))

    unrolled = flat(tm.grad(objective)(params))
    implicit, info = meta.imaml(tanh_loss, params, batch, alpha, T, lam=lam, cg_steps=60,
                                cg_tol=1e-13, linear_solver="minres")
    assert (info["stationarity"] < 1e-10).all()
    np.testing.assert_allclose(flat(implicit), unrolled, rtol=1e-7, atol=1e-10)
