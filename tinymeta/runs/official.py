"""Lake et al.'s official 20-way one-shot Omniglot runs, scored for a model and for MHD.

In each run the model adapts on the 20 training images (one per class, label i = training
class i; batch norm with their statistics) for T steps, then classifies the 20 test items
in one pass, batch norm with the test items' own statistics (transductive, as in
meta-training's query pass); the error is the share wrong, averaged over runs. The Modified
Hausdorff distance baseline is scored beside it. The runs are never used for any choice:
``steps="val"`` takes the step count that was best on the run's validation alphabets.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import kernels, meta
from ..tasks.oneshot_runs import load_runs, score_runs, score_runs_with
from .evaluation import load_model, proximal_params, proximal_settings
from .folder import RunFolder
from .omniglot import OmniglotSetup


def validation_steps(out: str, min_tasks: int = 600) -> tuple[int, dict, str]:
    """The step count of :func:`validation_choice`: (t, the report, its path)."""
    t, _, report, path = validation_choice(out, min_tasks)
    return t, report, path


def validation_choice(out: str, min_tasks: int = 600) -> tuple[int, str, dict, str]:
    """The test-time adaptation that validation chooses: argmax_t acc_val(t), ties to fewer.

    acc_val(t) is the mean query accuracy after t adaptation steps in a kept report of the
    run (``evals/*.json`` or ``eval.json``) of the validation protocol: the run's validation
    alphabets (never test alphabets: a choice made on test tasks would make their score
    optimistic), the runs' setting (1 shot and 1 query image per class, the training α,
    gradient steps), at least ``min_tasks`` tasks (a quick probe does not count), and the
    params that :func:`~tinymeta.runs.evaluation.load_model` reads now (their SHA-256 is in
    the report). Of several, the one with the most tasks (then the newest file) is used.
    An iMAML report holds two adaptations, gradient steps and the proximal solver's
    iterations: the best (t, adaptation) over both is chosen (ties: fewer steps, then
    gradient steps).

    Returns:
        (t, "gradient" or "proximal", the report, its path).

    Raises:
        ValueError: no report fits; the message says why each was refused and gives the
            ``tinymeta eval`` command that makes one.
    """
    folder = RunFolder(out)
    cfg = folder.read_config().resolved()
    o = cfg.task_options()
    if not o.val_alphabets:
        raise ValueError(f"--steps val: the run in {out} holds out no validation alphabets; "
                         "give --steps T")
    default_q = cfg.shots if o.reptile_query else cfg.query
    again = (f"run `tinymeta eval {out} --tasks {max(min_tasks, 600)} --steps "
             f"5,10,20,40,80,160 --alphabets {','.join(o.val_alphabets)}"
             f"{'' if cfg.shots == 1 else ' --shots 1'}{'' if default_q == 1 else ' --query 1'}"
             "` first")
    want = {"alphabets": list(o.val_alphabets), "shots": 1, "query": 1,
            "inner_lr": cfg.inner_lr}
    fits, refused = [], []
    for path in folder.eval_reports():
        why, report = _refusal(folder, path, want, min_tasks)
        if why is None:
            fits.append((report["tasks"], os.path.getmtime(path), path, report))
        else:
            refused.append(why)
    if not fits:
        if not refused:
            raise ValueError(f"--steps val: {folder.file('eval.json')} does not exist and "
                             f"{folder.file('evals')} holds no report; {again}")
        raise ValueError(f"--steps val: no report of the validation protocol: "
                         f"{'; '.join(refused)}; {again}")
    _, _, path, report = max(fits, key=lambda f: f[:2])
    candidates = [(float(r["mean"]), -int(t), kind == "gradient", int(t), kind)
                  for kind, key in (("gradient", "accuracy"), ("proximal", "accuracy_proximal"))
                  for t, r in (report.get(key) or {}).items()]
    *_, t, kind = max(candidates)
    return t, kind, report, path


def _refusal(folder: RunFolder, path: str, want: dict, min_tasks: int) -> tuple:
    """(why the report at ``path`` is not of the validation protocol, or None; the report)."""
    try:
        report = folder.read_eval(path)
        acc = {int(t): float(r["mean"]) for t, r in report["accuracy"].items()}
        setting = {k: report[k] for k in ("alphabets", "shots", "query", "inner_lr")}
        tasks = int(report["tasks"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"cannot read {path} ({type(e).__name__}: {e})", None
    if setting != want or not acc or report.get("adaptation", "gradient") not in (
            "gradient", "gradient+proximal"):
        return (f"{path} evaluates {setting}, not the runs' setting on the validation "
                f"alphabets {want}"), report
    if "params_sha256" not in report:
        return f"{path} predates the params check (it records no params_sha256)", report
    if report["params_sha256"] != folder.params_sha256():
        return (f"{path} was made for other params than {folder.params_path()} holds now",
                report)
    if tasks < min_tasks:
        return f"{path} holds {tasks} tasks, fewer than {min_tasks}", report
    return None, report


def run_predictor(cfg: Any, theta: Any, steps: int | None = None,
                  proximal: dict | None = None) -> Callable:
    """``predict(train, test) -> (n_test,)`` class indices for :func:`score_runs_with`.

    The model adapts for T steps (default the training T) on the training images, gradient
    steps or, given ``proximal`` (:func:`~tinymeta.runs.evaluation.proximal_settings`), T
    iterations of iMAML's proximal solver, and classifies the test items in one pass. Ties
    go to the lowest class index.
    """
    T = cfg.inner_steps if steps is None else int(steps)
    o = cfg.task_options()
    setup = OmniglotSetup(cfg)
    mask = setup.adapt_mask(theta)
    B = kernels.get_backend()

    def predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        n = train.shape[0]
        if n != o.ways:
            raise ValueError(f"the run is {n}-way; the model is {o.ways}-way")
        dt = np.dtype(cfg.dtype)
        sx = B.asarray(setup.model_input(train[None]).astype(dt))
        sy = B.asarray(np.arange(n, dtype=np.int64)[None])
        qx = B.asarray(setup.model_input(test[None]).astype(dt))
        if proximal is None:
            params = meta.adapt(setup.loss_fn, theta, sx, sy, cfg.inner_lr, T, mask)
        else:
            path = proximal_params(setup.loss_fn, theta, sx, sy, T, proximal)
            params = collections.deque(path, maxlen=1)[0]
        return np.argmax(B.to_numpy(setup.apply(params, qx))[0], axis=-1).astype(np.int64)

    return predict


def eval_runs(runs: str, model: str | None = None, baseline: bool = True,
              steps: int | str | None = None, min_val_tasks: int = 600,
              proximal_lam: float | None = None) -> dict:
    """Score a model and/or the MHD baseline on Lake et al.'s 20-way one-shot runs.

    ``steps``: the adaptation steps (default the training T), or ``"val"`` for the count
    (and, for iMAML, the adaptation) :func:`validation_choice` chooses from the model's kept
    report of the validation protocol (of at least ``min_val_tasks`` tasks). An iMAML
    model with a given T is scored twice: T gradient steps ("model") and T iterations of
    its inner solver ("model_proximal", λ = ``proximal_lam``, default the run's).

    Returns:
        {"model": {run: error %} or None, "mhd": {run: error %} or None, "steps": T,
        "adaptation": "gradient" or "proximal" (how "model" adapted), for iMAML with a
        given T "model_proximal" and "proximal" (the solver's settings), and with ``"val"``:
        "steps_chosen_on": the validation accuracy of that choice}.
    """
    if steps == "val" and model is None:
        raise ValueError("eval_runs: steps='val' (--steps val) needs a model (--model RUNDIR)")
    if steps == "val" and proximal_lam is not None:
        raise ValueError("eval_runs: --steps val adapts as its validation report did; give "
                         "--proximal-lam with --steps T")
    if isinstance(steps, str) and steps != "val":
        raise ValueError(f"eval_runs: steps must be an int or 'val', not {steps!r}")
    parsed = load_runs(runs)
    result: dict = {"model": None, "mhd": None, "steps": None}
    if model is not None:
        _score_model(result, parsed, model, steps, min_val_tasks, proximal_lam)
    if baseline or model is None:
        result["mhd"] = score_runs(parsed).errors
    return result


def _score_model(result: dict, parsed: Any, model: str, steps: int | str | None,
                 min_val_tasks: int, proximal_lam: float | None) -> None:
    """The model's part of :func:`eval_runs`, filled into ``result``."""
    cfg, trained = load_model(model)
    if cfg.task != "omniglot":
        raise ValueError(f"the one-shot runs are Omniglot's; the model in {model} is a "
                         f"{cfg.task} model (train with --task omniglot)")
    if cfg.task_options().ways != 20:
        raise ValueError(f"the one-shot runs are 20-way; the model in {model} is "
                         f"{cfg.task_options().ways}-way (train with --ways 20)")
    if proximal_lam is not None and cfg.algo != "imaml":
        raise ValueError(f"--proximal-lam applies to imaml models; {model} is {cfg.algo}")
    kind, proximal = "gradient", None
    if steps == "val":  # before the (slow) runs are scored
        steps, kind, report, path = validation_choice(model, min_val_tasks)
        key = "accuracy" if kind == "gradient" else "accuracy_proximal"
        proximal = report["proximal"] if kind == "proximal" else None
        result["steps_chosen_on"] = {
            "file": path, "alphabets": report["alphabets"], "tasks": report.get("tasks"),
            "eval_seed": report.get("eval_seed"), "adaptation": kind,
            "accuracy": report[key][str(steps)]["mean"],
            "candidates": sorted(int(t) for t in report["accuracy"])}
    center = cfg.task_options().center
    predict = run_predictor(cfg, trained["theta"], steps, proximal)
    result["model"] = score_runs_with(predict, parsed, preprocessed=True, center=center).errors
    if cfg.algo == "imaml" and "steps_chosen_on" not in result:
        result["proximal"] = proximal_settings(cfg, lam=proximal_lam)
        predict = run_predictor(cfg, trained["theta"], steps, result["proximal"])
        result["model_proximal"] = score_runs_with(predict, parsed, preprocessed=True,
                                                   center=center).errors
    result["steps"] = cfg.inner_steps if steps is None else int(steps)
    result["algo"], result["adaptation"] = cfg.algo, kind


def format_runs(result: dict) -> str:
    """``run01 error 25.0%  (proximal 22.0%)  (mhd 45.0%)`` per run, then ``mean error …``.

    The first number of each line is the model's (the baseline's alone without a model);
    "proximal" is an iMAML model adapted by its inner solver.
    """
    main = result["model"] if result["model"] is not None else result["mhd"]
    sides = [(name, result.get(key)) for name, key in (("proximal", "model_proximal"),
                                                        ("mhd", "mhd"))
             if result["model"] is not None and result.get(key) is not None]
    lines = []
    for run, err in main.items():
        extra = "".join(f"  ({name} {side[run]:.1f}%)" for name, side in sides)
        lines.append(f"{run} error {err:.1f}%{extra}")
    mean = sum(main.values()) / len(main)
    extra = "".join(f"  ({name} {sum(side.values()) / len(side):.1f}%)" for name, side in sides)
    lines.append(f"mean error {mean:.1f}%{extra}")
    return "\n".join(lines)
