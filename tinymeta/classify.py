"""Few-shot classification on Omniglot: meta-training with validation, evaluation, and the
official one-shot runs, behind ``tinymeta train --task omniglot``, ``eval`` and ``eval-runs``.

The model is Finn et al.'s fully connected network for Omniglot, 784-256-128-64-64-N with
ReLU and batch norm after every hidden linear map (:func:`tinymeta.nn.bn_mlp`); the loss of
task e is the softmax cross-entropy of its N·K points, L^e = −(1/NK) Σ log softmax(f(x))_y.
Batch norm uses the statistics of the set it processes, per task: the support set in the
inner loop, the query set in the outer objective and at test time (transductive, as in
Finn et al.'s code).

Meta-training (N-way K-shot, one of MAML, first-order MAML, Reptile, iMAML) holds the
validation alphabets out of the background splits; every ``eval_every`` iterations it adapts
to a fixed set of validation tasks and measures the query accuracy after T inner steps.
The best of those checkpoints becomes ``params.npz`` (``best.npz`` as it goes), and
training stops early after ``patience`` evaluations without a better one. Test alphabets,
when given, are held out of both and only ``tinymeta eval`` looks at them. The one-shot
runs of Lake et al. are never used for any choice.

A run folder holds what :mod:`tinymeta.train` writes (``config.json``, ``train.jsonl``,
``checkpoint.npz`` through its helpers, so resuming continues bit for bit), plus
``val.jsonl`` (one line per validation), ``best.npz``, ``result.json`` (the chosen
iteration and the timings) and, after ``tinymeta eval``, ``eval.json``.

Meta-training runs data-parallel under ``mpiexec -n P`` as the sinusoid's does
(:mod:`tinymeta.distributed`): every rank draws the random numbers of the same meta-batch
and gathers (and augments) only its B/P tasks, one Allreduce per step averages the
meta-gradients, the validation tasks are split across the ranks and their accuracies
gathered exactly, and only rank 0 writes the run folder. On one process nothing of this
runs and the results are what they always were.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import distributed, io, kernels, meta, nn, ops
from .meta.common import adapt_path, tree_is_finite
from .nn.batchnorm import OMNIGLOT_HIDDEN
from .tasks.base import TaskBatch
from .tasks.omniglot import Omniglot
from .tasks.oneshot_runs import load_runs, score_runs, score_runs_with
from .train import (
    TrainingError,
    _Progress,
    _to_float,
    _truncate_log,
    load_checkpoint,
    make_optimizer,
    save_checkpoint,
    summarize,
    write_json,
)
from .tree import tree_map

ALGOS = ("maml", "maml-chain", "fomaml", "reptile", "imaml")
#: Algorithms that adapt every parameter in the inner loop (they take no ``adapt=`` mask).
ADAPT_ALL = ("reptile", "imaml")
BACKGROUND_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
RUNS_ZIP = "one_shot_runs_01-10.zip"
IMAGE_PIXELS = 28 * 28


def shared_data_dir() -> Path | None:
    """``../shared/data/omniglot`` beside the working directory or the source checkout."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        d = (root / ".." / "shared" / "data" / "omniglot").resolve()
        if d.is_dir():
            return d
    return None


def default_data() -> tuple[str, ...]:
    """The two minimal background splits under :func:`shared_data_dir`, when present."""
    d = shared_data_dir()
    if d is None or not all((d / z).exists() for z in BACKGROUND_ZIPS):
        return ()
    return tuple(str(d / z) for z in BACKGROUND_ZIPS)


def default_runs() -> str | None:
    """The one-shot runs zip under :func:`shared_data_dir`, when present."""
    d = shared_data_dir()
    return str(d / RUNS_ZIP) if d is not None and (d / RUNS_ZIP).exists() else None


