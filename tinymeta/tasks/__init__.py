"""Task distributions: sinusoid regression and few-shot classification."""

from __future__ import annotations

from .base import TaskBatch

__all__ = ["TaskBatch"]

try:  # the sinusoid lands with the meta-learning layer
    from .sinusoid import Sinusoid  # noqa: F401

    __all__.append("Sinusoid")
except ImportError as _e:  # pragma: no cover - only while the module is absent
    if "sinusoid" not in str(_e):
        raise
