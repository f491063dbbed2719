"""Exercise (b): plant a wrong derivative rule and watch ``tm.testing.check_grads`` name it.

softplus(x) = log(1 + eˣ) has derivative sigmoid(x), so its VJP rule maps the output's
cotangent ḡ to ḡ · sigmoid(x). Make it a primitive of your own (its forward is a NumPy
function the tape does not look inside) and give it

1. a rule that forgets the cotangent, ``sigmoid(x)`` instead of ``g * sigmoid(x)``: right
   only when ḡ = 1, as it is for a gradient of softplus alone, wrong inside any larger
   function. ``check_grads(softplus, (x,), order=1)`` must fail and say "VJP of softplus":
   its dot-product test ⟨v, J u⟩ = ⟨Jᵀv, u⟩ uses a random cotangent v, not 1.
2. a rule that is right at order 1 and wrong at order 2: ``g * stop_gradient(sigmoid(x))``
   has the right value, but the tape cannot see that the rule depends on x, so the
   derivative of the rule (the second derivative of softplus, sigmoid'(x)) is lost. Order 1
   passes; order 2 fails and names the chain, "VJP of VJP of softplus".
3. the right rule, ``g * sigmoid(x)``, written in tinymeta ops, passes to order 3.

Run: python examples/exercises/wrong_rule.py
"""

import numpy as np

import tinymeta as tm
from tinymeta.testing import check_grads

x = np.array([-1.5, -0.2, 0.4, 2.0])

RULES = {
    "forgets the cotangent": lambda g, ans, x: tm.sigmoid(x),
    "stops the gradient inside the rule": lambda g, ans, x: g * tm.stop_gradient(tm.sigmoid(x)),
    "right": lambda g, ans, x: g * tm.sigmoid(x),
}


def softplus_with(rule):
    """A fresh softplus primitive whose VJP is ``rule`` (no JVP rule: forward mode
    transposes the VJP, so the checks below test reverse mode only)."""
    softplus = tm.primitive(lambda a: np.logaddexp(0.0, a), name="softplus")
    tm.defvjp(softplus, rule)
    return softplus


def verdict(rule_name, order):
    """Run check_grads at ``order``; return None when it passes, else its message."""
    try:
        check_grads(softplus_with(RULES[rule_name]), (x,), order=order, modes=("rev",))
    except AssertionError as e:
        return str(e)
    return None


first = verdict("forgets the cotangent", 1)
print("1. a rule that forgets the cotangent, order 1:\n  ", first)
assert first is not None and "VJP of softplus" in first

second_at_1 = verdict("stops the gradient inside the rule", 1)
second = verdict("stops the gradient inside the rule", 2)
at_1 = "passes" if second_at_1 is None else "FAILS"
print(f"2. stop_gradient inside the rule: order 1 {at_1}; order 2:\n  ", second)
assert second_at_1 is None
assert second is not None and "VJP of VJP of softplus" in second

right = verdict("right", 3)
print("3. the right rule, order 3:", "passes" if right is None else right)
assert right is None
