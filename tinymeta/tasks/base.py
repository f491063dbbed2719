"""The task batch: support and query sets with a leading task axis B."""

from __future__ import annotations

from typing import Any, NamedTuple


class TaskBatch(NamedTuple):
    """A meta-batch of B tasks, every array with the leading task axis.

    Regression: x of shape (B, K, d_in), y of shape (B, K, d_out).
    Classification: x of shape (B, N*K, d), integer labels y of shape (B, N*K).
    ``params`` holds task parameters (a sinusoid's amplitude and phase, the
    classes drawn for a classification task), or None.
    """

    support_x: Any
    support_y: Any
    query_x: Any
    query_y: Any
    params: Any = None
