"""The meta-training loop and test-time evaluation behind ``tinymeta train`` and ``eval``.

A run lives in one folder: ``config.json`` (every setting), ``train.jsonl`` (one JSON
line per logged iteration), ``checkpoint.npz`` (params, optimizer state, iteration,
and the task sampler's RNG state, written atomically, no pickle), ``params.npz`` (and
``lrs.npz`` for Meta-SGD) at the end, and ``eval.json`` after ``tinymeta eval``.

Resuming restores the params, the optimizer state and the RNG state of the last
checkpoint, so the run continues bit for bit as if it had never stopped.

Tasks are looked up in :data:`TASKS` (a name to a setup class), so that other task
families (few-shot classification) can be added beside the sinusoid.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import distributed, io, kernels, meta, nn, ops, optim
from .meta.common import adapt_path, tree_is_finite
from .tasks.sinusoid import Sinusoid
from .tree import tree_map

ALGOS = ("maml", "maml-chain", "fomaml", "reptile", "imaml", "metasgd", "pretrain")


class TrainingError(RuntimeError):
    """A run that cannot go on (a non-finite meta-gradient, a bad run folder)."""


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run (stored as ``config.json``)."""

    task: str = "sinusoid"
    algo: str = "maml"
    shots: int = 10
    query: int | None = None  # query points per task in training (None: = shots)
    inner_steps: int | None = None  # None: 5 for reptile and imaml, else 1
    inner_lr: float = 0.01
    outer_lr: float | None = None  # None: 0.1 for reptile (SGD), else 0.001 (Adam)
    optimizer: str | None = None  # "adam" | "sgd"; None: sgd for reptile, else adam
    anneal: bool | None = None  # outer lr linearly to 0; None: on for reptile
    meta_batch: int = 25
    iterations: int = 70000
    seed: int = 0
    hidden: tuple = (40, 40)
    init: str = "fan_in"
    dtype: str = "float32"
    backend: str | None = None
    lam: float = 1.0
    cg_steps: int = 5
    cg_tol: float = 0.0
    damping: float = 0.0
    on_negative_curvature: str = "continue"
    checkpoint_every: int = 1000
    log_every: int = 100
    skip_nonfinite: bool = False
    compile: bool = False  # record the meta-gradient step once (tm.compile) and replay it

    def resolved(self) -> TrainConfig:
        """A copy with the algorithm-dependent defaults filled in."""
        c = dataclasses.replace(self)
        reptile = c.algo == "reptile"
        if c.query is None:
            c.query = c.shots
        if c.inner_steps is None:
            c.inner_steps = 5 if c.algo in ("reptile", "imaml") else 1
        if c.optimizer is None:
            c.optimizer = "sgd" if reptile else "adam"
        if c.outer_lr is None:
            c.outer_lr = 0.1 if reptile else 0.001
        if c.anneal is None:
            c.anneal = reptile
        c.hidden = tuple(int(h) for h in c.hidden)
        return c

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {sorted(TASKS)}")
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algorithm {self.algo!r}; choose one of {list(ALGOS)}")
        for name in ("shots", "meta_batch", "iterations", "checkpoint_every", "log_every",
                     "cg_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1; "
                                 f"got {getattr(self, name)}")
        if self.query is not None and self.query < 1:
            raise ValueError(f"--query must be >= 1; got {self.query}")
        if self.inner_steps is not None and self.inner_steps < 0:
            raise ValueError(f"--inner-steps must be >= 0; got {self.inner_steps}")
        if self.algo in ("reptile", "metasgd") and self.inner_steps == 0:
            raise ValueError(f"--algo {self.algo} needs --inner-steps >= 1")
        if self.optimizer not in (None, "adam", "sgd"):
            raise ValueError(f"--optimizer must be adam or sgd; got {self.optimizer!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"--dtype must be float32 or float64; got {self.dtype!r}")
        if self.init not in ("fan_in", "finn"):
            raise ValueError(f"--init must be fan_in or finn; got {self.init!r}")
        if self.on_negative_curvature not in ("continue", "stop"):
            raise ValueError("--on-negative-curvature must be continue or stop; got "
                             f"{self.on_negative_curvature!r}")
        if self.lam <= 0:
            raise ValueError(f"--lam must be > 0; got {self.lam}")
        if self.inner_lr <= 0 or (self.outer_lr is not None and self.outer_lr <= 0):
            raise ValueError("learning rates must be > 0")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"--hidden needs positive widths; got {self.hidden}")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config.json has unknown settings {sorted(unknown)}")
        d = dict(d)
        d["hidden"] = tuple(d.get("hidden", (40, 40)))
        return cls(**d)


# ---- task setups ---------------------------------------------------------------------


