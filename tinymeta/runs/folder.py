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
a file) and arrays are npz without pickle (:mod:`tinymeta.io`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from .. import io, kernels
from ..tree import tree_map
from .config import RunConfig, TrainingError


def write_json(path: str, obj: Any) -> None:
    """``obj`` as indented JSON with sorted keys, atomically."""
    io.write_json(path, obj, indent=2, sort_keys=True)


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines file ([] when it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunFolder:
    """The files of the run in ``path`` (see the module's docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    # ---- settings ---------------------------------------------------------------------

    def task(self) -> str | None:
        """The task named in config.json, or None where there is no run."""
        path = self.file("config.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f).get("task")

    def read_config(self) -> RunConfig:
        path = self.file("config.json")
        if not os.path.exists(path):
            raise TrainingError(f"{self.path} holds no run (no config.json)")
        with open(path) as f:
            return RunConfig.from_json(json.load(f))

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

    def read_log(self, name: str = "train.jsonl") -> list[dict]:
        return read_jsonl(self.file(name))

    def truncate_logs(self, iteration: int) -> None:
        """Keep the log lines of iterations up to ``iteration`` (a resume rewrites the rest)."""
        for name in ("train.jsonl", "val.jsonl"):
            path = self.file(name)
            if not os.path.exists(path):
                continue
            kept = []
            with open(path) as f:
                for line in f:
                    if line.strip() and json.loads(line).get("iteration", 0) <= iteration:
                        kept.append(line)
            with io.atomic_write(path) as f:
                f.write("".join(kept))

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

    def save_checkpoint(self, model: dict, opt_state: dict, iteration: int, skipped: int,
                        rng: np.random.Generator, elapsed: float) -> None:
        tree = {"model": model, "opt_state": opt_state, "iteration": int(iteration),
                "skipped": int(skipped)}
        meta_info = {"rng": rng.bit_generator.state, "elapsed_s": float(elapsed)}
        io.save(self.file("checkpoint.npz"), tree, metadata=meta_info)

    def load_checkpoint(self) -> tuple:
        """(model, optimizer state, iteration, skipped, rng, elapsed seconds)."""
        path = self.file("checkpoint.npz")
        if not os.path.exists(path):
            raise TrainingError(f"{self.path} has no checkpoint.npz to resume from")
        tree, meta_info = io.load(path, with_metadata=True)
        rng = np.random.default_rng()
        rng.bit_generator.state = meta_info["rng"]
        B = kernels.get_backend()
        model = tree_map(B.asarray, tree["model"])
        # arrays to the backend; scalar counters (Adam's step) stay host numbers, so that
        # reading them never synchronises with a device
        opt_state = tree_map(lambda a: a.item() if getattr(a, "ndim", 1) == 0 and
                             np.dtype(a.dtype).kind in "iu" else B.asarray(a),
                             tree["opt_state"])
        return (model, opt_state, tree["iteration"], tree["skipped"], rng,
                meta_info["elapsed_s"])

    # ---- params -----------------------------------------------------------------------

    def save_best(self, theta: Any, iteration: int, score: float, metric: str) -> None:
        io.save(self.file("best.npz"), theta,
                metadata={"iteration": iteration, f"val_{metric}": score})

    def load_best(self, iteration: int) -> Any:
        """best.npz's params, which must be those of ``iteration`` (validation's choice)."""
        chosen, meta_best = io.load(self.file("best.npz"), with_metadata=True)
        saved_it = (meta_best or {}).get("iteration")
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
        """``{"theta": θ}`` (and ``"lrs"`` for Meta-SGD) on the backend, as trained."""
        path = self.params_path()
        if os.path.basename(path) == "checkpoint.npz":
            model = self.load_checkpoint()[0]
        else:
            model = {"theta": io.load(path)}
            if cfg.algo == "metasgd":
                model["lrs"] = io.load(self.file("lrs.npz"))
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
        """``eval.json``, or the report at ``path``."""
        with open(path or self.file("eval.json")) as f:
            return json.load(f)

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
