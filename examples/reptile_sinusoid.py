"""Reptile: the outer step moves θ_0 towards the adapted θ_T of each task.

meta.reptile returns mean_e(θ_0 − θ_T^e); an SGD step with learning rate ε on it is
Reptile's update θ_0 ← θ_0 + ε mean_e(θ_T^e − θ_0). ε is annealed linearly to 0.

Run: python examples/reptile_sinusoid.py
"""

import numpy as np

from tinymeta import meta, nn, optim
from tinymeta.tasks.sinusoid import Sinusoid


def loss_fn(params, x, y):
    return nn.mse(nn.mlp(params, x), y)


tasks = Sinusoid()
params = nn.mlp_init([1, 40, 40, 1], seed=0)
iterations = 3000
opt = optim.SGD(optim.linear_decay(0.1, iterations))
state = opt.init(params)
rng = np.random.default_rng(0)
for _ in range(iterations):
    g, info = meta.reptile(loss_fn, params, tasks.sample(25, 10, seed=rng), 0.01, 5)
    params, state = opt.update(g, state, params)

test = tasks.sample(600, 10, 100, seed=1000)
for steps in (0, 1, 10):
    adapted = meta.adapt(loss_fn, params, test.support_x, test.support_y, 0.01, steps)
    mse = np.mean(loss_fn(adapted, test.query_x, test.query_y))
    print(f"test MSE after {steps:2d} steps: {mse:.3f}")
