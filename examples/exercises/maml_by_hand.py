"""Exercise (a): second-order MAML at T = 2, by hand.

The learner takes two steps on the support loss L_S from θ_0,

    θ_1 = θ_0 − α ∇L_S(θ_0),     θ_2 = θ_1 − α ∇L_S(θ_1),

and the meta-objective is the query loss after them, F(θ_0) = L_Q(θ_2(θ_0)).

1. Derive ∂F/∂θ_0 by the chain rule. The Jacobian of one step is
   ∂θ_{t+1}/∂θ_t = I − αH(θ_t), H the (symmetric) Hessian of L_S, so

       ∂F/∂θ_0 = (I − αH(θ_0)) (I − αH(θ_1)) ∇L_Q(θ_2).

2. Compute it with explicit matrices: ∇L_S and ∇L_Q from ``tm.grad``, each H(θ_t) as a
   P × P matrix from ``tm.hessian``, and the product with NumPy.
3. Compare it with ``tm.meta.maml(..., method="hvp_chain")`` (the same product, applied
   right to left with Hessian-vector products), with ``method="unrolled"`` (reverse mode
   through the recorded inner loop) and with central differences of F.
4. Then see what the second-order term is worth: first-order MAML keeps only ∇L_Q(θ_2);
   and the factors do not commute: the product in the other order is another vector.

The model is small enough to read: one task, three parameters θ = (w, b, c), prediction
c · tanh(w x + b), squared error. Run: python examples/exercises/maml_by_hand.py
"""

import numpy as np

import tinymeta as tm

ALPHA = 0.1
rng = np.random.default_rng(0)
support_x, query_x = rng.uniform(-2, 2, size=(1, 6, 1)), rng.uniform(-2, 2, size=(1, 6, 1))
support_y, query_y = np.sin(support_x), np.sin(query_x)
theta0 = np.array([0.7, -0.3, 1.2])


def loss_fn(params, x, y):
    """Per-task mean squared error of c · tanh(w x + b); params = [θ] with θ of shape (B, 3)."""
    (theta,) = params
    w = tm.reshape(theta[:, 0], (-1, 1, 1))
    b = tm.reshape(theta[:, 1], (-1, 1, 1))
    c = tm.reshape(theta[:, 2], (-1, 1, 1))
    pred = c * tm.tanh(w * x + b)
    return tm.mean((pred - y) ** 2, axis=(1, 2))


def L_S(theta):
    """The support loss of the one task, as a function of θ of shape (3,)."""
    return loss_fn([tm.reshape(theta, (1, 3))], support_x, support_y)[0]


def L_Q(theta):
    return loss_fn([tm.reshape(theta, (1, 3))], query_x, query_y)[0]


def F(theta):
    """The meta-objective: the query loss after two learner steps from θ_0 = theta."""
    theta1 = theta - ALPHA * tm.grad(L_S)(theta)
    theta2 = theta1 - ALPHA * tm.grad(L_S)(theta1)
    return L_Q(theta2)


# ---- 2. by hand: the learner, then the chain of explicit matrices --------------------------

theta1 = theta0 - ALPHA * tm.grad(L_S)(theta0)
theta2 = theta1 - ALPHA * tm.grad(L_S)(theta1)
eye = np.eye(3)
H0, H1 = tm.hessian(L_S)(theta0), tm.hessian(L_S)(theta1)
by_hand = (eye - ALPHA * H0) @ (eye - ALPHA * H1) @ tm.grad(L_Q)(theta2)

# ---- 3. the library, both ways, and central differences of F --------------------------------

batch = tm.tasks.TaskBatch(support_x, support_y, query_x, query_y)
(chain,), _ = tm.meta.maml(loss_fn, [theta0], batch, ALPHA, 2, method="hvp_chain")
(unrolled,), _ = tm.meta.maml(loss_fn, [theta0], batch, ALPHA, 2, method="unrolled")
eps = 1e-6
central = np.array([(F(theta0 + eps * e) - F(theta0 - eps * e)) / (2 * eps) for e in eye])

# ---- 4. what the second-order term is worth --------------------------------------------------

first_order = tm.grad(L_Q)(theta2)
other_order = (eye - ALPHA * H1) @ (eye - ALPHA * H0) @ tm.grad(L_Q)(theta2)

np.set_printoptions(precision=8, floatmode="fixed", suppress=True)
print("θ_1 =", theta1, "  θ_2 =", theta2)
print("H(θ_0) =\n", H0)
print("H(θ_1) =\n", H1)
for name, g in [("by hand (I − αH(θ_0))(I − αH(θ_1))∇L_Q(θ_2)", by_hand),
                ("maml(method='hvp_chain')", chain), ("maml(method='unrolled')", unrolled),
                ("central differences of F", central), ("first order: ∇L_Q(θ_2)", first_order),
                ("the factors in the other order", other_order)]:
    print(f"{name:48s} {g}")

assert np.allclose(by_hand, chain, rtol=1e-10, atol=1e-12), "the chain differs from hvp_chain"
assert np.allclose(by_hand, unrolled, rtol=1e-10, atol=1e-12), "the chain differs from unrolled"
assert np.allclose(by_hand, central, rtol=1e-6, atol=1e-8), "the chain differs from F's slope"
assert not np.allclose(by_hand, first_order, rtol=1e-3), "the second-order term vanished"
assert not np.allclose(by_hand, other_order, rtol=1e-6), "the factors happened to commute"
print("the hand-derived chain equals hvp_chain, unrolled and central differences; "
      f"first-order MAML is off by {np.linalg.norm(by_hand - first_order):.2e}")
