"""Functional, task-batched models and per-task losses."""

from __future__ import annotations

from .batchnorm import batch_norm, bn_adapt_mask, bn_mlp, bn_mlp_init
from .conv import avg_pool2d, conv2d, global_avg_pool2d, max_pool2d
from .conv4 import conv4, conv4_adapt_mask, conv4_init
from .losses import accuracy, cross_entropy, mse
from .mlp import linear, mlp, mlp_init

__all__ = ["accuracy", "avg_pool2d", "batch_norm", "bn_adapt_mask", "bn_mlp", "bn_mlp_init",
           "conv2d", "conv4", "conv4_adapt_mask", "conv4_init", "cross_entropy",
           "global_avg_pool2d", "linear", "max_pool2d", "mlp", "mlp_init", "mse"]
