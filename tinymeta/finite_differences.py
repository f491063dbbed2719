"""Central differences for the gradient checker, and where a failed check is wrong.

A check runs at a :class:`Point`: a function, its float64 arguments, the label of the
chain ("VJP of VJP of f"), the step ε and the tolerances. Its finite difference along
directions u (one pytree per argument) is

    J u ≈ (f(x + εu) − f(x − εu)) / 2ε.

When a dot-product test ⟨v, J u⟩ = ⟨Jᵀ v, u⟩ fails, :func:`where_vjp` reruns it one
argument and one leaf at a time (u restricted to that leaf), then, for the leaves that
fail, compares each entry of the autodiff Jᵀ v with its own central difference,

    (Jᵀ v)_k = ⟨v, J e_k⟩ ≈ ⟨v, (f(x + εe_k) − f(x − εe_k)) / 2ε⟩,

e_k the k-th unit input (two calls of f per entry), and lists the worst entries with
their indices. :func:`where_jvp` does the same for forward mode: J u with u restricted to
one leaf, entry by entry over the output. The messages read "VJP of f with respect to
argument 1, entry (2,): autodiff 0.031, finite differences 0.552".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, NoReturn

import numpy as np

from . import kernels
from .tensor import Tensor
from .tree import tree_flatten, tree_leaves, tree_map, tree_unflatten

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-6
MAX_ENTRIES = 200  # entries of one leaf compared one by one (a larger leaf is sampled)
SHOW = 5  # worst entries listed in a failure message


class Point(NamedTuple):
    """One check: ``f`` at ``args`` (float64 NumPy pytrees), how failures name it, the step
    and tolerances, and ``convert`` (the arrays ``f`` is called on: backend or NumPy)."""

    f: Callable
    args: tuple
    label: str
    roles: tuple  # per argument: "" or what it is ("the cotangent v of the VJP of f")
    eps: float
    rtol: float
    atol: float
    convert: Callable


# =====================================================================================
# Float64 helpers
# =====================================================================================


def to_numpy(x: Any) -> np.ndarray:
    """A float64 NumPy copy of an array, a backend array, a constant Tensor or a scalar."""
    if type(x) is Tensor:
        x = x._raw()
    if not isinstance(x, (np.ndarray, np.generic, float, int)):
        x = kernels.get_backend().to_numpy(x)
    return np.array(x, dtype=np.float64)


def to_backend_tree(tree: Any) -> Any:
    """The leaves of ``tree`` as arrays of the active backend."""
    backend = kernels.get_backend()
    return tree_map(backend.asarray, tree)


def random_like(tree: Any, rng: np.random.Generator) -> Any:
    """Standard normal leaves shaped like ``tree``'s."""
    return tree_map(lambda leaf: rng.standard_normal(np.shape(leaf)), tree)


def inner(a: Any, b: Any) -> float:
    """⟨a, b⟩ = Σ over leaves of Σ aᵢ bᵢ, in float64."""
    la, lb = tree_leaves(a), tree_leaves(b)
    return float(sum(np.vdot(to_numpy(x).ravel(), to_numpy(y).ravel()) for x, y in zip(la, lb)))


def central_difference(p: Point, dirs: tuple) -> np.ndarray:
    """(f(x + εu) − f(x − εu)) / 2ε, every argument moved along its own direction."""
    plus = tuple(tree_map(lambda x, u: x + p.eps * u, x, u) for x, u in zip(p.args, dirs))
    minus = tuple(tree_map(lambda x, u: x - p.eps * u, x, u) for x, u in zip(p.args, dirs))
    return (to_numpy(p.f(*p.convert(plus))) - to_numpy(p.f(*p.convert(minus)))) / (2.0 * p.eps)


def fail(p: Point, what: str, autodiff: float, numeric: float, tol: float, where: str = "",
         details: Sequence[str] = ()) -> NoReturn:
    """Raise the checker's AssertionError: the chain, the test, the numbers, then ``details``."""
    message = (
        f"{p.label}: {what} failed{where}: autodiff gives {autodiff!r}, central differences "
        f"give {numeric!r}; |difference| = {abs(autodiff - numeric):.3g} > tolerance "
        f"{tol:.3g} (atol {p.atol:g} + rtol {p.rtol:g} · scale; eps {p.eps:g})"
    )
    raise AssertionError("\n".join([message, *details]))


# =====================================================================================
# Naming an entry: argument, leaf, index
# =====================================================================================


