"""The run folder: the only code that reads or writes a run's files.

A run lives in one folder:

- ``config.json``: every setting (:class:`~tinymeta.runs.config.RunConfig`, flat);
- ``train.jsonl``: one JSON line per logged iteration; ``val.jsonl``: one per validation;
- ``checkpoint.npz``: params, optimizer state, iteration, skipped steps and the task
  sampler's RNG state, so that ``--resume`` continues bit for bit;
- ``best.npz``: the params validation liked best so far (tasks with validation);
- ``params.npz`` (and ``lrs.npz`` for Meta-SGD): the trained model, at the end;
- ``result.json``: the end-of-run summary; ``eval.json``: the last ``tinymeta eval``.

Every file is written atomically (a temporary file, fsync, rename: a crash never leaves half
a file) and arrays are npz without pickle (:mod:`tinymeta.io`). A kill during a write can
leave the temporary file (``.NAME-<random>.tmp``): a run that starts or resumes removes
those of its training files (:meth:`RunFolder.remove_stray_temporaries`).

Every file is checked when it is read (:mod:`tinymeta.runs.schema`): JSON files against a
size limit (:data:`JSON_LIMIT`, logs :data:`LOG_LIMIT`) before they are parsed, config.json
against the settings' types and ranges, arrays against the structure, shapes and dtypes of
the run's own model (``tinymeta.io.load(like=...)``) and finite, a checkpoint against the
run's iterations, log lines and evaluation reports against their records. A file that fails
is refused with a ``ValueError`` (or :class:`~tinymeta.runs.config.TrainingError`) whose one
line names it and says what is wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np

from .. import io, kernels
from ..tree import tree_leaves, tree_map
from .algorithms import initial_model, make_optimizer
from .config import RunConfig, TrainingError
from .registry import TASKS
from .schema import check_checkpoint, check_log_record, check_report

#: The most bytes a JSON file of a run (config.json, result.json, a report) may hold, and a
#: log (train.jsonl, val.jsonl): a larger file is refused unread.
JSON_LIMIT = 1 << 24
LOG_LIMIT = 1 << 28

#: The files a training run writes (atomically; a kill can leave their temporary files).
TRAINING_FILES = ("config.json", "train.jsonl", "val.jsonl", "checkpoint.npz", "best.npz",
                  "params.npz", "lrs.npz", "result.json")
#: The name :func:`tinymeta.io.atomic_write` gives its temporary file (tempfile.mkstemp's
#: prefix ``.NAME-``, eight random characters, suffix ``.tmp``).
_TEMPORARY = re.compile(r"^\.(?P<name>.+)-[a-z0-9_]{8}\.tmp$")


def write_json(path: str, obj: Any) -> None:
    """``obj`` as indented JSON with sorted keys, atomically."""
    io.write_json(path, obj, indent=2, sort_keys=True)


def _read_text(path: str, limit: int) -> str:
    """The UTF-8 text of ``path``, refused unread beyond ``limit`` bytes."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes; not a file of a run")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from None


def read_json(path: str, limit: int = JSON_LIMIT) -> Any:
    """The JSON value in ``path``; a ValueError naming the file when it is too large, not
    text or not JSON (a truncated file)."""
    text = _read_text(path, limit)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path} is not valid JSON ({str(e) or type(e).__name__})") from None


