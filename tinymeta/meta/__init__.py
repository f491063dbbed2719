"""Meta-learning algorithms, each ``f(loss_fn, params, batch, ...) -> (meta_gradient, info)``.

``loss_fn(params, x, y)`` receives params whose every leaf has the leading task axis B
and returns per-task losses (B,); see docs/maths.md, "Task batching".
"""

from __future__ import annotations

from .adapt import adapt
from .cg import cg, task_dot
from .common import adapt_path, broadcast_tasks, inner_step
from .imaml import imaml
from .maml import fomaml, maml
from .metasgd import metasgd
from .minres import minres, normal_cg
from .pretrain import pretrain
from .proximal import proximal_adapt, proximal_path
from .reptile import reptile

__all__ = [
    "adapt",
    "adapt_path",
    "broadcast_tasks",
    "cg",
    "fomaml",
    "imaml",
    "inner_step",
    "maml",
    "metasgd",
    "minres",
    "normal_cg",
    "pretrain",
    "proximal_adapt",
    "proximal_path",
    "reptile",
    "task_dot",
]
