"""Forward mode: ``jvp``, and the second-order transforms ``hvp``, ``hvp_rev``, ``hessian``.

Forward mode carries a tangent beside every value, a dual number (x, ẋ): each
primitive maps (x, ẋ) to (f(x), J_f(x) ẋ) with its JVP rule, so ``jvp`` gives J·t at
about twice the cost of f. The second-order transforms compose it with reverse mode
(:mod:`~tinymeta.transforms.reverse`, which this module imports and never the other
way): H·v as forward over reverse, or reverse over reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import kernels, ops
from ..config import config
from ..tape import Primitive, bind, check_derivative, new_level, unbox
from ..tensor import Tensor
from ..tree import tree_flatten, tree_unflatten
from .boundary import as_cotangent, as_primal, like_dtype, lower_leaf, zeros_like
from .reverse import grad, jacobian, rule_error, vjp


class JVPTrace:
    """Forward mode: every value carries a tangent (a dual number, one level down)."""

    __slots__ = ("level", "tangents", "recording", "__weakref__")
    refuses_concrete = False

    def __init__(self) -> None:
        self.level = new_level()
        self.tangents: list[Any] = []
        self.recording = True

    def new(self, value: Any, tangent: Any) -> Tensor:
        self.tangents.append(tangent)
        return Tensor(value, self, len(self.tangents) - 1)

    def tangent_of(self, x: Any) -> Any:
        if type(x) is Tensor and x._trace is self:
            return self.tangents[x._id]
        return None

    def process(self, prim: Primitive, args, params: dict) -> Any:
        """(y, ẏ) = (prim(x), Σ_j ∂_j prim(x) ẋ_j): the call one level down, and its tangent."""
        vals, ids, _ = unbox(self, prim, args)
        tangents = self.tangents
        tans = []
        for i in ids:  # (a loop: cheaper than a comprehension's frame for a few arguments)
            tans.append(None if i < 0 else tangents[i])
        out = bind(prim, vals, params)
        if not prim.differentiable:
            return out
        if prim.jvp_all is not None:
            t_out = prim.jvp_all(tans, out, vals, params)
        elif prim.jvps:
            t_out = None
            rules = prim.jvps
            for j, t in enumerate(tans):
                if t is None:
                    continue
                rule = rules[j] if j < len(rules) else _missing_jvp(prim, j)
                if rule is None:
                    continue
                try:
                    c = rule(t, out, *vals, **params)
                except TypeError as e:
                    raise rule_error(prim, "JVP", j, rule, e, (t, *vals)) from e
                t_out = c if t_out is None else ops.add(t_out, c)
        else:
            t_out = _jvp_by_transposing_vjp(prim, vals, tans, params)
        if t_out is None:
            return out
        if config.debug_nans:
            check_derivative("JVP", prim, None, t_out, vals)
        out_shape = getattr(out, "shape", ())
        if getattr(t_out, "shape", ()) != out_shape:
            t_out = ops.broadcast_to(t_out, out_shape)
        return self.new(out, t_out)


def _missing_jvp(prim: Primitive, j: int) -> Any:
    raise TypeError(f"{prim.name} has no JVP rule for argument {j}; register one with "
                    "tm.defjvp")


def _jvp_by_transposing_vjp(prim: Primitive, vals: list, tans: list, params: dict) -> Any:
    """J t for a primitive with VJP rules only: the VJP is linear in its cotangent,
    so J t is the VJP of (u ↦ Jᵀu), taken at u = 0, with cotangent t."""
    active = [j for j, t in enumerate(tans) if t is not None]
    idx = {j: k for k, j in enumerate(active)}

    def f(*xs: Any) -> Any:
        full = list(vals)
        for j in active:
            full[j] = xs[idx[j]]
        return prim(*full, **params)

    out, vjp_fn = vjp(f, *[vals[j] for j in active])
    xp = kernels.get_backend()
    zero = xp.zeros(getattr(out, "shape", ()), getattr(out, "dtype", None))
    _, transpose_fn = vjp(vjp_fn, zero)
    (t_out,) = transpose_fn(tuple(tans[j] for j in active))
    return t_out


# ---- the transforms -----------------------------------------------------------------

def jvp(f: Callable, primals: tuple, tangents: tuple) -> tuple:
    """Return ``(f(*primals), J·t)``: the directional derivative along ``tangents``.

    How it is computed: forward mode. Each primal leaf becomes a dual number
    (value, tangent) on a ``JVPTrace``; every primitive maps the tangents of its
    inputs to the tangent of its output with its JVP rule (``tm.defjvp``), beside
    the forward computation, for about twice the cost of ``f``. A primitive that
    has only VJP rules (a user primitive) gets its J·t by transposing its VJP.

    dtypes: each tangent is cast to its primal's dtype on the way in, and each output
    tangent has its output's dtype (JAX's rule); inside, NumPy 2's promotion.
    """
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(f"jvp: {len(primals)} primals but {len(tangents)} tangents")
    trace = JVPTrace()
    boxed = []
    for i, (p, t) in enumerate(zip(primals, tangents)):
        pl, pd = tree_flatten(p)
        tl, td = tree_flatten(t)
        if pd != td or any(ops.shape(a) != ops.shape(b) for a, b in zip(pl, tl)):
            raise ValueError(f"jvp: tangent {i} does not match the shapes of primal {i}")
        leaves = []
        for a, b in zip(pl, tl):
            a = as_primal(a, "jvp", i)
            leaves.append(trace.new(a, as_cotangent(b, a)))
        boxed.append(tree_unflatten(pd, leaves))
    try:
        out = f(*boxed)
    finally:
        trace.recording = False
    out_leaves, out_def = tree_flatten(out)
    vals, tans = [], []
    for o in out_leaves:
        v = lower_leaf(o, trace)
        t = trace.tangent_of(o)
        vals.append(v)
        if t is None:
            tans.append(zeros_like(v) if hasattr(v, "shape") else 0.0 * v)
        else:
            tans.append(like_dtype(t, v) if hasattr(v, "dtype") else t)
    return tree_unflatten(out_def, vals), tree_unflatten(out_def, tans)


def _tree_vdot(a: Any, b: Any) -> Any:
    al, ad = tree_flatten(a)
    bl, bd = tree_flatten(b)
    if ad != bd:
        raise ValueError("hvp: a tangent's tree structure differs from its primal's")
    total = 0.0
    for x, y in zip(al, bl):
        total = total + ops.sum(x * y)
    return total


def hvp(f: Callable, primals: tuple, tangents: tuple) -> Any:
    """Hessian-vector product H·v = ∂/∂ε ∇f(x + εv) at ε = 0: forward over reverse.

    Equals JAX's ``jvp(grad(f), primals, tangents)[1]``: the derivative of the
    gradient with respect to the first argument along all the tangents,
    Σ_i ∂²f/∂x₀∂x_i · v_i. The reverse sweep of ``grad`` runs on dual numbers,
    so H·v costs about two gradients (reverse over reverse, ∇⟨∇f(x), v⟩, costs
    about three; :func:`hvp_rev` computes it that way). For one primal, a pytree
    like it, every leaf in the dtype of its primal (the tangents are cast to it).
    """
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(f"hvp: {len(primals)} primals but {len(tangents)} tangents")
    return jvp(grad(f, argnums=0), primals, tangents)[1]


def _tangent_like(t: Any, p: Any, i: int) -> Any:
    """The tangent pytree ``t`` with each leaf in the dtype of primal ``p``'s leaf."""
    pl, pd = tree_flatten(p)
    tl, td = tree_flatten(t)
    if pd != td:
        raise ValueError(f"hvp: tangent {i}'s tree structure differs from primal {i}'s")
    return tree_unflatten(td, [as_cotangent(b, as_primal(a, "hvp", i)) for a, b in zip(pl, tl)])


