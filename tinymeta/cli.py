"""``tinymeta train | eval | plot``: the command line.

Each subcommand is registered by an ``add_<name>(subparsers)`` function that adds its
parser and sets ``func``; :data:`COMMANDS` lists them, so another module can add one
(``bench``) by appending to it. Tasks come from :data:`tinymeta.train.TASKS`; Omniglot
(``--task omniglot``, ``eval`` of its runs, ``eval-runs``) from :mod:`tinymeta.classify`.

Bad arguments and failed runs end with one line on stderr and a non-zero exit status,
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import classify as _classify
from . import distributed
from . import train as _train

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CLIError(Exception):
    """A failure to report in one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _at_least(cast: Callable, bound: float, strict: bool) -> Callable[[str], Any]:
    """An argparse type: ``cast(text)``, refused unless > bound (strict) or >= bound."""
    what = "an integer" if cast is int else "a number"

    def parse(text: str) -> Any:
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}") from None
        if not (v > bound if strict else v >= bound):
            raise argparse.ArgumentTypeError(
                f"expected {what} {'>' if strict else '>='} {bound:g}; got {v}")
        return v

    return parse


_positive_int = _at_least(int, 1, strict=False)
_nonneg_int = _at_least(int, 0, strict=False)
_positive_float = _at_least(float, 0, strict=True)


def _widths(text: str) -> tuple:
    try:
        w = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 40,40; got {text!r}") from None
    if not w or min(w) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths; got {text!r}")
    return w


# ---- train ------------------------------------------------------------------------------

