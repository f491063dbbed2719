"""Implicit MAML: (I + H_S(φ)/λ)^{-1} ∇L_Q(φ) by conjugate gradients on Hessian-vector products.

info["cg_residuals"] holds the relative residual of every task at every CG iteration,
info["neg_curvature"] the tasks whose system was found indefinite.

Run: python examples/imaml_sinusoid.py   (about 20 s)
"""

import numpy as np

from tinymeta import meta, nn, optim
from tinymeta.tasks.sinusoid import Sinusoid


def loss_fn(params, x, y):
    return nn.mse(nn.mlp(params, x), y)


tasks = Sinusoid()
params = nn.mlp_init([1, 40, 40, 1], seed=0)
opt = optim.Adam(1e-3)
state = opt.init(params)
rng = np.random.default_rng(0)
for it in range(1, 1501):
    batch = tasks.sample(25, 10, seed=rng)
    g, info = meta.imaml(loss_fn, params, batch, inner_lr=0.01, inner_steps=5, lam=1.0,
                         cg_steps=5)
    params, state = opt.update(g, state, params)
    if it % 500 == 0:
        print(f"iteration {it}: final CG residual (median over tasks) "
              f"{np.median(info['cg_residuals'][-1]):.2e}, "
              f"{int(info['neg_curvature'].sum())} of 25 tasks met negative curvature")

test = tasks.sample(600, 10, 100, seed=1000)
for steps in (0, 1, 10):
    adapted = meta.adapt(loss_fn, params, test.support_x, test.support_y, 0.01, steps)
    mse = np.mean(loss_fn(adapted, test.query_x, test.query_y))
    print(f"test MSE after {steps:2d} steps: {mse:.3f}")
