"""Few-shot classification on Omniglot as a run: N-way K-shot tasks, Finn et al.'s networks.

The model (``model``) is Finn et al.'s fully connected network for Omniglot, 784-256-128-64-
64-N with ReLU and batch norm after every hidden linear map (:func:`tinymeta.nn.bn_mlp`,
``"mlp"``, the default), or their convolutional Conv4 (:func:`tinymeta.nn.conv4`,
``"conv4"``: four 3 × 3 stride-2 convolutions of 64 filters with batch norm and ReLU, a
linear head on the 2·2·64 features), which takes the images as (B, M, 28, 28, 1); ``anil``
adapts only the last layer in the inner loop (ANIL, Raghu et al. 2020). The loss of
task e is the softmax cross-entropy of its N·K points, L^e = −(1/NK) Σ log softmax(f(x))_y.
Batch norm uses the statistics of the set it processes, per task: the support set in the
inner loop, the query set in the outer objective and at test time (transductive, as in
Finn et al.'s code). The metric is the query accuracy, in percent in reports.

Meta-training holds the validation alphabets out of the background splits; every
``eval_every`` iterations the run adapts to ``val_tasks`` fixed validation tasks
(``val_seed``) for T steps and measures their mean query accuracy, which chooses the
params and stops the run after ``patience`` validations without a better one. Test
alphabets, when given, are held out of both and only ``tinymeta eval`` looks at them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import kernels, nn
from ..nn.batchnorm import OMNIGLOT_HIDDEN
from ..tasks.base import TaskBatch
from ..tasks.omniglot import Omniglot
from .setup import TaskOptions, TaskSetup, summarize, to_backend

#: Algorithms that adapt every parameter in the inner loop (they take no ``adapt=`` mask).
ADAPT_ALL = ("reptile", "imaml")
MODELS = ("mlp", "conv4")
#: Conv4's filters a block (Finn et al.), its ``hidden`` unless --hidden F says otherwise;
#: config.json of runs before this default shows the MLP's widths there, read as this.
CONV4_FILTERS = 64
#: Options added after runs were recorded, left out of config.json at their default (so an
#: MLP run's config.json is what earlier versions wrote, and those runs still resume).
NEW_OPTIONS = {"model": "mlp", "anil": False}
BACKGROUND_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
RUNS_ZIP = "one_shot_runs_01-10.zip"
IMAGE_PIXELS = 28 * 28
#: Bounds a config.json may not pass (the arrays they size are made before any check):
#: classes per task, validation tasks.
MAX_WAYS = 10_000
MAX_VAL_TASKS = 100_000


def shared_data_dir() -> Path | None:
    """``../shared/data/omniglot`` beside the working directory or the source checkout."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
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


@dataclasses.dataclass
class OmniglotOptions(TaskOptions):
    """Omniglot's own settings (Finn et al.'s 20-way defaults)."""

    data: tuple[str, ...] = ()  # zips or folders; () = the two minimal background splits
    ways: int = 20
    model: str = "mlp"  # "mlp" (the BN MLP) or "conv4"; conv4's filters: --hidden F (64)
    anil: bool = False  # only the last layer adapts in the inner loop
    bn: bool = True
    bn_scale: bool = False
    bn_adapt: bool | None = None  # None: held out for maml/fomaml, adapted for reptile/imaml
    center: bool = True
    augment: bool = False
    val_alphabets: tuple[str, ...] = ("Tagalog",)
    test_alphabets: tuple[str, ...] = ()
    val_tasks: int = 200
    val_seed: int = 12345
    eval_every: int = 250
    patience: int = 4  # validations without a better one before stopping (0: never stop)
    reptile_query: bool = False  # reptile's learner trains on support ∪ query (train-shots)
    reptile_batch: int | None = None  # reptile: images per inner step (None: all)

    def to_json(self) -> dict:
        d = super().to_json()
        for name, default in NEW_OPTIONS.items():
            if d[name] == default:
                del d[name]
        return d

    def resolved(self, cfg: Any) -> OmniglotOptions:
        o = dataclasses.replace(self)
        if o.bn_adapt is None:
            o.bn_adapt = cfg.algo in ADAPT_ALL
        o.data = tuple(str(Path(p).resolve()) for p in split_names(o.data)) or default_data()
        o.val_alphabets = split_names(o.val_alphabets)
        o.test_alphabets = split_names(o.test_alphabets)
        return o

    def validate(self, cfg: Any) -> None:
        for name, lo, hi in (("ways", 1, MAX_WAYS), ("val_tasks", 1, MAX_VAL_TASKS),
                             ("eval_every", 1, None), ("patience", 0, None),
                             ("val_seed", 0, None)):
            value = getattr(self, name)
            if value < lo or hi is not None and value > hi:
                bounds = f">= {lo}" if hi is None else f"in {lo}..{hi}"
                raise ValueError(f"--{name.replace('_', '-')} must be {bounds}; got {value}")
        self._validate_model(cfg)
        if cfg.algo in ADAPT_ALL and self.bn and self.bn_adapt is False:
            raise ValueError(f"--algo {cfg.algo} adapts every parameter in the inner loop "
                             "(it takes no adapt= mask): use --bn-adapt, or maml/fomaml")
        if self.reptile_query and cfg.algo != "reptile":
            raise ValueError(f"--reptile-query applies to --algo reptile only; got {cfg.algo}")
        if self.reptile_batch is not None:
            if cfg.algo != "reptile":
                raise ValueError("--reptile-batch applies to --algo reptile only; got "
                                 f"{cfg.algo}")
            n = self.ways * (cfg.shots + (cfg.query or cfg.shots) * self.reptile_query)
            if not 1 <= self.reptile_batch <= n:
                raise ValueError(f"--reptile-batch must be in 1..{n} (the learner's images "
                                 f"per task); got {self.reptile_batch}")
        overlap = set(split_names(self.val_alphabets)) & set(split_names(self.test_alphabets))
        if overlap:
            raise ValueError(f"alphabets {sorted(overlap)} are both validation and test")

    def _validate_model(self, cfg: Any) -> None:
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {', '.join(MODELS)}; got {self.model!r}")
        if self.anil and cfg.algo in ADAPT_ALL:
            raise ValueError(f"--anil needs an adapt= mask; --algo {cfg.algo} adapts every "
                             "parameter in the inner loop (use maml, maml-chain or fomaml)")
        if self.model != "conv4":
            return
        if not self.bn or self.bn_scale:
            raise ValueError("--model conv4 has batch norm with a shift and no scale: drop "
                             "--no-bn and --bn-scale")
        hidden = tuple(cfg.hidden) if cfg.hidden is not None else OMNIGLOT_HIDDEN
        if len(hidden) != 1 and hidden != OMNIGLOT_HIDDEN:
            raise ValueError(f"--model conv4 takes one width, --hidden F (the filters of each "
                             f"block, default 64); got {','.join(map(str, hidden))}")


