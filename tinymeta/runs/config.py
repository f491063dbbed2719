"""One run configuration for every task: the settings a run is made of, stored as config.json.

A :class:`RunConfig` holds the settings every task shares (the algorithm, K, T, α, β, the
meta-batch, the seed, …) once, and the task's own settings grouped in ``options`` (an
instance of the task's options dataclass, e.g. Omniglot's ways, alphabets and validation
schedule). A shared setting left ``None`` takes the task's default (:attr:`TaskSetup.defaults`)
when the config is :meth:`~RunConfig.resolved`; an algorithm-dependent default (Reptile's
SGD and annealing, its outer learning rate) is filled in there too.

``config.json`` is one flat JSON object, shared settings and the task's options side by
side, exactly as runs written before the run layer existed hold it, so those still load.
The settings that ``--resume`` may change are :data:`RESUMABLE`; every other one must match.

Every setting has a declared type (the dataclass annotations: ``int``, ``float``, ``bool``,
``str``, ``tuple[int, ...]``, optionally ``| None``), checked when a config is read
(:meth:`RunConfig.from_json`), and a range, checked by :meth:`RunConfig.validate`: a
config.json written by hand or damaged is refused with the setting named, never run. A
setting added later (``divergence_guard``) is absent from older config.json files, which
load with its default.

iMAML's settings: λ, the implicit solve (``linear_solver``, ``cg_steps``, ``cg_tol``,
``damping``) and the inner solver of the proximal problem (``inner_solver``, ``inner_steps``
its iterations, ``inner_tol``, ``newton_cg_steps``) default to :data:`IMAML_DEFAULTS` for
``algo="imaml"``. The inner solver's settings came after runs were written: they are stored
only where they apply (iMAML runs), and an iMAML config.json without them is read with
:data:`IMAML_LEGACY`, what the code that wrote it did.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from .registry import TASKS

ALGOS = ("maml", "maml-chain", "fomaml", "reptile", "imaml", "metasgd", "pretrain")

#: iMAML's defaults of the settings left None, chosen by measurement (3,000-iteration
#: sinusoid runs, docs/results.md); the inner steps depend on the solver (IMAML_STEPS).
IMAML_DEFAULTS: dict[str, Any] = {
    "inner_solver": "newton-cg", "inner_tol": 1e-3, "newton_cg_steps": 5, "lam": 1.0,
    "cg_steps": 5, "linear_solver": "minres"}
IMAML_STEPS = {"newton-cg": 3, "gd": 16}

#: The inner solver's settings an iMAML config.json written before they existed implies.
IMAML_LEGACY: dict[str, Any] = {
    "inner_solver": "gd", "inner_tol": 0.0, "newton_cg_steps": 5, "linear_solver": "cg"}

#: Settings a resumed run may change; every other one must match the run's config.json.
RESUMABLE = frozenset({"iterations", "checkpoint_every", "log_every", "skip_nonfinite",
                       "patience", "eval_every", "divergence_guard"})

#: The divergence guard's default factor F: training stops when the running query loss
#: exceeds F times the loss at the start (see :mod:`tinymeta.runs.loop`).
DIVERGENCE_FACTOR = 1000.0

#: The most weights a model's hidden layers may hold (Σ h_i h_{i+1}) and the widest layer:
#: larger settings are refused before any array is made (a damaged config.json).
MAX_HIDDEN_WEIGHTS = 1 << 27
MAX_WIDTH = 1 << 16
#: The most data points (support and query, over the meta-batch) one batch may hold.
MAX_BATCH_POINTS = 1 << 24

class TrainingError(RuntimeError):
    """A run that cannot go on (a non-finite meta-gradient, a bad run folder)."""


@dataclasses.dataclass
class RunConfig:
    """Every setting of a run. ``None``: the task's (or the algorithm's) default.

    Build one directly, ``RunConfig(task="omniglot", algo="maml", options=...)``, or from
    flat settings, ``RunConfig.create(task="omniglot", ways=5, shots=1)``.
    """

    task: str = "sinusoid"
    algo: str = "maml"
    shots: int | None = None
    query: int | None = None  # query points (classification: per class) in training
    inner_steps: int | None = None
    inner_lr: float | None = None
    outer_lr: float | None = None  # None: Reptile's SGD rate of the task, else Adam's 0.001
    optimizer: str | None = None  # "adam" | "sgd"; None: sgd for reptile, else adam
    anneal: bool | None = None  # outer lr linearly to 0; None: on for reptile
    meta_batch: int | None = None
    iterations: int | None = None
    seed: int = 0
    hidden: tuple[int, ...] | None = None
    init: str = "fan_in"
    dtype: str = "float32"
    backend: str | None = None
    lam: float | None = None  # iMAML's λ; None: IMAML_DEFAULTS (1.0 for the others)
    cg_steps: int | None = None  # the implicit solve's iterations
    cg_tol: float = 0.0
    linear_solver: str | None = None  # "cg" | "normal-cg" | "minres"; iMAML only
    inner_solver: str | None = None  # "gd" | "newton-cg": the proximal problem; iMAML only
    inner_tol: float | None = None  # the inner solver's relative stationarity; iMAML only
    newton_cg_steps: int | None = None  # CG iterations per Newton step; iMAML only
    damping: float = 0.0
    on_negative_curvature: str = "continue"
    checkpoint_every: int | None = None
    log_every: int | None = None
    skip_nonfinite: bool = False
    compile: bool = False  # record the meta-gradient step once (tm.compile) and replay it
    #: stop when the running query loss exceeds this multiple of the starting loss; 0: off
    divergence_guard: float = DIVERGENCE_FACTOR
    options: Any = None  # the task's own settings (its options dataclass); None: defaults

    # ---- building ---------------------------------------------------------------------

    @classmethod
    def create(cls, **settings: Any) -> RunConfig:
        """A config from flat settings: shared ones by name, the rest the task's options.

        Raises:
            ValueError: a setting that neither the run nor the task knows.
        """
        return cls.from_json(settings, source="the settings", stored=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], source: str = "config.json",
                  stored: bool = True) -> RunConfig:
        """The inverse of :meth:`to_json`: flat settings, the task's options among them.

        ``stored``: ``d`` is a run's config.json, so an iMAML setting it lacks is the one
        of :data:`IMAML_LEGACY` (the run predates it), not today's default.
        """
        setup = task_setup(d.get("task", "sinusoid"), source)
        if stored and d.get("algo") == "imaml":
            d = {**IMAML_LEGACY, **d}
        shared = {f.name for f in dataclasses.fields(cls)} - {"options"}
        own = {f.name for f in dataclasses.fields(setup.options)}
        unknown = set(d) - shared - own
        if unknown:
            raise ValueError(f"{source} has unknown settings {sorted(unknown)}")
        check_types(d, cls, source)
        check_types(d, setup.options, source)
        kw = {k: v for k, v in d.items() if k in shared}
        if kw.get("hidden") is not None:
            kw["hidden"] = tuple(kw["hidden"])
        opts = setup.options.from_json({k: v for k, v in d.items() if k in own})
        return cls(**kw, options=opts)

    def to_json(self) -> dict:
        """One flat dict: the shared settings and the task's options (tuples as lists)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name != "options" and not (f.name in IMAML_LEGACY and
                                             getattr(self, f.name) is None)}
        if d["hidden"] is not None:
            d["hidden"] = list(d["hidden"])
        d.update(self.task_options().to_json())
        return d

    def task_options(self) -> Any:
        """``options``, or the task's default options when unset."""
        if self.options is not None:
            return self.options
        return task_setup(self.task).options()

    # ---- resolving and checking -------------------------------------------------------

    def resolved(self) -> RunConfig:
        """A copy with the task's and the algorithm's defaults filled in."""
        setup = task_setup(self.task)
        c = dataclasses.replace(self, options=self.task_options().resolved(self))
        for name, value in {**setup.defaults, **setup.model_defaults(c.options)}.items():
            if getattr(c, name) is None:
                setattr(c, name, value)
        reptile = c.algo == "reptile"
        if c.algo == "imaml":
            for name, value in IMAML_DEFAULTS.items():
                if getattr(c, name) is None:
                    setattr(c, name, value)
            if c.inner_steps is None:
                c.inner_steps = IMAML_STEPS.get(c.inner_solver, 5)
        c.lam = 1.0 if c.lam is None else c.lam
        c.cg_steps = 5 if c.cg_steps is None else c.cg_steps
        if c.inner_steps is None:
            c.inner_steps = 5 if c.algo == "reptile" else 1
        if c.query is None:
            c.query = c.shots
        if c.optimizer is None:
            c.optimizer = "sgd" if reptile else "adam"
        if c.outer_lr is None:
            c.outer_lr = setup.reptile_outer_lr if reptile else 0.001
        if c.anneal is None:
            c.anneal = reptile
        c.hidden = tuple(int(h) for h in c.hidden)
        return c

    def validate(self) -> None:
        """Raise a ValueError naming the option of the first setting that cannot be run."""
        setup = task_setup(self.task)
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algorithm {self.algo!r}; choose one of {list(ALGOS)}")
        if self.algo not in setup.algos:
            raise ValueError(f"--algo {self.algo} is not available for {self.task}; choose "
                             f"one of {list(setup.algos)}")
        for name in ("shots", "meta_batch", "iterations", "checkpoint_every", "log_every",
                     "cg_steps"):
            _at_least(name, getattr(self, name), 1)
        _at_least("query", self.query, 1)
        _at_least("inner_steps", self.inner_steps, 0)
        if self.algo in ("reptile", "metasgd") and self.inner_steps == 0:
            raise ValueError(f"--algo {self.algo} needs --inner-steps >= 1")
        _one_of("optimizer", self.optimizer, (None, "adam", "sgd"))
        _one_of("dtype", self.dtype, ("float32", "float64"))
        _one_of("init", self.init, ("fan_in", "finn"))
        _one_of("on_negative_curvature", self.on_negative_curvature, ("continue", "stop"))
        _one_of("backend", self.backend, (None, "numpy", "numba", "cupy"))
        _at_least("seed", self.seed, 0)
        for name in ("lam", "inner_lr", "outer_lr"):
            _positive(name, getattr(self, name))
        for name in ("cg_tol", "damping", "divergence_guard"):
            _at_least(name, getattr(self, name), 0)
        if self.hidden is not None:
            _check_widths(self.hidden)
        points = (self.meta_batch or 1) * ((self.shots or 1) + (self.query or self.shots or 1))
        if points > MAX_BATCH_POINTS:
            raise ValueError(f"--meta-batch × (--shots + --query) = {points} data points a "
                             f"batch, more than {MAX_BATCH_POINTS}")
        self._validate_imaml()
        self.task_options().validate(self)

    def _validate_imaml(self) -> None:
        given = [k for k in IMAML_LEGACY if getattr(self, k) is not None]
        if self.algo != "imaml" and given:
            raise ValueError(f"--{given[0].replace('_', '-')} applies to --algo imaml only")
        _one_of("inner_solver", self.inner_solver, (None, "gd", "newton-cg"))
        _one_of("linear_solver", self.linear_solver, (None, "cg", "normal-cg", "minres"))
        _at_least("newton_cg_steps", self.newton_cg_steps, 1)
        _at_least("inner_tol", self.inner_tol, 0)
        if self.on_negative_curvature == "stop" and self.linear_solver not in (None, "cg"):
            raise ValueError("--on-negative-curvature stop applies to --linear-solver cg only")


