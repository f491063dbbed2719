"""The transforms: each a few lines over the tape.

At top level they take and return plain arrays (pytrees of them); called under
another transform they take and return Tensors of the outer trace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import kernels, ops
from .tape import GradTrace, JVPTrace
from .tensor import Tensor
from .tree import tree_flatten, tree_unflatten


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """A constant Tensor holding a read-only copy of ``data`` (on the active backend).

    tinymeta is functional: derivatives come from ``grad`` / ``vjp`` applied to a
    function, not from flags on arrays, so ``requires_grad=True`` is refused with
    a pointer to ``tm.grad``.
    """
    if requires_grad:
        raise ValueError(
            "tensor: requires_grad=True is not how tinymeta takes derivatives; write a "
            "function f(x) and call tm.grad(f)(x) (or tm.vjp(f, x)) instead"
        )
    if type(data) is Tensor:
        data = data._raw()
    arr = kernels.get_backend().asarray(data, dtype=dtype).copy()
    if isinstance(arr, np.ndarray):  # (cupy arrays have no write lock: immutable by convention)
        arr.flags.writeable = False
    return Tensor(arr)


# ---- inputs and outputs ---------------------------------------------------------------

def _as_primal(x: Any, op: str, argnum: int) -> Any:
    """A leaf to differentiate: a backend float array, or a Tensor of an outer trace."""
    if type(x) is Tensor:
        if x._trace is None:
            x = x._value
        else:
            dt = x.dtype
            if np.dtype(dt).kind not in "fc":
                raise TypeError(_int_message(op, argnum, dt))
            return x
    B = kernels.get_backend()
    if not isinstance(x, B.array_types):
        x = B.asarray(x)
    if np.dtype(x.dtype).kind not in "fc":
        raise TypeError(_int_message(op, argnum, x.dtype))
    return x


def _int_message(op: str, argnum: int, dtype: Any) -> str:
    return (
        f"{op}: argument {argnum} has dtype {dtype}; derivatives are taken with respect to "
        "float inputs only (cast with x.astype(float), or leave it out of argnums)"
    )


def _unbox(x: Any, trace: Any) -> Any:
    if type(x) is Tensor and x._trace is trace:
        return x._value
    if type(x) is Tensor and x._trace is not None and x._trace.level > trace.level:
        raise ValueError("a Tensor of an inner transform escaped its transform")
    return x


def _zeros_like(x: Any) -> Any:
    return kernels.get_backend().zeros(tuple(x.shape), x.dtype)


# ---- reverse mode ----------------------------------------------------------------------

def vjp(f: Callable, *primals: Any, has_aux: bool = False) -> tuple:
    """Return ``(f(*primals), vjp_fn)`` with ``vjp_fn(v) = vᵀ ∂f/∂primals``.

    ``vjp_fn`` takes a cotangent shaped like the output (a pytree like it) and
    returns a tuple with one cotangent per primal, each a pytree like that primal.
    With ``has_aux=True``, ``f`` returns ``(out, aux)`` and vjp returns
    ``(out, vjp_fn, aux)``.
    """
    trace = GradTrace()
    boxed, leaf_vars, defs = [], [], []
    for i, p in enumerate(primals):
        leaves, treedef = tree_flatten(p)
        tl = [trace.new_leaf(_as_primal(leaf, "vjp", i)) for leaf in leaves]
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
        aux = _lower(aux, trace)
    out_leaves, out_def = tree_flatten(out)
    out_vals = [_unbox(o, trace) for o in out_leaves]

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
                seeds.append((o._id, _as_cotangent(c, v)))
        wanted = [t._id for tl in leaf_vars for t in tl]
        got = trace.backward(seeds, wanted) if seeds else [None] * len(wanted)
        result, k = [], 0
        for tl, treedef in zip(leaf_vars, defs):
            gs = []
            for t in tl:
                g = got[k]
                k += 1
                gs.append(_zeros_like(t._value) if g is None else g)
            result.append(tree_unflatten(treedef, gs))
        return tuple(result)

    out_val = tree_unflatten(out_def, out_vals)
    if has_aux:
        return out_val, vjp_fn, aux
    return out_val, vjp_fn


def _as_cotangent(c: Any, v: Any) -> Any:
    if type(c) is not Tensor:
        B = kernels.get_backend()
        if not isinstance(c, B.array_types):
            c = B.asarray(c)
    dt = np.dtype(c.dtype)
    if dt.kind not in "fc":
        raise TypeError(f"vjp_fn: the cotangent must be a float array; got dtype {dt}")
    if dt != np.dtype(v.dtype):
        c = ops.astype(c, v.dtype)
    return c


def _lower(tree: Any, trace: Any) -> Any:
    leaves, treedef = tree_flatten(tree)
    return tree_unflatten(treedef, [_unbox(x, trace) for x in leaves])


def _argnums_tuple(argnums: Any, nargs: int, op: str) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for n in nums:
        if not -nargs <= n < nargs:
            raise ValueError(f"{op}: argnums {argnums!r} out of range for {nargs} arguments")
    return tuple(n % nargs for n in nums)


def value_and_grad(f: Callable, argnums: Any = 0, has_aux: bool = False) -> Callable:
    """Return a function computing ``(f(*args), ∇f(*args))`` by one reverse sweep.

    ``f`` must return a scalar (shape ``()``). ``argnums`` an int gives one
    gradient, a tuple a tuple of them; each is a pytree like its argument.
    """

    def value_and_grad_f(*args: Any, **kwargs: Any) -> Any:
        nums = _argnums_tuple(argnums, len(args), "grad")

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

    With ``has_aux=True``, ``f`` returns ``(out, aux)`` and ``grad(f)`` returns
    ``(gradient, aux)``, as in JAX.
    """
    vg = value_and_grad(f, argnums, has_aux)

    def grad_f(*args: Any, **kwargs: Any) -> Any:
        value, g = vg(*args, **kwargs)
        if has_aux:
            return g, value[1]
        return g

    return grad_f


