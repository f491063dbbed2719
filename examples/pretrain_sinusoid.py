"""The pretrained baseline: one network fitted to all tasks, then fine-tuned per task.

Run: python examples/pretrain_sinusoid.py
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
for _ in range(3000):
    g, info = meta.pretrain(loss_fn, params, tasks.sample(25, 10, seed=rng))
    params, state = opt.update(g, state, params)

test = tasks.sample(600, 10, 100, seed=1000)
for steps in (0, 1, 10):
    adapted = meta.adapt(loss_fn, params, test.support_x, test.support_y, 0.01, steps)
    mse = np.mean(loss_fn(adapted, test.query_x, test.query_y))
    print(f"test MSE after {steps:2d} steps: {mse:.3f}")
