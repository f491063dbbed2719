"""Functional, task-batched models and per-task losses."""

from __future__ import annotations

from .batchnorm import batch_norm, bn_adapt_mask, bn_mlp, bn_mlp_init
from .losses import accuracy, cross_entropy, mse
from .mlp import linear, mlp, mlp_init

__all__ = ["accuracy", "batch_norm", "bn_adapt_mask", "bn_mlp", "bn_mlp_init", "cross_entropy",
           "linear", "mlp", "mlp_init", "mse"]
