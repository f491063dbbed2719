"""MINRES and CG on the normal equations against numpy.linalg.solve, and their flags."""

from __future__ import annotations

import numpy as np
import pytest

import tinymeta as tm
from tinymeta import meta
from tinymeta.meta.minres import linear_solve
from tinymeta.tasks.base import TaskBatch

SOLVERS = {"minres": meta.minres, "normal-cg": meta.normal_cg}


def batched_matvec(A):
    return lambda p: np.einsum("bij,bj->bi", A, p)


def random_indefinite(B, n, seed):
    """Symmetric matrices with eigenvalues of both signs, kept away from 0 (|λ| ≥ 0.5)."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(B, n, n)))[0]
    mags = rng.uniform(0.5, 3.0, size=(B, n))
    signs = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    A = np.einsum("bij,bj,bkj->bik", Q, mags * signs, Q)
    return A, rng.normal(size=(B, n))


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solvers_equal_numpy_on_random_symmetric_indefinite_systems(name, seed):
    tm.set_backend("numpy")
    A, b = random_indefinite(4, 6, seed)
    x, info = SOLVERS[name](batched_matvec(A), b, maxiter=60, tol=1e-12)
    np.testing.assert_allclose(x, np.linalg.solve(A, b[..., None])[..., 0], rtol=1e-8,
                               atol=1e-9)
    assert info["converged"].all() and not info["breakdown"].any()
    assert info["residuals"].shape == (info["iterations"] + 1, 4)
    true = np.linalg.norm(b - np.einsum("bij,bj->bi", A, x), axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(info["residuals"][-1], true, atol=1e-10)


def test_minres_residuals_never_grow_and_it_is_exact_in_n_steps():
    A, b = random_indefinite(3, 5, 7)
    x, info = meta.minres(batched_matvec(A), b, maxiter=5)
    res = info["residuals"]
    assert np.all(np.diff(res, axis=0) <= 1e-12)
    np.testing.assert_allclose(x, np.linalg.solve(A, b[..., None])[..., 0], atol=1e-9)


def test_normal_cg_is_exact_in_n_steps_up_to_rounding():
    """CG on A² (n distinct eigenvalues) ends in n iterations in exact arithmetic."""
    A, b = random_indefinite(3, 6, 5)
    x, info = meta.normal_cg(batched_matvec(A), b, maxiter=6)
    np.testing.assert_allclose(x, np.linalg.solve(A, b[..., None])[..., 0], atol=1e-8)
    assert info["matvecs"] == 1 + 2 * info["iterations"]


def test_minres_flags_negative_curvature_on_indefinite_systems_only():
    A, b = random_indefinite(3, 5, 3)
    _, info = meta.minres(batched_matvec(A), b, maxiter=5)
    assert info["neg_curvature"].all()  # T_5 is similar to A: a non-positive pivot
    spd = np.einsum("bij,bkj->bik", A, A) + np.eye(5)
    _, info = meta.minres(batched_matvec(spd), b, maxiter=5)
    assert not info["neg_curvature"].any()


def test_normal_cg_flags_negative_curvature_it_meets():
    b = np.ones((2, 3))
    A = np.stack([-np.eye(3) * 2.0, np.eye(3) * 2.0])
    x, info = meta.normal_cg(batched_matvec(A), b, maxiter=3)
    np.testing.assert_array_equal(info["neg_curvature"], [True, False])
    np.testing.assert_allclose(x, [[-0.5] * 3, [0.5] * 3])


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solvers_on_pytrees_with_a_zero_task_and_a_start(name):
    A, b = random_indefinite(3, 5, 4)
    b[1] = 0.0
    mv = batched_matvec(A)

    def tree_mv(p):
        out = mv(np.concatenate([p["a"], p["b"].reshape(3, -1)], axis=1))
        return {"a": out[:, :1], "b": out[:, 1:].reshape(3, 2, 2)}

    tree_b = {"a": b[:, :1], "b": b[:, 1:].reshape(3, 2, 2)}
    x, info = SOLVERS[name](tree_mv, tree_b, maxiter=40, tol=1e-12)
    full = np.concatenate([x["a"], x["b"].reshape(3, -1)], axis=1)
    np.testing.assert_allclose(full, np.linalg.solve(A, b[..., None])[..., 0], atol=1e-9)
    np.testing.assert_array_equal(full[1], 0.0)
    assert info["residuals"][0, 1] == 0.0
    b[1] = 1.0  # (a task with b = 0 returns its x0, as cg's does)
    x, _ = SOLVERS[name](mv, b, x0=np.ones((3, 5)), maxiter=40, tol=1e-12)
    np.testing.assert_allclose(x, np.linalg.solve(A, b[..., None])[..., 0], atol=1e-9)


# ---- the singular case: I + H/λ with an exact zero eigenvalue ------------------------------

D = np.array([1.0, -3.0, 0.5])  # support loss ½ Σ d_i θ_i²; with λ = 3, 1 + d_2/λ = 0
LAM = 3.0


def diagonal_loss(params, x, y):
    """½ Σ_i x_i θ_i² + Σ_i y_i θ_i per task: the support set (x = d, y = 0) gives the
    singular quadratic, the query set (x = 0, y = c) a linear loss with gradient c."""
    theta = params[0]
    return 0.5 * tm.sum(x * theta * theta, axis=1) + tm.sum(y * theta, axis=1)


def singular_batch(c):
    B = c.shape[0]
    return TaskBatch(np.tile(D, (B, 1)), np.zeros((B, 3)), np.zeros((B, 3)), c)


def identity_solver(loss_fn, theta, x, y, lam):
    return theta


@pytest.mark.parametrize("name", ["minres", "normal-cg", "cg"])
def test_breakdown_is_reported_on_the_singular_case(name):
    tm.set_backend("numpy")
    c = np.array([[1.0, 2.0, 3.0], [1.0, 0.0, 2.0]])  # task 1: ∇L_Q in A's range
    A = np.diag(1.0 + D / LAM)
    for maxiter in (3, 10):
        g, info = meta.imaml(diagonal_loss, [np.zeros(3)], singular_batch(c), 0.1, 0, LAM,
                             maxiter, inner_solver=identity_solver, linear_solver=name)
        np.testing.assert_array_equal(info["breakdown"], [True, False])
        assert np.isfinite(g[0]).all() and np.isfinite(info["cg_residuals"]).all()
        # no silent huge number: the least-squares solvers stay at the least-squares iterate;
        # CG's iterate on an inconsistent system moves along the null axis until its
        # breakdown test stops it (flagged above), bounded but not small
        assert np.abs(g[0]).max() < (1e3 if name == "cg" else 10)
    # the consistent task is solved: its x_1 = c_1 / A (0/0 on the null axis: 0)
    x1, info = linear_solve(name, batched_matvec(np.stack([A, A])), c / 2.0, maxiter=10,
                            tol=1e-12)
    np.testing.assert_allclose(x1[1], [0.75 / 2, 0.0, (6 / 7) * 2 / 2], atol=1e-10)


@pytest.mark.parametrize("name", ["minres", "normal-cg"])
def test_breakdown_stops_at_a_least_squares_iterate(name):
    A = np.diag(1.0 + D / LAM)[None]
    b = np.array([[1.0, 2.0, 3.0]])
    x, info = SOLVERS[name](batched_matvec(A), b, maxiter=20)
    assert info["breakdown"][0]
    r = b - np.einsum("bij,bj->bi", A, x)
    np.testing.assert_allclose(np.abs(r[0]), [0.0, 2.0, 0.0], atol=1e-10)  # b_2 is unreachable


def test_linear_solve_rejects_unknown_names_and_stop_outside_cg():
    with pytest.raises(ValueError, match="linear_solver must be one of"):
        linear_solve("qr", lambda p: p, np.ones((1, 2)), 3)
    with pytest.raises(ValueError, match="applies to the 'cg' solver only"):
        linear_solve("minres", lambda p: p, np.ones((1, 2)), 3, on_negative_curvature="stop")


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solvers_replay_bitwise_under_compile(name):
    tm.set_backend("numpy")
    A, b = random_indefinite(3, 5, 11)
    A2, b2 = random_indefinite(3, 5, 12)

    def solve(A, b):
        return SOLVERS[name](lambda p: tm.sum(A * tm.reshape(p, (3, 1, 5)), axis=2), b,
                             maxiter=8, tol=1e-10)

    compiled = tm.compile(solve)
    compiled(A, b)
    x, info = compiled(A2, b2)
    x_ref, info_ref = solve(A2, b2)
    np.testing.assert_array_equal(x, x_ref)
    for key in ("neg_curvature", "breakdown", "converged"):
        np.testing.assert_array_equal(np.asarray(info[key]), np.asarray(info_ref[key]))
    # eager stops once every task is done; the replay runs every iteration, changing nothing
    res, res_ref = np.asarray(info["residuals"]), info_ref["residuals"]
    k = res_ref.shape[0]
    np.testing.assert_array_equal(res[:k], res_ref)
    np.testing.assert_array_equal(res[k:], np.broadcast_to(res_ref[-1], res[k:].shape))
