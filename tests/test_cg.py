"""The batched conjugate-gradient solver against numpy.linalg.solve, and its edge cases."""

from __future__ import annotations

import numpy as np
import pytest

import tinymeta as tm
from tinymeta.meta import cg


def batched_matvec(A):
    return lambda p: np.einsum("bij,bj->bi", A, p)


def random_spd(B, n, seed):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(B, n, n))
    return M @ np.swapaxes(M, 1, 2) + 0.5 * np.eye(n), rng.normal(size=(B, n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cg_solves_random_spd_systems(seed):
    tm.set_backend("numpy")
    A, b = random_spd(4, 6, seed)
    x, info = cg(batched_matvec(A), b, maxiter=60, tol=1e-13)
    np.testing.assert_allclose(x, np.linalg.solve(A, b[..., None])[..., 0], rtol=1e-8,
                               atol=1e-10)
    assert info["residuals"].shape == (info["iterations"] + 1, 4)
    np.testing.assert_allclose(info["residuals"][0], 1.0)
    assert info["converged"].all() and not info["neg_curvature"].any()


def test_cg_is_exact_in_n_steps_on_a_well_conditioned_system():
    A, b = random_spd(3, 4, 7)
    A = A + 10 * np.eye(4)
    x, info = cg(batched_matvec(A), b, maxiter=4)
    np.testing.assert_allclose(x, np.linalg.solve(A, b[..., None])[..., 0], atol=1e-10)
    assert info["iterations"] == 4


def test_cg_on_pytrees_with_per_task_step_sizes():
    A, b = random_spd(3, 5, 4)
    mv = batched_matvec(A)

    def tree_mv(p):
        out = mv(np.concatenate([p["a"], p["b"].reshape(3, -1)], axis=1))
        return {"a": out[:, :1], "b": out[:, 1:].reshape(3, 2, 2)}

    tree_b = {"a": b[:, :1], "b": b[:, 1:].reshape(3, 2, 2)}
    x, info = cg(tree_mv, tree_b, maxiter=50, tol=1e-13)
    full = np.concatenate([x["a"], x["b"].reshape(3, -1)], axis=1)
    np.testing.assert_allclose(full, np.linalg.solve(A, b[..., None])[..., 0], atol=1e-9)


def test_cg_task_with_zero_rhs_returns_zero_and_others_go_on():
    A, b = random_spd(3, 4, 2)
    b[1] = 0.0
    x, info = cg(batched_matvec(A), b, maxiter=30, tol=1e-12)
    np.testing.assert_array_equal(x[1], 0.0)
    assert info["residuals"][0, 1] == 0.0
    np.testing.assert_allclose(x[0], np.linalg.solve(A[0], b[0]), atol=1e-9)


def test_cg_tolerance_stops_each_task_on_its_own():
    A, b = random_spd(2, 8, 3)
    A[0] = np.eye(8) * 2.0  # converges in one step
    x, info = cg(batched_matvec(A), b, maxiter=40, tol=1e-10)
    res = info["residuals"]
    assert res[1, 0] <= 1e-10
    assert np.all(res[1:, 0] == res[1, 0])  # frozen once done
    np.testing.assert_allclose(x[0], b[0] / 2.0)


def test_cg_flags_negative_curvature_and_continues_as_plain_cg():
    A = np.diag([1.0, -2.0, 3.0])[None]
    b = np.ones((1, 3))
    x, info = cg(batched_matvec(A), b, maxiter=3)
    assert info["neg_curvature"][0]
    np.testing.assert_allclose(x[0], np.linalg.solve(A[0], b[0]), atol=1e-10)


def test_cg_stop_mode_returns_b_at_the_first_iteration():
    A = np.stack([np.diag([-1.0, -2.0]), np.diag([1.0, 2.0])])
    b = np.array([[1.0, 1.0], [1.0, 1.0]])
    x, info = cg(batched_matvec(A), b, maxiter=5, on_negative_curvature="stop")
    np.testing.assert_array_equal(info["neg_curvature"], [True, False])
    np.testing.assert_array_equal(x[0], b[0])
    np.testing.assert_allclose(x[1], [1.0, 0.5], atol=1e-12)


def test_cg_stop_mode_returns_the_last_iterate_later():
    A = np.diag([1.0, 2.0, -100.0])[None]
    b = np.array([[1.0, 1.0, 0.01]])
    x_stop, info = cg(batched_matvec(A), b, maxiter=5, on_negative_curvature="stop")
    assert info["neg_curvature"][0]
    x1, _ = cg(batched_matvec(A), b, maxiter=1)
    k = info["iterations"]
    assert k >= 2
    xk, _ = cg(batched_matvec(A), b, maxiter=k - 1)
    np.testing.assert_allclose(x_stop, xk, atol=1e-14)
    assert np.isfinite(x1).all()


def test_cg_zero_curvature_never_makes_nans():
    A = np.diag([1.0, -1.0])[None]
    b = np.ones((1, 2))  # bᵀAb = 0
    for mode in ("continue", "stop"):
        x, info = cg(batched_matvec(A), b, maxiter=5, on_negative_curvature=mode)
        assert np.isfinite(x).all() and np.isfinite(info["residuals"]).all()
        assert info["neg_curvature"][0]


def test_cg_from_a_starting_point():
    A, b = random_spd(2, 4, 9)
    x0 = np.ones((2, 4))
    x, _ = cg(batched_matvec(A), b, x0=x0, maxiter=40, tol=1e-13)
    np.testing.assert_allclose(x, np.linalg.solve(A, b[..., None])[..., 0], atol=1e-9)


def test_cg_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="on_negative_curvature"):
        cg(lambda p: p, np.ones((1, 2)), on_negative_curvature="explode")
