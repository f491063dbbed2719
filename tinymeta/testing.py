"""Gradient checking against finite differences, to any order, and hypothesis strategies.

The reverse-mode test is the *dot-product test*. For f: ℝⁿ → ℝᵐ with Jacobian J at x,
a random direction u ∈ ℝⁿ and a random output cotangent v ∈ ℝᵐ,

    ⟨v, J u⟩ = ⟨Jᵀ v, u⟩.

The left side comes from central differences, J u ≈ (f(x + εu) − f(x − εu)) / 2ε (error
O(ε²) from truncation, O(δ/ε) from rounding, δ the float64 rounding of f); the right side
is ``vjp_fn(v)`` from the tape. One random pair (u, v) checks the whole Jacobian: a wrong
Jᵀ passes only on a set of directions of measure zero. The forward-mode test compares
``jvp(f, x, u)`` entry by entry with the same central difference.

Higher orders recurse on derivative functions, which are themselves differentiable
programs: the VJP of f as a function of (x, v), ``(x, v) ↦ Jᵀ(x) v``, and the JVP of f
as a function of (x, u), ``(x, u) ↦ J(x) u``. Checking those to order k − 1 checks f
to order k. Failures name the chain, read from the outside in: "VJP of JVP of tanh" is
the reverse-mode test of the function (x, u) ↦ tanh'(x) u.

:func:`check_grads` and :func:`check_hvp` need NumPy only; the strategies import
hypothesis when they are called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import kernels, ops, transforms
from .tensor import Tensor
from .transforms import grad, hessian, hvp, jvp, vjp
from .tree import tree_flatten, tree_leaves, tree_map

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "check_grads",
    "check_hvp",
    "arrays",
    "shapes",
    "broadcastable_shapes",
    "float_arrays",
    "floats",
    "separated_arrays",
]

DEFAULT_EPS = 1e-6
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-6


# =====================================================================================
# Array helpers (float64 NumPy on the checker's side)
# =====================================================================================


def _to_numpy(x: Any) -> np.ndarray:
    """A float64 NumPy copy of an array, a backend array, a constant Tensor or a scalar."""
    if type(x) is Tensor:
        x = x._raw()
    if not isinstance(x, (np.ndarray, np.generic, float, int)):
        x = kernels.get_backend().to_numpy(x)
    return np.array(x, dtype=np.float64)


def _to_backend(x: np.ndarray) -> Any:
    return kernels.get_backend().asarray(x)


def _random_like(tree: Any, rng: np.random.Generator) -> Any:
    """Standard normal leaves shaped like ``tree``'s."""
    return tree_map(lambda leaf: rng.standard_normal(np.shape(leaf)), tree)


def _axpy(a: float, x: Any, y: Any) -> Any:
    """a·x + y, leafwise on pytrees."""
    return tree_map(lambda xi, yi: a * xi + yi, x, y)


def _inner(a: Any, b: Any) -> float:
    """⟨a, b⟩ = Σ over leaves of Σ aᵢ bᵢ, in float64."""
    la, lb = tree_leaves(a), tree_leaves(b)
    return float(sum(np.vdot(_to_numpy(x).ravel(), _to_numpy(y).ravel()) for x, y in zip(la, lb)))


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


def _tolerance(rtol: float, atol: float, scale: float) -> float:
    return atol + rtol * scale


def _fail(label: str, what: str, autodiff: float, numeric: float, tol: float,
          rtol: float, atol: float, eps: float, where: str = "") -> None:
    raise AssertionError(
        f"{label}: {what} failed{where}: autodiff gives {autodiff!r}, central differences "
        f"give {numeric!r}; |difference| = {abs(autodiff - numeric):.3g} > tolerance "
        f"{tol:.3g} (atol {atol:g} + rtol {rtol:g} · scale; eps {eps:g})"
    )


# =====================================================================================
# check_grads
# =====================================================================================


def _central_difference(f: Callable, args: tuple, dirs: tuple, eps: float) -> np.ndarray:
    """(f(x + εu) − f(x − εu)) / 2ε, with every argument moved along its own direction."""
    plus = tuple(_to_backend_tree(_axpy(eps, u, x)) for x, u in zip(args, dirs))
    minus = tuple(_to_backend_tree(_axpy(-eps, u, x)) for x, u in zip(args, dirs))
    return (_to_numpy(f(*plus)) - _to_numpy(f(*minus))) / (2.0 * eps)


