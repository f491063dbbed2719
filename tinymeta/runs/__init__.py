"""The run layer: everything a training run is, for every task.

- :mod:`~tinymeta.runs.config`: :class:`RunConfig`, one configuration (shared settings
  once, the task's own grouped), JSON read and write, the settings a resume may change;
- :mod:`~tinymeta.runs.setup`: the task setup protocol; :mod:`~tinymeta.runs.sinusoid`
  and :mod:`~tinymeta.runs.omniglot` implement it; :mod:`~tinymeta.runs.registry` names
  them (:data:`TASKS`, :func:`register_task`);
- :mod:`~tinymeta.runs.algorithms`: the one algorithm dispatch, the optimizer, θ_0;
- :mod:`~tinymeta.runs.folder`: the run folder, the only code that reads or writes its files;
- :mod:`~tinymeta.runs.loop`: the one training loop (:func:`train`), with validation and
  early stopping, MPI and compilation;
- :mod:`~tinymeta.runs.evaluation`: test-time evaluation by the task's metric;
  :mod:`~tinymeta.runs.official`: Lake et al.'s one-shot runs;
  :mod:`~tinymeta.runs.figures`: Finn et al.'s sinusoid figures.

From Python::

    from tinymeta import runs
    cfg = runs.RunConfig.create(task="sinusoid", algo="maml", iterations=2000)
    runs.train(cfg, "runs/maml")
    print(runs.format_report(runs.evaluate("runs/maml", tasks=600)))

A new task family is a :class:`TaskSetup` subclass (its name, metric, algorithms, defaults
of the shared settings, options dataclass, and the methods of the protocol) registered
with ``runs.register_task(MySetup)``; ``RunConfig(task=MySetup.name, ...)`` then trains it.
"""

from __future__ import annotations

from .algorithms import initial_model, make_optimizer, meta_gradient
from .config import (
    ALGOS,
    DIVERGENCE_FACTOR,
    IMAML_DEFAULTS,
    IMAML_STEPS,
    RESUMABLE,
    RunConfig,
    TrainingError,
    merge_resume,
)
from .evaluation import evaluate, format_report, load_model, parse_steps
from .figures import make_figures
from .folder import RunFolder
from .loop import train
from .official import eval_runs, format_runs, validation_choice, validation_steps
from .registry import TASKS, register_task
from .setup import TaskOptions, TaskSetup

__all__ = [
    "ALGOS", "DIVERGENCE_FACTOR", "IMAML_DEFAULTS", "IMAML_STEPS", "RESUMABLE", "TASKS",
    "RunConfig", "RunFolder", "TaskOptions", "TaskSetup",
    "TrainingError", "eval_runs", "evaluate", "format_report", "format_runs",
    "initial_model", "load_model", "make_figures", "make_optimizer", "merge_resume",
    "meta_gradient", "parse_steps", "register_task", "train", "validation_choice",
    "validation_steps",
]
