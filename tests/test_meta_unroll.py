"""meta.common.unroll and the shared objectives: against hand-written loops, bit for bit.

The algorithms were rebuilt on one ``unroll``; the references here are the loops they
used to write out themselves (the same operations in the same order), so every
comparison is exact (``assert_array_equal``), not up to a tolerance.
"""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
from test_meta import make_problem as shared_problem
from test_meta import tanh_loss

import tinymeta as tm
from tinymeta import meta
from tinymeta.meta import common

MASK = [False, False, True, True, True, True]


def make_problem(B=3, K=4, sizes=(1, 5, 4, 1), seed=0):
    """test_meta's problem, at this file's sizes."""
    return shared_problem(B, K, sizes, seed)


def assert_trees_equal(a, b):
    la, lb = tm.tree_leaves(a), tm.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---- unroll ------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [0, 1, 3])
def test_unroll_walks_the_same_path_as_adapt_path(backend, T):
    params, batch = make_problem()
    x, y = batch.support_x, batch.support_y
    theta0 = meta.broadcast_tasks(params, 3)
    thetas, support = common.unroll(tanh_loss, theta0, [(x, y)] * T, 0.3, MASK,
                                    keep_path=True)
    expected = list(meta.adapt_path(tanh_loss, params, x, y, 0.3, T, MASK))
    assert len(thetas) == T + 1
    for got, want in zip(thetas, expected):
        assert_trees_equal(got, want)
    last, support_last = common.unroll(tanh_loss, theta0, [(x, y)] * T, 0.3, MASK)
    assert len(last) == 1
    assert_trees_equal(last[0], thetas[-1])
    if T == 0:
        assert support is None and support_last is None
    else:
        _, first = meta.inner_step(tanh_loss, theta0, x, y, 0.3, MASK)
        np.testing.assert_array_equal(support, first)
        np.testing.assert_array_equal(support_last, first)
        assert support.shape == (3,)


def test_unroll_holds_masked_leaves_and_takes_the_data_lazily():
    tm.set_backend("numpy")
    params, batch = make_problem(K=6)
    theta0 = meta.broadcast_tasks(params, 3)
    calls = []

    def counting_loss(p, x, y):
        calls.append(x.shape)
        return tanh_loss(p, x, y)

    def data():
        for t in range(3):
            assert len(calls) == t  # step t's set is built only when step t starts
            lo = 2 * t
            yield batch.support_x[:, lo:lo + 2], batch.support_y[:, lo:lo + 2]

    thetas, _ = common.unroll(counting_loss, theta0, data(), 0.1, MASK)
    assert calls == [(3, 2, 1)] * 3
    for keep, p0, pT in zip(MASK, theta0, thetas[-1]):
        if not keep:
            np.testing.assert_array_equal(np.asarray(pT), np.asarray(p0))


# ---- the algorithms against the loops they used to write out ------------------------------


def reference_unrolled(params, batch, lr, T, mask):
    """Second-order MAML as the loop maml.py wrote out before unroll."""
    B = batch.support_x.shape[0]

    def objective(theta0):
        theta = meta.broadcast_tasks(theta0, B)
        support = None
        for _ in range(T):
            theta, losses = meta.inner_step(tanh_loss, theta, batch.support_x,
                                            batch.support_y, lr, mask)
            if support is None:
                support = losses
        losses = tanh_loss(theta, batch.query_x, batch.query_y)
        return tm.sum(losses) / B, (support, losses)

    (loss, (support, query)), g = tm.value_and_grad(objective, has_aux=True)(params)
    if support is None:
        support = tanh_loss(meta.broadcast_tasks(params, B), batch.support_x, batch.support_y)
    return g, {"support_loss": support, "query_loss": query, "loss": loss}


def reference_chain(params, batch, lr, T, mask, order):
    """The HVP chain (order 2) and first-order MAML as written out before unroll."""
    B = batch.support_x.shape[0]
    sx, sy = batch.support_x, batch.support_y
    theta = meta.broadcast_tasks(params, B)
    thetas, support = [theta], None
    for _ in range(T):
        theta, losses = meta.inner_step(tanh_loss, theta, sx, sy, lr, mask)
        thetas.append(theta)
        if support is None:
            support = losses
    if support is None:
        support = tanh_loss(theta, sx, sy)

    def query_mean(th):
        losses = tanh_loss(th, batch.query_x, batch.query_y)
        return tm.sum(losses) / B, losses

    (loss, query), v = tm.value_and_grad(query_mean, has_aux=True)(thetas[-1])
    if order == 2:
        for t in range(T - 1, -1, -1):
            mv = tm.tree_map(lambda a, keep: a if keep else 0.0 * a, v, mask)
            hv = tm.hvp(lambda th: tm.sum(tanh_loss(th, sx, sy)), (thetas[t],), (mv,))
            v = tm.tree_map(lambda a, h: a - lr * h, v, hv)
    g = tm.tree_map(lambda a: tm.sum(a, axis=0), v)
    return g, {"support_loss": support, "query_loss": query, "loss": loss}


