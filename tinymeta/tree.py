"""Pytrees: nested dict / list / tuple / NamedTuple containers of array leaves.

Dict leaves come in sorted-key order; rebuilt trees keep the container types of
their input (a list stays a list, a NamedTuple stays that NamedTuple). ``None``
is an empty subtree, as in JAX.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_LEAF = object()
_NONE = object()


def tree_flatten(tree: Any) -> tuple[list, Any]:
    """Return (leaves, treedef): the leaves left to right, and what rebuilds the tree."""
    leaves: list = []
    return leaves, _flatten(tree, leaves)


def _flatten(x: Any, leaves: list) -> Any:
    t = type(x)
    if t is list or t is tuple or isinstance(x, (list, tuple)):
        return (t, None, tuple([_flatten(v, leaves) for v in x]))
    if isinstance(x, dict):
        keys = sorted(x)
        return (dict, tuple(keys), tuple([_flatten(x[k], leaves) for k in keys]))
    if x is None:
        return _NONE
    leaves.append(x)
    return _LEAF


def tree_unflatten(treedef: Any, leaves: list) -> Any:
    """Rebuild the tree that :func:`tree_flatten` took apart, with new leaves."""
    it = iter(leaves)
    out = _unflatten(treedef, it)
    rest = sum(1 for _ in it)
    if rest:
        raise ValueError(f"tree_unflatten: {rest} leaves too many for the tree structure")
    return out


def _unflatten(d: Any, it) -> Any:
    if d is _LEAF:
        try:
            return next(it)
        except StopIteration:
            raise ValueError("tree_unflatten: too few leaves for the tree structure") from None
    if d is _NONE:
        return None
    typ, keys, children = d
    vals = [_unflatten(c, it) for c in children]
    if typ is dict:
        return dict(zip(keys, vals))
    if keys is None and hasattr(typ, "_fields"):
        return typ(*vals)
    return typ(vals)


def tree_structure(tree: Any) -> Any:
    return tree_flatten(tree)[1]


def tree_leaves(tree: Any) -> list:
    return tree_flatten(tree)[0]


def tree_map(f: Callable, tree: Any, *rest: Any) -> Any:
    """Apply ``f`` leafwise: ``f(leaf, *leaves_of_rest)``; the trees must share a structure."""
    leaves, treedef = tree_flatten(tree)
    others = []
    for r in rest:
        rl, rd = tree_flatten(r)
        if rd != treedef:
            raise ValueError(
                "tree_map: the trees differ in structure: "
                f"{_describe(treedef)} against {_describe(rd)}"
            )
        others.append(rl)
    return tree_unflatten(treedef, [f(*xs) for xs in zip(leaves, *others)])


def _describe(d: Any) -> str:
    if d is _LEAF:
        return "*"
    if d is _NONE:
        return "None"
    typ, keys, children = d
    inner = ", ".join(
        (f"{k!r}: " if keys is not None else "") + _describe(c)
        for k, c in zip(keys if keys is not None else [None] * len(children), children)
    )
    return f"{typ.__name__}({inner})"
