"""The transforms, as one namespace: each a few lines over the tape.

- :mod:`~tinymeta.transforms.reverse`: ``vjp`` (vᵀJ), ``grad`` (∇f = Jᵀ·1),
  ``value_and_grad``, ``jacobian``, and the backward sweep of a tape;
- :mod:`~tinymeta.transforms.forward`: ``jvp`` (J·t, dual numbers) and the second-order
  ``hvp`` (H·v = ∂/∂ε ∇f(x + εv), forward over reverse), ``hvp_rev`` (∇⟨∇f(x), v⟩) and
  ``hessian``; it imports ``reverse``, never the other way;
- :mod:`~tinymeta.transforms.boundary`: what crosses a transform's boundary (primals in,
  values out, cotangents checked);
- :mod:`~tinymeta.transforms.ravel`: ``ravel_pytree``, a pytree as one vector and back.

At top level the transforms take and return plain arrays (pytrees of them); called
under another transform they take and return Tensors of the outer trace.
"""

from __future__ import annotations

from .forward import hessian, hvp, hvp_rev, jvp
from .ravel import ravel_pytree
from .reverse import grad, jacobian, value_and_grad, vjp
