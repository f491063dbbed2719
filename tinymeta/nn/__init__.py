"""Functional, task-batched models and per-task losses."""

from __future__ import annotations

from .losses import accuracy, cross_entropy, mse
from .mlp import linear, mlp, mlp_init

__all__ = ["accuracy", "cross_entropy", "linear", "mlp", "mlp_init", "mse"]