# settings that a resumed run may change; every other one must match config.json
_RESUMABLE = {"iterations", "checkpoint_every", "log_every", "skip_nonfinite"}


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train a model", description=(
        "Meta-train on a task family. Defaults that depend on the algorithm: inner steps "
        "5 for reptile and imaml, else 1; reptile uses SGD with outer lr 0.1 annealed "
        "linearly to 0, the others Adam at 0.001."))
    a = p.add_argument
    a("--task", choices=sorted({*_train.TASKS, "omniglot"}), default=None,
      help="task family (sinusoid; omniglot: see the options below)")
    a("--algo", choices=_train.ALGOS, default=None, help="algorithm (default maml)")
    a("--shots", type=_positive_int, default=None, help="K support points per task (10)")
    a("--query", type=_positive_int, default=None, help="query points per task (default K)")
    a("--inner-steps", type=_nonneg_int, default=None, help="T inner gradient steps")
    a("--inner-lr", type=_positive_float, default=None, help="α (0.01)")
    a("--outer-lr", type=_positive_float, default=None, help="β (Adam 0.001; reptile 0.1)")
    a("--optimizer", choices=("adam", "sgd"), default=None, help="outer optimizer")
    a("--anneal", action=argparse.BooleanOptionalAction, default=None,
      help="anneal the outer lr linearly to 0 (default on for reptile)")
    a("--meta-batch", type=_positive_int, default=None, help="tasks per meta-batch (25)")
    a("--iterations", type=_positive_int, default=None, help="meta-iterations (70000)")
    a("--seed", type=int, default=None, help="seed of the init and the task sampler (0)")
    a("--hidden", type=_widths, default=None, help="hidden widths (40,40)")
    a("--init", choices=("fan_in", "finn"), default=None, help="initialisation (fan_in)")
    a("--dtype", choices=("float32", "float64"), default=None, help="float dtype (float32)")
    a("--backend", choices=("numpy", "numba", "cupy"), default=None, help="array backend")
    a("--lam", type=_positive_float, default=None, help="iMAML λ (1.0)")
    a("--cg-steps", type=_positive_int, default=None, help="iMAML CG iterations (5)")
    a("--cg-tol", type=float, default=None, help="iMAML CG relative tolerance (0)")
    a("--damping", type=float, default=None, help="iMAML damping (0)")
    a("--on-negative-curvature", choices=("continue", "stop"), default=None,
      help="iMAML CG on pᵀAp <= 0: go on as plain CG (default) or stop that task")
    a("--checkpoint-every", type=_positive_int, default=None, help="iterations (1000)")
    a("--log-every", type=_positive_int, default=None, help="iterations per log line (100)")
    a("--skip-nonfinite", action="store_true", default=None,
      help="skip (and count) meta-steps whose gradient is not finite instead of stopping")
    a("--out", required=True, help="the run folder")
    a("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    a("--no-progress", action="store_true", help="no progress bar or log lines")
    a("--stop-after", type=_positive_int, default=None, help=argparse.SUPPRESS)
    a("--mpi", action="store_true", help="data-parallel over MPI ranks, sinusoid and omniglot "
      "(automatic under mpiexec); needs the mpi extra")
    a("--mpi-timeout", type=_positive_float, default=None,
      help="seconds a rank may wait in a collective before it aborts the job (60)")
    a("--mpi-check-every", type=_positive_int, default=None,
      help="compare the ranks' parameter hashes every N iterations (100)")
    _add_omniglot_train_options(p)
    p.set_defaults(func=cmd_train)


def _add_omniglot_train_options(p: argparse.ArgumentParser) -> None:
    """Options of --task omniglot (tinymeta.classify); defaults in ClassifyConfig."""
    g = p.add_argument_group("omniglot", "N-way K-shot Omniglot with the BN MLP 784-256-128-"
                             "64-64-N; defaults: 20-way 1-shot, 5 inner steps at 0.1, "
                             "meta-batch 16, 3000 iterations")
    a = g.add_argument
    a("--data", action="append", default=None, metavar="DIR_OR_ZIPS",
      help="Omniglot zips or folders, repeatable or comma-separated (default: the two "
      "minimal background splits under ../shared/data/omniglot)")
    a("--ways", type=_positive_int, default=None, help="N classes per task (20)")
    a("--val-alphabets", default=None, metavar="NAMES",
      help="alphabets held out to choose the checkpoint, comma-separated (Tagalog)")
    a("--test-alphabets", default=None, metavar="NAMES",
      help="alphabets held out of training and validation, for tinymeta eval (none)")
    a("--augment", action=argparse.BooleanOptionalAction, default=None,
      help="light random shifts, scales and shears of every image (off)")
    a("--bn", action=argparse.BooleanOptionalAction, default=None,
      help="batch norm after each hidden linear map (on)")
    a("--bn-adapt", action=argparse.BooleanOptionalAction, default=None,
      help="adapt the BN shift in the inner loop (default: held out for maml and fomaml; "
      "reptile and imaml adapt every parameter)")
    a("--eval-every", type=_positive_int, default=None, help="iterations per validation (250)")
    a("--patience", type=_nonneg_int, default=None,
      help="validations without improvement before stopping; 0: never (4)")
    a("--val-tasks", type=_positive_int, default=None, help="validation tasks (200)")
    a("--reptile-query", action="store_true", default=None,
      help="reptile: the learner trains on the support and query images together, so "
      "--query Q gives it shots + Q images per class (Nichol et al.'s train-shots)")
    a("--reptile-batch", type=_positive_int, default=None, metavar="B",
      help="reptile: B images per inner step, consecutive blocks of the (randomly ordered) "
      "learner's images, cycling (default: all of them every step)")
    a("--compile", action="store_true", default=None,
      help="record the meta-gradient step once with tm.compile and replay it")


def _given(args: argparse.Namespace) -> dict:
    names = {f.name for f in _train.dataclasses.fields(_train.TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def cmd_train(args: argparse.Namespace) -> int:
    world = distributed.init(force=args.mpi, timeout=args.mpi_timeout,
                             check_every=args.mpi_check_every)
    if _classify.wants_omniglot(vars(args)):
        line = _classify.train_from_args(vars(args))  # every rank trains (P = 1: the one)
        if world.is_root:
            print(line)
        return 0
    _classify.refuse_omniglot_options(vars(args), args.task or "sinusoid")
    given = _given(args)
    if args.resume:
        cfg = _train.load_config(args.out)
        stored = cfg.to_json()
        for k, v in given.items():
            old = stored[k]
            new = list(v) if isinstance(v, tuple) else v
            if k not in _RESUMABLE and old != new:
                raise CLIError(f"--{k.replace('_', '-')} {v} differs from the run's "
                               f"{old}; a resumed run keeps its settings")
            setattr(cfg, k, v)
    else:
        cfg = _train.TrainConfig(**given)
    _train.train(cfg, args.out, resume=args.resume, progress=not args.no_progress,
                 stop_after=args.stop_after)
    if not world.is_root:
        return 0
    if args.stop_after is not None and args.stop_after < cfg.iterations:
        print(f"stopped after iteration {args.stop_after}: "
              f"{os.path.join(args.out, 'checkpoint.npz')} (continue with --resume)")
    else:
        print(f"trained {cfg.algo} on {cfg.task}: {os.path.join(args.out, 'params.npz')}")
    return 0


# ---- eval -------------------------------------------------------------------------------


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="adapt to test tasks and report the loss per step count")
    a = p.add_argument
    a("dir", help="the run folder")
    a("--tasks", type=_positive_int, default=600, help="test tasks (600)")
    a("--steps", default=None, help="test-time gradient steps: A..B inclusive, or a,b,c "
      "(0..10; omniglot: 0 and the training T)")
    a("--eval-seed", type=int, default=1000, help="seed of the test tasks (1000)")
    a("--query", type=_positive_int, default=None,
      help="query points per test task (100; omniglot: per class, default the training Q)")
    a("--shots", type=_positive_int, default=None, help="support points (default: training K)")
    a("--inner-lr", type=_positive_float, default=None, help="α (default: training α)")
    a("--backend", choices=("numpy", "numba", "cupy"), default=None, help="array backend")
    a("--data", action="append", default=None, metavar="DIR_OR_ZIPS",
      help="omniglot: the data to draw test tasks from (default: the run's)")
    a("--alphabets", default=None, metavar="NAMES",
      help="omniglot: test alphabets, comma-separated (default: the run's test alphabets, "
      "else its validation alphabets)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    steps = _train.parse_steps(args.steps or "0..10")
    if args.backend is not None:
        from . import kernels

        kernels.set_backend(args.backend)
    if _classify.is_classify_run(args.dir):
        report = _classify.evaluate(
            args.dir, tasks=args.tasks, steps=None if args.steps is None else steps,
            eval_seed=args.eval_seed, data=_classify.split_names(args.data),
            alphabets=_classify.split_names(args.alphabets), shots=args.shots,
            query=args.query, inner_lr=args.inner_lr)
        print(_classify.format_eval(report))
        return 0
    if args.data is not None or args.alphabets is not None:
        raise CLIError("--data and --alphabets apply to omniglot runs only")
    query = 100 if args.query is None else args.query
    report = _train.evaluate(args.dir, tasks=args.tasks, steps=steps, eval_seed=args.eval_seed,
                             query=query, shots=args.shots, inner_lr=args.inner_lr)
    print(f"{report['algo']}: K = {report['shots']}, {report['tasks']} test tasks "
          f"(eval seed {report['eval_seed']}), {report['query']} query points each")
    print(_train.format_table(report))
    return 0


# ---- eval-runs ---------------------------------------------------------------------------


def add_eval_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-runs", help="score a model and the MHD baseline on the official "
                       "20-way one-shot Omniglot runs", description=(
                           "Lake et al.'s one-shot runs: adapt on the 20 training images, "
                           "classify the 20 test items (batch norm with the test items' own "
                           "statistics), error = share wrong, mean over runs. The Modified "
                           "Hausdorff baseline is scored in the same run beside the model."))
    a = p.add_argument
    a("--runs", default=None, metavar="PATH_OR_ZIP",
      help="a zip or folder with runNN/ folders (default: the runs zip under "
      "../shared/data/omniglot)")
    a("--model", default=None, metavar="RUNDIR", help="a 20-way omniglot run folder")
    a("--baseline", choices=("mhd",), default=None,
      help="mhd: score the Modified Hausdorff baseline (alone when no --model)")
    a("--steps", type=_steps_or_val, default=None, metavar="T|val",
      help="adaptation steps (the training T); val: the count with the best accuracy in the "
      "model's eval.json of its validation alphabets (ties to fewer steps)")
    a("--backend", choices=("numpy", "numba", "cupy"), default=None, help="array backend")
    p.set_defaults(func=cmd_eval_runs)


def _steps_or_val(text: str) -> int | str:
    if text == "val":
        return text
    try:
        return _nonneg_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'val'; got {text!r}") \
            from None


def cmd_eval_runs(args: argparse.Namespace) -> int:
    runs = args.runs or _classify.default_runs()
    if runs is None:
        raise CLIError("no --runs given and none found under ../shared/data/omniglot")
    if args.model is None and args.baseline is None:
        raise CLIError("give --model RUNDIR, or --baseline mhd for the baseline alone")
    if args.backend is not None:
        from . import kernels

        kernels.set_backend(args.backend)
    result = _classify.eval_runs(runs, model=args.model, steps=args.steps)
    chosen = result.get("steps_chosen_on")
    if chosen is not None:  # stderr: stdout is the runs' lines and the mean
        print(f"eval-runs: {result['steps']} adaptation steps, chosen among "
              f"{','.join(map(str, chosen['candidates']))} on {chosen['tasks']} validation "
              f"tasks of {', '.join(chosen['alphabets'])} ({chosen['accuracy']:.2f}%)",
              file=sys.stderr)
    print(_classify.format_runs(result))
    return 0


# ---- plot -------------------------------------------------------------------------------


def add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="Finn et al.'s two sinusoid figures (needs matplotlib)")
    a = p.add_argument
    a("dir", help="the run folder (of a meta-learned model)")
    a("--baseline", default=None, help="a second run folder to compare (the pretrained one)")
    a("--tasks", type=_positive_int, default=3, help="test tasks to draw (3)")
    a("--eval-seed", type=int, default=1000, help="seed of the test tasks (1000)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib
    except ImportError:
        raise CLIError("plot needs matplotlib: pip install 'tinymeta[plot]'") from None
    matplotlib.use("Agg")
    for path in make_figures(args.dir, baseline=args.baseline, n_tasks=args.tasks,
                             eval_seed=args.eval_seed):
        print(path)
    return 0


def make_figures(out: str, baseline: str | None = None, n_tasks: int = 3,
                 eval_seed: int = 1000) -> list[str]:
    """Write ``predictions.png`` and ``mse_vs_steps.png`` into ``out``; return their paths.

    predictions: a few test tasks, the true curve, the K support points, and the model
    before adaptation and after 1 and 10 steps (a row per model). mse_vs_steps: the
    test MSE against test-time gradient steps (from ``eval.json``, made if missing).
    """
    import json

    import matplotlib.pyplot as plt
    import numpy as np

    from . import kernels
    from .meta.common import adapt_path

    runs = [out] + ([baseline] if baseline else [])
    fig, axes = plt.subplots(len(runs), n_tasks, figsize=(4 * n_tasks, 3.2 * len(runs)),
                             squeeze=False)
    grid = np.linspace(-5, 5, 200)
    for row, run in enumerate(runs):
        cfg, theta, lr = _train.load_model(run)
        cfg = cfg.resolved()
        setup = _train.TASKS[cfg.task](cfg)
        batch = setup.sample(np.random.default_rng(eval_seed), n_tasks, cfg.shots, 1)
        x = np.broadcast_to(grid[None, :, None], (n_tasks, grid.size, 1)).astype(setup.dtype)
        truth = setup.dist.function(x, batch.params["amplitude"], batch.params["phase"])
        curves = {}
        path = adapt_path(setup.loss_fn, theta, batch.support_x, batch.support_y, lr, 10)
        for t, params in enumerate(path):
            if t in (0, 1, 10):
                curves[t] = kernels.get_backend().to_numpy(setup.predict(params, x))
        for e in range(n_tasks):
            ax = axes[row, e]
            ax.plot(grid, truth[e, :, 0], "k-", label="ground truth")
            ax.plot(grid, curves[0][e, :, 0], ":", label="pre-update")
            ax.plot(grid, curves[1][e, :, 0], "--", label="1 grad step")
            ax.plot(grid, curves[10][e, :, 0], "-", alpha=0.7, label="10 grad steps")
            sx = kernels.get_backend().to_numpy(batch.support_x)
            sy = kernels.get_backend().to_numpy(batch.support_y)
            ax.plot(sx[e, :, 0], sy[e, :, 0], "^", color="purple", label="support points")
            ax.set_title(f"{cfg.algo}, K = {cfg.shots}, task {e}")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    pred_path = os.path.join(out, "predictions.png")
    fig.savefig(pred_path, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for run in runs:
        eval_path = os.path.join(run, "eval.json")
        if os.path.exists(eval_path):
            with open(eval_path) as f:
                report = json.load(f)
        else:
            report = _train.evaluate(run, eval_seed=eval_seed)
        rows = sorted((int(t), r) for t, r in report["mse"].items() if r["mean"] is not None)
        steps = [t for t, _ in rows]
        means = np.array([r["mean"] for _, r in rows])
        cis = np.array([r["ci95"] for _, r in rows])
        ax.errorbar(steps, means, yerr=cis, marker="o", capsize=3,
                    label=f"{report['algo']} (K = {report['shots']})")
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("mean squared error")
    ax.legend()
    fig.tight_layout()
    mse_path = os.path.join(out, "mse_vs_steps.png")
    fig.savefig(mse_path, dpi=120)
    plt.close(fig)
    return [pred_path, mse_path]


# ---- bench ------------------------------------------------------------------------------

_SUITES = {"engine": "engine.py", "kernels": "kernels.py", "e2e": "e2e.py"}


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run the benchmark suite of a checkout (benchmarks/)",
                       description="Run benchmarks/engine.py, kernels.py and e2e.py one after "
                       "another (OPENBLAS_NUM_THREADS=1 unless set), writing JSON to --out.")
    a = p.add_argument
    a("suites", nargs="*", default=list(_SUITES), help="engine, kernels, e2e (default all)")
    a("--out", default="benchmarks/out", help="folder for the JSON files (benchmarks/out)")
    a("--quick", action="store_true", help="short smoke runs (not for figures)")
    a("--root", default=".", help="the checkout holding benchmarks/ (default .)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    bench_dir = os.path.join(args.root, "benchmarks")
    for name in args.suites:
        if name not in _SUITES:
            raise CLIError(f"unknown suite {name!r}; choose from {', '.join(_SUITES)}")
        if not os.path.exists(os.path.join(bench_dir, _SUITES[name])):
            raise CLIError(f"no {os.path.join(bench_dir, _SUITES[name])}: run tinymeta bench "
                           "from a checkout of tinymeta (or pass --root)")
    os.makedirs(args.out, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    for name in args.suites:
        cmd = [sys.executable, os.path.join(bench_dir, _SUITES[name]), "--json",
               os.path.join(args.out, f"{name}.json")]
        if args.quick and name != "engine":
            cmd.append("--quick")
        print("$ " + " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, env=env)
        if rc:
            raise CLIError(f"{name} benchmark exited with status {rc}")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_train, add_eval,
                                                                 add_eval_runs, add_plot,
                                                                 add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinymeta", description="few-shot meta-learning on tinymeta")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``tinymeta`` entry point: returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, _train.TrainingError, distributed.DistributedError, ValueError, OSError,
            ImportError) as e:
        # one process: print; MPI: once if every rank failed alike, else abort the job
        distributed.report_error(f"tinymeta {args.command}: error: {e}", e)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"tinymeta {args.command}: interrupted", file=sys.stderr)
        return 130