def assert_results_equal(got, want):
    (g, info), (g_ref, info_ref) = got, want
    assert_trees_equal(g, g_ref)
    assert list(info) == list(info_ref)
    for key in info:
        np.testing.assert_array_equal(np.asarray(info[key]), np.asarray(info_ref[key]))


@pytest.mark.parametrize("T", [0, 1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_maml_is_bit_identical_to_the_written_out_loops(backend, T, masked):
    params, batch = make_problem()
    mask = MASK if masked else [True] * 6
    adapt = MASK if masked else None
    assert_results_equal(meta.maml(tanh_loss, params, batch, 0.3, T, adapt=adapt),
                         reference_unrolled(params, batch, 0.3, T, mask))
    assert_results_equal(meta.maml(tanh_loss, params, batch, 0.3, T, method="hvp_chain",
                                   adapt=adapt),
                         reference_chain(params, batch, 0.3, T, mask, order=2))
    assert_results_equal(meta.fomaml(tanh_loss, params, batch, 0.3, T, adapt=adapt),
                         reference_chain(params, batch, 0.3, T, mask, order=1))


@pytest.mark.parametrize("T", [1, 2])
def test_metasgd_is_bit_identical_to_the_written_out_loop(backend, T):
    params, batch = make_problem()
    lrs = [np.full_like(p, 0.2) + 0.01 * i for i, p in enumerate(params)]
    B = batch.support_x.shape[0]

    def objective(theta0, a):
        theta = meta.broadcast_tasks(theta0, B)
        support = None
        for _ in range(T):
            theta, losses = meta.inner_step(tanh_loss, theta, batch.support_x,
                                            batch.support_y, a)
            if support is None:
                support = losses
        losses = tanh_loss(theta, batch.query_x, batch.query_y)
        return tm.sum(losses) / B, (support, losses)

    (loss, (support, query)), grads = tm.value_and_grad(objective, argnums=(0, 1),
                                                        has_aux=True)(params, lrs)
    want = grads, {"support_loss": support, "query_loss": query, "loss": loss}
    assert_results_equal(meta.metasgd(tanh_loss, params, lrs, batch, T), want)


@pytest.mark.parametrize("inner_batch", [None, 1, 3])
@pytest.mark.parametrize("use_query", [False, True])
def test_reptile_is_bit_identical_to_the_written_out_loop(backend, inner_batch, use_query):
    params, batch = make_problem()
    B, T = 3, 5
    x, y = batch.support_x, batch.support_y
    if use_query:
        x, y = np.concatenate([x, batch.query_x], 1), np.concatenate([y, batch.query_y], 1)
    theta, support = meta.broadcast_tasks(params, B), None
    for t in range(T):
        xt, yt = x, y
        if inner_batch is not None:
            lo = (t % (x.shape[1] // inner_batch)) * inner_batch
            xt, yt = x[:, lo:lo + inner_batch], y[:, lo:lo + inner_batch]
        theta, losses = meta.inner_step(tanh_loss, theta, xt, yt, 0.1)
        if support is None:
            support = losses
    query = tanh_loss(theta, batch.query_x, batch.query_y)
    g = [p0 - tm.mean(pT, axis=0) for p0, pT in zip(params, theta)]
    want = g, {"support_loss": support, "query_loss": query, "loss": tm.mean(query)}
    got = meta.reptile(tanh_loss, params, batch, 0.1, T, use_query=use_query,
                       inner_batch=inner_batch)
    assert_results_equal(got, want)


def test_imaml_info_keys_and_adapt_end_of_path():
    tm.set_backend("numpy")
    params, batch = make_problem()
    _, info = meta.imaml(tanh_loss, params, batch, 0.1, 2, lam=1.0, cg_steps=3)
    assert list(info) == ["support_loss", "query_loss", "loss", "stationarity",
                          "inner_neg_curvature", "inner_breakdown", "cg_residuals",
                          "neg_curvature", "breakdown", "cg_iterations", "hvps"]
    adapted = meta.adapt(tanh_loss, params, batch.support_x, batch.support_y, 0.3, 3, MASK)
    path = list(meta.adapt_path(tanh_loss, params, batch.support_x, batch.support_y, 0.3, 3,
                                MASK))
    assert_trees_equal(adapted, path[-1])


# ---- the layout: algorithms share only common.py and the solvers ----------------------------


def test_algorithm_files_import_no_private_name_and_no_other_algorithm():
    shared = {"common", "cg", "minres", "proximal"}  # the shared parts and the solvers
    for path in sorted(pathlib.Path(meta.__file__).parent.glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module in shared, f"{path.name} imports from .{node.module}"
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from .{node.module}"
