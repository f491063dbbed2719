"""Check the derivatives of your own code with tinymeta's checker.

    python examples/check_gradients.py

1. A function of your own, written in tinymeta ops (a small attention block): its first and
   second derivatives in both modes, and its Hessian-vector products.
2. A custom primitive, softplus(x, β) = log(1 + exp(βx)) / β, with rules written in
   tinymeta ops, so that it is differentiable to any order: checked to order 3.
3. The same softplus with a planted error in its β rule: the checker says where.
4. A plain NumPy function with hand-written VJP and JVP rules (check_vjp, check_jvp).
5. A rule written in raw NumPy: right at order 1, refused at order 2, and the error says how
   to write it.

docs/testing.md walks through the same steps, and the pytest plugin (the ``gradcheck``
fixture) and the hypothesis strategies.
"""

from __future__ import annotations

import numpy as np

import tinymeta as tm
from tinymeta.testing import check_grads, check_hvp, check_jvp, check_vjp

rng = np.random.default_rng(0)


# ---- 1. your own function ------------------------------------------------------------

def attention(q, k, v):
    """softmax(q kᵀ / √d) v, one head."""
    scores = q @ tm.transpose(k, (1, 0)) / np.sqrt(q.shape[-1])
    return tm.softmax(scores, axis=-1) @ v


q, k, v = (rng.standard_normal((3, 4)) for _ in range(3))
check_grads(attention, (q, k, v), order=2)  # rev and fwd, first and second derivatives
check_hvp(lambda q: tm.sum(attention(q, k, v) ** 2), (q,))
print("1. attention: derivatives to order 2 and H v agree with finite differences")


# ---- 2. a custom primitive ------------------------------------------------------------

def _softplus(x, beta):
    return np.log1p(np.exp(beta * x)) / beta


softplus = tm.primitive(_softplus, name="softplus")
# ∂/∂x = σ(βx);  ∂/∂β = (x σ(βx) − softplus) / β; in tinymeta ops, so differentiable again
tm.defvjp(softplus,
          lambda g, ans, x, beta: g * tm.sigmoid(beta * x),
          lambda g, ans, x, beta: g * (x * tm.sigmoid(beta * x) - ans) / beta)
tm.defjvp(softplus,
          lambda t, ans, x, beta: t * tm.sigmoid(beta * x),
          lambda t, ans, x, beta: t * (x * tm.sigmoid(beta * x) - ans) / beta)

x = np.array([0.3, -1.2, 0.7, 1.5])
beta = np.array([1.0, 2.0, 0.5, 1.5])
check_grads(softplus, (x, beta), order=3)
print("2. softplus (a custom primitive): derivatives to order 3 agree")


# ---- 3. a planted error: the checker says where ----------------------------------------

softplus_wrong = tm.primitive(_softplus, name="softplus_wrong")
tm.defvjp(softplus_wrong,
          lambda g, ans, x, beta: g * tm.sigmoid(beta * x),
          # the β rule forgets to divide by β: wrong wherever β ≠ 1
          lambda g, ans, x, beta: g * (x * tm.sigmoid(beta * x) - ans))
try:
    check_grads(softplus_wrong, (x, beta), order=1, modes=("rev",))
except AssertionError as e:
    print("3. the checker on a wrong rule:")
    print(e)


# ---- 4. a NumPy function with hand-written rules ----------------------------------------

def logsumexp_np(a):
    m = a.max()
    return m + np.log(np.sum(np.exp(a - m)))


def logsumexp_vjp(a):
    out = logsumexp_np(a)
    return out, lambda g: (g * np.exp(a - out),)  # the softmax, times the cotangent


def logsumexp_jvp(primals, tangents):
    (a,), (t,) = primals, tangents
    out = logsumexp_np(a)
    return out, np.sum(np.exp(a - out) * t)


a = rng.standard_normal(5)
check_vjp(logsumexp_np, logsumexp_vjp, (a,))
check_jvp(logsumexp_np, logsumexp_jvp, (a,))
print("4. logsumexp in NumPy: the hand-written VJP and JVP agree")


# ---- 5. a rule in raw NumPy ------------------------------------------------------------

exp_numpy = tm.primitive(np.exp, name="exp_numpy")
tm.defvjp(exp_numpy, lambda g, ans, x: g * np.exp(x))  # np.exp: fine on arrays only
check_grads(exp_numpy, (x,), order=1)
try:
    check_grads(exp_numpy, (x,), order=2)
except TypeError as e:
    print("5. a raw NumPy rule at order 2:")
    print(e)
