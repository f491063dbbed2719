"""Reverse mode: ``vjp``, ``grad``, ``value_and_grad``, ``jacobian``, and the backward sweep.

For f with Jacobian J at x and an output cotangent v, reverse mode computes vᵀJ by
recording f's primitive calls on a tape (a :class:`~tinymeta.tape.GradTrace`) and
sweeping it backwards once, at a small multiple of the cost of f: for a scalar f,
∇f = Jᵀ·1.

At top level the transforms take and return plain arrays (pytrees of them); called
under another transform they take and return Tensors of the outer trace.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import kernels, ops
from ..config import config
from ..tape import GradTrace, check_derivative, phase
from ..tensor import Tensor
from ..tree import tree_flatten, tree_unflatten
from .boundary import (
    argnums_tuple,
    as_cotangent,
    as_primal,
    like_dtype,
    lower,
    lower_leaf,
    zeros_like,
)


def vjp(f: Callable, *primals: Any, has_aux: bool = False) -> tuple:
    """Return ``(f(*primals), vjp_fn)`` with ``vjp_fn(v) = vᵀ ∂f/∂primals``.

    ``vjp_fn`` takes a cotangent shaped like the output (a pytree like it; cast to the
    output's dtype) and returns a tuple with one cotangent per primal, each a pytree like
    that primal, every leaf in that leaf's dtype (a float32 input gets a float32
    cotangent even where ``f`` computes in float64 inside).
    With ``has_aux=True``, ``f`` returns ``(out, aux)`` and vjp returns
    ``(out, vjp_fn, aux)``.
    """
    trace = GradTrace()
    boxed, leaf_vars, defs = [], [], []
    for i, p in enumerate(primals):
        leaves, treedef = tree_flatten(p)
        tl = [trace.new_leaf(as_primal(leaf, "vjp", i)) for leaf in leaves]
        leaf_vars.append(tl)
        defs.append(treedef)
        boxed.append(tree_unflatten(treedef, tl))
    try:
        out = f(*boxed)
    finally:
        trace.recording = False
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError("vjp with has_aux=True needs f to return a pair (out, aux)")
        out, aux = out
        aux = lower(aux, trace)
    out_leaves, out_def = tree_flatten(out)
    out_vals = [lower_leaf(o, trace) for o in out_leaves]

    def vjp_fn(cotangent: Any) -> tuple:
        ct_leaves, ct_def = tree_flatten(cotangent)
        if ct_def != out_def:
            raise ValueError("vjp_fn: the cotangent's tree structure differs from the output's")
        seeds = []
        for o, v, c in zip(out_leaves, out_vals, ct_leaves):
            if ops.shape(c) != ops.shape(v):
                raise ValueError(
                    f"vjp_fn: cotangent shape {ops.shape(c)} differs from the output's shape "
                    f"{ops.shape(v)}"
                )
            if type(o) is Tensor and o._trace is trace:
                seeds.append((o._id, as_cotangent(c, v)))
        wanted = [t._id for tl in leaf_vars for t in tl]
        got = backward(trace, seeds, wanted) if seeds else [None] * len(wanted)
        result, k = [], 0
        for tl, treedef in zip(leaf_vars, defs):
            gs = []
            for t in tl:
                g = got[k]
                k += 1
                gs.append(zeros_like(t._value) if g is None else like_dtype(g, t._value))
            result.append(tree_unflatten(treedef, gs))
        return tuple(result)

    out_val = tree_unflatten(out_def, out_vals)
    if has_aux:
        return out_val, vjp_fn, aux
    return out_val, vjp_fn


def value_and_grad(f: Callable, argnums: Any = 0, has_aux: bool = False) -> Callable:
    """Return a function computing ``(f(*args), ∇f(*args))`` by one reverse sweep.

    ``f`` must return a scalar (shape ``()``). ``argnums`` an int gives one
    gradient, a tuple a tuple of them; each is a pytree like its argument, every leaf in
    that leaf's dtype.
    """

    def value_and_grad_f(*args: Any, **kwargs: Any) -> Any:
        nums = argnums_tuple(argnums, len(args), "grad")

        def partial(*diff: Any) -> Any:
            full = list(args)
            for n, d in zip(nums, diff):
                full[n] = d
            return f(*full, **kwargs)

        res = vjp(partial, *[args[n] for n in nums], has_aux=has_aux)
        out, vjp_fn = res[0], res[1]
        s = ops.shape(out)
        if s != ():
            raise TypeError(
                f"grad needs a scalar output; got shape {s}: use vjp (or sum the output)"
            )
        dt = np.dtype(getattr(out, "dtype", np.float64))
        if dt.kind not in "fc":
            raise TypeError(f"grad needs a float output; got dtype {dt}")
        grads = vjp_fn(kernels.get_backend().ones((), dt))
        g = grads[0] if isinstance(argnums, int) else grads
        if has_aux:
            return (out, res[2]), g
        return out, g

    return value_and_grad_f


def grad(f: Callable, argnums: Any = 0, has_aux: bool = False) -> Callable:
    """Return ∇f: the gradient of a scalar function with respect to ``args[argnums]``.

    Each gradient has the dtype of the argument it is taken with respect to (JAX's and
    PyTorch's rule): float32 parameters get a float32 gradient even where ``f`` promotes
    to float64 inside. With ``has_aux=True``, ``f`` returns ``(out, aux)`` and
    ``grad(f)`` returns ``(gradient, aux)``, as in JAX.
    """
    vg = value_and_grad(f, argnums, has_aux)

    def grad_f(*args: Any, **kwargs: Any) -> Any:
        value, g = vg(*args, **kwargs)
        if has_aux:
            return g, value[1]
        return g

    return grad_f


def jacobian(f: Callable, argnums: int = 0) -> Callable:
    """Return x ↦ ∂f/∂x as one array of shape ``out.shape + in.shape`` (one VJP per row).

    Its dtype is x's (each row is a cotangent of x).

    For small inputs (tests): it runs ``out.size`` reverse sweeps.
    """

    def jac(*args: Any) -> Any:
        (n,) = argnums_tuple(argnums, len(args), "jacobian")

        def partial(x: Any) -> Any:
            full = list(args)
            full[n] = x
            return f(*full)

        x = args[n]
        out, vjp_fn = vjp(partial, x)
        oshape, xshape = ops.shape(out), ops.shape(x)
        size = int(np.prod(oshape))
        B = kernels.get_backend()
        eye = B.xp.eye(size, dtype=np.dtype(out.dtype))  # the basis, built on the backend
        rows = [vjp_fn(eye[i].reshape(oshape))[0] for i in range(size)]
        if not rows:
            return B.zeros(oshape + xshape, np.dtype(getattr(x, "dtype", out.dtype)))
        return ops.reshape(ops.stack(rows, axis=0), oshape + xshape)

    return jac


# ---- the backward sweep --------------------------------------------------------------

def backward(trace: GradTrace, seeds: list[tuple[int, Any]], wanted: list[int]) -> list[Any]:
    """Sweep ``trace``'s tape in reverse from ``seeds`` (variable id, cotangent).

    The chain rule, row by row from the last: x̄_p += rule_j(ȳ_i, y_i, x_i) for each
    parent p = the j-th argument of row i, where ȳ_i is the summed cotangent of row i's
    output. Returns the cotangent of each ``wanted`` variable (None where the output does
    not depend on it). The rules run on the values one level down, so an enclosing trace
    records this sweep; cotangents are summed with ``ops.add`` for the same reason.
    """
    add = ops.add
    nodes = trace.nodes
    cts: list[Any] = [None] * len(nodes)
    for i, g in seeds:
        cts[i] = g if cts[i] is None else add(cts[i], g)
    want = set(wanted)
    kept: dict[int, Any] = {}
    start = max(i for i, _ in seeds)
    saved_phase = phase.name
    phase.name = "backward"
    check = config.debug_nans
    prim = None
    try:
        for i in range(start, -1, -1):
            g = cts[i]
            if g is None:
                continue
            if i in want:
                kept[i] = g
            prim, vals, parents, params, out = nodes[i]
            if prim is None:
                continue
            cts[i] = None
            rules = prim.vjps
            if prim.vjp_pre is not None:
                g = prim.vjp_pre(g, out, *vals, **params)
                if check:
                    check_derivative("VJP", prim, None, g, vals)
            for j, p in enumerate(parents):
                if p < 0:
                    continue
                if prim.vjp_argnum is not None:
                    c = prim.vjp_argnum(j, g, out, vals, params)
                else:
                    if j >= len(rules):
                        raise TypeError(
                            f"{prim.name} has no VJP rule for argument {j}; "
                            "register one with tm.defvjp"
                        )
                    rule = rules[j]
                    if rule is None:  # declared non-differentiable there: zero cotangent
                        continue
                    try:
                        c = rule(g, out, *vals, **params)
                    except TypeError as e:
                        raise rule_error(prim, "VJP", j, rule, e, (g, *vals)) from e
                if check:
                    check_derivative("VJP", prim, j, c, vals)
                cts[p] = c if cts[p] is None else add(cts[p], c)
    except FloatingPointError as e:
        # debug_nans tripped by a primitive a rule called: say whose rule it was
        if check and prim is not None and "the VJP of" not in str(e):
            raise FloatingPointError(
                f"{e} (inside the VJP of {prim.name}, in the backward sweep)") from e
        raise
    finally:
        phase.name = saved_phase
    return [kept.get(i) for i in wanted]


def rule_error(prim: Any, kind: str, j: int, rule: Callable, e: TypeError,
               inputs: tuple) -> TypeError:
    """The TypeError a derivative rule raised, naming the primitive and the rule.

    A rule that runs on Tensors (``inputs`` holds one) is being recorded for a higher
    derivative; a rule written with NumPy's functions fails there (``np.exp(x)`` of a
    Tensor: "operand 'Tensor' does not support ufuncs"), so the error says how to write it.
    """
    if getattr(e, "_names_the_rule", False):
        return e
    code = getattr(rule, "__code__", None)
    where = (f" ({os.path.basename(code.co_filename)}, line {code.co_firstlineno})"
             if code is not None else "")
    name = getattr(rule, "__qualname__", type(rule).__name__)
    msg = f"{prim.name}: its {kind} rule for argument {j}, {name}{where}, raised: {e}"
    if any(type(a) is Tensor for a in inputs):
        msg += (f". It ran on Tensors because a higher derivative is being taken (the "
                f"{'backward sweep' if kind == 'VJP' else 'tangent'} is itself recorded), so "
                "it must be written in tinymeta ops: tm.exp(x), tm.sum(x, axis=0), "
                "tm.where(c, x, y), x * y, x @ W, not np.exp(x), np.sum(...) "
                f"(see tm.def{kind.lower()})")
    err = TypeError(msg)
    err._names_the_rule = True
    return err