class SinusoidSetup:
    """Sinusoid regression with an MLP 1 → hidden → 1 (ReLU), loss MSE."""

    name = "sinusoid"
    metric = "mse"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.dist = Sinusoid()
        self.dtype = np.dtype(cfg.dtype)

    def init_params(self) -> list:
        sizes = (1,) + tuple(self.cfg.hidden) + (1,)
        return nn.mlp_init(sizes, seed=self.cfg.seed, dtype=self.dtype, init=self.cfg.init)

    @staticmethod
    def loss_fn(params: Any, x: Any, y: Any) -> Any:
        return nn.mse(nn.mlp(params, x), y)

    @staticmethod
    def predict(params: Any, x: Any) -> Any:
        return nn.mlp(params, x)

    def sample(self, rng: Any, num_tasks: int, k_support: int, k_query: int) -> Any:
        batch = self.dist.sample(num_tasks, k_support, k_query, seed=rng, dtype=self.dtype)
        B = kernels.get_backend()
        return batch._replace(support_x=B.asarray(batch.support_x),
                              support_y=B.asarray(batch.support_y),
                              query_x=B.asarray(batch.query_x),
                              query_y=B.asarray(batch.query_y))


TASKS: dict[str, Callable[[TrainConfig], Any]] = {"sinusoid": SinusoidSetup}


# ---- one meta-gradient ------------------------------------------------------------------


def meta_gradient(cfg: TrainConfig, setup: Any, model: dict, batch: Any) -> tuple:
    """The algorithm's (gradient like ``model``, info) on one meta-batch.

    ``model`` is ``{"theta": params}``, plus ``"lrs"`` for Meta-SGD.
    """
    f, theta = setup.loss_fn, model["theta"]
    a, T = cfg.inner_lr, cfg.inner_steps
    if cfg.algo in ("maml", "maml-chain", "fomaml"):
        method = "hvp_chain" if cfg.algo == "maml-chain" else "unrolled"
        order = 1 if cfg.algo == "fomaml" else 2
        g, info = meta.maml(f, theta, batch, a, T, order=order, method=method)
    elif cfg.algo == "reptile":
        g, info = meta.reptile(f, theta, batch, a, T)
    elif cfg.algo == "imaml":
        g, info = meta.imaml(f, theta, batch, a, T, lam=cfg.lam, cg_steps=cfg.cg_steps,
                             cg_tol=cfg.cg_tol, damping=cfg.damping,
                             on_negative_curvature=cfg.on_negative_curvature)
    elif cfg.algo == "metasgd":
        (g, g_lrs), info = meta.metasgd(f, theta, model["lrs"], batch, T)
        return {"theta": g, "lrs": g_lrs}, info
    elif cfg.algo == "pretrain":
        g, info = meta.pretrain(f, theta, batch)
    else:
        raise ValueError(f"unknown algorithm {cfg.algo!r}")
    return {"theta": g}, info


def make_optimizer(cfg: TrainConfig) -> Any:
    lr: Any = cfg.outer_lr
    if cfg.anneal:
        lr = optim.linear_decay(cfg.outer_lr, cfg.iterations)
    if cfg.optimizer == "sgd":
        return optim.SGD(lr)
    return optim.Adam(lr)


def initial_model(cfg: TrainConfig, setup: Any) -> dict:
    theta = setup.init_params()
    model = {"theta": theta}
    if cfg.algo == "metasgd":
        model["lrs"] = [np.full_like(p, cfg.inner_lr) for p in theta]
    return model


# ---- the run folder ------------------------------------------------------------------------


def write_json(path: str, obj: Any) -> None:
    io.write_json(path, obj, indent=2, sort_keys=True)


def load_config(out: str) -> TrainConfig:
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        raise TrainingError(f"{out} holds no run (no config.json)")
    with open(path) as f:
        return TrainConfig.from_json(json.load(f))


def save_checkpoint(out: str, model: dict, opt_state: dict, iteration: int, skipped: int,
                    rng: np.random.Generator, elapsed: float) -> None:
    tree = {"model": model, "opt_state": opt_state, "iteration": int(iteration),
            "skipped": int(skipped)}
    meta_info = {"rng": rng.bit_generator.state, "elapsed_s": float(elapsed)}
    io.save(os.path.join(out, "checkpoint.npz"), tree, metadata=meta_info)


def load_checkpoint(out: str) -> tuple:
    path = os.path.join(out, "checkpoint.npz")
    if not os.path.exists(path):
        raise TrainingError(f"{out} has no checkpoint.npz to resume from")
    tree, meta_info = io.load(path, with_metadata=True)
    rng = np.random.default_rng()
    rng.bit_generator.state = meta_info["rng"]
    B = kernels.get_backend()
    model = tree_map(B.asarray, tree["model"])
    # arrays to the backend; scalar counters (Adam's step) stay host numbers, so that
    # reading them never synchronises with a device
    opt_state = tree_map(lambda a: a.item() if getattr(a, "ndim", 1) == 0 and
                         np.dtype(a.dtype).kind in "iu" else B.asarray(a), tree["opt_state"])
    return model, opt_state, tree["iteration"], tree["skipped"], rng, meta_info["elapsed_s"]