def _to_backend_tree(tree: Any) -> Any:
    return tree_map(_to_backend, tree)


def _check_rev(f: Callable, args: tuple, label: str, rng: np.random.Generator, eps: float,
               rtol: float, atol: float) -> np.ndarray:
    """Dot-product test ⟨v, J u⟩ = Σᵢ ⟨(Jᵀ v)ᵢ, uᵢ⟩; returns the cotangent v it drew."""
    out, vjp_fn = vjp(f, *_to_backend_tree(args))
    out = _to_numpy(out)
    expected = _to_numpy(f(*_to_backend_tree(args)))
    if out.shape != expected.shape:
        raise AssertionError(f"{label}: the traced output has shape {out.shape}; the plain "
                             f"call's has shape {expected.shape}")
    if not np.allclose(out, expected, rtol=1e-10, atol=1e-12):
        worst = float(np.max(np.abs(out - expected)))
        raise AssertionError(f"{label}: the traced forward pass differs from the plain one "
                             f"by up to {worst:.3g}")
    u = tuple(_random_like(a, rng) for a in args)
    v = rng.standard_normal(out.shape)
    cts = vjp_fn(_to_backend(v))
    if len(cts) != len(args):
        raise AssertionError(f"{label}: vjp_fn returned {len(cts)} cotangents for {len(args)} "
                             "primals")
    for i, (c, a) in enumerate(zip(cts, args)):
        cs = [np.shape(leaf) for leaf in tree_leaves(c)]
        as_ = [np.shape(leaf) for leaf in tree_leaves(a)]
        if cs != as_:
            raise AssertionError(f"{label}: the cotangent of argument {i} has shapes {cs}; "
                                 f"the argument has shapes {as_}")
    fd = _central_difference(f, args, u, eps)
    numeric = float(np.vdot(v.ravel(), fd.ravel()))
    autodiff = _inner(cts, u)
    tol = _tolerance(rtol, atol, max(abs(numeric), abs(autodiff)))
    if not abs(autodiff - numeric) <= tol:
        _fail(label, "the dot-product test ⟨v, J u⟩ = ⟨Jᵀ v, u⟩", autodiff, numeric, tol,
              rtol, atol, eps)
    return v


