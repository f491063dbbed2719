"""The task setup protocol: what the run layer needs to know of a task family.

A task setup turns a run's settings into the pieces every algorithm, the training loop and
evaluation use, so that none of them knows which task it runs:

- ``init_params()``: θ_0, a pytree of arrays;
- ``loss_fn(params, x, y) -> (B,)``: the per-task loss of the loss-function contract
  (params with the task axis B on every leaf);
- ``adapt_mask(params)``: the inner loop's ``adapt=`` mask (None: every leaf adapts);
- ``train_batch(rng, world)``: this rank's share of one meta-batch (the backend's arrays);
- ``validation_batch(world)``: this rank's share of the fixed validation tasks and their
  total count, or None for a task without validation (then no early stopping);
- ``scores(params, query_x, query_y) -> (B,)``: the task's metric per task (a NumPy array),
  ``summary(scores)`` its report entry and ``validation_score(scores)`` the one number the
  early stopping compares (``higher_is_better`` says which way);
- ``test_batch(...)``: the test tasks ``tinymeta eval`` adapts to, with the report's fields.

Adding a task is one subclass of :class:`TaskSetup` and one line in
:data:`tinymeta.runs.registry.TASKS` (or :func:`tinymeta.runs.register_task`).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from .. import kernels
from ..tasks.base import TaskBatch


@dataclasses.dataclass
class TaskOptions:
    """A task's own settings (the sinusoid has none); stored flat in config.json."""

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TaskOptions:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def resolved(self, cfg: Any) -> TaskOptions:
        """A copy with the defaults that depend on the run (``cfg``: its algorithm) or on
        the machine (data paths) filled in."""
        return dataclasses.replace(self)

    def validate(self, cfg: Any) -> None:
        """Raise a ValueError naming the option of a setting that cannot be run."""


class TaskSetup(abc.ABC):
    """The protocol (see the module's docstring); subclasses fill in a task family.

    ``cfg`` is a resolved :class:`tinymeta.runs.RunConfig`. Constructing a setup is cheap;
    :meth:`load_training` reads whatever meta-training needs (data files).
    """

    name: ClassVar[str]
    metric: ClassVar[str]  # the report's key: "mse", "accuracy"
    higher_is_better: ClassVar[bool] = False
    algos: ClassVar[tuple[str, ...]]
    #: the task's defaults of the shared settings left None
    defaults: ClassVar[dict[str, Any]]
    reptile_outer_lr: ClassVar[float] = 0.1
    options: ClassVar[type[TaskOptions]] = TaskOptions
    #: tasks adapted at once in evaluation and validation (None: all)
    eval_chunk: ClassVar[int | None] = None

    @classmethod
    def model_defaults(cls, opts: Any) -> dict[str, Any]:
        """Defaults of shared settings that depend on the task's own options ``opts``
        (filled in before :attr:`defaults`); none unless a task says otherwise."""
        return {}

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.opts = cfg.task_options()
        self.dtype = np.dtype(cfg.dtype)

    @abc.abstractmethod
    def init_params(self) -> Any:
        """θ_0: a pytree of arrays of the run's dtype."""

    @staticmethod
    @abc.abstractmethod
    def loss_fn(params: Any, x: Any, y: Any) -> Any:
        """L^e for every task e: (B,), params with the task axis on every leaf."""

    def adapt_mask(self, params: Any) -> Any:
        return None

    def load_training(self) -> None:
        """Read what meta-training needs (nothing for a synthetic task)."""
        return None

    @abc.abstractmethod
    def train_batch(self, rng: np.random.Generator, world: Any) -> TaskBatch:
        """This rank's tasks of one meta-batch of ``cfg.meta_batch`` (the backend's arrays).

        Every rank draws every random number of the whole batch from ``rng``, so that the
        Generators of all ranks stay alike.
        """

    def validation_batch(self, world: Any) -> tuple[TaskBatch | None, int] | None:
        return None

    @abc.abstractmethod
    def scores(self, params: Any, query_x: Any, query_y: Any) -> np.ndarray:
        """The metric of each task's query set under its adapted params: (B,) NumPy."""

    @abc.abstractmethod
    def summary(self, scores: np.ndarray) -> dict:
        """One step count's entry of the evaluation report."""

    def validation_score(self, scores: np.ndarray) -> float:
        return float(np.mean(scores))

    @abc.abstractmethod
    def eval_defaults(self) -> tuple[list[int], int]:
        """(step counts, query points) of ``tinymeta eval`` when not given."""

    @abc.abstractmethod
    def test_batch(self, tasks: int, shots: int, query: int, eval_seed: int,
                   **task_args: Any) -> tuple[TaskBatch, dict]:
        """(the test tasks on the backend, the report's task-specific fields)."""


def to_backend(batch: TaskBatch) -> TaskBatch:
    """The support and query arrays on the backend; the task parameters dropped."""
    B = kernels.get_backend()
    return TaskBatch(B.asarray(batch.support_x), B.asarray(batch.support_y),
                     B.asarray(batch.query_x), B.asarray(batch.query_y))


def summarize(losses: np.ndarray, bad_above: float = 100.0) -> dict:
    """mean, 95% interval 1.96·sd/√n, median, and n_bad (non-finite or > bad_above)."""
    losses = np.asarray(losses, dtype=np.float64)
    n = losses.size
    finite = np.isfinite(losses)
    n_bad = int(np.sum(~finite | (np.where(finite, losses, 0.0) > bad_above)))
    if finite.all():
        mean = float(np.mean(losses))
        ci = float(1.96 * np.std(losses, ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    else:
        mean, ci = None, None
    median = float(np.median(np.where(np.isnan(losses), np.inf, losses)))
    median = median if np.isfinite(median) else None
    return {"mean": mean, "ci95": ci, "median": median, "n_bad": n_bad}
