"""Quickstart: the gradient and a Hessian-vector product of a small MLP loss.

    python examples/quickstart.py
"""

import numpy as np

import tinymeta as tm

rng = np.random.default_rng(0)
params = [rng.normal(size=(1, 40)) * 0.5, np.zeros(40), rng.normal(size=(40, 1)) * 0.2,
          np.zeros(1)]
x = rng.uniform(-5, 5, size=(10, 1))
y = np.sin(x)


def loss(params):
    W1, b1, W2, b2 = params
    h = tm.tanh(x @ W1 + b1)
    return tm.mean((h @ W2 + b2 - y) ** 2)


g = tm.grad(loss)(params)                      # ∇L, a list like params
v = [np.ones_like(p) for p in params]
hv = tm.hvp(loss, (params,), (v,))             # H·v = ∇⟨∇L, v⟩
print("loss", float(loss(params)))
print("|grad|", np.sqrt(sum(np.sum(gi ** 2) for gi in g)))
print("|H v|", np.sqrt(sum(np.sum(h ** 2) for h in hv)))
print(tm.make_tape(loss)(params))             # the recorded Wengert list, one primitive a line
