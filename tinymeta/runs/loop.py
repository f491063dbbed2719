"""The one meta-training loop, for every task: θ_0 ← θ_0 − β · (the algorithm's meta-gradient).

Each iteration draws a meta-batch from the task setup, asks the algorithm for its
meta-gradient (:func:`~tinymeta.runs.algorithms.meta_gradient`, recorded once and replayed
with ``cfg.compile``), averages it over MPI ranks (one Allreduce; nothing on one process),
refuses or skips a non-finite one, and takes the outer optimizer's step. Hooks:

- validation (tasks whose setup has a validation set): every ``eval_every`` iterations the
  fixed validation tasks are adapted for T steps and scored; a better score is saved as
  ``best.npz``, ``patience`` validations without one stop the run, and the best params
  become ``params.npz``;
- logging (``train.jsonl`` every ``log_every`` iterations, with iMAML's per-task inner
  stationarity of the logged iteration; ``val.jsonl``), checkpoints
  every ``checkpoint_every`` iterations and at each validation, so that ``resume``
  continues bit for bit, logs and early stop included (the checkpoint keeps the losses of
  the log line in progress; the early stop is decided again from val.jsonl);
- the divergence guard (:meth:`Run.guard`): a running query loss above
  ``divergence_guard`` times the starting loss stops the run with the iteration named;
- MPI: every rank draws the random numbers of the whole batch and trains its B/P tasks;
  validation tasks are split over the ranks and gathered exactly; only rank 0 writes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import distributed, kernels, ops
from ..compile import compile as tm_compile
from ..meta.common import tree_is_finite
from .algorithms import initial_model, make_optimizer, meta_gradient
from .config import RunConfig, TrainingError
from .evaluation import proximal_settings, scores_by_step
from .folder import Checkpoint, RunFolder
from .registry import TASKS


def train(cfg: RunConfig, out: str, resume: bool = False, progress: bool = True,
          stop_after: int | None = None, notify: Callable[[str], Any] | None = None) -> dict:
    """Meta-train as ``cfg`` says, in the run folder ``out``; return the run's summary.

    Args:
        cfg: the settings (for ``resume``: those of ``out/config.json``, with the
            resumable ones changed as allowed; see :func:`tinymeta.runs.config.merge_resume`).
        out: the run folder.
        resume: continue from ``out/checkpoint.npz``, bit for bit, logs included; a
            checkpoint of a finished run (its last iteration, or an early stop that
            val.jsonl records) trains nothing and rewrites no log line.
        progress: a progress bar (tqdm) or periodic log lines (rank 0 only).
        stop_after: stop (with a checkpoint) after this many iterations, as if interrupted.
        notify: told, one line each, what the run tidied (a half-written log line dropped,
            a temporary file removed).

    Returns:
        The contents of ``result.json`` ({"finished": False, "iteration": i} for a run
        stopped by ``stop_after``; on ranks other than 0, without the timings), and
        ``"already_finished": True`` for a resume that had nothing to train.

    Raises:
        TrainingError: a non-finite meta-gradient (unless ``skip_nonfinite``), a diverging
            loss (the divergence guard), a debug_nans trip, ``--iterations`` below the
            iterations done, or a run folder that does not fit; each naming the iteration
            or the file.
        DistributedError: a meta-batch that does not split evenly over the MPI ranks.
    """
    run = Run(cfg, out)
    run.start(resume, notify)
    done = run.iteration
    end = run.cfg.iterations if stop_after is None else min(run.cfg.iterations, stop_after)
    if not run.stopped_early:  # a run that validation stopped trains no further
        bar = _Progress(run.iteration, run.cfg.iterations, progress and run.world.is_root,
                        run.cfg.log_every)
        try:
            with run.folder.open_logs(run.world.is_root, run.validation is not None) as (
                    log, vlog):
                for it in range(run.iteration + 1, end + 1):
                    try:
                        if run.iterate(it, end, bar, log, vlog):
                            break
                    except FloatingPointError as e:  # tm.config.debug_nans
                        raise TrainingError(f"iteration {it}: {e}") from None
        finally:
            bar.close()
    result = run.finish()
    if resume and run.iteration == done and result["finished"]:
        result = {**result, "already_finished": True}
    return result


class Run:
    """The state of one training run and the steps of its loop (see :func:`train`)."""

    def __init__(self, cfg: RunConfig, out: str) -> None:
        self.world = world = distributed.world()  # one process, or this rank of an MPI job
        with distributed.same_on_all_ranks("checking the settings"):
            self.cfg = cfg = cfg.resolved()
            cfg.validate()
            world.local_tasks(cfg.meta_batch)  # B divisible by the number of ranks
        if cfg.backend is not None:
            kernels.set_backend(cfg.backend)
        self.setup = TASKS[cfg.task](cfg)
        with distributed.same_on_all_ranks("reading the data"):  # the same on every rank
            self.setup.load_training()
        self.folder = RunFolder(out)
        os.makedirs(out, exist_ok=True)
        world.describe_run(out)
        self.window: list[float] = []  # the query losses since the last log line
        self.step_times: list[float] = []
        self.stopped_early = False
        self.loss_start: float | None = None  # the divergence guard's starting loss

    def start(self, resume: bool, notify: Callable[[str], Any] | None = None) -> None:
        """A new run (θ_0 from the setup) or the checkpoint's, and the loop's pieces."""
        cfg, folder, world = self.cfg, self.folder, self.world
        if world.is_root:  # only rank 0 writes into (and tidies) the run folder
            for path in folder.remove_stray_temporaries():
                if notify is not None:
                    notify(f"removed {path}, a temporary file a cut-off write left")
        val_log: list[dict] = []
        opt_state = None
        if resume:
            opt_state, val_log = self._resume(notify)
        else:
            with distributed.same_on_all_ranks("checking the run folder"):
                folder.check_new()
            self.model = initial_model(cfg, self.setup)
            self.iteration, self.skipped, self.elapsed = 0, 0, 0.0
            self.rng = np.random.default_rng(cfg.seed)
            if world.is_root:
                folder.clear_for_new_run()
        if world.is_root:
            folder.write_config(cfg)
        self.opt = make_optimizer(cfg)
        self.opt_state = self.opt.init(self.model) if opt_state is None else opt_state
        self.mask = self.setup.adapt_mask(self.model["theta"])
        self.step = functools.partial(meta_gradient, cfg, self.setup, self.mask)
        if cfg.compile:  # one recording per batch signature, then straight-line replays
            self.step = tm_compile(self.step)
        self.validation = self.setup.validation_batch(world)
        self.best, self.best_it, self.since = _selection(val_log, self.setup)[:3]
        if self.validation is not None and val_log:
            self.stopped_early = _selection(val_log, self.setup,
                                            self.setup.opts.patience)[3] is not None
        self.t_last = time.perf_counter()

    def _resume(self, notify: Callable[[str], Any] | None) -> tuple[dict, list[dict]]:
        """The checkpoint's state, the logs cut back to it; (optimizer state, validations).

        The early stop is decided again from val.jsonl's validations up to the checkpoint,
        with the (possibly resumed) patience; a checkpoint that records an early stop which
        val.jsonl does not show has lost its log, and is refused.
        """
        cfg, folder, metric = self.cfg, self.folder, self.setup.metric
        with distributed.same_on_all_ranks("reading the checkpoint"):
            ck = folder.load_checkpoint(cfg)
            if ck.iteration > cfg.iterations:
                raise TrainingError(
                    f"--iterations {cfg.iterations} is below the {ck.iteration} iterations "
                    f"{folder.path} has done; a resumed run cannot train fewer (give "
                    f"--iterations {ck.iteration} or more)")
        self.model, self.iteration, self.skipped = ck.model, ck.iteration, ck.skipped
        self.rng, self.elapsed = ck.rng, ck.elapsed
        self.window, self.loss_start = list(ck.window), ck.loss_start
        if self.world.is_root:
            folder.truncate_logs(ck.iteration, metric, notify)
        # the validations up to the checkpoint (the other ranks may read val.jsonl
        # before rank 0 has truncated it)
        with distributed.same_on_all_ranks("reading val.jsonl"):
            val_log = [r for r in folder.read_log("val.jsonl", metric)
                       if r["iteration"] <= ck.iteration]
            if ck.stopped_early is not None and _selection(
                    val_log, self.setup, ck.stopped_early)[3] is None:
                raise TrainingError(
                    f"{folder.file('checkpoint.npz')} records an early stop at iteration "
                    f"{ck.iteration} that {folder.file('val.jsonl')} does not show (lines "
                    "lost); the run cannot be resumed as it was")
        return ck.opt_state, val_log

    def iterate(self, it: int, end: int, bar: _Progress, log: Any, vlog: Any) -> bool:
        """One meta-iteration with its hooks; True when the run stops early."""
        t0 = time.perf_counter()
        self.meta_step(it)
        self.window.append(_to_float(ops.mean(self.info["query_loss"])))
        self.step_times.append(time.perf_counter() - t0)
        if self.loss_start is None:
            self.loss_start = _to_float(ops.mean(self.info["support_loss"]))
        self.guard(it)
        bar.update(it, float(np.mean(self.window)))
        steps_done = time.perf_counter()  # the log's elapsed_s: before validation
        validate_now = self.validation is not None and (
            it % self.setup.opts.eval_every == 0 or it == self.cfg.iterations)
        if validate_now:
            self.validate(it, vlog)
            patience = self.setup.opts.patience
            bar.validated(it, self.setup.metric, self.last_score, self.best, self.best_it,
                          patience - self.since if patience > 0 else None)
        # (after the validation, so that an early stop logs its last steps too)
        if it % self.cfg.log_every == 0 or it == end or self.stopped_early:
            self.log(it, steps_done, log)
        if it % self.cfg.checkpoint_every == 0 or it == end or validate_now:
            self.elapsed += time.perf_counter() - self.t_last
            self.t_last = time.perf_counter()
            if self.world.is_root:
                self.folder.save_checkpoint(Checkpoint(
                    self.model, self.opt_state, it, self.skipped, self.rng, self.elapsed,
                    self.window, self.loss_start,
                    self.setup.opts.patience if self.stopped_early else None))
        self.iteration = it
        return self.stopped_early

    def guard(self, it: int) -> None:
        """The divergence guard: stop when the running loss L̄ (the mean of the finite
        query losses since the last log line, as the log and the bar show it) exceeds F
        times the starting loss L_0, the support loss L_S(θ_0) of the first meta-batch
        (F = ``cfg.divergence_guard``, default
        :data:`~tinymeta.runs.config.DIVERGENCE_FACTOR`; 0: off). A loss
        grown a thousandfold means the learning rates are too large: a run that went on
        would end in a "trained" model that predicts nothing."""
        factor, start = self.cfg.divergence_guard, self.loss_start
        if not factor or start is None or not (math.isfinite(start) and start > 0):
            return
        finite = [x for x in self.window if math.isfinite(x)]
        running = float(np.mean(finite)) if finite else 0.0
        if running > factor * start:
            raise distributed.on_all_ranks(TrainingError(
                f"iteration {it}: the running query loss {running:.4g} exceeds {factor:g} × "
                f"the starting loss {start:.4g}: training diverges; lower the learning "
                "rates, or pass --no-divergence-guard (or --divergence-guard F)"))

    def meta_step(self, it: int) -> None:
        """Draw this rank's tasks, the meta-gradient, its mean over ranks, the outer step."""
        batch = self.setup.train_batch(self.rng, self.world)
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            grads, info = self.step(self.model, batch)
        # P > 1: the mean over ranks (one Allreduce), info with all B tasks' losses; the
        # finiteness test below then sees the same numbers on every rank (the selection
        # state rides in the hash: ranks that would stop apart fail)
        grads, self.info = self.world.allreduce_mean(
            grads, info, it, ((self.model, self.opt_state),
                              (self.rng, self.skipped, self.best_it, self.since)))
        if not tree_is_finite(grads):
            if not self.cfg.skip_nonfinite:
                raise distributed.on_all_ranks(TrainingError(
                    f"iteration {it}: the meta-gradient is not finite (NaN or Inf); lower "
                    "the learning rates, or pass --skip-nonfinite to skip such steps"))
            self.skipped += 1
        else:
            self.model, self.opt_state = self.opt.update(grads, self.opt_state, self.model)

    def validate(self, it: int, vlog: Any) -> None:
        """Score the validation tasks after T steps (iMAML: T iterations of its inner
        solver, as in training); keep the best; decide the early stop.

        Each rank adapts to its share of the tasks and the per-task scores of all ranks
        are gathered exactly, in task order, so that every rank forms the one-process
        score of the same array and takes the same decision.
        """
        t0 = time.perf_counter()
        part, total = self.validation
        cfg, setup, theta = self.cfg, self.setup, self.model["theta"]
        # iMAML adapts as it trains: T iterations of its inner solver
        prox = proximal_settings(cfg) if cfg.algo == "imaml" else None
        scores = np.zeros(0, dtype=np.float64) if part is None else scores_by_step(
            setup, theta, part, cfg.inner_lr, [cfg.inner_steps], self.mask,
            proximal=prox)[cfg.inner_steps]
        scores = self.world.allgather_tasks(scores, total, f"the validation of iteration {it}")
        score = self.last_score = setup.validation_score(scores)
        vlog.write(json.dumps({"iteration": it, setup.metric: score,
                               "val_s": round(time.perf_counter() - t0, 3)}) + "\n")
        vlog.flush()
        if _better(score, self.best, setup):  # the same score, so choice, on every rank
            self.best, self.best_it, self.since = score, it, 0
            if self.world.is_root:
                self.folder.save_best(theta, it, score, setup.metric)
        else:
            self.since += 1
        patience = setup.opts.patience
        self.stopped_early = patience > 0 and self.since >= patience

    def log(self, it: int, steps_done: float, log: Any) -> None:
        self.elapsed += steps_done - self.t_last
        self.t_last = steps_done
        record = {
            "iteration": it, "query_loss": float(np.mean(self.window)),
            "support_loss": _to_float(ops.mean(self.info["support_loss"])),
            "step_s": float(np.mean(self.step_times)), "skipped": self.skipped,
            "elapsed_s": round(self.elapsed, 3)}
        if "stationarity" in self.info:  # iMAML: each task's, at this iteration
            record["stationarity"] = [float(v) for v in np.asarray(
                kernels.get_backend().to_numpy(self.info["stationarity"]))]
        log.write(json.dumps(record) + "\n")
        log.flush()
        self.window, self.step_times = [], []

    def finish(self) -> dict:
        """The summary; on rank 0 also params.npz (validation's choice) and result.json."""
        it, cfg, setup = self.iteration, self.cfg, self.setup
        if not (self.stopped_early or it == cfg.iterations):
            return {"iteration": it, "finished": False}
        validated = self.validation is not None
        summary = {"finished": True, "iteration": it, "stopped_early": self.stopped_early,
                   "best_iteration": self.best_it if validated else it,
                   f"best_val_{setup.metric}": self.best if validated else None,
                   "skipped": self.skipped}
        if not self.world.is_root:
            return summary
        chosen = self.model["theta"]
        if validated and self.best_it > 0:
            chosen = self.folder.load_best(cfg, self.best_it)
        self.folder.save_params(chosen, self.model.get("lrs"))
        result = {**summary, **_timings(self.folder, it, self.elapsed)}
        self.folder.write_result(result)
        return result


