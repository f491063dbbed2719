"""The one algorithm dispatch, the outer optimizer and the initial model of a run.

A model is ``{"theta": θ_0}``, plus ``"lrs"`` (the per-parameter inner learning rates,
initialised to α) for Meta-SGD; the optimizer updates the whole dict, so Meta-SGD's rates
are meta-learned beside θ_0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import meta, optim
from .config import RunConfig


def meta_gradient(cfg: RunConfig, setup: Any, mask: Any, model: dict, batch: Any) -> tuple:
    """The algorithm's (gradient like ``model``, info) on one meta-batch.

    maml / maml-chain: the second-order meta-gradient, by reverse mode through the inner
    loop or as ∏(I − αH) ∇L_Q; fomaml: ∇L_Q(θ_T); reptile: mean(θ_0 − θ_T); imaml:
    (I + H/λ)⁻¹ ∇L_Q(φ) by CG; metasgd: the gradients of θ_0 and of the rates; pretrain:
    the joint-training gradient of the pooled support and query losses (no adaptation).
    ``mask`` is the setup's ``adapt=`` mask.
    """
    f, theta = setup.loss_fn, model["theta"]
    a, T = cfg.inner_lr, cfg.inner_steps
    if cfg.algo in ("maml", "maml-chain", "fomaml"):
        method = "hvp_chain" if cfg.algo == "maml-chain" else "unrolled"
        order = 1 if cfg.algo == "fomaml" else 2
        g, info = meta.maml(f, theta, batch, a, T, order=order, method=method, adapt=mask)
    elif cfg.algo == "reptile":
        opts = cfg.task_options()
        g, info = meta.reptile(f, theta, batch, a, T,
                               use_query=getattr(opts, "reptile_query", False),
                               inner_batch=getattr(opts, "reptile_batch", None))
    elif cfg.algo == "imaml":
        g, info = meta.imaml(f, theta, batch, a, T, lam=cfg.lam, cg_steps=cfg.cg_steps,
                             cg_tol=cfg.cg_tol, damping=cfg.damping,
                             on_negative_curvature=cfg.on_negative_curvature,
                             inner_solver=cfg.inner_solver, inner_tol=cfg.inner_tol,
                             newton_cg_steps=cfg.newton_cg_steps,
                             linear_solver=cfg.linear_solver)
    elif cfg.algo == "metasgd":
        (g, g_lrs), info = meta.metasgd(f, theta, model["lrs"], batch, T)
        return {"theta": g, "lrs": g_lrs}, info
    elif cfg.algo == "pretrain":
        g, info = meta.pretrain(f, theta, batch)
    else:
        raise ValueError(f"unknown algorithm {cfg.algo!r}")
    return {"theta": g}, info


def make_optimizer(cfg: RunConfig) -> Any:
    """Adam or SGD at β, annealed linearly to 0 over the run when ``cfg.anneal``."""
    lr: Any = cfg.outer_lr
    if cfg.anneal:
        lr = optim.linear_decay(cfg.outer_lr, cfg.iterations)
    if cfg.optimizer == "sgd":
        return optim.SGD(lr)
    return optim.Adam(lr)


def initial_model(cfg: RunConfig, setup: Any) -> dict:
    """``{"theta": θ_0}`` from the setup, and Meta-SGD's rates, all α at the start."""
    theta = setup.init_params()
    model = {"theta": theta}
    if cfg.algo == "metasgd":
        model["lrs"] = [np.full_like(p, cfg.inner_lr) for p in theta]
    return model
