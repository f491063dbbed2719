"""Finn et al.'s sinusoid regression as a run: an MLP 1 → hidden → 1 (ReLU), MSE loss.

Task e: y = A_e sin(x − φ_e), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5]; the loss of a task is
the mean squared error over its points, L^e = (1/K) Σ_k (f(x_k) − y_k)².
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import kernels, nn
from ..tasks.base import TaskBatch
from ..tasks.sinusoid import Sinusoid
from .setup import TaskSetup, summarize


class SinusoidSetup(TaskSetup):
    """Sinusoid regression (every algorithm; no validation set)."""

    name = "sinusoid"
    metric = "mse"
    higher_is_better = False
    algos = ("maml", "maml-chain", "fomaml", "reptile", "imaml", "metasgd", "pretrain")
    defaults: ClassVar[dict[str, Any]] = {
        "shots": 10, "inner_lr": 0.01, "meta_batch": 25, "iterations": 70000,
        "hidden": (40, 40), "checkpoint_every": 1000, "log_every": 100}
    reptile_outer_lr = 0.1

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.dist = Sinusoid()

    def init_params(self) -> list:
        sizes = (1,) + tuple(self.cfg.hidden) + (1,)
        return nn.mlp_init(sizes, seed=self.cfg.seed, dtype=self.dtype, init=self.cfg.init)

    @staticmethod
    def loss_fn(params: Any, x: Any, y: Any) -> Any:
        return nn.mse(nn.mlp(params, x), y)

    @staticmethod
    def predict(params: Any, x: Any) -> Any:
        return nn.mlp(params, x)

    def sample(self, rng: Any, num_tasks: int, k_support: int, k_query: int) -> TaskBatch:
        """B tasks with K support and Q query points, on the backend (task parameters kept)."""
        batch = self.dist.sample(num_tasks, k_support, k_query, seed=rng, dtype=self.dtype)
        B = kernels.get_backend()
        return batch._replace(support_x=B.asarray(batch.support_x),
                              support_y=B.asarray(batch.support_y),
                              query_x=B.asarray(batch.query_x),
                              query_y=B.asarray(batch.query_y))

    def train_batch(self, rng: np.random.Generator, world: Any) -> TaskBatch:
        c = self.cfg
        return world.shard(self.sample(rng, c.meta_batch, c.shots, c.query))

    def scores(self, params: Any, query_x: Any, query_y: Any) -> np.ndarray:
        with np.errstate(all="ignore"):
            losses = self.loss_fn(params, query_x, query_y)
        return kernels.get_backend().to_numpy(losses)

    def summary(self, scores: np.ndarray) -> dict:
        return summarize(scores)

    def eval_defaults(self) -> tuple[list[int], int]:
        return list(range(11)), 100

    def test_batch(self, tasks: int, shots: int, query: int, eval_seed: int,
                   **task_args: Any) -> tuple[TaskBatch, dict]:
        given = sorted(k for k, v in task_args.items() if v)
        if given:
            raise ValueError(f"--{given[0]} applies to omniglot runs only")
        return self.sample(np.random.default_rng(eval_seed), tasks, shots, query), {}