def _check_fwd(f: Callable, args: tuple, label: str, rng: np.random.Generator, eps: float,
               rtol: float, atol: float) -> tuple:
    """jvp(f, x, u) against (f(x + εu) − f(x − εu)) / 2ε entrywise; returns the u it drew."""
    u = tuple(_random_like(a, rng) for a in args)
    _, t_out = jvp(f, _to_backend_tree(args), _to_backend_tree(u))
    t_out = _to_numpy(t_out)
    fd = _central_difference(f, args, u, eps)
    if t_out.shape != fd.shape:
        raise AssertionError(f"{label}: the tangent output has shape {t_out.shape}; the "
                             f"output has shape {fd.shape}")
    err = np.abs(t_out - fd)
    bound = atol + rtol * np.abs(fd)
    bad = ~(err <= bound)
    if np.any(bad):
        k = int(np.argmax(np.where(bad, err - bound, -np.inf)))
        idx = np.unravel_index(k, fd.shape) if fd.ndim else ()
        _fail(label, "the tangent J u", float(t_out.ravel()[k]), float(fd.ravel()[k]),
              float(bound.ravel()[k]), rtol, atol, eps, where=f" at output index {idx}")
    return u


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
    run before any of the next, so the lowest failing order is the one reported.

    The arguments are copied to float64; finite differences need its precision.

    Args:
        f: a function of ``len(args)`` arrays (pytrees of arrays are accepted) returning an
            array; a pytree output is ravelled into one vector. It must compute with
            tinymeta ops, as any function handed to ``tm.grad``.
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
        AssertionError: naming the chain ("VJP of JVP of f"), the two numbers and the
            tolerance.
        ValueError: for an unknown mode or an order below 1.
    """
    if order < 1:
        raise ValueError(f"check_grads: order must be at least 1; got {order}")
    unknown = set(modes) - {"rev", "fwd"}
    if unknown:
        raise ValueError(f"check_grads: unknown modes {sorted(unknown)}; use 'rev' and 'fwd'")
    rtol = DEFAULT_RTOL if rtol is None else rtol
    atol = DEFAULT_ATOL if atol is None else atol
    rng = np.random.default_rng(seed) if rng is None else rng
    name = name or _name_of(f)
    args = tuple(tree_map(_to_numpy, a) for a in args)

    level = [(name, _flatten_output(f), args)]
    for k in range(order):
        deeper = []
        for fname, fun, xs in level:
            for mode in modes:
                label = ("VJP of " if mode == "rev" else "JVP of ") + fname
                try:
                    if mode == "rev":
                        v = _check_rev(fun, xs, label, rng, eps, rtol, atol)
                        child = (_vjp_function(fun, len(xs)), xs + (v,))
                    else:
                        u = _check_fwd(fun, xs, label, rng, eps, rtol, atol)
                        child = (_jvp_function(fun, len(xs)), xs + u)
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
        AssertionError: naming the comparison, the worst entry, the two numbers and the
            tolerance.
    """
    rtol = DEFAULT_RTOL if rtol is None else rtol
    atol = DEFAULT_ATOL if atol is None else atol
    name = name or _name_of(f)
    rng = np.random.default_rng(seed)
    args = tuple(tree_map(_to_numpy, a) for a in args)
    if v is None:
        v = tuple(_random_like(a, rng) for a in args)
    elif len(args) == 1 and not isinstance(v, tuple):
        v = (v,)
    v = tuple(tree_map(_to_numpy, t) for t in v)
    if len(v) != len(args):
        raise ValueError(f"check_hvp: {len(args)} arguments but {len(v)} tangents")

    def grad0(*xs: Any) -> Any:
        return _ravel_np(grad(f, argnums=0)(*_to_backend_tree(xs)))

    plus = tuple(_axpy(eps, t, x) for x, t in zip(args, v))
    minus = tuple(_axpy(-eps, t, x) for x, t in zip(args, v))
    numeric = (grad0(*plus) - grad0(*minus)) / (2.0 * eps)
    methods = [("hvp", hvp)]
    if getattr(transforms, "hvp_rev", None) is not None:
        methods.append(("hvp_rev", transforms.hvp_rev))
    results = {}
    for method, fn in methods:
        results[method] = _ravel_np(fn(f, _to_backend_tree(args), _to_backend_tree(v)))
        _compare_vectors(f"HVP of {name}", f"{method}: H v against central differences of grad",
                         results[method], numeric, rtol, atol, eps)

    single = len(args) == 1 and isinstance(args[0], np.ndarray)
    if with_hessian is None:
        with_hessian = single
    if with_hessian:
        if not single:
            raise ValueError("check_hvp: with_hessian needs one plain array argument")
        n = args[0].size
        H = _to_numpy(hessian(f)(_to_backend(args[0]))).reshape(n, n)
        _compare_vectors(f"HVP of {name}", "hvp: H v against hessian(f) @ v",
                         results["hvp"], H @ v[0].ravel(), rtol, atol, eps)


def _ravel_np(tree: Any) -> np.ndarray:
    leaves = tree_leaves(tree)
    if not leaves:
        return np.zeros((0,))
    return np.concatenate([_to_numpy(leaf).ravel() for leaf in leaves])


def _compare_vectors(label: str, what: str, got: np.ndarray, want: np.ndarray, rtol: float,
                     atol: float, eps: float) -> None:
    if got.shape != want.shape:
        raise AssertionError(f"{label}: {what}: shapes differ, {got.shape} against {want.shape}")
    err = np.abs(got - want)
    bound = atol + rtol * np.abs(want)
    bad = ~(err <= bound)
    if np.any(bad):
        k = int(np.argmax(np.where(bad, err - bound, -np.inf)))
        _fail(label, what, float(got[k]), float(want[k]), float(bound[k]), rtol, atol, eps,
              where=f" at entry {k}")


# =====================================================================================
# Hypothesis strategies (hypothesis is imported when one is called)
# =====================================================================================


def floats(lo: float = -2.0, hi: float = 2.0, *, avoid: Sequence[float] = (),
           margin: float = 0.1, width: int = 64) -> SearchStrategy[float]:
    """Finite floats in [lo, hi], at least ``margin`` away from each point in ``avoid``.

    ``avoid`` keeps finite differences off kinks (relu and abs at 0): ε-perturbations of
    a point ``margin`` away from a kink do not cross it.
    """
    from hypothesis import strategies as st

    cuts = sorted(p for p in avoid if lo - margin < p < hi + margin)
    pieces = []
    start = lo
    for p in cuts:
        if p - margin > start:
            pieces.append((start, p - margin))
        start = max(start, p + margin)
    if hi > start:
        pieces.append((start, hi))
    if not pieces:
        raise ValueError(f"floats: nothing left of [{lo}, {hi}] once {cuts} ± {margin} is removed")
    return st.one_of(*[
        st.floats(*_inward(a, b, width), allow_nan=False, allow_infinity=False,
                  allow_subnormal=False, width=width)
        for a, b in pieces
    ])