def leaf_paths(tree: Any) -> list[str]:
    """Each leaf's path in ``tree``, in :func:`~tinymeta.tree.tree_flatten`'s order:
    ``[2]`` for a list or tuple, ``.field`` for a NamedTuple, ``['key']`` for a dict."""
    if isinstance(tree, (list, tuple)):
        fields = getattr(tree, "_fields", None)
        keys = [f".{k}" for k in fields] if fields else [f"[{i}]" for i in range(len(tree))]
        return [k + rest for k, sub in zip(keys, tree) for rest in leaf_paths(sub)]
    if isinstance(tree, dict):
        return [f"[{k!r}]" + rest for k in sorted(tree) for rest in leaf_paths(tree[k])]
    return [] if tree is None else [""]


def _argument(p: Point, i: int, path: str, shape: tuple) -> str:
    """"argument 1 (its role), leaf [2] (shape (4, 3))"."""
    text = f"argument {i}" + (f" ({p.roles[i]})" if p.roles[i] else "")
    return text + (f", leaf {path} (shape {shape})" if path else "")


def _leaves(p: Point) -> list[tuple[int, int, str, tuple]]:
    """(argument, leaf number, path, shape) of every leaf of every argument."""
    out = []
    for i, a in enumerate(p.args):
        for n, (path, leaf) in enumerate(zip(leaf_paths(a), tree_leaves(a))):
            out.append((i, n, path, np.shape(leaf)))
    return out


def _only(p: Point, i: int, n: int, direction: np.ndarray) -> tuple:
    """Directions that are zero everywhere but leaf ``n`` of argument ``i``."""
    dirs = []
    for j, a in enumerate(p.args):
        leaves, treedef = tree_flatten(a)
        zs = [np.zeros(np.shape(leaf)) for leaf in leaves]
        if j == i:
            zs[n] = direction
        dirs.append(tree_unflatten(treedef, zs))
    return tuple(dirs)


def _excess(p: Point, autodiff: float, numeric: float) -> float:
    """|a − n| − tolerance: positive when the two disagree."""
    return abs(autodiff - numeric) - (p.atol + p.rtol * max(abs(autodiff), abs(numeric)))


def _entry_line(p: Point, where: str, index: str, autodiff: float, numeric: float,
                reference: str = "finite differences") -> str:
    return (f"  {p.label} with respect to {where}, {index}: autodiff {autodiff:.4g}, "
            f"{reference} {numeric:.4g}")


# =====================================================================================
# Where a failed check is wrong
# =====================================================================================


def where_vjp(p: Point, cts: tuple, v: np.ndarray, u: tuple, rng: np.random.Generator,
              max_entries: int = MAX_ENTRIES, show: int = SHOW) -> list[str]:
    """The dot-product test per leaf, then the worst entries of Jᵀ v of the failing leaves.

    Returns the lines of the failure message that say where Jᵀ v is wrong.
    """
    try:
        return _where_vjp(p, cts, v, u, rng, max_entries, show)
    except Exception as e:  # noqa: BLE001  (the failure stands; say why it is not located)
        return [f"  (could not rerun per argument: {type(e).__name__}: {e})"]


def _where_vjp(p: Point, cts: tuple, v: np.ndarray, u: tuple, rng: np.random.Generator,
               max_entries: int, show: int) -> list[str]:
    cot = [to_numpy(c) for c in (leaf for ct in cts for leaf in tree_leaves(ct))]
    dirs = [np.asarray(d) for d in (leaf for ut in u for leaf in tree_leaves(ut))]
    summary, failing = [], []
    for k, (i, n, path, shape) in enumerate(_leaves(p)):
        where = _argument(p, i, path, shape)
        numeric = float(np.vdot(v, central_difference(p, _only(p, i, n, dirs[k]))))
        autodiff = float(np.vdot(cot[k], dirs[k]))
        if _excess(p, autodiff, numeric) > 0:
            failing.append((k, i, n, where))
        else:
            summary.append(f"  {where}: agrees (the dot-product test of this leaf alone)")
    if not failing:  # the error is spread over leaves that each pass: look at all of them
        failing = [(k, i, n, _argument(p, i, path, shape))
                   for k, (i, n, path, shape) in enumerate(_leaves(p))]
    rows, notes = [], []
    for k, i, n, where in failing:
        size = cot[k].size
        picks = np.arange(size) if size <= max_entries else rng.choice(size, max_entries,
                                                                      replace=False)
        if size > max_entries:
            notes.append(f"  ({where}: {max_entries} of its {size} entries compared, at random)")
        for e in picks:
            unit = np.zeros(size)
            unit[e] = 1.0
            unit = unit.reshape(cot[k].shape)
            numeric = float(np.vdot(v, central_difference(p, _only(p, i, n, unit))))
            autodiff = float(cot[k].ravel()[e])
            index = f"entry {_index(e, cot[k].shape)}"
            rows.append((_excess(p, autodiff, numeric), where, index, autodiff, numeric))
    return [*_worst(p, rows, show, "Jᵀ v against central differences of ⟨v, f⟩"), *notes,
            *summary]


