"""CG and iMAML on singular systems: breakdown is reported per task, never a silent 10⁶⁸.

The references are independent of cg: the Galerkin solution on the Krylov space CG has
built before it breaks down, K_2 = span{b, Ab}, solved by numpy.linalg.solve, and the
inner loop of iMAML written out in NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest

import tinymeta as tm
from tinymeta.meta import cg
from tinymeta.tasks import TaskBatch

D = np.array([1.0, -3.0, 0.5])  # support loss ½ Σ d_i θ_i²; with λ = 3, I + H/λ is singular
LAM = 3.0


def batched_matvec(A):
    return lambda p: np.einsum("bij,bj->bi", A, p)


def galerkin_k2(A, b):
    """argmin over x ∈ span{b, Ab} of ½ xᵀAx − bᵀx: CG's iterate after two steps."""
    K = np.stack([b, A @ b], axis=1)
    return K @ np.linalg.solve(K.T @ A @ K, K.T @ b)


def singular_and_spd():
    A = np.stack([np.diag(1.0 + D / LAM), np.diag([2.0, 1.0, 0.5])])  # task 0 singular
    b = np.array([[1.0, 1.0, 1.0], [0.3, -0.7, 1.1]])
    return A, b


@pytest.mark.parametrize("mode", ["continue", "stop"])
def test_cg_stops_a_singular_task_at_its_last_good_iterate(mode):
    tm.set_backend("numpy")
    A, b = singular_and_spd()
    x, info = cg(batched_matvec(A), b, maxiter=10, on_negative_curvature=mode)
    np.testing.assert_array_equal(info["breakdown"], [True, False])
    np.testing.assert_allclose(x[0], galerkin_k2(A[0], b[0]), rtol=1e-10)
    np.testing.assert_allclose(x[1], np.linalg.solve(A[1], b[1]), rtol=1e-12)
    res = info["residuals"]
    assert np.isfinite(res).all()
    assert np.all(res[2:, 0] == res[2, 0])  # frozen at the last good iterate
    np.testing.assert_allclose(res[2, 0], np.linalg.norm(b[0] - A[0] @ x[0])
                               / np.linalg.norm(b[0]), rtol=1e-10)
    assert not info["converged"][0]


def test_without_the_breakdown_test_the_singular_task_explodes():
    # the same system with the test switched off (δ → 0): the silent 10⁶⁸ of before
    A, b = singular_and_spd()
    x, info = cg(batched_matvec(A), b, maxiter=10, breakdown_tol=1e-300)
    assert np.abs(x[0]).max() > 1e30
    assert not info["breakdown"].any()


def test_a_step_that_blows_up_the_residual_is_undone():
    # indefinite, pᵀAp = −2e-4 ‖p‖²/2: not zero, but the step multiplies ‖r‖ by ~10⁴
    A = np.diag([1.0, -1.0])[None]
    b = np.array([[1.0, 1.0001]])
    x, info = cg(batched_matvec(A), b, maxiter=3, breakdown_tol=1e-6)  # growth limit 10³
    np.testing.assert_array_equal(x, 0.0)
    assert info["breakdown"][0] and info["neg_curvature"][0]
    np.testing.assert_array_equal(info["residuals"][:, 0], 1.0)
    x_plain, _ = cg(batched_matvec(A), b, maxiter=1, breakdown_tol=1e-300)
    assert np.abs(x_plain).max() > 1e3  # what that step would have returned


def test_a_nan_from_the_matvec_stops_only_its_task():
    A, b = singular_and_spd()
    A[0] = np.eye(3)

    def matvec(p):
        out = np.einsum("bij,bj->bi", A, p)
        out[1] = np.nan
        return out

    x, info = cg(matvec, b, maxiter=5)
    np.testing.assert_array_equal(info["breakdown"], [False, True])
    np.testing.assert_allclose(x[0], b[0], rtol=1e-14)
    np.testing.assert_array_equal(x[1], 0.0)