def _at_least(name: str, value: Any, bound: float) -> None:
    """A ValueError naming the option unless ``value`` (when set) is finite and >= bound."""
    if value is not None and not (_real(value) and value >= bound):
        raise ValueError(f"--{name.replace('_', '-')} must be >= {bound:g}; got {value}")


def _finite(value: Any) -> bool:
    """Whether a number is finite as a float (an int too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _real(value: Any) -> bool:
    """Whether a set value is an int or a finite float."""
    return isinstance(value, int) or math.isfinite(value)


def _positive(name: str, value: Any) -> None:
    if value is not None and not (_real(value) and value > 0):
        raise ValueError(f"--{name.replace('_', '-')} must be > 0; got {value}")


def _check_widths(hidden: tuple) -> None:
    if not hidden or min(hidden) < 1 or max(hidden) > MAX_WIDTH:
        raise ValueError(f"--hidden needs widths in 1..{MAX_WIDTH}; got {list(hidden)}")
    weights = sum(a * b for a, b in zip(hidden, hidden[1:]))
    if weights > MAX_HIDDEN_WEIGHTS:
        raise ValueError(f"--hidden {','.join(map(str, hidden))} makes {weights} weights "
                         f"between hidden layers, more than {MAX_HIDDEN_WEIGHTS}")


def check_types(d: Mapping[str, Any], cls: type, source: str) -> None:
    """A ValueError naming ``source`` and the setting when a value of ``d`` does not have
    the type that ``cls``'s annotation declares for it (``int`` takes no bool, ``float``
    takes an int but no NaN or infinity, ``tuple[str, ...]`` a list or a comma list)."""
    hints = typing.get_type_hints(cls)
    for name, value in d.items():
        hint = hints.get(name)
        if hint is None or hint is Any:
            continue
        if not _has_type(value, hint):
            raise ValueError(f"{source}: setting {name!r} must be {_describe(hint)}; got "
                             f"{value!r:.60} ({type(value).__name__})")


def _has_type(value: Any, hint: Any) -> bool:
    if isinstance(hint, types.UnionType):
        return any(_has_type(value, h) for h in hint.__args__)
    if hint is type(None):
        return value is None
    if hint is float:
        return type(value) in (int, float) and _finite(value)
    if hint in (int, bool, str):
        return type(value) is hint
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if item is str and isinstance(value, str):
            return True  # a comma list, split when resolved
        return isinstance(value, (list, tuple)) and all(_has_type(v, item) for v in value)
    return True


def _describe(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_describe(h) for h in hint.__args__)
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return f"a list of {'strings' if item is str else 'integers'}"
    return {int: "an integer", float: "a finite number", bool: "true or false",
            str: "a string", type(None): "null"}.get(hint, str(hint))


def _one_of(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        shown = " or ".join(str(c) for c in choices if c is not None)
        raise ValueError(f"--{name.replace('_', '-')} must be {shown}; got {value!r}")


def task_setup(name: Any, source: str = "the settings") -> Any:
    """The setup class registered for the task ``name`` (a ValueError naming the choices)."""
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"{source}: unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def merge_resume(stored: RunConfig, given: Mapping[str, Any]) -> RunConfig:
    """The stored config with the ``given`` settings of a ``--resume`` applied.

    Only :data:`RESUMABLE` settings may differ from the stored ones.

    Raises:
        ValueError: a given setting that is not resumable and differs from the run's.
    """
    stored_json = stored.to_json()
    merged = dict(stored_json)
    for k, v in given.items():
        new = list(v) if isinstance(v, tuple) else v
        if k not in stored_json:
            raise ValueError(f"--{k.replace('_', '-')} does not apply to a {stored.task} run")
        if k not in RESUMABLE and stored_json[k] != new:
            raise ValueError(f"--{k.replace('_', '-')} {v} differs from the run's "
                             f"{stored_json[k]}; a resumed run keeps its settings")
        merged[k] = v
    return RunConfig.from_json(merged)
