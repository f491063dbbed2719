"""Second-order MAML on sinusoid regression (Finn et al. 2017), in about thirty lines.

Run: python examples/maml_sinusoid.py   (about 5 s; the CLI runs the full protocol)
"""

import numpy as np

from tinymeta import meta, nn, optim
from tinymeta.tasks.sinusoid import Sinusoid


def loss_fn(params, x, y):  # params carry the task axis B; one loss per task, (B,)
    return nn.mse(nn.mlp(params, x), y)


tasks = Sinusoid()
params = nn.mlp_init([1, 40, 40, 1], seed=0)
opt = optim.Adam(1e-3)
state = opt.init(params)
rng = np.random.default_rng(0)
for it in range(1, 3001):
    batch = tasks.sample(25, 10, seed=rng)
    # method="hvp_chain" gives the same gradient by Hessian-vector products
    g, info = meta.maml(loss_fn, params, batch, inner_lr=0.01, inner_steps=1, method="unrolled")
    params, state = opt.update(g, state, params)
    if it % 1000 == 0:
        print(f"iteration {it}: query loss after one step {info['loss']:.3f}")

test = tasks.sample(600, 10, 100, seed=1000)
for steps in (0, 1, 10):
    adapted = meta.adapt(loss_fn, params, test.support_x, test.support_y, 0.01, steps)
    mse = np.mean(loss_fn(adapted, test.query_x, test.query_y))
    print(f"test MSE after {steps:2d} steps: {mse:.3f}")
