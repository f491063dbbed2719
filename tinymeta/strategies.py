"""Hypothesis strategies for gradient checks: arrays, shapes, broadcastable shapes, no ties.

Finite differences need inputs away from kinks (relu and abs at 0: :func:`float_arrays`'
``avoid``), away from ties (max, sorting: :func:`separated_arrays`), and binary rules must
be tried on every broadcasting pattern (:func:`broadcastable_shapes`). hypothesis is
imported when a strategy is called, so ``tinymeta.testing`` works without it. Guide and
examples: ``docs/testing.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["arrays", "shapes", "broadcastable_shapes", "float_arrays", "floats",
           "separated_arrays"]

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