def _ends_a_line(path: str) -> bool:
    """Whether the file is empty or ends with a newline (so that a line appended to it
    starts a line of its own)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_jsonl(path: str, metric: str | None = None,
               on_partial: Callable[[str], Any] | None = None) -> list[dict]:
    """The records of a run's log ([] when it does not exist), each checked
    (:func:`~tinymeta.runs.schema.check_log_record`; ``metric``: a val.jsonl's).

    A last line without its newline that is not JSON is what a crash leaves mid-write: it is
    dropped and ``on_partial`` is told. Any other bad line is a ValueError naming the file
    and the line.
    """
    if not os.path.exists(path):
        return []
    lines = _read_text(path, LOG_LIMIT).split("\n")
    records: list[dict] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError) as e:
            if n == len(lines):  # no newline after it: a half-written line
                if on_partial is not None:
                    on_partial(f"{path}: dropped its half-written last line ({line[:40]!r})")
                break
            raise ValueError(f"{path} line {n} is not valid JSON ({e})") from None
        why = check_log_record(rec, metric, records[-1]["iteration"] if records else 0)
        if why is not None:
            raise ValueError(f"{path} line {n}: {why}")
        records.append(rec)
    return records


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass
class Checkpoint:
    """A run's state after ``iteration``: what ``--resume`` continues from, bit for bit."""

    model: dict
    opt_state: dict
    iteration: int
    skipped: int
    rng: np.random.Generator
    elapsed: float = 0.0
    #: the query losses of the steps since the last log line (the next line's mean)
    window: list = dataclasses.field(default_factory=list)
    #: the divergence guard's starting loss (None: a checkpoint written before the guard)
    loss_start: float | None = None
    #: the patience with which validation stopped the run early (None: it did not)
    stopped_early: int | None = None


def _template(cfg: RunConfig) -> tuple[dict, dict]:
    """(the model, the optimizer state) that the run ``cfg`` (resolved) starts from: the
    structure, shapes and dtypes every params file and checkpoint of it must have."""
    model = initial_model(cfg, TASKS[cfg.task](cfg))
    return model, make_optimizer(cfg).init(model)


def _check_finite(tree: Any, path: str) -> None:
    if not all(np.isfinite(np.asarray(a)).all() for a in tree_leaves(tree)):
        raise ValueError(f"{path}: the params hold NaN or infinite values")


class RunFolder:
    """The files of the run in ``path`` (see the module's docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    # ---- settings ---------------------------------------------------------------------

    def read_config(self) -> RunConfig:
        """The run's settings, checked: every key known, of its type, in its range.

        Raises:
            TrainingError: the folder holds no config.json.
            ValueError: naming config.json: not JSON, not an object, or a bad setting.
        """
        path = self.file("config.json")
        if not os.path.exists(path):
            raise TrainingError(f"{self.path} holds no run (no config.json)")
        d = read_json(path)
        if not isinstance(d, dict):
            raise ValueError(f"{path} must hold a JSON object of settings; got "
                             f"{type(d).__name__}")
        cfg = RunConfig.from_json(d, source=path)
        try:
            cfg.resolved().validate()
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return cfg

    def write_config(self, cfg: RunConfig) -> None:
        os.makedirs(self.path, exist_ok=True)
        write_json(self.file("config.json"), cfg.to_json())

    # ---- logs -------------------------------------------------------------------------

    @contextlib.contextmanager
    def open_logs(self, writer: bool, validated: bool) -> Iterator[tuple[IO, IO]]:
        """(train.jsonl, val.jsonl) opened to append; ``writer=False``: both discard.

        Without validation (``validated=False``) no val.jsonl is made: its log discards.
        """
        train = self.file("train.jsonl") if writer else os.devnull
        val = self.file("val.jsonl") if writer and validated else os.devnull
        with open(train, "a") as log, open(val, "a") as vlog:
            yield log, vlog

    def read_log(self, name: str = "train.jsonl", metric: str | None = None,
                 on_partial: Callable[[str], Any] | None = None) -> list[dict]:
        """The checked records of a log (:func:`read_jsonl`); ``metric``: val.jsonl's."""
        return read_jsonl(self.file(name), metric if name == "val.jsonl" else None, on_partial)

    def truncate_logs(self, iteration: int, metric: str,
                      notify: Callable[[str], Any] | None = None) -> None:
        """Keep the log lines of iterations up to ``iteration`` (a resume rewrites the rest);
        a half-written last line is dropped and ``notify`` told. A log with nothing to drop
        is left as it is."""
        for name in ("train.jsonl", "val.jsonl"):
            path = self.file(name)
            if not os.path.exists(path):
                continue
            partial: list[str] = []
            records = self.read_log(name, metric, partial.append)
            kept = [r for r in records if r["iteration"] <= iteration]
            if len(kept) == len(records) and not partial and _ends_a_line(path):
                continue
            for line in partial:
                if notify is not None:
                    notify(line)
            with io.atomic_write(path) as f:
                f.write("".join(json.dumps(r) + "\n" for r in kept))

    def remove_stray_temporaries(self) -> list[str]:
        """Remove the temporary files that a kill during an atomic write of a training file
        left behind (``.NAME-<random>.tmp``, NAME one of :data:`TRAINING_FILES`); return
        their paths. Rank 0 only, when a run starts or resumes: no other writer is running.
        """
        if not os.path.isdir(self.path):
            return []
        removed = []
        for entry in sorted(os.listdir(self.path)):
            m = _TEMPORARY.match(entry)
            path = self.file(entry)
            if m and m.group("name") in TRAINING_FILES and os.path.isfile(path) \
                    and not os.path.islink(path):
                os.unlink(path)
                removed.append(path)
        return removed

    def check_new(self) -> None:
        """Refuse to start a new run in a folder that holds one (a checkpoint)."""
        if os.path.exists(self.file("checkpoint.npz")):
            raise TrainingError(f"{self.path} already holds a run; pass --resume to continue "
                                "it or choose another --out")

    def clear_for_new_run(self) -> None:
        """Remove the logs and best params an earlier, unfinished run left behind."""
        for name in ("train.jsonl", "val.jsonl", "best.npz"):
            if os.path.exists(self.file(name)):
                os.unlink(self.file(name))

    # ---- checkpoint -------------------------------------------------------------------

    def save_checkpoint(self, ck: Checkpoint) -> None:
        tree = {"model": ck.model, "opt_state": ck.opt_state, "iteration": int(ck.iteration),
                "skipped": int(ck.skipped)}
        meta_info: dict = {"rng": ck.rng.bit_generator.state, "elapsed_s": float(ck.elapsed)}
        if ck.loss_start is not None:
            meta_info["loss_start"] = float(ck.loss_start)
        if ck.window:  # only between log lines: a checkpoint at a log line has none
            meta_info["window"] = [float(x) for x in ck.window]
        if ck.stopped_early is not None:
            meta_info["stopped_early"] = {"patience": int(ck.stopped_early)}
        io.save(self.file("checkpoint.npz"), tree, metadata=meta_info)

    def load_checkpoint(self, cfg: RunConfig) -> Checkpoint:
        """The checkpoint, checked against the run (``cfg``, resolved): the structure,
        shapes and dtypes of its model and optimizer state, finite values, an iteration
        within the run's (config.json's), the step counts, the RNG state
        (:func:`~tinymeta.runs.schema.check_checkpoint`). Arrays on the backend.

        Raises:
            TrainingError: there is no checkpoint.npz.
            ValueError: naming checkpoint.npz and what is wrong with it.
        """
        path = self.file("checkpoint.npz")
        if not os.path.exists(path):
            raise TrainingError(f"{self.path} has no checkpoint.npz to resume from")
        model, opt_state = _template(cfg)
        like = {"model": model, "opt_state": opt_state, "iteration": 0, "skipped": 0}
        tree, meta = io.load(path, with_metadata=True, like=like)
        why = check_checkpoint(tree, meta, self.read_config().resolved().iterations)
        if why is not None:
            raise ValueError(f"{path}: {why}")
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = meta["rng"]
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise ValueError(f"{path}: its RNG state cannot be restored ({e})") from None
        B = kernels.get_backend()
        # arrays to the backend; scalar counters (Adam's step) stay host numbers, so that
        # reading them never synchronises with a device
        opt_state = tree_map(lambda a: a.item() if getattr(a, "ndim", 1) == 0 and
                             np.dtype(a.dtype).kind in "iu" else B.asarray(a),
                             tree["opt_state"])
        stop = meta.get("stopped_early")
        return Checkpoint(tree_map(B.asarray, tree["model"]), opt_state, tree["iteration"],
                          tree["skipped"], rng, float(meta.get("elapsed_s", 0.0)),
                          list(meta.get("window", [])), meta.get("loss_start"),
                          None if stop is None else stop["patience"])

    # ---- params -----------------------------------------------------------------------

    def save_best(self, theta: Any, iteration: int, score: float, metric: str) -> None:
        io.save(self.file("best.npz"), theta,
                metadata={"iteration": iteration, f"val_{metric}": score})

    def load_best(self, cfg: RunConfig, iteration: int) -> Any:
        """best.npz's params, which must be those of ``iteration`` (validation's choice)."""
        path = self.file("best.npz")
        chosen, meta_best = io.load(path, with_metadata=True, like=_template(cfg)[0]["theta"])
        _check_finite(chosen, path)
        saved_it = meta_best.get("iteration") if isinstance(meta_best, dict) else None
        if saved_it != iteration:  # a crash between best.npz and the checkpoint, then a resume
            raise TrainingError(
                f"{self.path}/best.npz holds the params of iteration {saved_it}, but "
                f"validation chose iteration {iteration} (a run that crashed after saving "
                "best.npz and was resumed with other settings); train it again")
        return chosen

    def save_params(self, theta: Any, lrs: Any = None) -> None:
        io.save(self.file("params.npz"), theta)
        if lrs is not None:
            io.save(self.file("lrs.npz"), lrs)

    def params_path(self) -> str:
        """The file :meth:`load_model` reads: params.npz, else best.npz, else the checkpoint."""
        for name in ("params.npz", "best.npz", "checkpoint.npz"):
            if os.path.exists(self.file(name)):
                return self.file(name)
        raise TrainingError(f"{self.path} holds no trained params (no params.npz)")

    def params_sha256(self) -> str:
        return file_sha256(self.params_path())

    def load_model(self, cfg: RunConfig) -> dict:
        """``{"theta": θ}`` (and ``"lrs"`` for Meta-SGD) on the backend, as trained, each
        file checked against the model ``cfg`` (resolved) makes and finite.

        Raises:
            TrainingError: no params at all.
            ValueError: naming the file whose params do not fit the run.
        """
        path = self.params_path()
        if os.path.basename(path) == "checkpoint.npz":
            model = self.load_checkpoint(cfg).model
        else:
            like = _template(cfg)[0]
            model = {"theta": io.load(path, like=like["theta"])}
            _check_finite(model["theta"], path)
            if cfg.algo == "metasgd":
                lrs_path = self.file("lrs.npz")
                model["lrs"] = io.load(lrs_path, like=like["lrs"])
                _check_finite(model["lrs"], lrs_path)
        return tree_map(kernels.get_backend().asarray, model)

    # ---- reports ----------------------------------------------------------------------

    def write_result(self, result: dict) -> None:
        write_json(self.file("result.json"), result)

    def write_eval(self, report: dict) -> tuple[str, str | None]:
        """Write ``report`` as ``eval.json`` (the latest) and as ``evals/NAME.json``.

        NAME is the report's protocol (:func:`protocol_name`), so an evaluation of another
        protocol never overwrites this one. An ``eval.json`` of another protocol that has no
        copy under ``evals/`` yet (a run evaluated before reports were kept) is kept there
        first.

        Returns:
            (the path under evals/, the evals/ path of the replaced eval.json when its
            protocol differs, else None).
        """
        os.makedirs(self.file("evals"), exist_ok=True)
        replaced = None
        if os.path.exists(self.file("eval.json")):
            try:
                previous = self.read_eval()
            except (OSError, ValueError):
                previous = None  # unreadable: nothing to keep
            if isinstance(previous, dict) and protocol(previous) != protocol(report):
                replaced = self.eval_path(previous)
                if not os.path.exists(replaced):
                    write_json(replaced, previous)
        path = self.eval_path(report)
        write_json(path, report)
        write_json(self.file("eval.json"), report)
        return path, replaced

    def eval_path(self, report: dict) -> str:
        return os.path.join(self.path, "evals", protocol_name(report) + ".json")

    def read_eval(self, path: str | None = None) -> dict:
        """``eval.json``, or the report at ``path``, checked
        (:func:`~tinymeta.runs.schema.check_report`: a ValueError naming the file)."""
        path = path or self.file("eval.json")
        report = read_json(path)
        why = check_report(report)
        if why is not None:
            raise ValueError(f"{path} is not an evaluation report: {why}")
        return report

    def eval_reports(self) -> list[str]:
        """The paths of every kept report: ``evals/*.json``, then ``eval.json``."""
        folder = self.file("evals")
        kept = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                      if n.endswith(".json")) if os.path.isdir(folder) else []
        latest = self.file("eval.json")
        return kept + ([latest] if os.path.exists(latest) else [])


