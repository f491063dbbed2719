"""Outer-loop optimizers over pytrees, functional.

``state = opt.init(params)``; ``params, state = opt.update(grads, state, params)``.
The state is a dict of arrays and pytrees of arrays, so :func:`tinymeta.save` can store it.
A learning rate is a number or a schedule ``lr(step) -> float`` (step counting from 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import kernels
from .tree import tree_map

Schedule = float | Callable[[int], float]


def _lr_at(lr: Schedule, step: int) -> float:
    return float(lr(step)) if callable(lr) else float(lr)


def linear_decay(lr: float, total_steps: int) -> Callable[[int], float]:
    """The schedule lr · (1 − step/total_steps), floored at 0 (Reptile's annealing)."""

    def schedule(step: int) -> float:
        return lr * max(0.0, 1.0 - step / total_steps)

    return schedule


class SGD:
    """Gradient descent, with optional heavy-ball momentum.

    Update: m ← μ m + g (when μ > 0, else m = g); θ ← θ − lr_t m.
    """

    def __init__(self, lr: Schedule, momentum: float = 0.0) -> None:
        if momentum < 0:
            raise ValueError(f"SGD: momentum must be >= 0; got {momentum}")
        self.lr = lr
        self.momentum = float(momentum)

    def init(self, params: Any) -> dict:
        state: dict = {"step": np.zeros((), np.int64)}
        if self.momentum > 0:
            state["m"] = tree_map(lambda p: kernels.get_backend().xp.zeros_like(p), params)
        return state

    def update(self, grads: Any, state: dict, params: Any) -> tuple:
        step = int(state["step"])
        lr = _lr_at(self.lr, step)
        new_state: dict = {"step": np.asarray(step + 1, np.int64)}
        direction = grads
        if self.momentum > 0:
            direction = tree_map(lambda m, g: self.momentum * m + g, state["m"], grads)
            new_state["m"] = direction
        new = tree_map(lambda p, d: (p - lr * d).astype(p.dtype, copy=False), params, direction)
        return new, new_state


class Adam:
    """Adam (Kingma and Ba 2015), bias-corrected, as in PyTorch and optax.

    With t = step + 1: m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
    θ ← θ − lr_t · (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε).
    """

    def __init__(self, lr: Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-8) -> None:
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam: b1 and b2 must lie in [0, 1); got {b1}, {b2}")
        self.lr, self.b1, self.b2, self.eps = lr, float(b1), float(b2), float(eps)

    def init(self, params: Any) -> dict:
        xp = kernels.get_backend().xp
        return {
            "step": np.zeros((), np.int64),
            "m": tree_map(lambda p: xp.zeros_like(p), params),
            "v": tree_map(lambda p: xp.zeros_like(p), params),
        }

    def update(self, grads: Any, state: dict, params: Any) -> tuple:
        xp = kernels.get_backend().xp
        step = int(state["step"])
        t = step + 1
        lr = _lr_at(self.lr, step)
        b1, b2, eps = self.b1, self.b2, self.eps
        m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = tree_map(lambda v, g: b2 * v + (1 - b2) * (g * g), state["v"], grads)
        c1 = 1 - b1 ** t
        c2 = 1 - b2 ** t

        def step_one(p, mi, vi):
            return (p - lr * (mi / c1) / (xp.sqrt(vi / c2) + eps)).astype(p.dtype, copy=False)

        new = tree_map(step_one, params, m, v)
        return new, {"step": np.asarray(t, np.int64), "m": m, "v": v}
