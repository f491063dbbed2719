"""Exercise (c): write a primitive of your own and check it to order 2.

log cosh x is a smooth |x| (the log-cosh loss). Computed as written it overflows for
|x| > 710 (cosh does); the stable form is

    log cosh x = |x| + log(1 + e^{−2|x|}) − log 2,

a NumPy function the tape cannot differentiate through (``abs`` has a kink, and the
formula is not how the derivative is best written anyway). So make it a primitive and
give it its rules by hand:

    d/dx log cosh x = tanh x            (VJP: ḡ ↦ ḡ · tanh x;  JVP: ẋ ↦ tanh x · ẋ)

1. ``tm.primitive(fun, name=...)`` wraps the NumPy forward;
2. ``tm.defvjp(prim, rule)`` gives reverse mode, ``tm.defjvp(prim, rule)`` forward mode;
   the rules are written in tinymeta ops (``tm.tanh``), so they are recorded and can be
   differentiated again: the second derivative, 1 − tanh² x, comes for free;
3. ``tm.testing.check_grads(prim, (x,), order=2, modes=("rev", "fwd"))`` checks the VJP,
   the JVP, and the VJP and JVP of each of those, against central differences;
4. a hand-worked check: the gradient and the Hessian's diagonal against tanh x and
   1 − tanh² x, and a large x where the naive formula overflows.

Run: python examples/exercises/custom_primitive.py
"""

import numpy as np

import tinymeta as tm
from tinymeta.testing import check_grads


def _logcosh(x):
    a = np.abs(x)
    return a + np.log1p(np.exp(-2.0 * a)) - np.log(2.0)


logcosh = tm.primitive(_logcosh, name="logcosh")
tm.defvjp(logcosh, lambda g, ans, x: g * tm.tanh(x))
tm.defjvp(logcosh, lambda t, ans, x: t * tm.tanh(x))

x = np.array([-2.0, -0.3, 0.5, 1.7])
check_grads(logcosh, (x,), order=2, modes=("rev", "fwd"))
print("check_grads(logcosh, order=2, modes=('rev', 'fwd')) passes")


def loss(x):
    return tm.sum(logcosh(x))


g = tm.grad(loss)(x)
hess_diag = np.diag(tm.hessian(loss)(x))
print(f"gradient         {g}\ntanh x           {np.tanh(x)}")
print(f"Hessian diagonal {hess_diag}\n1 − tanh² x      {1.0 - np.tanh(x) ** 2}")
assert np.allclose(g, np.tanh(x), rtol=1e-14, atol=0.0)
assert np.allclose(hess_diag, 1.0 - np.tanh(x) ** 2, rtol=1e-12, atol=0.0)

big = np.array([800.0])
with np.errstate(over="ignore"):
    naive = np.log(np.cosh(big))
print(f"log cosh 800: naive {naive[0]}, the primitive {logcosh(big)[0]:.6f}, "
      f"its gradient {tm.grad(loss)(big)[0]}")
assert np.isinf(naive[0]) and np.isclose(logcosh(big)[0], 800.0 - np.log(2.0))