def _inward(a: float, b: float, width: int) -> tuple[float, float]:
    """[a, b] shrunk to the nearest bounds representable at ``width`` bits (hypothesis asks)."""
    dt = {16: np.float16, 32: np.float32, 64: np.float64}[width]
    lo, hi = dt(a), dt(b)
    if lo < a:
        lo = np.nextafter(lo, dt(np.inf))
    if hi > b:
        hi = np.nextafter(hi, dt(-np.inf))
    return float(lo), float(hi)


def shapes(min_dims: int = 0, max_dims: int = 3, min_side: int = 1,
           max_side: int = 4) -> SearchStrategy[tuple[int, ...]]:
    """Array shapes with ``min_dims`` … ``max_dims`` axes of length ``min_side`` … ``max_side``."""
    from hypothesis.extra import numpy as hnp

    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcastable_shapes(n: int, min_dims: int = 0, max_dims: int = 3, min_side: int = 1,
                         max_side: int = 4) -> SearchStrategy[tuple[tuple[int, ...], ...]]:
    """``n`` mutually broadcastable shapes (NumPy rules: trailing axes equal or 1).

    Different numbers of axes, and length-1 axes against longer ones, both appear, so
    every binary VJP rule has to undo broadcasting.
    """
    from hypothesis.extra import numpy as hnp

    return hnp.mutually_broadcastable_shapes(
        num_shapes=n, min_dims=min_dims, max_dims=max_dims, min_side=min_side,
        max_side=max_side,
    ).map(lambda b: tuple(b.input_shapes))


def arrays(shape: Any, dtype: Any = np.float64, elements: Any = None, lo: float = -2.0,
           hi: float = 2.0) -> SearchStrategy[np.ndarray]:
    """Arrays of ``shape`` (a tuple or a strategy of tuples), every entry drawn on its own.

    ``elements`` defaults to finite floats in [lo, hi] of the dtype's width. No fill
    value is used: each entry is drawn independently, so arrays are rarely constant.
    """
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    dtype = np.dtype(dtype)
    if elements is None:
        elements = st.floats(*_inward(lo, hi, 8 * dtype.itemsize), allow_nan=False,
                             allow_infinity=False, allow_subnormal=False,
                             width=8 * dtype.itemsize)
    return hnp.arrays(dtype, shape, elements=elements, fill=st.nothing())


def float_arrays(shape: Any, domain: tuple[float, float] = (-2.0, 2.0), dtype: Any = np.float64,
                 avoid: Sequence[float] = (), margin: float = 0.1) -> SearchStrategy[np.ndarray]:
    """Float arrays with entries in ``domain``, ``margin`` away from the points ``avoid``."""
    dtype = np.dtype(dtype)
    lo, hi = domain
    return arrays(shape, dtype,
                  elements=floats(lo, hi, avoid=avoid, margin=margin, width=8 * dtype.itemsize))


def separated_arrays(shape: Any, gap: float = 0.25, lo: float = -2.0,
                     dtype: Any = np.float64) -> SearchStrategy[np.ndarray]:
    """Arrays whose entries are pairwise at least ``gap`` apart (no ties), in random order.

    For ``max`` and sorting-like functions, which are not differentiable at ties.
    """
    from hypothesis import strategies as st

    dtype = np.dtype(dtype)
    shape_st = shape if hasattr(shape, "flatmap") else st.just(tuple(shape))

    @st.composite
    def draw(draw_: Any) -> np.ndarray:
        s = draw_(shape_st)
        n = int(np.prod(s))
        order = draw_(st.permutations(range(n)))
        jitter = draw_(st.lists(st.floats(0.0, 0.5 * gap, allow_nan=False), min_size=n,
                                max_size=n))
        values = lo + 1.5 * gap * np.asarray(order, dtype=np.float64) + np.asarray(
            jitter, dtype=np.float64)
        return values.reshape(s).astype(dtype)

    return draw()
