"""Quickstart: the gradient and a Hessian-vector product of a small MLP loss, each checked
against central finite differences.

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


def shifted(s, eps=1e-6):                      # θ + s·ε·v
    return [p + s * eps * vi for p, vi in zip(params, v)]


# central differences along v: ⟨∇L, v⟩ ≈ (L(θ+εv) − L(θ−εv)) / 2ε, H·v ≈ (∇L(θ+εv) − ∇L(θ−εv)) / 2ε
fd_g = (float(loss(shifted(1))) - float(loss(shifted(-1)))) / 2e-6
fd_hv = [(a - b) / 2e-6 for a, b in zip(tm.grad(loss)(shifted(1)), tm.grad(loss)(shifted(-1)))]
g_v = sum(float(np.vdot(a, b)) for a, b in zip(g, v))
print(f"loss {float(loss(params)):.6f}")
print(f"<grad, v> {g_v:.6f}   finite differences {fd_g:.6f}")
print(f"|H v| {np.sqrt(sum(np.sum(h ** 2) for h in hv)):.6f}   "
      f"max |H v - finite differences| {max(np.max(np.abs(a - b)) for a, b in zip(hv, fd_hv)):.1e}")
print(tm.make_tape(loss)(params))             # the recorded Wengert list, one primitive a line