def split_names(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """Comma-separated and repeated options as one tuple: ``["a,b", "c"]`` → (a, b, c)."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    return tuple(s.strip() for v in values for s in str(v).split(",") if s.strip())


# ---- settings ---------------------------------------------------------------------------


@dataclasses.dataclass
class ClassifyConfig:
    """Every setting of an Omniglot run (stored as ``config.json``).

    Defaults are Finn et al.'s 20-way Omniglot settings: 5 inner steps at α = 0.1,
    meta-batch 16, Adam at β = 0.001 (Reptile: SGD at 1.0, annealed to 0).
    """

    task: str = "omniglot"
    algo: str = "maml"
    data: tuple = ()  # zips or folders; () = the two minimal background splits
    ways: int = 20
    shots: int = 1
    query: int | None = None  # query images per class in training (None: = shots)
    inner_steps: int = 5
    inner_lr: float = 0.1
    outer_lr: float | None = None  # None: 1.0 for reptile (SGD), else 0.001 (Adam)
    optimizer: str | None = None  # None: sgd for reptile, else adam
    anneal: bool | None = None  # None: on for reptile
    meta_batch: int = 16
    iterations: int = 3000
    seed: int = 0
    hidden: tuple = OMNIGLOT_HIDDEN
    init: str = "fan_in"
    dtype: str = "float32"
    backend: str | None = None
    bn: bool = True
    bn_scale: bool = False
    bn_adapt: bool | None = None  # None: held out for maml/fomaml, adapted for reptile/imaml
    center: bool = True
    augment: bool = False
    val_alphabets: tuple = ("Tagalog",)
    test_alphabets: tuple = ()
    val_tasks: int = 200
    val_seed: int = 12345
    eval_every: int = 250
    patience: int = 4  # validations without a better one before stopping (0: never stop)
    lam: float = 1.0
    cg_steps: int = 5
    cg_tol: float = 0.0
    damping: float = 0.0
    on_negative_curvature: str = "continue"
    reptile_query: bool = False  # reptile's learner trains on support ∪ query (train-shots)
    reptile_batch: int | None = None  # reptile: images per inner step (None: all)
    compile: bool = False
    checkpoint_every: int = 500
    log_every: int = 50
    skip_nonfinite: bool = False

    def resolved(self) -> ClassifyConfig:
        """A copy with the algorithm-dependent defaults and the data paths filled in."""
        c = dataclasses.replace(self)
        reptile = c.algo == "reptile"
        if c.query is None:
            c.query = c.shots
        if c.optimizer is None:
            c.optimizer = "sgd" if reptile else "adam"
        if c.outer_lr is None:
            c.outer_lr = 1.0 if reptile else 0.001
        if c.anneal is None:
            c.anneal = reptile
        if c.bn_adapt is None:
            c.bn_adapt = c.algo in ADAPT_ALL
        c.data = tuple(str(Path(p).resolve()) for p in split_names(c.data)) or default_data()
        c.val_alphabets = split_names(c.val_alphabets)
        c.test_alphabets = split_names(c.test_alphabets)
        c.hidden = tuple(int(h) for h in c.hidden)
        return c

    def validate(self) -> None:
        if self.task != "omniglot":
            raise ValueError(f"ClassifyConfig is for --task omniglot; got {self.task!r}")
        if self.algo not in ALGOS:
            raise ValueError(f"--algo {self.algo} is not available for omniglot; choose one "
                             f"of {list(ALGOS)}")
        for name in ("ways", "shots", "meta_batch", "iterations", "checkpoint_every",
                     "log_every", "cg_steps", "val_tasks", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1; "
                                 f"got {getattr(self, name)}")
        if self.query is not None and self.query < 1:
            raise ValueError(f"--query must be >= 1; got {self.query}")
        if self.inner_steps < 0 or (self.algo == "reptile" and self.inner_steps < 1):
            raise ValueError(f"--inner-steps must be >= {int(self.algo == 'reptile')} for "
                             f"{self.algo}; got {self.inner_steps}")
        if self.patience < 0:
            raise ValueError(f"--patience must be >= 0; got {self.patience}")
        if self.algo in ADAPT_ALL and self.bn and self.bn_adapt is False:
            raise ValueError(f"--algo {self.algo} adapts every parameter in the inner loop "
                             "(it takes no adapt= mask): use --bn-adapt, or maml/fomaml")
        if self.optimizer not in (None, "adam", "sgd"):
            raise ValueError(f"--optimizer must be adam or sgd; got {self.optimizer!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"--dtype must be float32 or float64; got {self.dtype!r}")
        if self.inner_lr <= 0 or (self.outer_lr is not None and self.outer_lr <= 0):
            raise ValueError("learning rates must be > 0")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"--hidden needs positive widths; got {self.hidden}")
        if self.lam <= 0:
            raise ValueError(f"--lam must be > 0; got {self.lam}")
        if self.reptile_query and self.algo != "reptile":
            raise ValueError(f"--reptile-query applies to --algo reptile only; got {self.algo}")
        if self.reptile_batch is not None:
            if self.algo != "reptile":
                raise ValueError("--reptile-batch applies to --algo reptile only; got "
                                 f"{self.algo}")
            n = self.ways * (self.shots + (self.query or self.shots) * self.reptile_query)
            if not 1 <= self.reptile_batch <= n:
                raise ValueError(f"--reptile-batch must be in 1..{n} (the learner's images "
                                 f"per task); got {self.reptile_batch}")
        overlap = set(split_names(self.val_alphabets)) & set(split_names(self.test_alphabets))
        if overlap:
            raise ValueError(f"alphabets {sorted(overlap)} are both validation and test")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("data", "hidden", "val_alphabets", "test_alphabets"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict) -> ClassifyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config.json has unknown settings {sorted(unknown)}")
        d = dict(d)
        for k in ("data", "hidden", "val_alphabets", "test_alphabets"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def is_classify_run(out: str) -> bool:
    """True when the run folder ``out`` holds an Omniglot run."""
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f).get("task") == "omniglot"


def load_config(out: str) -> ClassifyConfig:
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        raise TrainingError(f"{out} holds no run (no config.json)")
    with open(path) as f:
        return ClassifyConfig.from_json(json.load(f))


# ---- the task and the model ------------------------------------------------------------


def loss_fn(params: Any, x: Any, y: Any) -> Any:
    """Per-task softmax cross-entropy of the BN MLP, (B,); BN statistics of x per task."""
    return nn.cross_entropy(nn.bn_mlp(params, x), y)


def init_params(cfg: ClassifyConfig) -> list:
    sizes = (IMAGE_PIXELS,) + tuple(cfg.hidden) + (cfg.ways,)
    return nn.bn_mlp_init(sizes, seed=cfg.seed, dtype=np.dtype(cfg.dtype), init=cfg.init,
                          bn=cfg.bn, scale=cfg.bn_scale)


def adapt_mask(cfg: ClassifyConfig, params: Any) -> Any:
    """The inner loop's ``adapt=`` mask (None: every leaf adapts)."""
    if cfg.algo in ADAPT_ALL or cfg.bn_adapt:
        return None
    return nn.bn_adapt_mask(params, adapt_bn=False)


def load_splits(cfg: ClassifyConfig) -> tuple:
    """(train, val or None, test or None): disjoint alphabets of the background data."""
    if not cfg.data:
        raise ValueError("no Omniglot data: pass --data with the background zips or folders "
                         "(none found under ../shared/data/omniglot)")
    data = Omniglot(list(cfg.data), center=cfg.center)
    val = test = None
    if cfg.test_alphabets:
        data, test = data.split(cfg.test_alphabets)
    if cfg.val_alphabets:
        data, val = data.split(cfg.val_alphabets)
    for name, part in (("meta-training", data), ("validation", val), ("test", test)):
        if part is not None and part.num_classes < cfg.ways:
            raise ValueError(f"the {name} alphabets have {part.num_classes} classes, fewer than "
                             f"{cfg.ways}-way tasks need")
    return data, val, test


def to_backend(batch: TaskBatch) -> TaskBatch:
    """The support and query arrays on the backend; the class indices dropped."""
    B = kernels.get_backend()
    return TaskBatch(B.asarray(batch.support_x), B.asarray(batch.support_y),
                     B.asarray(batch.query_x), B.asarray(batch.query_y))


def make_step(cfg: ClassifyConfig, mask: Any) -> Callable[[Any, TaskBatch], tuple]:
    """(θ_0, batch) ↦ (meta-gradient, info) for the configured algorithm (compiled if asked).

    ``tm.compile`` records the step once (the shapes never change) and replays it.
    """
    a, T = cfg.inner_lr, cfg.inner_steps

    def step(theta: Any, batch: TaskBatch) -> tuple:
        if cfg.algo in ("maml", "maml-chain", "fomaml"):
            method = "hvp_chain" if cfg.algo == "maml-chain" else "unrolled"
            order = 1 if cfg.algo == "fomaml" else 2
            return meta.maml(loss_fn, theta, batch, a, T, order=order, method=method,
                             adapt=mask)
        if cfg.algo == "reptile":
            return meta.reptile(loss_fn, theta, batch, a, T, use_query=cfg.reptile_query,
                                inner_batch=cfg.reptile_batch)
        return meta.imaml(loss_fn, theta, batch, a, T, lam=cfg.lam, cg_steps=cfg.cg_steps,
                          cg_tol=cfg.cg_tol, damping=cfg.damping,
                          on_negative_curvature=cfg.on_negative_curvature)

    if cfg.compile:
        from .compile import compile as tm_compile

        return tm_compile(step)
    return step


def task_accuracies(theta: Any, batch: TaskBatch, inner_lr: float, steps: Sequence[int],
                    mask: Any = None, chunk: int = 100) -> dict[int, np.ndarray]:
    """Query accuracy of each task after t adaptation steps, for every t in ``steps``.

    θ_t = θ_{t−1} − α ∇L_S(θ_{t−1}) from θ_0 = θ (BN with the support set's statistics);
    the query set is then classified in one pass with its own statistics. Tasks are
    processed ``chunk`` at a time (the adapted weights are per task).

    Returns:
        {t: (B,) float64 accuracies in [0, 1]}.
    """
    wanted = sorted(set(int(s) for s in steps))
    B = int(ops.shape(batch.support_x)[0])
    to_np = kernels.get_backend().to_numpy
    out: dict[int, list] = {t: [] for t in wanted}
    for lo in range(0, B, chunk):
        sl = slice(lo, min(lo + chunk, B))
        sx, sy, qx, qy = (v[sl] for v in batch[:4])
        path = adapt_path(loss_fn, theta, sx, sy, inner_lr, wanted[-1], mask)
        for t, params in enumerate(path):
            if t in out:
                logits = nn.bn_mlp(params, qx)
                pred = np.argmax(to_np(logits), axis=-1)
                out[t].append(np.mean(pred == to_np(qy), axis=-1))
    return {t: np.concatenate(v).astype(np.float64) for t, v in out.items()}


def accuracy_summary(acc: np.ndarray) -> dict:
    """Mean accuracy with its 95% interval 1.96·sd/√n over tasks, in percent."""
    s = summarize(100.0 * np.asarray(acc), bad_above=np.inf)
    return {"mean": s["mean"], "ci95": s["ci95"], "tasks": int(np.asarray(acc).size)}


# ---- training ---------------------------------------------------------------------------


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _selection(val_log: list[dict]) -> tuple[float, int, int]:
    """(best accuracy, its iteration, validations since) from the validation log."""
    best, best_it, since = -1.0, 0, 0
    for rec in val_log:
        if rec["accuracy"] > best:
            best, best_it, since = rec["accuracy"], rec["iteration"], 0
        else:
            since += 1
    return best, best_it, since


def _validate(world: distributed.World, theta: Any, val_part: TaskBatch | None, total: int,
              cfg: ClassifyConfig, mask: Any, iteration: int) -> float:
    """Mean query accuracy (%) over the ``total`` validation tasks after T inner steps.

    Each rank adapts to its share of the tasks (``val_part``, its :meth:`World.task_range`;
    None when the share is empty) and the per-task accuracies of all ranks are gathered
    exactly, in task order, so that every rank forms the one-process mean of the same array.
    """
    if val_part is None:
        acc = np.zeros(0, dtype=np.float64)
    else:
        acc = task_accuracies(theta, val_part, cfg.inner_lr, [cfg.inner_steps],
                              mask)[cfg.inner_steps]
    acc = world.allgather_tasks(acc, total, f"the validation of iteration {iteration}")
    return float(100.0 * np.mean(acc))


def train(cfg: ClassifyConfig, out: str, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Meta-train on Omniglot as ``cfg`` says, in the run folder ``out``; return the summary.

    Every ``eval_every`` iterations: the mean query accuracy over ``val_tasks`` fixed
    validation tasks after T steps; a better one is saved as ``best.npz``; after
    ``patience`` validations without one training stops. ``params.npz`` is the best
    (the last params when there are no validation alphabets).

    Under ``mpiexec -n P`` (see :mod:`tinymeta.distributed`) every rank draws the random
    numbers of the same full meta-batch, gathers and augments its B/P tasks (``Omniglot.sample``
    with ``tasks=``) and the ranks average their meta-gradients with one
    Allreduce per step; the validation tasks are split across the ranks and their accuracies
    gathered exactly, so every rank takes the same early-stopping and best-checkpoint
    decision. Only rank 0 writes into ``out``. One process: exactly the run it always was.

    Args:
        cfg: the settings (for ``resume``: those of ``out/config.json``, with new
            ``iterations`` / ``patience`` allowed).
        out: the run folder.
        resume: continue from ``out/checkpoint.npz``, bit for bit.
        progress: a progress bar or periodic log lines (rank 0 only).
        stop_after: stop (with a checkpoint) after this many iterations, as if interrupted.

    Returns:
        The contents of ``result.json`` (on ranks other than 0, without the timings, which
        only rank 0's log holds).

    Raises:
        TrainingError: a non-finite meta-gradient (unless ``skip_nonfinite``), or a run
            folder that does not fit.
        DistributedError: a meta-batch that does not split evenly over the MPI ranks.
    """
    world = distributed.world()  # one process, or this rank of an MPI job
    with distributed.same_on_all_ranks("checking the settings"):
        cfg = cfg.resolved()
        cfg.validate()
        world.local_tasks(cfg.meta_batch)  # B divisible by the number of ranks
    if cfg.backend is not None:
        kernels.set_backend(cfg.backend)
    with distributed.same_on_all_ranks("reading the data"):  # the same files on every rank
        train_set, val_set, _ = load_splits(cfg)
    os.makedirs(out, exist_ok=True)
    world.describe_run(out)
    log_path = os.path.join(out, "train.jsonl")
    val_path = os.path.join(out, "val.jsonl")
    if resume:
        with distributed.same_on_all_ranks("reading the checkpoint"):  # the same on every rank
            model, opt_state, start, skipped, rng, elapsed = load_checkpoint(out)
        if world.is_root:
            _truncate_log(log_path, start)
            _truncate_log(val_path, start)
        # the validations up to the checkpoint (the other ranks may read val.jsonl before
        # rank 0 has truncated it)
        val_log = [r for r in _read_jsonl(val_path) if r["iteration"] <= start]
    else:
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise distributed.on_all_ranks(TrainingError(
                f"{out} already holds a run; pass --resume to continue it or choose another "
                "--out"))
        model = {"theta": init_params(cfg)}
        opt_state = None
        start, skipped, elapsed = 0, 0, 0.0
        rng = np.random.default_rng(cfg.seed)
        if world.is_root:
            for p in (log_path, val_path, os.path.join(out, "best.npz")):
                if os.path.exists(p):
                    os.unlink(p)
        val_log = []
    if world.is_root:  # only rank 0 writes into the run folder
        write_json(os.path.join(out, "config.json"), cfg.to_json())
    opt = make_optimizer(cfg)
    if opt_state is None:
        opt_state = opt.init(model)
    mask = adapt_mask(cfg, model["theta"])
    step = make_step(cfg, mask)
    val_batch = None  # this rank's share of the validation tasks (P = 1: all of them)
    if val_set is not None:
        # Reptile's --reptile-query images are the learner's training data, not a test:
        # its validation tasks hold as many query images per class as shots
        vq = cfg.shots if cfg.reptile_query else cfg.query
        lo, hi = world.task_range(cfg.val_tasks)  # P = 1: all of them
        if hi > lo:
            val_batch = to_backend(val_set.sample(cfg.val_tasks, cfg.ways, cfg.shots, vq,
                                                  seed=cfg.val_seed, tasks=(lo, hi)))
    best, best_it, since = _selection(val_log)
    share = world.task_range(cfg.meta_batch)  # this rank's tasks (P = 1: all of them)
    end = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
    bar = _Progress(start, cfg.iterations, progress and world.is_root, cfg.log_every)
    window: list = []
    step_times: list = []
    t_last = time.perf_counter()
    stopped_early = False
    it = start
    try:
        with open(log_path if world.is_root else os.devnull, "a") as log, \
                open(val_path if world.is_root else os.devnull, "a") as vlog:
            for it in range(start + 1, end + 1):
                t0 = time.perf_counter()
                # every rank draws the random numbers of the full batch (its rng stays the
                # others') but gathers and augments only its B/P tasks (P = 1: all)
                batch = to_backend(train_set.sample(
                    cfg.meta_batch, cfg.ways, cfg.shots, cfg.query, rng=rng,
                    augment=cfg.augment, tasks=share))
                with np.errstate(over="ignore", invalid="ignore"):  # checked just below
                    grads, info = step(model["theta"], batch)
                # P > 1: the mean over ranks (one Allreduce), info with all B tasks' losses;
                # the finiteness test below then sees the same numbers on every rank
                # (the selection state rides in the hash: ranks that would stop apart fail)
                grads, info = world.allreduce_mean(
                    grads, info, it, ((model, opt_state), (rng, skipped, best_it, since)))
                if not tree_is_finite(grads):
                    if not cfg.skip_nonfinite:
                        raise distributed.on_all_ranks(TrainingError(
                            f"iteration {it}: the meta-gradient is not finite (NaN or Inf); "
                            "lower the learning rates, or pass --skip-nonfinite"))
                    skipped += 1
                else:
                    model, opt_state = opt.update({"theta": grads}, opt_state, model)
                window.append(_to_float(ops.mean(info["query_loss"])))
                step_times.append(time.perf_counter() - t0)
                bar.update(it, float(np.mean(window)))
                steps_done = time.perf_counter()  # the log's elapsed_s: before validation
                validate_now = val_set is not None and (it % cfg.eval_every == 0 or
                                                        it == cfg.iterations)
                if validate_now:
                    t0 = time.perf_counter()
                    accuracy = _validate(world, model["theta"], val_batch, cfg.val_tasks, cfg,
                                         mask, it)
                    vlog.write(json.dumps({"iteration": it, "accuracy": accuracy,
                                           "val_s": round(time.perf_counter() - t0, 3)})
                               + "\n")
                    vlog.flush()
                    if accuracy > best:  # the same accuracy, so the same choice, on every rank
                        best, best_it, since = accuracy, it, 0
                        if world.is_root:
                            io.save(os.path.join(out, "best.npz"), model["theta"],
                                    metadata={"iteration": it, "val_accuracy": accuracy})
                    else:
                        since += 1
                    stopped_early = cfg.patience > 0 and since >= cfg.patience
                # (after the validation, so that an early stop logs its last steps too:
                # result.json's s_per_iteration is computed from these lines)
                if it % cfg.log_every == 0 or it == end or stopped_early:
                    elapsed += steps_done - t_last
                    t_last = steps_done
                    log.write(json.dumps({
                        "iteration": it, "query_loss": float(np.mean(window)),
                        "support_loss": _to_float(ops.mean(info["support_loss"])),
                        "step_s": float(np.mean(step_times)), "skipped": skipped,
                        "elapsed_s": round(elapsed, 3)}) + "\n")
                    log.flush()
                    window, step_times = [], []
                if it % cfg.checkpoint_every == 0 or it == end or validate_now:
                    elapsed += time.perf_counter() - t_last
                    t_last = time.perf_counter()
                    if world.is_root:
                        save_checkpoint(out, model, opt_state, it, skipped, rng, elapsed)
                if stopped_early:
                    break
    finally:
        bar.close()
    if not (stopped_early or it == cfg.iterations):
        return {"iteration": it, "finished": False}
    summary = {"finished": True, "iteration": it, "stopped_early": stopped_early,
               "best_iteration": best_it if val_set is not None else it,
               "best_val_accuracy": best if val_set is not None else None,
               "skipped": skipped}
    if not world.is_root:
        return summary
    chosen = model["theta"]
    if val_set is not None and best_it > 0:
        chosen, meta_best = io.load(os.path.join(out, "best.npz"), with_metadata=True)
        saved_it = (meta_best or {}).get("iteration")
        if saved_it != best_it:  # a crash between best.npz and the checkpoint, then a resume
            raise TrainingError(
                f"{out}/best.npz holds the params of iteration {saved_it}, but validation "
                f"chose iteration {best_it} (a run that crashed after saving best.npz and was "
                "resumed with other settings); train it again")
    io.save(os.path.join(out, "params.npz"), chosen)
    steps_log = _read_jsonl(log_path)
    train_s = sum(r["step_s"] * (r["iteration"] - p) for r, p in
                  zip(steps_log, [0] + [r["iteration"] for r in steps_log[:-1]]))
    val_s = sum(r["val_s"] for r in _read_jsonl(val_path))
    result = {**summary, "s_per_iteration": train_s / max(it, 1), "train_s": train_s,
              "val_s": val_s, "wall_s": elapsed}
    write_json(os.path.join(out, "result.json"), result)
    return result


# ---- evaluation -------------------------------------------------------------------------


def _params_path(out: str) -> str:
    """The file :func:`load_model` reads: ``params.npz``, else ``best.npz``, else the
    checkpoint."""
    for name in ("params.npz", "best.npz", "checkpoint.npz"):
        path = os.path.join(out, name)
        if os.path.exists(path):
            return path
    raise TrainingError(f"{out} holds no trained params (no params.npz)")


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(out: str) -> tuple[ClassifyConfig, Any]:
    """(config, θ): the chosen ``params.npz`` (else ``best.npz``, else the checkpoint's)."""
    cfg = load_config(out).resolved()
    path = _params_path(out)
    if os.path.basename(path) == "checkpoint.npz":
        theta = load_checkpoint(out)[0]["theta"]
    else:
        theta = io.load(path)
    return cfg, tree_map(kernels.get_backend().asarray, theta)


def evaluate(out: str, tasks: int = 600, steps: Sequence[int] | None = None,
             eval_seed: int = 1000, data: Sequence[str] | None = None,
             alphabets: Sequence[str] | None = None, shots: int | None = None,
             query: int | None = None, inner_lr: float | None = None) -> dict:
    """Accuracy with its 95% interval over ``tasks`` test tasks; written to ``eval.json``.

    The tasks are N-way (the model's N) K-shot, drawn with ``eval_seed`` from
    ``alphabets`` (default: the run's test alphabets, else its validation alphabets, which
    then were used to choose the checkpoint: the report says so). Each is adapted for
    every step count in ``steps`` (default 0 and the training T) with the training α and
    the training adaptation mask; BN statistics are transductive per set.
    """
    digest = _file_sha256(_params_path(out))
    cfg, theta = load_model(out)
    if alphabets:
        names, role = tuple(alphabets), "given"
    elif cfg.test_alphabets:
        names, role = cfg.test_alphabets, "test (held out of meta-training and validation)"
    elif cfg.val_alphabets:
        names, role = cfg.val_alphabets, "validation (held out of meta-training; used to " \
                                         "choose the checkpoint)"
    else:
        raise ValueError("the run holds out no alphabets: pass --alphabets")
    sources = [str(Path(p).resolve()) for p in data] if data else list(cfg.data)
    ds = Omniglot(sources, center=cfg.center).subset(names)
    K = cfg.shots if shots is None else int(shots)
    Q = (cfg.shots if cfg.reptile_query else cfg.query) if query is None else int(query)
    if ds.num_classes < cfg.ways:
        raise ValueError(f"alphabets {list(names)} have {ds.num_classes} classes; the model is "
                         f"{cfg.ways}-way")
    batch = to_backend(ds.sample(int(tasks), cfg.ways, K, Q, seed=eval_seed))
    steps = sorted(set([0, cfg.inner_steps] if steps is None else [int(s) for s in steps]))
    lr = cfg.inner_lr if inner_lr is None else float(inner_lr)
    accs = task_accuracies(theta, batch, lr, steps, adapt_mask(cfg, theta))
    report = {"accuracy": {str(t): accuracy_summary(a) for t, a in accs.items()},
              "algo": cfg.algo, "ways": cfg.ways, "shots": K, "query": Q, "tasks": int(tasks),
              "eval_seed": int(eval_seed), "alphabets": list(names), "alphabets_role": role,
              "inner_lr": lr, "train_steps": cfg.inner_steps, "data": sources,
              "params_sha256": digest}
    if _file_sha256(_params_path(out)) != digest:  # a run still training rewrote it
        raise TrainingError(f"{_params_path(out)} changed while it was evaluated; evaluate "
                            "again once the run has finished")
    write_json(os.path.join(out, "eval.json"), report)
    return report


def validation_steps(out: str) -> tuple[int, dict]:
    """The test-time step count that validation chooses: argmax_t acc_val(t), ties to fewer.

    acc_val(t) is the mean query accuracy after t adaptation steps in ``out/eval.json``,
    which must be a :func:`evaluate` of the run's validation alphabets (never of test
    alphabets: a choice made on test tasks would make their score optimistic), in the
    runs' setting (1 shot and 1 query image per class, the training α), of the params that
    :func:`load_model` reads now (their SHA-256 is in the report). Returns (t, the report).

    Raises:
        ValueError: no ``eval.json``, or one of other alphabets, another setting or other
            params (retrained or resumed since), or one this function cannot read; the
            message gives the ``tinymeta eval`` command that makes the right one.
    """
    path = os.path.join(out, "eval.json")
    cfg = load_config(out).resolved()
    if not cfg.val_alphabets:
        raise ValueError(f"--steps val: the run in {out} holds out no validation alphabets; "
                         "give --steps T")
    default_q = cfg.shots if cfg.reptile_query else cfg.query
    again = (f"run `tinymeta eval {out} --tasks 600 --steps 5,10,20,40,80,160 --alphabets "
             f"{','.join(cfg.val_alphabets)}"
             f"{'' if cfg.shots == 1 else ' --shots 1'}{'' if default_q == 1 else ' --query 1'}"
             "` first")
    if not os.path.exists(path):
        raise ValueError(f"--steps val: {path} does not exist; {again}")
    try:
        with open(path) as f:
            report = json.load(f)
        acc = {int(t): float(r["mean"]) for t, r in report["accuracy"].items()}
        setting = {k: report[k] for k in ("alphabets", "shots", "query", "inner_lr")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"--steps val: cannot read {path} ({type(e).__name__}: {e}); "
                         f"{again}") from None
    want = {"alphabets": list(cfg.val_alphabets), "shots": 1, "query": 1,
            "inner_lr": cfg.inner_lr}
    if setting != want or not acc:
        raise ValueError(f"--steps val: {path} evaluates {setting}, not the runs' setting on "
                         f"the validation alphabets {want}; {again}")
    if "params_sha256" not in report:
        raise ValueError(f"--steps val: {path} predates the params check (it records no "
                         f"params_sha256); {again}")
    if report["params_sha256"] != _file_sha256(_params_path(out)):
        raise ValueError(f"--steps val: {path} was made for other params than "
                         f"{_params_path(out)} holds now; {again}")
    best = max(acc, key=lambda t: (acc[t], -t))
    return best, report


def format_eval(report: dict) -> str:
    """The header line and one row per step count: accuracy ± 95% interval."""
    lines = [f"{report['algo']}: {report['ways']}-way {report['shots']}-shot, "
             f"{report['tasks']} test tasks (eval seed {report['eval_seed']}), "
             f"{report['query']} query image(s) per class, alphabets "
             f"{', '.join(report['alphabets'])} ({report['alphabets_role']})",
             f"{'steps':>5}  {'accuracy':>9}  {'± ci95':>7}"]
    for t, r in sorted(report["accuracy"].items(), key=lambda kv: int(kv[0])):
        mark = "  (training T)" if int(t) == report["train_steps"] else ""
        lines.append(f"{t:>5}  {r['mean']:>8.2f}%  {r['ci95']:>6.2f}%{mark}")
    return "\n".join(lines)


# ---- the official one-shot runs -----------------------------------------------------------


def run_predictor(cfg: ClassifyConfig, theta: Any, steps: int | None = None) -> Callable:
    """``predict(train, test) -> (n_test,)`` class indices for :func:`score_runs_with`.

    The model adapts on the 20 training images (one per class, label i = training class
    i; BN with their statistics) for T steps, then classifies the 20 test items in one
    pass, BN with the test items' own statistics (transductive, as in meta-training's
    query pass). Ties go to the lowest class index.
    """
    T = cfg.inner_steps if steps is None else int(steps)
    mask = adapt_mask(cfg, theta)
    to_np = kernels.get_backend().to_numpy
    B = kernels.get_backend()

    def predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        n = train.shape[0]
        if n != cfg.ways:
            raise ValueError(f"the run is {n}-way; the model is {cfg.ways}-way")
        dt = np.dtype(cfg.dtype)
        sx = B.asarray(train.reshape(1, n, -1).astype(dt))
        sy = B.asarray(np.arange(n, dtype=np.int64)[None])
        qx = B.asarray(test.reshape(1, test.shape[0], -1).astype(dt))
        params = meta.adapt(loss_fn, theta, sx, sy, cfg.inner_lr, T, mask)
        return np.argmax(to_np(nn.bn_mlp(params, qx))[0], axis=-1).astype(np.int64)

    return predict


def eval_runs(runs: str, model: str | None = None, baseline: bool = True,
              steps: int | str | None = None) -> dict:
    """Score a model and/or the MHD baseline on Lake et al.'s 20-way one-shot runs.

    ``steps``: the adaptation steps (default the training T), or ``"val"`` for the count
    :func:`validation_steps` chooses from the model's ``eval.json``.

    Returns:
        {"model": {run: error %} or None, "mhd": {run: error %} or None, "steps": T,
        and with ``"val"``: "steps_chosen_on": the validation accuracy of that T}.
    """
    if steps == "val" and model is None:
        raise ValueError("eval_runs: steps='val' (--steps val) needs a model (--model RUNDIR)")
    parsed = load_runs(runs)
    result: dict = {"model": None, "mhd": None, "steps": None}
    if model is not None:
        cfg, theta = load_model(model)
        if cfg.ways != 20:
            raise ValueError(f"the one-shot runs are 20-way; the model in {model} is "
                             f"{cfg.ways}-way (train with --ways 20)")
        if steps == "val":
            steps, report = validation_steps(model)  # before the (slow) runs are scored
            result["steps_chosen_on"] = {
                "alphabets": report["alphabets"], "tasks": report.get("tasks"),
                "eval_seed": report.get("eval_seed"),
                "accuracy": report["accuracy"][str(steps)]["mean"],
                "candidates": sorted(int(t) for t in report["accuracy"])}
        elif isinstance(steps, str):
            raise ValueError(f"eval_runs: steps must be an int or 'val', not {steps!r}")
        predict = run_predictor(cfg, theta, steps)
        scores = score_runs_with(predict, parsed, preprocessed=True, center=cfg.center)
        result["model"] = scores.errors
        result["steps"] = cfg.inner_steps if steps is None else int(steps)
        result["algo"] = cfg.algo
    if baseline or model is None:
        result["mhd"] = score_runs(parsed).errors
    return result


def format_runs(result: dict) -> str:
    """``run01 error 25.0%  (mhd 45.0%)`` per run, then ``mean error …``.

    The first number of each line is the model's (the baseline's alone without a model).
    """
    main = result["model"] if result["model"] is not None else result["mhd"]
    side = result["mhd"] if result["model"] is not None else None
    lines = []
    for name, err in main.items():
        extra = f"  (mhd {side[name]:.1f}%)" if side is not None else ""
        lines.append(f"{name} error {err:.1f}%{extra}")
    mean = sum(main.values()) / len(main)
    extra = f"  (mhd {sum(side.values()) / len(side):.1f}%)" if side is not None else ""
    lines.append(f"mean error {mean:.1f}%{extra}")
    return "\n".join(lines)


# ---- the command line's side ------------------------------------------------------------

#: Train options that only --task omniglot takes (dest names).
OMNIGLOT_ONLY = ("data", "ways", "val_alphabets", "test_alphabets", "augment", "bn", "bn_adapt",
                 "eval_every", "patience", "val_tasks", "reptile_query",
                 "reptile_batch")
#: Settings a resumed run may change; every other one must match config.json.
RESUMABLE = {"iterations", "checkpoint_every", "log_every", "skip_nonfinite", "patience",
             "eval_every"}


def refuse_omniglot_options(args: dict, task: str) -> None:
    """A ValueError naming the first Omniglot-only option given for another task."""
    for k in OMNIGLOT_ONLY:
        if args.get(k) is not None:
            raise ValueError(f"--{k.replace('_', '-')} applies to --task omniglot only "
                             f"(the task is {task})")


def wants_omniglot(args: dict) -> bool:
    """True for ``--task omniglot``, or ``--resume`` of a run folder that holds one."""
    if args.get("task") is not None:
        return args["task"] == "omniglot"
    return bool(args.get("resume")) and is_classify_run(args["out"])


def train_from_args(args: dict) -> str:
    """Run ``tinymeta train --task omniglot`` from the parsed options; return the last line.

    Options left unset (None) take the :class:`ClassifyConfig` defaults; on ``--resume``
    only :data:`RESUMABLE` settings may differ from the run's. Under ``mpiexec`` (or with
    ``--mpi``) every rank runs this and trains its share (:func:`train`); the caller prints
    the line on rank 0 only.
    """
    names = {f.name for f in dataclasses.fields(ClassifyConfig)}
    given = {k: v for k, v in args.items() if k in names and v is not None}
    for k in ("data", "val_alphabets", "test_alphabets"):
        if k in given:
            given[k] = split_names(given[k])
    out = args["out"]
    with distributed.same_on_all_ranks("reading the settings"):  # and config.json
        if args.get("resume"):
            cfg = load_config(out)
            stored = cfg.to_json()
            for k, v in given.items():
                new = list(v) if isinstance(v, tuple) else v
                if k == "data":
                    new = [str(Path(p).resolve()) for p in new]
                if k not in RESUMABLE and stored[k] != new:
                    raise ValueError(f"--{k.replace('_', '-')} {v} differs from the run's "
                                     f"{stored[k]}; a resumed run keeps its settings")
                setattr(cfg, k, v)
        else:
            cfg = ClassifyConfig(**given)
    result = train(cfg, out, resume=bool(args.get("resume")),
                   progress=not args.get("no_progress"), stop_after=args.get("stop_after"))
    if not result["finished"]:
        return (f"stopped after iteration {result['iteration']}: "
                f"{os.path.join(out, 'checkpoint.npz')} (continue with --resume)")
    how = "stopped early" if result["stopped_early"] else "ran"
    chosen = (f", params of iteration {result['best_iteration']} chosen on validation "
              f"({result['best_val_accuracy']:.2f}%)"
              if result["best_val_accuracy"] is not None else "")
    return (f"trained {cfg.algo} on omniglot ({how} to iteration {result['iteration']}"
            f"{chosen}): {os.path.join(out, 'params.npz')}")