def _selection(val_log: list[dict], setup: Any, patience: int = 0) -> tuple:
    """(best score, its iteration, validations since, the iteration of the early stop with
    ``patience`` or None) from the validation log, as :meth:`Run.validate` decided them."""
    best, best_it, since = (-1.0 if setup.higher_is_better else np.inf), 0, 0
    stop = None
    for rec in val_log:
        if _better(rec[setup.metric], best, setup):
            best, best_it, since = rec[setup.metric], rec["iteration"], 0
        else:
            since += 1
        if stop is None and patience > 0 and since >= patience:
            stop = rec["iteration"]
    return best, best_it, since, stop


def _better(score: float, best: float, setup: Any) -> bool:
    return score > best if setup.higher_is_better else score < best


def _timings(folder: RunFolder, iteration: int, elapsed: float) -> dict:
    """Seconds per iteration, of training and validation, from the logs; the wall time."""
    log = [r for r in folder.read_log("train.jsonl") if "step_s" in r]
    train_s = sum(r["step_s"] * (r["iteration"] - p) for r, p in
                  zip(log, [0] + [r["iteration"] for r in log[:-1]]))
    val_s = sum(r["val_s"] for r in folder.read_log("val.jsonl"))
    return {"s_per_iteration": train_s / max(iteration, 1), "train_s": train_s,
            "val_s": val_s, "wall_s": elapsed}