def test_well_posed_systems_never_break_down():
    rng = np.random.default_rng(0)
    M = rng.normal(size=(5, 6, 6))
    A = M @ np.swapaxes(M, 1, 2) + 0.1 * np.eye(6)
    b = rng.normal(size=(5, 6))
    for tol, it in ((1e-13, 80), (0.0, 30)):  # and past convergence, to rounding
        x, info = cg(batched_matvec(A), b, maxiter=it, tol=tol)
        assert not info["breakdown"].any()
        np.testing.assert_allclose(x, np.linalg.solve(A, b[..., None])[..., 0], rtol=1e-7)


def test_cg_refuses_a_bad_breakdown_tol():
    for bad in (0.0, 1.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="breakdown_tol"):
            cg(lambda p: p, np.ones((1, 2)), breakdown_tol=bad)


def test_cg_with_breakdown_records_and_replays():
    A, b = singular_and_spd()

    def solve(rhs):
        def matvec(p):
            return tm.ops.squeeze(tm.matmul(A, tm.ops.expand_dims(p, -1)), -1)

        x, info = cg(matvec, rhs, maxiter=6)
        return x, info["breakdown"], info["residuals"]

    f = tm.compile(solve)
    f(b * 2.0)  # recorded
    x, broke, res = f(b)  # replayed: a fixed iteration count and masks
    x_eager, broke_eager, res_eager = solve(b)
    np.testing.assert_array_equal(x, x_eager)
    np.testing.assert_array_equal(res, res_eager)
    np.testing.assert_array_equal(broke, [True, False])
    assert len(tm.make_tape(solve)(b)) > 0


# ---- iMAML on the singular system of the issue ------------------------------------------


def support_or_query_loss(theta, x, y):
    """½ Σ d_i θ_i² where x = 1 (the support set), ½ ‖θ − y‖² where x = 0 (the query)."""
    s = x[:, 0, :]
    return 0.5 * tm.sum(s * D * theta * theta + (1.0 - s) * (theta - y[:, 0, :]) ** 2, axis=1)


def singular_imaml_problem(B=2):
    rng = np.random.default_rng(0)
    ones, zeros = np.ones((B, 1, 3)), np.zeros((B, 1, 3))
    batch = TaskBatch(ones, zeros, zeros, rng.normal(size=(B, 1, 3)))
    return np.array([0.3, -0.2, 0.5]), batch


def imaml_reference(params, batch, inner_lr, inner_steps):
    """Σ_e of CG's two good steps on (I + diag(d)/λ) x_e = (φ_e − y_e)/B, in NumPy."""
    B = batch.query_y.shape[0]
    A = np.diag(1.0 + D / LAM)
    total = np.zeros(3)
    for e in range(B):
        phi = params.copy()
        for _ in range(inner_steps):
            phi = phi - inner_lr * (D * phi + LAM * (phi - params))
        total += galerkin_k2(A, (phi - batch.query_y[e, 0]) / B)
    return total


@pytest.mark.parametrize("mode", ["continue", "stop"])
def test_imaml_reports_breakdown_on_a_singular_system(mode):
    tm.set_backend("numpy")
    params, batch = singular_imaml_problem()
    g, info = tm.meta.imaml(support_or_query_loss, params, batch, inner_lr=0.1, inner_steps=5,
                            lam=LAM, cg_steps=10, on_negative_curvature=mode)
    np.testing.assert_array_equal(info["breakdown"], [True, True])
    assert np.isfinite(info["cg_residuals"]).all()
    np.testing.assert_allclose(g, imaml_reference(params, batch, 0.1, 5), rtol=1e-9)


def test_imaml_reports_no_breakdown_on_a_well_posed_system():
    tm.set_backend("numpy")
    params, batch = singular_imaml_problem()
    g, info = tm.meta.imaml(support_or_query_loss, params, batch, inner_lr=0.1, inner_steps=5,
                            lam=10.0, cg_steps=10)
    assert info["breakdown"].shape == (2,) and not info["breakdown"].any()


def test_cg_reports_breakdown_in_float32_too():
    A, b = singular_and_spd()
    A, b = A.astype(np.float32), b.astype(np.float32)
    x, info = cg(batched_matvec(A), b, maxiter=10)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(info["breakdown"], [True, False])
    np.testing.assert_allclose(x[0], galerkin_k2(A[0].astype(float), b[0].astype(float)),
                               rtol=1e-4)
