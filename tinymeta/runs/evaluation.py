"""Test-time evaluation by the task's metric: adapt for t steps, score the query sets.

For every test task e and step count t, the learner runs θ_t = θ_{t−1} − α ∇L_S^e(θ_{t−1})
from the meta-learned θ_0 (with the training α and ``adapt=`` mask, or Meta-SGD's learned
rates), and the task's metric is taken on its query set under θ_t: the MSE for the sinusoid,
the accuracy for Omniglot. The report gives, per step count, the mean with its 95% interval
over tasks (and the task's other summaries) and is written to ``eval.json``.

An iMAML model is also adapted as it was trained: t iterations of its inner solver on the
proximal objective L_S(φ) + (λ/2)‖φ − θ_0‖² (:func:`~tinymeta.meta.proximal_path`, with the
run's λ or another, 0 included), reported beside the gradient steps under the sibling key
``"<metric>_proximal"`` of the same shape, its settings under ``"proximal"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .. import ops
from ..meta.common import adapt_path
from ..meta.proximal import proximal_path
from .config import TrainingError
from .folder import RunFolder
from .registry import TASKS


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


def scores_by_step(setup: Any, theta: Any, batch: Any, inner_lr: Any, steps: Sequence[int],
                   mask: Any = None, chunk: int | None = None,
                   proximal: dict | None = None) -> dict[int, np.ndarray]:
    """The metric of each task after t adaptation steps, for every t in ``steps``.

    The steps are gradient steps at ``inner_lr`` (with ``mask``), or, given ``proximal``
    (:func:`proximal_settings`), iterations of the proximal solver. Tasks are adapted
    ``chunk`` (default ``setup.eval_chunk``) at a time, all at once when None: the adapted
    weights are per task.

    Returns:
        {t: (B,) float64 scores}.
    """
    wanted = sorted(set(int(s) for s in steps))
    B = int(ops.shape(batch.support_x)[0])
    chunk = chunk or setup.eval_chunk or B
    out: dict[int, list] = {t: [] for t in wanted}
    for lo in range(0, B, chunk):
        sl = slice(lo, min(lo + chunk, B))
        sx, sy, qx, qy = (v[sl] for v in batch[:4])
        if proximal is None:
            path = adapt_path(setup.loss_fn, theta, sx, sy, inner_lr, wanted[-1], mask)
        else:
            path = proximal_params(setup.loss_fn, theta, sx, sy, wanted[-1], proximal)
        # a diverging adaptation (iMAML's θ_0 under plain steps) is counted in n_bad
        with np.errstate(over="ignore", invalid="ignore"):
            for t, params in enumerate(path):
                if t in out:
                    out[t].append(setup.scores(params, qx, qy))
    return {t: np.concatenate(v).astype(np.float64) for t, v in out.items()}


def proximal_settings(cfg: Any, inner_lr: float | None = None,
                      lam: float | None = None) -> dict:
    """The inner solver of an iMAML run as the report records it: solver, λ (the run's
    unless ``lam``), lr (gd's step, the run's α unless ``inner_lr``), tol, cg_steps."""
    return {"solver": cfg.inner_solver, "lam": float(cfg.lam if lam is None else lam),
            "lr": float(cfg.inner_lr if inner_lr is None else inner_lr),
            "tol": float(cfg.inner_tol), "cg_steps": int(cfg.newton_cg_steps)}


def proximal_params(loss_fn: Any, theta: Any, x: Any, y: Any, steps: int,
                    settings: dict) -> Iterator[Any]:
    """φ_0 = θ_0, φ_1, …, φ_steps of the proximal solver ``settings`` describe."""
    for state in proximal_path(loss_fn, theta, x, y, settings["lam"], steps,
                               solver=settings["solver"], lr=settings["lr"],
                               tol=settings["tol"], cg_steps=settings["cg_steps"]):
        yield state.phi


def load_model(out: str) -> tuple[Any, dict]:
    """(the resolved config, the model ``{"theta", ["lrs"]}``) of the run folder ``out``."""
    folder = RunFolder(out)
    cfg = folder.read_config().resolved()
    return cfg, folder.load_model(cfg)


def evaluate(out: str, tasks: int = 600, steps: Sequence[int] | None = None,
             eval_seed: int = 1000, shots: int | None = None, query: int | None = None,
             inner_lr: float | None = None, notify: Callable[[str], Any] | None = None,
             proximal_lam: float | None = None, **task_args: Any) -> dict:
    """Adapt to ``tasks`` test tasks for each step count; return and write the report.

    The test tasks come from ``eval_seed``, the same for every model, with K = ``shots``
    (default: the training K) support points and ``query`` query points (default: the
    task's) each. The learner runs with the training α and mask (Meta-SGD: its learned
    rates) unless ``inner_lr``. ``task_args``: the task's own choices of test tasks
    (Omniglot: ``data``, ``alphabets``). An iMAML model is also adapted by its inner solver
    (``"<metric>_proximal"``), with λ = ``proximal_lam`` (default the run's; 0 allowed).

    The report is written as ``eval.json`` (the latest) and kept as ``evals/NAME.json``,
    NAME its protocol (:meth:`RunFolder.write_eval`); ``notify`` is told, in one line,
    where it was kept and which report of another protocol it replaced as eval.json.
    """
    folder = RunFolder(out)
    cfg = folder.read_config().resolved()
    setup = TASKS[cfg.task](cfg)
    digest = folder.params_sha256()
    model = folder.load_model(cfg)
    default_steps, default_query = setup.eval_defaults()
    K = cfg.shots if shots is None else int(shots)
    Q = default_query if query is None else int(query)
    batch, fields = setup.test_batch(int(tasks), K, Q, int(eval_seed), **task_args)
    lr = model.get("lrs", cfg.inner_lr) if inner_lr is None else float(inner_lr)
    steps = default_steps if steps is None else steps
    if proximal_lam is not None and (cfg.algo != "imaml" or proximal_lam < 0):
        raise ValueError(f"--proximal-lam applies to imaml runs, with λ >= 0; the run in {out} "
                         f"is {cfg.algo} and λ = {proximal_lam} was given")
    scores = scores_by_step(setup, model["theta"], batch, lr, steps,
                            setup.adapt_mask(model["theta"]))
    report = {setup.metric: {str(t): setup.summary(s) for t, s in scores.items()},
              "algo": cfg.algo, "tasks": int(tasks), "eval_seed": int(eval_seed),
              "shots": K, "query": Q, "inner_lr": "learned" if "lrs" in model and
              inner_lr is None else lr, "adaptation": "gradient", **fields,
              "params_sha256": digest}
    if cfg.algo == "imaml":  # adapted as trained, beside the gradient steps
        prox = proximal_settings(cfg, inner_lr, proximal_lam)
        scores = scores_by_step(setup, model["theta"], batch, lr, steps, proximal=prox)
        report[f"{setup.metric}_proximal"] = {str(t): setup.summary(s)
                                               for t, s in scores.items()}
        report.update(adaptation="gradient+proximal", proximal=prox)
    if folder.params_sha256() != digest:  # a run still training rewrote it
        raise TrainingError(f"{folder.params_path()} changed while it was evaluated; "
                            "evaluate again once the run has finished")
    kept, replaced = folder.write_eval(report)
    if notify is not None:
        notify(f"eval: report kept as {kept}" + (
            f"; eval.json held a report of another protocol, kept as {replaced}"
            if replaced else ""))
    return report


def format_report(report: dict) -> str:
    """The header line and one row per step count of an evaluation report."""
    if "accuracy" in report:
        return _format_accuracy(report)
    metric = "mse"
    head = (f"{report['algo']}: K = {report['shots']}, {report['tasks']} test tasks (eval "
            f"seed {report['eval_seed']}), {report['query']} query points each")
    prox = report.get(metric + "_proximal")
    rows = [f"{'steps':>5}  {metric + ' mean':>10}  {'± ci95':>8}  {'median':>8}  {'n_bad':>5}"
            + (f"  {'proximal':>10}  {'± ci95':>8}  {'median':>8}  {'n_bad':>5}" if prox
               else "")]
    for t, r in sorted(report[metric].items(), key=lambda kv: int(kv[0])):
        rows.append(f"{t:>5}  " + _mse_cells(r) + ("  " + _mse_cells(prox[t]) if prox else ""))
    if prox:
        p = report["proximal"]
        head += (f"; proximal: t iterations of {p['solver']} on L_S(φ) + (λ/2)‖φ − θ_0‖², "
                 f"λ = {p['lam']:g}")
    return "\n".join([head, *rows])


def _mse_cells(r: dict) -> str:
    mean, ci, med = (_num(r[k]) for k in ("mean", "ci95", "median"))
    return f"{mean:>10}  {ci:>8}  {med:>8}  {r['n_bad']:>5}"


def _num(x: float | None) -> str:
    return "nan" if x is None else f"{x:.4f}"


def _format_accuracy(report: dict) -> str:
    lines = [f"{report['algo']}: {report['ways']}-way {report['shots']}-shot, "
             f"{report['tasks']} test tasks (eval seed {report['eval_seed']}), "
             f"{report['query']} query image(s) per class, alphabets "
             f"{', '.join(report['alphabets'])} ({report['alphabets_role']})",
             f"{'steps':>5}  {'accuracy':>9}  {'± ci95':>7}"]
    prox = report.get("accuracy_proximal")
    if prox:
        p = report["proximal"]
        lines[0] += f"; proximal: {p['solver']} iterations, λ = {p['lam']:g}"
        lines[1] += f"  {'proximal':>9}  {'± ci95':>7}"
    for t, r in sorted(report["accuracy"].items(), key=lambda kv: int(kv[0])):
        mark = "  (training T)" if int(t) == report["train_steps"] else ""
        extra = f"  {prox[t]['mean']:>8.2f}%  {prox[t]['ci95']:>6.2f}%" if prox else ""
        lines.append(f"{t:>5}  {r['mean']:>8.2f}%  {r['ci95']:>6.2f}%{extra}{mark}")
    return "\n".join(lines)