def _to_float(x: Any) -> float:
    return float(np.asarray(kernels.get_backend().to_numpy(x)))


class _Progress:
    """What the terminal shows (rank 0): tqdm where installed, else log lines on stderr.

    The bar's postfix holds the running query loss and, for runs with validation, the last
    validation score, the best so far with its iteration, and the validations of patience
    left. Without tqdm a line is printed every ``stride`` iterations (``log_every``, or a
    multiple of it so that a run prints about 20 lines) and one per validation. Terminal
    output only: train.jsonl keeps its ``log_every``.
    """

    LINES = 20  # about how many progress lines a run prints without tqdm

    def __init__(self, start: int, total: int, enabled: bool, log_every: int) -> None:
        self.bar = None
        self.enabled = enabled
        self.total = total
        self.stride = log_every * max(1, -(-total // (self.LINES * log_every)))
        self.t0 = time.perf_counter()
        self.start = start
        self.postfix: dict[str, str] = {}
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=start, unit="it", file=sys.stderr,
                                dynamic_ncols=True, mininterval=0.5)

    def update(self, iteration: int, running_loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.postfix["loss"] = f"{running_loss:.4f}"
            self.bar.set_postfix(self.postfix, refresh=False)
        elif self.enabled and (iteration % self.stride == 0 or iteration == self.total):
            rate = (iteration - self.start) / max(time.perf_counter() - self.t0, 1e-9)
            print(f"iteration {iteration}/{self.total}  loss {running_loss:.4f}  "
                  f"{rate:.1f} it/s", file=sys.stderr, flush=True)

    def validated(self, iteration: int, metric: str, score: float, best: float,
                  best_it: int, patience_left: int | None) -> None:
        """Show a validation: its score, the best so far, the patience left (None: no stop)."""
        if not self.enabled:
            return
        fmt = (lambda v: f"{v:.2f}%") if metric == "accuracy" else (lambda v: f"{v:.4f}")
        left = "" if patience_left is None else f", patience {patience_left} left"
        if self.bar is not None:
            self.postfix.update(val=fmt(score), best=f"{fmt(best)}@{best_it}")
            if patience_left is not None:
                self.postfix["patience"] = str(patience_left)
            self.bar.set_postfix(self.postfix, refresh=True)
        else:
            print(f"iteration {iteration}/{self.total}  validation {metric} {fmt(score)}  "
                  f"(best {fmt(best)} at {best_it}{left})", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
