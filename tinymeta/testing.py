"""Gradient checking against finite differences, to any order, and hypothesis strategies.

The reverse-mode test is the *dot-product test*. For f: ℝⁿ → ℝᵐ with Jacobian J at x,
a random direction u ∈ ℝⁿ and a random output cotangent v ∈ ℝᵐ,

    ⟨v, J u⟩ = ⟨Jᵀ v, u⟩.

The left side comes from central differences, J u ≈ (f(x + εu) − f(x − εu)) / 2ε (error
O(ε²) from truncation, O(δ/ε) from rounding, δ the float64 rounding of f); the right side
is ``vjp_fn(v)`` from the tape. One random pair (u, v) checks the whole Jacobian: a wrong
Jᵀ passes only on a set of directions of measure zero. The forward-mode test compares
``jvp(f, x, u)`` entry by entry with the same central difference.

When a test fails, it is rerun per argument and per leaf to say where: entry k of Jᵀ v is
⟨v, J e_k⟩ ≈ ⟨v, (f(x + εe_k) − f(x − εe_k)) / 2ε⟩, e_k the k-th unit input, and the
worst entries are printed with their indices (:mod:`tinymeta.finite_differences`).

Higher orders recurse on derivative functions, which are themselves differentiable
programs: the VJP of f as a function of (x, v), ``(x, v) ↦ Jᵀ(x) v``, and the JVP of f
as a function of (x, u), ``(x, u) ↦ J(x) u``. Checking those to order k − 1 checks f
to order k. Failures name the chain, read from the outside in: "VJP of JVP of tanh" is
the reverse-mode test of the function (x, u) ↦ tanh'(x) u.

:func:`check_vjp` and :func:`check_jvp` check a plain NumPy function against a
hand-written rule (JAX's ``check_vjp`` / ``check_jvp``). Everything here needs NumPy
only; the strategies (:mod:`tinymeta.strategies`) import hypothesis when called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import ops, transforms
from .finite_differences import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    Point,
    central_difference,
    fail,
    inner,
    random_like,
    to_backend_tree,
    to_numpy,
    where_hvp,
    where_jvp,
    where_vjp,
)
from .strategies import (
    arrays,
    broadcastable_shapes,
    float_arrays,
    floats,
    separated_arrays,
    shapes,
)
from .transforms import grad, hessian, hvp, jvp, vjp
from .tree import tree_flatten, tree_leaves, tree_map

__all__ = [
    "check_grads",
    "check_hvp",
    "check_vjp",
    "check_jvp",
    "arrays",
    "shapes",
    "broadcastable_shapes",
    "float_arrays",
    "floats",
    "separated_arrays",
]

DEFAULT_EPS = 1e-6


# =====================================================================================
# Output helpers
# =====================================================================================


def _flatten_output(f: Callable) -> Callable:
    """``f`` with a pytree output turned into one vector (a single array is kept as is)."""

    def flat_f(*args: Any) -> Any:
        out = f(*args)
        leaves, treedef = tree_flatten(out)
        if len(leaves) == 1 and leaves[0] is out:
            return out
        return _ravel_leaves(leaves)

    return flat_f


def _ravel_leaves(leaves: Sequence[Any]) -> Any:
    """One 1-D array of all the leaves, made of tinymeta ops (so it stays differentiable)."""
    if not leaves:
        return np.zeros((0,))
    flat = [ops.reshape(leaf, (-1,)) for leaf in leaves]
    return flat[0] if len(flat) == 1 else ops.concatenate(flat, axis=0)


def _ravel_np(tree: Any) -> np.ndarray:
    leaves = tree_leaves(tree)
    if not leaves:
        return np.zeros((0,))
    return np.concatenate([to_numpy(leaf).ravel() for leaf in leaves])


# =====================================================================================
# The two tests of one function
# =====================================================================================


def _check_rev(p: Point, vjp_of: Callable, rng: np.random.Generator) -> np.ndarray:
    """Dot-product test ⟨v, J u⟩ = Σᵢ ⟨(Jᵀ v)ᵢ, uᵢ⟩ at ``p``; returns the cotangent v it drew.

    ``vjp_of(*args) -> (out, vjp_fn)``: tinymeta's ``vjp`` or a user's hand-written rule.
    """
    out, vjp_fn = vjp_of(*p.convert(p.args))
    out = to_numpy(out)
    expected = to_numpy(p.f(*p.convert(p.args)))
    if out.shape != expected.shape:
        raise AssertionError(f"{p.label}: the traced output has shape {out.shape}; the plain "
                             f"call's has shape {expected.shape}")
    if not np.allclose(out, expected, rtol=1e-10, atol=1e-12):
        worst = float(np.max(np.abs(out - expected)))
        raise AssertionError(f"{p.label}: the traced forward pass differs from the plain one "
                             f"by up to {worst:.3g}")
    u = tuple(random_like(a, rng) for a in p.args)
    v = rng.standard_normal(out.shape)
    cts = vjp_fn(p.convert(v))
    if len(p.args) == 1 and not isinstance(cts, tuple):
        cts = (cts,)  # a hand-written rule of one argument may return its cotangent alone
    if len(cts) != len(p.args):
        raise AssertionError(f"{p.label}: vjp_fn returned {len(cts)} cotangents for "
                             f"{len(p.args)} primals")
    for i, (c, a) in enumerate(zip(cts, p.args)):
        cs = [np.shape(leaf) for leaf in tree_leaves(c)]
        as_ = [np.shape(leaf) for leaf in tree_leaves(a)]
        if cs != as_:
            raise AssertionError(f"{p.label}: the cotangent of argument {i} has shapes {cs}; "
                                 f"the argument has shapes {as_}")
    numeric = float(np.vdot(v.ravel(), central_difference(p, u).ravel()))
    autodiff = inner(cts, u)
    tol = p.atol + p.rtol * max(abs(numeric), abs(autodiff))
    if not abs(autodiff - numeric) <= tol:
        fail(p, "the dot-product test ⟨v, J u⟩ = ⟨Jᵀ v, u⟩", autodiff, numeric, tol,
             details=where_vjp(p, cts, v, u, rng))
    return v


def _check_fwd(p: Point, jvp_of: Callable, rng: np.random.Generator) -> tuple:
    """J u from ``jvp_of(primals, tangents)`` against (f(x + εu) − f(x − εu)) / 2ε,
    entry by entry; returns the u it drew."""
    u = tuple(random_like(a, rng) for a in p.args)
    _, t_out = jvp_of(p.convert(p.args), p.convert(u))
    t_out = to_numpy(t_out)
    fd = central_difference(p, u)
    if t_out.shape != fd.shape:
        raise AssertionError(f"{p.label}: the tangent output has shape {t_out.shape}; the "
                             f"output has shape {fd.shape}")
    err = np.abs(t_out - fd)
    bound = p.atol + p.rtol * np.abs(fd)
    bad = ~(err <= bound)
    if np.any(bad):
        k = int(np.argmax(np.where(bad, err - bound, -np.inf)))
        idx = tuple(int(j) for j in np.unravel_index(k, fd.shape))
        fail(p, "the tangent J u", float(t_out.ravel()[k]), float(fd.ravel()[k]),
             float(bound.ravel()[k]), where=f" at output index {idx}",
             details=where_jvp(p, jvp_of, u))
    return u


# =====================================================================================
# check_grads
# =====================================================================================


def _vjp_function(f: Callable, nargs: int) -> Callable:
    """(x₁ … xₙ, v) ↦ Jᵀ(x) v, its cotangents ravelled into one vector."""

    def vjp_of_f(*xs_and_v: Any) -> Any:
        xs, v = xs_and_v[:nargs], xs_and_v[nargs]
        _, vjp_fn = vjp(f, *xs)
        return _ravel_leaves(tree_leaves(vjp_fn(v)))

    return vjp_of_f


def _jvp_function(f: Callable, nargs: int) -> Callable:
    """(x₁ … xₙ, u₁ … uₙ) ↦ J(x) u."""

    def jvp_of_f(*xs_and_us: Any) -> Any:
        xs, us = xs_and_us[:nargs], xs_and_us[nargs:]
        return jvp(f, xs, us)[1]

    return jvp_of_f


def _defaults(rtol: float | None, atol: float | None) -> tuple[float, float]:
    return (DEFAULT_RTOL if rtol is None else rtol, DEFAULT_ATOL if atol is None else atol)


def check_grads(
    f: Callable,
    args: Sequence[Any],
    order: int = 2,
    modes: Sequence[str] = ("rev", "fwd"),
    eps: float = DEFAULT_EPS,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    rng: np.random.Generator | None = None,
    name: str | None = None,
) -> None:
    """Check the derivatives of ``f`` at ``args`` against central differences, to ``order``.

    For each function in the chain (f, then its VJP and JVP functions, then theirs …):

    - ``"rev"``: the dot-product test ⟨v, J u⟩ = ⟨Jᵀ v, u⟩ with random u (one per
      argument) and v, J u taken by central differences;
    - ``"fwd"``: ``jvp(f, x, u)`` against the central difference, entry by entry.

    Then, while the order allows, the same checks of ``(x, v) ↦ Jᵀ(x) v`` (labelled
    "VJP of <name>") and ``(x, u) ↦ J(x) u`` ("JVP of <name>"). All checks of one order
    run before any of the next, so the lowest failing order is the one reported. A failing
    check is rerun per argument and per leaf, and the message lists the worst entries:
    "VJP of f with respect to argument 1, entry (2,): autodiff 0.031, finite differences
    0.552".

    The arguments are copied to float64; finite differences need its precision.

    Args:
        f: a function of ``len(args)`` arrays (pytrees of arrays are accepted) returning an
            array; a pytree output is ravelled into one vector. It must compute with
            tinymeta ops, as any function handed to ``tm.grad`` (for a NumPy function with
            a hand-written rule, use :func:`check_vjp` / :func:`check_jvp`).
        args: the point, one entry per positional argument of ``f``; every one is
            differentiated (close over the others).
        order: how many derivatives deep to check (1: the first derivative only).
        modes: any of ``"rev"`` and ``"fwd"``, checked in this order.
        eps: the finite-difference step ε.
        rtol, atol: a check passes when |autodiff − numeric| ≤ atol + rtol · scale, scale
            the larger magnitude of the two (per entry for ``"fwd"``). Defaults 1e-5, 1e-6.
        seed, rng: the random directions come from ``rng``, else ``default_rng(seed)``.
        name: the name in failure messages; ``f.__name__`` by default.

    Raises:
        AssertionError: naming the chain ("VJP of JVP of f"), the two numbers, the
            tolerance, and the worst entries by argument, leaf and index.
        ValueError: for an unknown mode or an order below 1.
    """
    if order < 1:
        raise ValueError(f"check_grads: order must be at least 1; got {order}")
    unknown = set(modes) - {"rev", "fwd"}
    if unknown:
        raise ValueError(f"check_grads: unknown modes {sorted(unknown)}; use 'rev' and 'fwd'")
    rtol, atol = _defaults(rtol, atol)
    rng = np.random.default_rng(seed) if rng is None else rng
    name = name or _name_of(f)
    args = tuple(tree_map(to_numpy, a) for a in args)
    roles = ("",) * len(args)

    level = [(name, _flatten_output(f), args, roles)]
    for k in range(order):
        deeper = []
        for fname, fun, xs, xnames in level:
            for mode in modes:
                label = ("VJP of " if mode == "rev" else "JVP of ") + fname
                p = Point(fun, xs, label, xnames, eps, rtol, atol, to_backend_tree)
                try:
                    if mode == "rev":
                        v = _check_rev(p, lambda *a, fun=fun: vjp(fun, *a), rng)
                        child = (_vjp_function(fun, len(xs)), xs + (v,),
                                 xnames + (f"the cotangent v of the {label}",))
                    else:
                        u = _check_fwd(p, lambda x, t, fun=fun: jvp(fun, x, t), rng)
                        child = (_jvp_function(fun, len(xs)), xs + u, xnames + tuple(
                            f"the tangent of argument {j}" for j in range(len(xs))))
                except AssertionError:
                    raise
                except Exception as e:
                    _add_note(e, f"raised while checking the {label} (check_grads)")
                    raise
                if k + 1 < order:
                    deeper.append((label, *child))
        level = deeper


def _name_of(f: Callable) -> str:
    """A function's ``__name__``, a primitive's ``name``, else "f"."""
    return getattr(f, "__name__", None) or getattr(f, "name", None) or "f"


def _add_note(e: BaseException, note: str) -> None:
    if hasattr(e, "add_note"):  # Python ≥ 3.11
        e.add_note(note)


# =====================================================================================
# check_vjp, check_jvp: plain NumPy functions with hand-written rules
# =====================================================================================


def _numpy_point(f: Callable, args: Sequence[Any], kind: str, eps: float,
                 rtol: float | None, atol: float | None, name: str | None) -> Point:
    rtol, atol = _defaults(rtol, atol)
    args = tuple(tree_map(to_numpy, a) for a in args)
    return Point(f, args, f"{kind} of {name or _name_of(f)}", ("",) * len(args), eps, rtol, atol,
                 lambda tree: tree)


def check_vjp(f: Callable, f_vjp: Callable, args: Sequence[Any], eps: float = DEFAULT_EPS,
              rtol: float | None = None, atol: float | None = None, seed: int = 0,
              name: str | None = None) -> None:
    """Check a hand-written VJP of a NumPy function: the dot-product test ⟨v, J u⟩ = ⟨Jᵀ v, u⟩.

    ``f`` and its rule are plain NumPy (no tinymeta ops needed), as with JAX's
    ``check_vjp``: J u comes from central differences of ``f``, Jᵀ v from the rule, and
    a failure lists the worst entries of Jᵀ v with their indices. First order only: a
    NumPy rule is not itself differentiable (write it in tinymeta ops, with
    ``tm.primitive`` and ``tm.defvjp``, to check higher orders with :func:`check_grads`).

    Args:
        f: ``f(*args) -> array``, on float64 NumPy arrays (or pytrees of them).
        f_vjp: ``f_vjp(*args) -> (out, vjp_fn)``, ``vjp_fn(v)`` returning a tuple with one
            cotangent per argument (a single array is accepted for one argument);
            ``functools.partial(tm.vjp, g)`` checks tinymeta's own VJP of ``g``.
        args: the point; float64 copies are taken.
        eps, rtol, atol, seed, name: as in :func:`check_grads`.

    Raises:
        AssertionError: "VJP of <name>: …", the two numbers, the tolerance, the worst entries.
    """
    p = _numpy_point(f, args, "VJP", eps, rtol, atol, name)
    _check_rev(p, f_vjp, np.random.default_rng(seed))


def check_jvp(f: Callable, f_jvp: Callable, args: Sequence[Any], eps: float = DEFAULT_EPS,
              rtol: float | None = None, atol: float | None = None, seed: int = 0,
              name: str | None = None) -> None:
    """Check a hand-written JVP of a NumPy function: J u against central differences.

    J u ≈ (f(x + εu) − f(x − εu)) / 2ε entry by entry, for one random u per argument;
    as JAX's ``check_jvp``. A failure is rerun one argument (and leaf) at a time, so it
    says which argument's tangent is wrong.

    Args:
        f: ``f(*args) -> array``, on float64 NumPy arrays (or pytrees of them).
        f_jvp: ``f_jvp(primals, tangents) -> (out, tangent_out)``, primals and tangents
            tuples with one entry per argument; ``functools.partial(tm.jvp, g)`` checks
            tinymeta's own JVP of ``g``.
        args: the point; float64 copies are taken.
        eps, rtol, atol, seed, name: as in :func:`check_grads`.

    Raises:
        AssertionError: "JVP of <name>: …", the worst output entry, and per argument the
            worst entries of its J u.
    """
    p = _numpy_point(f, args, "JVP", eps, rtol, atol, name)
    _check_fwd(p, f_jvp, np.random.default_rng(seed))


# =====================================================================================
# check_hvp
# =====================================================================================


def check_hvp(
    f: Callable,
    args: Sequence[Any],
    v: Any = None,
    eps: float = DEFAULT_EPS,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    with_hessian: bool | None = None,
    name: str | None = None,
) -> None:
    """Check ``tm.hvp(f, args, v)`` against central differences of ``tm.grad(f)`` along v.

    For scalar f, H v = ∂/∂t ∇₀f(x + t v) at t = 0 ≈ (∇₀f(x + εv) − ∇₀f(x − εv)) / 2ε,
    ∇₀ the gradient in the first argument and every argument moved along its own v.
    ``tm.hvp_rev`` (reverse over reverse), where the engine has it, is checked the same
    way. With ``with_hessian`` (default: when there is one plain array argument) H v is
    also compared with ``tm.hessian(f)(x)`` contracted with v.

    Args:
        f: a scalar function of ``len(args)`` arrays (or pytrees of arrays).
        args: the point; float64 copies are taken.
        v: the tangents, one per argument (a single array for one argument); random
            standard normal by default.
        eps, rtol, atol: as in :func:`check_grads` (entrywise: atol + rtol · |numeric|).
        seed: for the random v.
        with_hessian: also check against the dense Hessian (one array argument only).
        name: the name in failure messages; ``f.__name__`` by default.

    Raises:
        AssertionError: naming the comparison, the worst entry (by leaf of the first
            argument and index), the two numbers and the tolerance.
    """
    rtol, atol = _defaults(rtol, atol)
    name = name or _name_of(f)
    rng = np.random.default_rng(seed)
    args = tuple(tree_map(to_numpy, a) for a in args)
    if v is None:
        v = tuple(random_like(a, rng) for a in args)
    elif len(args) == 1 and not isinstance(v, tuple):
        v = (v,)
    v = tuple(tree_map(to_numpy, t) for t in v)
    if len(v) != len(args):
        raise ValueError(f"check_hvp: {len(args)} arguments but {len(v)} tangents")
    p = Point(f, args, f"HVP of {name}", ("",) * len(args), eps, rtol, atol, to_backend_tree)

    def grad0(*xs: Any) -> Any:
        return _ravel_np(grad(f, argnums=0)(*to_backend_tree(xs)))

    plus = tuple(tree_map(lambda x, t: x + eps * t, x, t) for x, t in zip(args, v))
    minus = tuple(tree_map(lambda x, t: x - eps * t, x, t) for x, t in zip(args, v))
    numeric = (grad0(*plus) - grad0(*minus)) / (2.0 * eps)
    methods = [("hvp", hvp)]
    if getattr(transforms, "hvp_rev", None) is not None:
        methods.append(("hvp_rev", transforms.hvp_rev))
    results = {}
    for method, fn in methods:
        results[method] = _ravel_np(fn(f, to_backend_tree(args), to_backend_tree(v)))
        where_hvp(p, f"{method}: H v against central differences of grad", results[method],
                  numeric)

    single = len(args) == 1 and isinstance(args[0], np.ndarray)
    if with_hessian is None:
        with_hessian = single
    if with_hessian:
        if not single:
            raise ValueError("check_hvp: with_hessian needs one plain array argument")
        n = args[0].size
        H = to_numpy(hessian(f)(to_backend_tree(args[0]))).reshape(n, n)
        where_hvp(p, "hvp: H v against hessian(f) @ v", results["hvp"], H @ v[0].ravel(),
                  reference="hessian(f) @ v")