# ---- forward mode, Hessians, Jacobians -------------------------------------------------

def jvp(f: Callable, primals: tuple, tangents: tuple) -> tuple:
    """Return ``(f(*primals), J·t)``: the directional derivative along ``tangents``.

    How it is computed: forward mode. Each primal leaf becomes a dual number
    (value, tangent) on a ``JVPTrace``; every primitive maps the tangents of its
    inputs to the tangent of its output with its JVP rule (``tm.defjvp``), beside
    the forward computation, for about twice the cost of ``f``. A primitive that
    has only VJP rules (a user primitive) gets its J·t by transposing its VJP.
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
            a = _as_primal(a, "jvp", i)
            leaves.append(trace.new(a, _as_cotangent(b, a)))
        boxed.append(tree_unflatten(pd, leaves))
    try:
        out = f(*boxed)
    finally:
        trace.recording = False
    out_leaves, out_def = tree_flatten(out)
    vals, tans = [], []
    for o in out_leaves:
        v = _unbox(o, trace)
        t = trace.tangent_of(o)
        vals.append(v)
        tans.append(_zeros_like(v) if t is None and hasattr(v, "shape") else
                    (0.0 * v if t is None else t))
    return tree_unflatten(out_def, vals), tree_unflatten(out_def, tans)


def _tree_zeros(tree: Any) -> Any:
    leaves, treedef = tree_flatten(tree)
    return tree_unflatten(treedef, [_zeros_like(x) if hasattr(x, "shape")
                                    else kernels.get_backend().zeros((), np.float64)
                                    for x in leaves])


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
    like it.
    """
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(f"hvp: {len(primals)} primals but {len(tangents)} tangents")
    return jvp(grad(f, argnums=0), primals, tangents)[1]


def hvp_rev(f: Callable, primals: tuple, tangents: tuple) -> Any:
    """H·v = ∇⟨∇f(x), v⟩, reverse over reverse (the same numbers as :func:`hvp`).

    By symmetry of second derivatives, the JVP of ∇₀f along all tangents is
    the gradient in x₀ of Σ_i ⟨∂f/∂x_i, v_i⟩.
    """
    primals, tangents = tuple(primals), tuple(tangents)
    n = len(primals)
    if n != len(tangents):
        raise ValueError(f"hvp: {n} primals but {len(tangents)} tangents")
    nums = tuple(range(n))

    def grad_dot_v(*xs: Any) -> Any:
        gs = grad(f, argnums=nums)(*xs)
        total = 0.0
        for gi, vi in zip(gs, tangents):
            total = total + _tree_vdot(gi, vi)
        return total

    return grad(grad_dot_v, argnums=0)(*primals)


def jacobian(f: Callable, argnums: int = 0) -> Callable:
    """Return x ↦ ∂f/∂x as one array of shape ``out.shape + in.shape`` (one VJP per row).

    For small inputs (tests): it runs ``out.size`` reverse sweeps.
    """

    def jac(*args: Any) -> Any:
        (n,) = _argnums_tuple(argnums, len(args), "jacobian")

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
            return B.zeros(oshape + xshape, np.dtype(out.dtype))
        return ops.reshape(ops.stack(rows, axis=0), oshape + xshape)

    return jac


def hessian(f: Callable, argnums: int = 0) -> Callable:
    """Return x ↦ ∂²f/∂x² of shape ``in.shape + in.shape``: the Jacobian of the gradient."""
    return jacobian(grad(f, argnums), argnums)