def _truncate_log(path: str, iteration: int) -> None:
    """Keep the log lines of iterations up to the checkpoint's (a resumed run rewrites the rest)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            if line.strip() and json.loads(line).get("iteration", 0) <= iteration:
                kept.append(line)
    with io.atomic_write(path) as f:
        f.write("".join(kept))


def _to_float(x: Any) -> float:
    return float(np.asarray(kernels.get_backend().to_numpy(x)))


class _Progress:
    """tqdm where installed (iterations/s and the running loss), else periodic log lines."""

    def __init__(self, start: int, total: int, enabled: bool, log_every: int) -> None:
        self.bar = None
        self.enabled = enabled
        self.total = total
        self.log_every = log_every
        self.t0 = time.perf_counter()
        self.start = start
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=start, unit="it", file=sys.stderr,
                                dynamic_ncols=True, mininterval=0.5)

    def update(self, iteration: int, running_loss: float | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if running_loss is not None:
                self.bar.set_postfix(loss=f"{running_loss:.4f}", refresh=False)
        elif self.enabled and running_loss is not None and iteration % self.log_every == 0:
            rate = (iteration - self.start) / max(time.perf_counter() - self.t0, 1e-9)
            print(f"iteration {iteration}/{self.total}  loss {running_loss:.4f}  "
                  f"{rate:.1f} it/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(cfg: TrainConfig, out: str, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Meta-train as ``cfg`` says, in the run folder ``out``; return the final model.

    Args:
        cfg: the settings (for ``resume``: those of ``out/config.json``, with a new
            ``iterations`` allowed).
        out: the run folder.
        resume: continue from ``out/checkpoint.npz``.
        progress: show a progress bar (tqdm) or periodic log lines.
        stop_after: stop (with a checkpoint) after this many iterations in total, as if
            interrupted (tests).

    Raises:
        TrainingError: a non-finite meta-gradient (unless ``cfg.skip_nonfinite``), or a
            run folder that does not fit.
    """
    world = distributed.world()  # one process, or this rank of an MPI job
    cfg = cfg.resolved()
    with distributed.same_on_all_ranks("checking the settings"):
        cfg.validate()
        world.local_tasks(cfg.meta_batch)  # B divisible by the number of ranks
    if cfg.backend is not None:
        kernels.set_backend(cfg.backend)
    setup = TASKS[cfg.task](cfg)
    os.makedirs(out, exist_ok=True)
    world.describe_run(out)
    log_path = os.path.join(out, "train.jsonl")
    if resume:
        model, opt_state, start, skipped, rng, elapsed = load_checkpoint(out)
        if world.is_root:
            _truncate_log(log_path, start)
    else:
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise TrainingError(f"{out} already holds a run; pass --resume to continue it or "
                                "choose another --out")
        model = initial_model(cfg, setup)
        opt_state = None
        start, skipped, elapsed = 0, 0, 0.0
        rng = np.random.default_rng(cfg.seed)
        if world.is_root and os.path.exists(log_path):
            os.unlink(log_path)
    if world.is_root:  # only rank 0 writes into the run folder
        write_json(os.path.join(out, "config.json"), cfg.to_json())
    opt = make_optimizer(cfg)
    if opt_state is None:
        opt_state = opt.init(model)
    end = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
    bar = _Progress(start, cfg.iterations, progress and world.is_root, cfg.log_every)
    window: list = []
    t_last = time.perf_counter()
    step = functools.partial(meta_gradient, cfg, setup)
    if cfg.compile:  # one recording per batch signature, then straight-line replays
        from .compile import compile as tm_compile

        step = tm_compile(step)
    try:
        with open(log_path if world.is_root else os.devnull, "a") as log:
            for it in range(start + 1, end + 1):
                # every rank draws the full batch and keeps its B/P tasks (P = 1: all)
                batch = world.shard(setup.sample(rng, cfg.meta_batch, cfg.shots, cfg.query))
                with np.errstate(over="ignore", invalid="ignore"):  # checked just below
                    grads, info = step(model, batch)
                # P > 1: the mean over ranks (one Allreduce), info with all B tasks' losses
                grads, info = world.allreduce_mean(grads, info, it,
                                                   ((model, opt_state), (rng, skipped)))
                if not tree_is_finite(grads):
                    if not cfg.skip_nonfinite:
                        raise distributed.on_all_ranks(TrainingError(
                            f"iteration {it}: the meta-gradient is not finite (NaN or Inf); "
                            "lower the learning rates, or pass --skip-nonfinite to skip such "
                            "steps"))
                    skipped += 1
                else:
                    model, opt_state = opt.update(grads, opt_state, model)
                window.append(_to_float(ops.mean(info["query_loss"])))
                running = float(np.mean(window))
                bar.update(it, running)
                if it % cfg.log_every == 0 or it == end:
                    now = time.perf_counter()
                    elapsed += now - t_last
                    t_last = now
                    record = {"iteration": it, "query_loss": running,
                              "support_loss": _to_float(ops.mean(info["support_loss"])),
                              "skipped": skipped, "elapsed_s": round(elapsed, 3)}
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    window = []
                if world.is_root and (it % cfg.checkpoint_every == 0 or it == end):
                    save_checkpoint(out, model, opt_state, it, skipped, rng, elapsed)
    finally:
        bar.close()
    if end == cfg.iterations and world.is_root:
        io.save(os.path.join(out, "params.npz"), model["theta"])
        if "lrs" in model:
            io.save(os.path.join(out, "lrs.npz"), model["lrs"])
    return model