def hvp_rev(f: Callable, primals: tuple, tangents: tuple) -> Any:
    """H·v = ∇⟨∇f(x), v⟩, reverse over reverse (the same numbers as :func:`hvp`).

    By symmetry of second derivatives, the JVP of ∇₀f along all tangents is
    the gradient in x₀ of Σ_i ⟨∂f/∂x_i, v_i⟩. In the dtype of the first primal, as
    :func:`hvp`.
    """
    primals, tangents = tuple(primals), tuple(tangents)
    n = len(primals)
    if n != len(tangents):
        raise ValueError(f"hvp: {n} primals but {len(tangents)} tangents")
    nums = tuple(range(n))
    tangents = tuple(_tangent_like(t, p, i) for i, (p, t) in enumerate(zip(primals, tangents)))

    def grad_dot_v(*xs: Any) -> Any:
        gs = grad(f, argnums=nums)(*xs)
        total = 0.0
        for gi, vi in zip(gs, tangents):
            total = total + _tree_vdot(gi, vi)
        return total

    return grad(grad_dot_v, argnums=0)(*primals)


def hessian(f: Callable, argnums: int = 0) -> Callable:
    """Return x ↦ ∂²f/∂x² of shape ``in.shape + in.shape``: the Jacobian of the gradient.

    In x's dtype, as the gradient it differentiates.
    """
    return jacobian(grad(f, argnums), argnums)
