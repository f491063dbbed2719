"""Meta-SGD: one inner learning rate per parameter, learned with θ_0 (Li et al. 2017).

Run: python examples/metasgd_sinusoid.py
"""

import numpy as np

from tinymeta import meta, nn, optim
from tinymeta.tasks.sinusoid import Sinusoid


def loss_fn(params, x, y):
    return nn.mse(nn.mlp(params, x), y)


tasks = Sinusoid()
params = nn.mlp_init([1, 40, 40, 1], seed=0)
lrs = [np.full_like(p, 0.01) for p in params]
opt = optim.Adam(1e-3)
state = opt.init((params, lrs))
rng = np.random.default_rng(0)
for _ in range(3000):
    grads, info = meta.metasgd(loss_fn, params, lrs, tasks.sample(25, 10, seed=rng), 1)
    (params, lrs), state = opt.update(grads, state, (params, lrs))

print("mean learned rate per layer:", [f"{np.mean(a):.4f}" for a in lrs])
test = tasks.sample(600, 10, 100, seed=1000)
for steps in (0, 1):
    adapted = meta.adapt(loss_fn, params, test.support_x, test.support_y, lrs, steps)
    mse = np.mean(loss_fn(adapted, test.query_x, test.query_y))
    print(f"test MSE after {steps:2d} steps: {mse:.3f}")
