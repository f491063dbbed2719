"""Sinusoid regression (Finn et al. 2017, section 5.1).

A task is y = A sin(x − φ) with amplitude A ~ U[0.1, 5.0] and phase φ ~ U[0, π]; its
points have x ~ U[−5, 5]. K support and Q query points are drawn per task.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import TaskBatch


class Sinusoid:
    """The sinusoid task distribution.

    Args:
        amplitude: the range of A.
        phase: the range of φ.
        x_range: the range of the inputs.
    """

    def __init__(self, amplitude: tuple[float, float] = (0.1, 5.0),
                 phase: tuple[float, float] = (0.0, np.pi),
                 x_range: tuple[float, float] = (-5.0, 5.0)) -> None:
        for name, (lo, hi) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not lo <= hi:
                raise ValueError(f"Sinusoid: {name} range ({lo}, {hi}) is empty")
        self.amplitude = tuple(float(v) for v in amplitude)
        self.phase = tuple(float(v) for v in phase)
        self.x_range = tuple(float(v) for v in x_range)

    @staticmethod
    def function(x: Any, amplitude: Any, phase: Any) -> Any:
        """y = A sin(x − φ), with A and φ of shape (B,) broadcast against x of (B, K, 1)."""
        a = np.asarray(amplitude)[:, None, None]
        p = np.asarray(phase)[:, None, None]
        return a * np.sin(np.asarray(x) - p)

    def sample(self, num_tasks: int, k_support: int, k_query: int | None = None,
               seed: int | np.random.Generator | None = None,
               dtype: Any = np.float32) -> TaskBatch:
        """Draw a meta-batch of tasks.

        Args:
            num_tasks: B.
            k_support: K, the support points per task.
            k_query: Q, the query points per task (default K).
            seed: an int (the same seed gives the same batch) or a NumPy Generator, which
                is advanced (so that successive calls give new tasks).
            dtype: the float dtype of the arrays.

        Returns:
            A TaskBatch with x and y of shapes (B, K, 1) and (B, Q, 1) and
            ``params = {"amplitude": (B,), "phase": (B,)}`` in float64.
        """
        B, K = int(num_tasks), int(k_support)
        Q = K if k_query is None else int(k_query)
        if B < 1 or K < 0 or Q < 0:
            raise ValueError(f"Sinusoid.sample: need num_tasks >= 1 and k >= 0; "
                             f"got {num_tasks}, {k_support}, {k_query}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        amplitude = rng.uniform(*self.amplitude, size=B)
        phase = rng.uniform(*self.phase, size=B)
        x = rng.uniform(*self.x_range, size=(B, K + Q, 1))
        y = self.function(x, amplitude, phase)
        x, y = x.astype(dtype), y.astype(dtype)
        return TaskBatch(x[:, :K], y[:, :K], x[:, K:], y[:, K:],
                         {"amplitude": amplitude, "phase": phase})

    def __repr__(self) -> str:
        return (f"Sinusoid(amplitude={self.amplitude}, phase={self.phase}, "
                f"x_range={self.x_range})")