class OmniglotSetup(TaskSetup):
    """N-way K-shot Omniglot with the BN MLP; validation chooses the params."""

    name = "omniglot"
    metric = "accuracy"
    higher_is_better = True
    algos = ("maml", "maml-chain", "fomaml", "reptile", "imaml")
    defaults: ClassVar[dict[str, Any]] = {
        "shots": 1, "inner_steps": 5, "inner_lr": 0.1, "meta_batch": 16, "iterations": 3000,
        "hidden": OMNIGLOT_HIDDEN, "checkpoint_every": 500, "log_every": 50}
    reptile_outer_lr = 1.0
    options = OmniglotOptions
    eval_chunk = 100

    @classmethod
    def model_defaults(cls, opts: Any) -> dict[str, Any]:
        """Conv4's ``hidden`` is its one filter count (64), not the MLP's widths."""
        return {"hidden": (CONV4_FILTERS,)} if opts.model == "conv4" else {}

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.train_set: Omniglot | None = None
        self.val_set: Omniglot | None = None
        self.conv = self.opts.model == "conv4"
        if self.conv:
            self.loss_fn = conv4_loss  # (the class's loss_fn is the MLP's)

    def init_params(self) -> list:
        if self.conv:
            hidden = tuple(self.cfg.hidden)
            filters = hidden[0] if len(hidden) == 1 else CONV4_FILTERS
            return nn.conv4_init(self.opts.ways, hidden=filters, seed=self.cfg.seed,
                                 dtype=self.dtype)
        sizes = (IMAGE_PIXELS,) + tuple(self.cfg.hidden) + (self.opts.ways,)
        return nn.bn_mlp_init(sizes, seed=self.cfg.seed, dtype=self.dtype,
                              init=self.cfg.init, bn=self.opts.bn, scale=self.opts.bn_scale)

    @staticmethod
    def loss_fn(params: Any, x: Any, y: Any) -> Any:
        """Per-task softmax cross-entropy of the BN MLP, (B,); BN statistics of x per task."""
        return nn.cross_entropy(nn.bn_mlp(params, x), y)

    def apply(self, params: Any, x: Any) -> Any:
        """The model's logits (B, M, N) for inputs as :meth:`model_input` shapes them."""
        return nn.conv4(params, x) if self.conv else nn.bn_mlp(params, x)

    def model_input(self, images: np.ndarray) -> np.ndarray:
        """Images (B, M, 28, 28) or (B, M, 784) as the model takes them: (B, M, 784) for the
        MLP, (B, M, 28, 28, 1) for Conv4."""
        B, M = images.shape[:2]
        if not self.conv:
            return images.reshape(B, M, -1)
        side = images.shape[-1] if images.ndim == 4 else math.isqrt(images.shape[-1])
        return images.reshape(B, M, side, side, 1)

    def _for_model(self, batch: TaskBatch) -> TaskBatch:
        if not self.conv:
            return batch
        return batch._replace(support_x=self.model_input(batch.support_x),
                              query_x=self.model_input(batch.query_x))

    def adapt_mask(self, params: Any) -> Any:
        if self.cfg.algo in ADAPT_ALL:
            return None
        if self.conv:
            return nn.conv4_adapt_mask(params, head_only=self.opts.anil,
                                       adapt_bn=bool(self.opts.bn_adapt))
        if self.opts.anil:  # the output layer's W and b only
            return [{k: i == len(params) - 1 for k in layer} for i, layer in enumerate(params)]
        if self.opts.bn_adapt:
            return None
        return nn.bn_adapt_mask(params, adapt_bn=False)

    def load_training(self) -> None:
        """The meta-training and validation alphabets: disjoint parts of the data."""
        self.train_set, self.val_set, _ = load_splits(self.opts)

    def train_batch(self, rng: np.random.Generator, world: Any) -> TaskBatch:
        c = self.cfg
        return to_backend(self._for_model(self.train_set.sample(
            c.meta_batch, self.opts.ways, c.shots, c.query, rng=rng,
            augment=self.opts.augment, tasks=world.task_range(c.meta_batch))))

    def validation_batch(self, world: Any) -> tuple[TaskBatch | None, int] | None:
        """This rank's share of the validation tasks (P = 1: all of them), and their count.

        Reptile's --reptile-query images are the learner's training data, not a test: its
        validation tasks hold as many query images per class as shots.
        """
        if self.val_set is None:
            return None
        o, c = self.opts, self.cfg
        lo, hi = world.task_range(o.val_tasks)
        if hi <= lo:
            return None, o.val_tasks
        vq = c.shots if o.reptile_query else c.query
        return to_backend(self._for_model(self.val_set.sample(
            o.val_tasks, o.ways, c.shots, vq, seed=o.val_seed, tasks=(lo, hi)))), o.val_tasks

    def scores(self, params: Any, query_x: Any, query_y: Any) -> np.ndarray:
        to_np = kernels.get_backend().to_numpy
        pred = np.argmax(to_np(self.apply(params, query_x)), axis=-1)
        return np.mean(pred == to_np(query_y), axis=-1)

    def summary(self, scores: np.ndarray) -> dict:
        """Mean accuracy with its 95% interval 1.96·sd/√n over tasks, in percent."""
        s = summarize(100.0 * np.asarray(scores), bad_above=np.inf)
        return {"mean": s["mean"], "ci95": s["ci95"], "tasks": int(np.asarray(scores).size)}

    def validation_score(self, scores: np.ndarray) -> float:
        return float(100.0 * np.mean(scores))

    def eval_defaults(self) -> tuple[list[int], int]:
        c = self.cfg
        return sorted({0, c.inner_steps}), c.shots if self.opts.reptile_query else c.query

    def test_batch(self, tasks: int, shots: int, query: int, eval_seed: int,
                   data: Sequence[str] | None = None,
                   alphabets: Sequence[str] | None = None) -> tuple[TaskBatch, dict]:
        """N-way tasks of ``alphabets`` (default: the test alphabets, else validation's)."""
        o = self.opts
        if alphabets:
            names, role = tuple(alphabets), "given"
        elif o.test_alphabets:
            names, role = o.test_alphabets, "test (held out of meta-training and validation)"
        elif o.val_alphabets:
            names, role = o.val_alphabets, "validation (held out of meta-training; used " \
                                           "to choose the checkpoint)"
        else:
            raise ValueError("the run holds out no alphabets: pass --alphabets")
        sources = [str(Path(p).resolve()) for p in data] if data else list(o.data)
        ds = Omniglot(sources, center=o.center).subset(names)
        if ds.num_classes < o.ways:
            raise ValueError(f"alphabets {list(names)} have {ds.num_classes} classes; the "
                             f"model is {o.ways}-way")
        batch = to_backend(self._for_model(ds.sample(int(tasks), o.ways, shots, query,
                                                     seed=eval_seed)))
        return batch, {"ways": o.ways, "alphabets": list(names), "alphabets_role": role,
                       "train_steps": self.cfg.inner_steps, "data": sources}


def conv4_loss(params: Any, x: Any, y: Any) -> Any:
    """Per-task softmax cross-entropy of Conv4, (B,); BN statistics of x per task."""
    return nn.cross_entropy(nn.conv4(params, x), y)


def load_splits(opts: OmniglotOptions) -> tuple:
    """(train, val or None, test or None): disjoint alphabets of the background data.

    ``opts``: resolved options (their data paths filled in).
    """
    ways = opts.ways
    if not opts.data:
        raise ValueError("no Omniglot data: pass --data with the background zips or folders "
                         "(none found under ../shared/data/omniglot)")
    data = Omniglot(list(opts.data), center=opts.center)
    val = test = None
    if opts.test_alphabets:
        data, test = data.split(opts.test_alphabets)
    if opts.val_alphabets:
        data, val = data.split(opts.val_alphabets)
    for name, part in (("meta-training", data), ("validation", val), ("test", test)):
        if part is not None and part.num_classes < ways:
            raise ValueError(f"the {name} alphabets have {part.num_classes} classes, fewer "
                             f"than {ways}-way tasks need")
    return data, val, test