#: The fields of an evaluation report that make its protocol: two reports of the same
#: protocol are the same measurement (the metric's numbers aside).
PROTOCOL = ("alphabets", "tasks", "eval_seed", "shots", "query", "inner_lr", "adaptation",
            "params_sha256")


def protocol(report: dict) -> dict:
    """The protocol of an evaluation report: :data:`PROTOCOL`'s fields and the step counts.

    A report written before ``adaptation`` was recorded adapted by gradient steps.
    """
    p = {k: report.get(k) for k in PROTOCOL}
    p["adaptation"] = p["adaptation"] or "gradient"
    if report.get("proximal") is not None:  # iMAML's inner solver, its λ among its settings
        p["proximal"] = report["proximal"]
    metric = next((k for k in ("accuracy", "mse") if isinstance(report.get(k), dict)), None)
    p["steps"] = sorted(int(t) for t in report[metric]) if metric else None
    return p


def protocol_name(report: dict) -> str:
    """A file name for the report's protocol: its readable parts and a digest of all of it.

    E.g. ``Tagalog-600tasks-seed1000-1shot-1query-a1b2c3d4e5f6``.
    """
    p = protocol(report)
    where = "+".join(p["alphabets"]) if p["alphabets"] else "tasks"
    digest = hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12]
    name = (f"{where}-{p['tasks']}tasks-seed{p['eval_seed']}-{p['shots']}shot-"
            f"{p['query']}query-{digest}")
    return "".join(c if c.isalnum() or c in "+-_." else "_" for c in name)
