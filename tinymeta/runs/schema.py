"""The declared shape of every record a run folder holds, checked when it is read.

:class:`~tinymeta.runs.folder.RunFolder` reads the files; this module says what their
contents must be, as plain checks on parsed values, so that a damaged or hand-edited file is
refused with a :class:`ValueError` that names the file and what is wrong, before anything
believes it:

- a log line (``train.jsonl``, ``val.jsonl``): a JSON object with an integer ``iteration``
  >= 1, numbers where numbers are written, iterations increasing line by line;
- an evaluation report (``eval.json``, ``evals/*.json``): its metric's table (step counts to
  summaries, finite numbers in range: an accuracy in [0, 100]) and the protocol fields;
- a checkpoint's contents against the run's settings: the iteration in [0, iterations],
  ``skipped`` in [0, iteration], the optimizer's step count equal to iteration − skipped,
  finite parameters and moments, and the metadata (the task sampler's RNG state, the loss
  window of the log line in progress, the divergence guard's starting loss, the early stop).

Fields added later (``adaptation`` and ``params_sha256`` of a report; a checkpoint's
``window``, ``loss_start`` and ``stopped_early``) are optional: files written before them
are read as the older format they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..tree import tree_leaves
from .config import ALGOS

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _number(x: Any, finite: bool = True) -> bool:
    """A JSON number (not a bool); with ``finite``, neither NaN nor infinite."""
    return type(x) in (int, float) and (not finite or math.isfinite(x))


def _int(x: Any, lo: int = 0) -> bool:
    return type(x) is int and x >= lo


# ---- log lines ------------------------------------------------------------------------------

#: The numbers a training log line holds (NaN allowed: a skipped step's loss), and a
#: validation line's (finite).
TRAIN_NUMBERS = ("query_loss", "support_loss", "step_s", "elapsed_s")
VAL_NUMBERS = ("val_s",)


def check_log_record(rec: Any, metric: str | None, last: int) -> str | None:
    """Why the log line ``rec`` is not one the training loop writes (None: it is).

    ``metric``: the validation metric for a ``val.jsonl`` line (a finite number), None for
    ``train.jsonl``; ``last``: the previous line's iteration (the iterations increase).
    """
    if not isinstance(rec, dict):
        return f"a log line must be a JSON object; got {type(rec).__name__}"
    it = rec.get("iteration")
    if not _int(it, 1):
        return f"'iteration' must be an integer >= 1; got {it!r:.40}"
    if it <= last:
        return f"iteration {it} follows iteration {last}: the lines are out of order"
    if metric is not None and not _number(rec.get(metric)):
        return f"{metric!r} must be a finite number; got {rec.get(metric)!r:.40}"
    for name in TRAIN_NUMBERS if metric is None else VAL_NUMBERS:
        loss = name.endswith("_loss")  # a loss may be NaN or infinite; a time may not
        if name in rec and not _number(rec[name], finite=not loss):
            return f"{name!r} must be a number; got {rec[name]!r:.40}"
    if "skipped" in rec and not _int(rec["skipped"]):
        return f"'skipped' must be an integer >= 0; got {rec['skipped']!r:.40}"
    return None


# ---- evaluation reports ---------------------------------------------------------------------


def check_report(report: Any) -> str | None:
    """Why ``report`` is not an evaluation report :func:`~tinymeta.runs.evaluate` writes
    (None: it is one)."""
    if not isinstance(report, dict):
        return f"a report must be a JSON object; got {type(report).__name__}"
    metrics = [m for m in ("accuracy", "mse") if m in report]
    if len(metrics) != 1 or not isinstance(report[metrics[0]], dict) or not report[metrics[0]]:
        return "a report holds one table, 'accuracy' or 'mse', of step counts"
    metric = metrics[0]
    for t, row in report[metric].items():
        if not (t.isdigit() and t == str(int(t))):
            return f"{metric!r} has the step count {t!r:.20}, not an integer >= 0"
        why = _check_row(row, metric)
        if why is not None:
            return f"{metric}[{t!r}]: {why}"
    return _check_protocol(report)


def _check_row(row: Any, metric: str) -> str | None:
    if not isinstance(row, dict):
        return "not an object"
    if metric == "accuracy":
        if not (_number(row.get("mean")) and 0 <= row["mean"] <= 100):
            return f"'mean' must be an accuracy in [0, 100]; got {row.get('mean')!r:.40}"
        if not (_number(row.get("ci95")) and row["ci95"] >= 0):
            return f"'ci95' must be a number >= 0; got {row.get('ci95')!r:.40}"
        if "tasks" in row and not _int(row["tasks"], 1):
            return f"'tasks' must be an integer >= 1; got {row['tasks']!r:.40}"
        return None
    for name in ("mean", "ci95", "median"):  # None: some task's loss was not finite
        v = row.get(name)
        if not (v is None or _number(v) and v >= 0):
            return f"{name!r} must be a number >= 0 or null; got {v!r:.40}"
    if not _int(row.get("n_bad")):
        return f"'n_bad' must be an integer >= 0; got {row.get('n_bad')!r:.40}"
    return None


def _check_protocol(report: dict) -> str | None:
    checks = {
        "algo": lambda v: v in ALGOS, "tasks": lambda v: _int(v, 1),
        "eval_seed": _int, "shots": lambda v: _int(v, 1), "query": lambda v: _int(v, 1),
        "inner_lr": lambda v: v == "learned" or _number(v) and v > 0,
    }
    optional = {
        "adaptation": lambda v: isinstance(v, str),
        "params_sha256": lambda v: isinstance(v, str) and bool(_SHA256.match(v)),
        "alphabets": lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v),
        "ways": lambda v: _int(v, 1), "train_steps": _int,
    }
    for name, ok in checks.items():
        if name not in report or not ok(report[name]):
            return f"{name!r} is missing or invalid: {report.get(name)!r:.60}"
    for name, ok in optional.items():
        if name in report and not ok(report[name]):
            return f"{name!r} is invalid: {report[name]!r:.60}"
    return None


# ---- checkpoints ----------------------------------------------------------------------------


def check_checkpoint(tree: dict, meta: Any, iterations: int) -> str | None:
    """Why a checkpoint's contents (``tree`` of the structure, shapes and dtypes of the
    run's, already checked, and its ``meta``) cannot be the state of this run (None: they
    can). ``iterations``: the run's, as its config.json says."""
    it, skipped = tree["iteration"], tree["skipped"]
    if not 0 <= it <= iterations:
        return f"iteration {it} is outside 0..{iterations} (the run's iterations)"
    if not 0 <= skipped <= it:
        return f"skipped {skipped} is outside 0..{it} (the steps done)"
    step = tree["opt_state"].get("step") if isinstance(tree["opt_state"], dict) else None
    if step is not None and int(step) != it - skipped:
        return (f"the optimizer's step count {int(step)} is not iteration − skipped = "
                f"{it - skipped}")
    for part in ("model", "opt_state"):
        if not all(np.isfinite(np.asarray(a)).all() for a in tree_leaves(tree[part])):
            return f"its {part} holds NaN or infinite values"
    return _check_meta(meta, it)


def _check_meta(meta: Any, iteration: int) -> str | None:
    if not isinstance(meta, Mapping) or not isinstance(meta.get("rng"), Mapping):
        return "its metadata lacks the task sampler's RNG state ('rng')"
    if meta["rng"].get("bit_generator") != "PCG64":
        return f"its RNG state is not PCG64's: {meta['rng'].get('bit_generator')!r:.40}"
    if "elapsed_s" in meta and not (_number(meta["elapsed_s"]) and meta["elapsed_s"] >= 0):
        return f"'elapsed_s' must be a number >= 0; got {meta['elapsed_s']!r:.40}"
    window = meta.get("window", [])
    if not (isinstance(window, list) and len(window) <= iteration
            and all(_number(x, finite=False) for x in window)):
        return f"'window' must be a list of at most {iteration} losses (one per step)"
    start = meta.get("loss_start")
    if start is not None and not _number(start, finite=False):
        return f"'loss_start' must be a number; got {start!r:.40}"
    stop = meta.get("stopped_early")
    if stop is not None and not (isinstance(stop, Mapping) and _int(stop.get("patience"), 1)):
        return f"'stopped_early' must be {{'patience': N}}; got {stop!r:.40}"
    return None