# ---- evaluation ------------------------------------------------------------------------------


def parse_steps(text: str) -> list[int]:
    """``"0..10"`` (inclusive), ``"0,1,5"`` or ``"10"`` → the sorted step counts."""
    text = text.strip()
    try:
        if ".." in text:
            lo, hi = text.split("..")
            steps = list(range(int(lo), int(hi) + 1))
        else:
            steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--steps: expected A..B or a comma list of integers; got {text!r}") \
            from None
    if not steps or min(steps) < 0:
        raise ValueError(f"--steps: needs step counts >= 0; got {text!r}")
    return sorted(set(steps))


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


def load_model(out: str) -> tuple:
    """(config, theta, inner learning rate: α, or Meta-SGD's learned rates)."""
    cfg = load_config(out)
    path = os.path.join(out, "params.npz")
    if not os.path.exists(path):
        if not os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise TrainingError(f"{out} holds no trained params (no params.npz)")
        model = load_checkpoint(out)[0]
        theta, lrs = model["theta"], model.get("lrs")
    else:
        theta = io.load(path)
        lrs = io.load(os.path.join(out, "lrs.npz")) if cfg.algo == "metasgd" else None
    B = kernels.get_backend()
    theta = [B.asarray(p) for p in theta]
    lr = [B.asarray(a) for a in lrs] if lrs is not None else cfg.inner_lr
    return cfg, theta, lr


def evaluate(out: str, tasks: int = 600, steps: Sequence[int] = tuple(range(11)),
             eval_seed: int = 1000, query: int = 100, shots: int | None = None,
             inner_lr: float | None = None) -> dict:
    """Adapt to ``tasks`` test tasks for each step count; return and write ``eval.json``.

    The test tasks come from ``eval_seed``, the same for every model, with K = ``shots``
    (default: the training K) support points and ``query`` query points each. The
    learner runs with the training α (Meta-SGD: its learned rates) unless ``inner_lr``.
    """
    cfg, theta, lr = load_model(out)
    cfg = cfg.resolved()
    if inner_lr is not None:
        lr = inner_lr
    setup = TASKS[cfg.task](cfg)
    K = cfg.shots if shots is None else int(shots)
    batch = setup.sample(np.random.default_rng(eval_seed), int(tasks), K, int(query))
    wanted = set(int(s) for s in steps)
    results = {}
    path = adapt_path(setup.loss_fn, theta, batch.support_x, batch.support_y, lr, max(wanted))
    for t, params in enumerate(path):
        if t in wanted:
            with np.errstate(all="ignore"):
                losses = setup.loss_fn(params, batch.query_x, batch.query_y)
            results[str(t)] = summarize(kernels.get_backend().to_numpy(losses))
    report = {setup.metric: results, "tasks": int(tasks), "eval_seed": int(eval_seed),
              "shots": K, "query": int(query),
              "inner_lr": lr if isinstance(lr, float) else "learned", "algo": cfg.algo}
    write_json(os.path.join(out, "eval.json"), report)
    return report


def format_table(report: dict, metric: str = "mse") -> str:
    rows = [f"{'steps':>5}  {metric + ' mean':>10}  {'± ci95':>8}  {'median':>8}  {'n_bad':>5}"]
    for t, r in sorted(report[metric].items(), key=lambda kv: int(kv[0])):
        mean = "nan" if r["mean"] is None else f"{r['mean']:.4f}"
        ci = "nan" if r["ci95"] is None else f"{r['ci95']:.4f}"
        med = "nan" if r["median"] is None else f"{r['median']:.4f}"
        rows.append(f"{t:>5}  {mean:>10}  {ci:>8}  {med:>8}  {r['n_bad']:>5}")
    return "\n".join(rows)