def _worst(p: Point, rows: list, show: int, what: str) -> list[str]:
    """The ``show`` worst rows (excess, where, index, autodiff, numeric) that fail, or, when
    none fails alone, the largest differences, said so."""
    rows = sorted(rows, key=lambda r: -r[0])
    bad = [r for r in rows if r[0] > 0]
    if bad:
        head = f"  where ({what}, worst first; {len(bad)} of {len(rows)} entries off):"
        firsts = list({r[1]: r for r in reversed(bad)}.values())[::-1]  # each place's worst
        picked = firsts + [r for r in bad if r not in firsts]
        counts, totals = Counter(r[1] for r in bad), Counter(r[1] for r in rows)
        tally = [f"  {w}: {n} of {totals[w]} entries off" for w, n in counts.items()]
        return [head, *[_entry_line(p, *r[1:]) for r in picked[:max(show, len(firsts))]],
                *tally]
    head = (f"  no single entry is off by more than its tolerance ({what}); the largest "
            "differences:")
    return [head, *[_entry_line(p, *r[1:]) for r in rows[:min(show, 3)]]]


def where_jvp(p: Point, jvp_of: Callable, u: tuple, show: int = SHOW) -> list[str]:
    """J u with u restricted to one leaf at a time, entry by entry over the output.

    Returns the lines of the failure message that say which argument's tangent is wrong.
    """
    try:
        return _where_jvp(p, jvp_of, u, show)
    except Exception as e:  # noqa: BLE001  (the failure stands; say why it is not located)
        return [f"  (could not rerun per argument: {type(e).__name__}: {e})"]


def _where_jvp(p: Point, jvp_of: Callable, u: tuple, show: int) -> list[str]:
    dirs = [np.asarray(d) for d in (leaf for ut in u for leaf in tree_leaves(ut))]
    rows, summary = [], []
    for k, (i, n, path, shape) in enumerate(_leaves(p)):
        where = _argument(p, i, path, shape)
        only = _only(p, i, n, dirs[k])
        got = to_numpy(jvp_of(p.convert(p.args), p.convert(only))[1])
        want = central_difference(p, only)
        if got.shape != want.shape:
            summary.append(f"  {where}: J u has shape {got.shape}, the output {want.shape}")
            continue
        bad = False
        for e in range(want.size):
            a, b = float(got.ravel()[e]), float(want.ravel()[e])
            x = _excess(p, a, b)
            bad = bad or x > 0
            rows.append((x, where, f"output entry {_index(e, want.shape)}", a, b))
        if not bad:
            summary.append(f"  {where}: agrees (J u with the tangent of this leaf alone)")
    what = "J u with one leaf's tangent at a time against central differences"
    return [*_worst(p, rows, show, what), *summary]


def _index(flat: int, shape: tuple) -> tuple[int, ...]:
    """The index of entry ``flat`` of a C-ordered array of ``shape``, as plain ints."""
    return tuple(int(j) for j in np.unravel_index(flat, shape))


def where_hvp(p: Point, what: str, got: np.ndarray, want: np.ndarray,
              reference: str = "finite differences", show: int = SHOW) -> None:
    """Compare H v (the leaves of the first argument, ravelled) with ``want`` entrywise;
    on a failure raise, naming the worst entries by leaf and index."""
    if got.shape != want.shape:
        raise AssertionError(f"{p.label}: {what}: shapes differ, {got.shape} against "
                             f"{want.shape}")
    err = np.abs(got - want)
    bound = p.atol + p.rtol * np.abs(want)
    excess = err - bound
    bad = ~(err <= bound)
    if not np.any(bad):
        return
    order = [int(k) for k in np.argsort(-np.where(bad, excess, -np.inf)) if bad[k]][:show]
    a0 = p.args[0]
    offsets = np.cumsum([0] + [np.size(leaf) for leaf in tree_leaves(a0)])
    shapes = [np.shape(leaf) for leaf in tree_leaves(a0)]
    paths = leaf_paths(a0)
    lines = ["  where (worst first):"]
    for k in order:
        n = int(np.searchsorted(offsets, k, side="right") - 1)
        index = f"entry {_index(k - offsets[n], shapes[n])}"
        lines.append(_entry_line(p, _argument(p, 0, paths[n], shapes[n]), index,
                                 float(got[k]), float(want[k]), reference))
    k = order[0]
    fail(p, what, float(got[k]), float(want[k]), float(bound[k]), where=f" at entry {k}",
         details=lines)
