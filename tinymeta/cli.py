"""``tinymeta train | eval | eval-runs | plot | bench``: the command line.

Argument parsing, the one resume-merge (:func:`tinymeta.runs.merge_resume`) and dispatch to
the run layer (:mod:`tinymeta.runs`); nothing here trains, evaluates or writes a file. Each
subcommand is registered by an ``add_<name>(subparsers)`` function that adds its parser and
sets ``func``; :data:`COMMANDS` lists them, so another module can add one by appending to it.
Tasks and their options come from :data:`tinymeta.runs.TASKS`.

Bad arguments and failed runs end with one line on stderr and a non-zero exit status,
never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import bench, distributed, kernels, runs
from .runs.omniglot import default_runs, split_names
from .version import __version__

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
        if not math.isfinite(v) or not (v > bound if strict else v >= bound):
            raise argparse.ArgumentTypeError(
                f"expected {what} {'>' if strict else '>='} {bound:g}; got {v}")
        return v

    return parse


_positive_int = _at_least(int, 1, strict=False)
_nonneg_int = _at_least(int, 0, strict=False)
_positive_float = _at_least(float, 0, strict=True)
_nonneg_float = _at_least(float, 0, strict=False)


def _widths(text: str) -> tuple:
    try:
        w = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 40,40; got {text!r}") from None
    if not w or min(w) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths; got {text!r}")
    return w


# ---- train ------------------------------------------------------------------------------

def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train a model", description=(
        "Meta-train on a task family. Defaults that depend on the algorithm: inner steps "
        "5 for reptile, else 1 (imaml: see its options); reptile uses SGD with outer lr 0.1 "
        "annealed linearly to 0, the others Adam at 0.001."))
    a = p.add_argument
    a("--task", choices=sorted(runs.TASKS), default=None,
      help="task family (sinusoid; omniglot: see the options below)")
    a("--algo", choices=runs.ALGOS, default=None, help="algorithm (default maml)")
    a("--shots", type=_positive_int, default=None, help="K support points per task (10)")
    a("--query", type=_positive_int, default=None, help="query points per task (default K)")
    a("--inner-steps", type=_nonneg_int, default=None,
      help="T inner gradient steps (imaml: the inner solver's iterations)")
    a("--inner-lr", type=_positive_float, default=None, help="α (0.01)")
    a("--outer-lr", type=_positive_float, default=None, help="β (Adam 0.001; reptile 0.1)")
    a("--optimizer", choices=("adam", "sgd"), default=None, help="outer optimizer")
    a("--anneal", action=argparse.BooleanOptionalAction, default=None,
      help="anneal the outer lr linearly to 0 (default on for reptile)")
    a("--meta-batch", type=_positive_int, default=None, help="tasks per meta-batch (25)")
    a("--iterations", type=_positive_int, default=None, help="meta-iterations (70000)")
    a("--seed", type=_nonneg_int, default=None,
      help="seed of the init and the task sampler (0)")
    a("--hidden", type=_widths, default=None, help="hidden widths (40,40)")
    a("--init", choices=("fan_in", "finn"), default=None, help="initialisation (fan_in)")
    a("--dtype", choices=("float32", "float64"), default=None, help="float dtype (float32)")
    a("--backend", choices=("numpy", "numba", "cupy"), default=None, help="array backend")
    _add_imaml_train_options(p)
    a("--checkpoint-every", type=_positive_int, default=None, help="iterations (1000)")
    a("--log-every", type=_positive_int, default=None, help="iterations per log line (100)")
    a("--skip-nonfinite", action="store_true", default=None,
      help="skip (and count) meta-steps whose gradient is not finite instead of stopping")
    a("--divergence-guard", type=_nonneg_float, default=None, metavar="F",
      help="stop (exit 1) when the running query loss exceeds F times the starting loss "
      f"(default {runs.DIVERGENCE_FACTOR:g}; 0: off)")
    a("--no-divergence-guard", dest="divergence_guard", action="store_const", const=0.0,
      help="never stop for a growing loss (--divergence-guard 0)")
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


def _add_imaml_train_options(p: argparse.ArgumentParser) -> None:
    """Options of --algo imaml; defaults in tinymeta.runs.config.IMAML_DEFAULTS."""
    d = runs.IMAML_DEFAULTS
    g = p.add_argument_group("imaml", "the proximal inner problem min L_S(φ) + (λ/2)‖φ − θ_0‖², "
                             "solved by --inner-solver for at most --inner-steps iterations, "
                             "then (I + H/λ) x = ∇L_Q by --linear-solver")
    a = g.add_argument
    a("--lam", type=_positive_float, default=None, help=f"λ ({d['lam']:g})")
    a("--inner-solver", choices=("gd", "newton-cg"), default=None,
      help="gd: --inner-steps gradient steps at --inner-lr on the proximal objective; "
      "newton-cg: --inner-steps Newton iterations of --newton-cg-steps CG iterations each, "
      f"with a backtracking line search ({d['inner_solver']}; inner steps: "
      + ", ".join(f"{k} {v}" for k, v in runs.IMAML_STEPS.items()) + ")")
    a("--inner-tol", type=_nonneg_float, default=None,
      help="stop a task's inner solver at relative stationarity ‖∇L_S(φ) + λ(φ − θ_0)‖ / "
      f"‖∇L_S(θ_0)‖ <= this ({d['inner_tol']:g}; 0: every iteration)")
    a("--newton-cg-steps", type=_positive_int, default=None,
      help=f"CG iterations per Newton step ({d['newton_cg_steps']})")
    a("--linear-solver", choices=("cg", "normal-cg", "minres"), default=None,
      help=f"the implicit solve's method ({d['linear_solver']})")
    a("--cg-steps", type=_positive_int, default=None,
      help=f"the implicit solve's iterations ({d['cg_steps']})")
    a("--cg-tol", type=_nonneg_float, default=None,
      help="the implicit solve's relative tolerance (0)")
    a("--damping", type=_nonneg_float, default=None, help="added to the system's diagonal (0)")
    a("--on-negative-curvature", choices=("continue", "stop"), default=None,
      help="--linear-solver cg on pᵀAp <= 0: go on as plain CG (default) or stop that task")


def _add_omniglot_train_options(p: argparse.ArgumentParser) -> None:
    """Options of --task omniglot; defaults in tinymeta.runs.omniglot.OmniglotOptions."""
    g = p.add_argument_group("omniglot", "N-way K-shot Omniglot with the BN MLP 784-256-128-"
                             "64-64-N; defaults: 20-way 1-shot, 5 inner steps at 0.1, "
                             "meta-batch 16, 3000 iterations")
    a = g.add_argument
    a("--data", action="append", default=None, metavar="DIR_OR_ZIPS",
      help="Omniglot zips or folders, repeatable or comma-separated (default: the two "
      "minimal background splits under ../shared/data/omniglot)")
    a("--ways", type=_positive_int, default=None, help="N classes per task (20)")
    a("--model", choices=("mlp", "conv4"), default=None,
      help="mlp: the BN MLP (default); conv4: Finn et al.'s four 3x3 stride-2 conv blocks "
      "with batch norm (--hidden F: F filters a block, 64)")
    a("--anil", action="store_true", default=None,
      help="ANIL: only the last layer adapts in the inner loop (maml, maml-chain, fomaml)")
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
    """The run settings given on the command line (None: not given)."""
    names = _setting_names()
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    for k in ("data", "val_alphabets", "test_alphabets"):
        if k in given:
            given[k] = split_names(given[k])
    return given


def _setting_names() -> set[str]:
    names = {f.name for f in dataclasses.fields(runs.RunConfig)} - {"options"}
    for setup in runs.TASKS.values():
        names |= {f.name for f in dataclasses.fields(setup.options)}
    return names


def _check_applicable(task: str, given: dict) -> None:
    """A CLIError naming the first given option that the task does not take."""
    setup = runs.TASKS[task]
    own = {f.name for f in dataclasses.fields(setup.options)}
    shared = {f.name for f in dataclasses.fields(runs.RunConfig)}
    for k in given:
        if k not in own and k not in shared:
            owners = [n for n, s in runs.TASKS.items()
                      if k in {f.name for f in dataclasses.fields(s.options)}]
            raise CLIError(f"--{k.replace('_', '-')} applies to --task {' or '.join(owners)} "
                           f"only (the task is {task})")


def _run_config(args: argparse.Namespace) -> runs.RunConfig:
    """The run's settings: the options given, or on --resume the run's with them merged."""
    given = _given(args)
    folder = runs.RunFolder(args.out)
    with distributed.same_on_all_ranks("reading the settings"):  # and config.json
        if args.resume:
            stored = folder.read_config()
            _check_applicable(stored.task, given)
            return runs.merge_resume(stored, given)
        task = given.setdefault("task", "sinusoid")
        _check_applicable(task, given)
        return runs.RunConfig.create(**given)


def cmd_train(args: argparse.Namespace) -> int:
    world = distributed.init(force=args.mpi, timeout=args.mpi_timeout,
                             check_every=args.mpi_check_every)
    cfg = _run_config(args)
    result = runs.train(cfg, args.out, resume=args.resume, progress=not args.no_progress,
                        stop_after=args.stop_after,
                        notify=lambda line: print(f"tinymeta train: {line}", file=sys.stderr))
    if world.is_root:  # every rank trains (P = 1: the one); rank 0 speaks
        print(_trained_line(cfg, args.out, result))
    return 0


def _trained_line(cfg: runs.RunConfig, out: str, result: dict) -> str:
    if result.get("already_finished"):
        how = " (stopped early)" if result["stopped_early"] else ""
        return (f"{out} already finished at iteration {result['iteration']}{how}; nothing "
                f"to train (give a larger --iterations to train on): "
                f"{os.path.join(out, 'params.npz')}")
    if not result["finished"]:
        return (f"stopped after iteration {result['iteration']}: "
                f"{os.path.join(out, 'checkpoint.npz')} (continue with --resume)")
    params = os.path.join(out, "params.npz")
    best = next((v for k, v in result.items() if k.startswith("best_val_")), None)
    if best is None:
        return f"trained {cfg.algo} on {cfg.task}: {params}"
    how = "stopped early" if result["stopped_early"] else "ran"
    return (f"trained {cfg.algo} on {cfg.task} ({how} to iteration {result['iteration']}, "
            f"params of iteration {result['best_iteration']} chosen on validation "
            f"({best:.2f}%)): {params}")


# ---- eval -------------------------------------------------------------------------------


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="adapt to test tasks and report the loss per step count")
    a = p.add_argument
    a("dir", help="the run folder")
    a("--tasks", type=_positive_int, default=600, help="test tasks (600)")
    a("--steps", default=None, help="test-time gradient steps: A..B inclusive, or a,b,c "
      "(0..10; omniglot: 0 and the training T)")
    a("--eval-seed", type=_nonneg_int, default=1000, help="seed of the test tasks (1000)")
    a("--query", type=_positive_int, default=None,
      help="query points per test task (100; omniglot: per class, default the training Q)")
    a("--shots", type=_positive_int, default=None, help="support points (default: training K)")
    a("--inner-lr", type=_positive_float, default=None, help="α (default: training α)")
    a("--proximal-lam", type=_nonneg_float, default=None, metavar="λ",
      help="imaml runs, which are also adapted by their inner solver on L_S(φ) + "
      "(λ/2)‖φ − θ_0‖² (--steps t: t solver iterations): λ (default the run's; 0 allowed)")
    a("--backend", choices=("numpy", "numba", "cupy"), default=None, help="array backend")
    a("--data", action="append", default=None, metavar="DIR_OR_ZIPS",
      help="omniglot: the data to draw test tasks from (default: the run's)")
    a("--alphabets", default=None, metavar="NAMES",
      help="omniglot: test alphabets, comma-separated (default: the run's test alphabets, "
      "else its validation alphabets)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    steps = None if args.steps is None else runs.parse_steps(args.steps)
    if args.backend is not None:
        kernels.set_backend(args.backend)
    task_args = {k: split_names(getattr(args, k)) for k in ("data", "alphabets")
                 if getattr(args, k) is not None}
    report = runs.evaluate(args.dir, tasks=args.tasks, steps=steps, eval_seed=args.eval_seed,
                           shots=args.shots, query=args.query, inner_lr=args.inner_lr,
                           notify=lambda line: print(line, file=sys.stderr),
                           proximal_lam=args.proximal_lam, **task_args)
    print(runs.format_report(report))
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
      "model's kept report of its validation protocol (ties to fewer steps)")
    a("--min-val-tasks", type=_positive_int, default=600, metavar="N",
      help="--steps val: the least validation tasks a report must hold (600)")
    a("--proximal-lam", type=_nonneg_float, default=None, metavar="λ",
      help="imaml models, also scored after T iterations of their inner solver on L_S(φ) + "
      "(λ/2)‖φ − θ_0‖²: λ (default the run's; 0 allowed; not with --steps val)")
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
    official = args.runs or default_runs()
    if official is None:
        raise CLIError("no --runs given and none found under ../shared/data/omniglot")
    if args.model is None and args.baseline is None:
        raise CLIError("give --model RUNDIR, or --baseline mhd for the baseline alone")
    if args.backend is not None:
        kernels.set_backend(args.backend)
    result = runs.eval_runs(official, model=args.model, steps=args.steps,
                            min_val_tasks=args.min_val_tasks, proximal_lam=args.proximal_lam)
    chosen = result.get("steps_chosen_on")
    if chosen is not None:  # stderr: stdout is the runs' lines and the mean
        what = "adaptation steps" if chosen["adaptation"] == "gradient" else \
            "iterations of the proximal solver"
        print(f"eval-runs: {result['steps']} {what}, chosen among "
              f"{','.join(map(str, chosen['candidates']))} on {chosen['tasks']} validation "
              f"tasks of {', '.join(chosen['alphabets'])} ({chosen['accuracy']:.2f}%), "
              f"from {chosen['file']}", file=sys.stderr)
    print(runs.format_runs(result))
    return 0


# ---- plot -------------------------------------------------------------------------------


def add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="Finn et al.'s two sinusoid figures (needs matplotlib)")
    a = p.add_argument
    a("dir", help="the run folder (of a meta-learned model)")
    a("--baseline", default=None, help="a second run folder to compare (the pretrained one)")
    a("--tasks", type=_positive_int, default=3, help="test tasks to draw (3)")
    a("--eval-seed", type=_nonneg_int, default=1000, help="seed of the test tasks (1000)")
    a("--out", default=None, metavar="DIR",
      help="folder for the two PNGs (default: the run folder; existing ones are replaced)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    for path in runs.make_figures(args.dir, baseline=args.baseline, n_tasks=args.tasks,
                                  eval_seed=args.eval_seed, dest=args.out):
        print(path)
    return 0


# ---- bench ------------------------------------------------------------------------------


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run the benchmark suite of a checkout (benchmarks/), or "
                       "compare two results files",
                       description="Run benchmarks/engine.py, kernels.py and e2e.py one after "
                       "another (OPENBLAS_NUM_THREADS=1 unless set), writing JSON to --out; or "
                       "'tinymeta bench compare OLD.json NEW.json [--fail-if median:10%] "
                       "[--csv PATH]': the new/old median ratios with their noise, exit "
                       "status 1 on a regression beyond --fail-if (each side a file, or "
                       "repeated runs: A1.json,A2.json,...).")
    a = p.add_argument
    a("suites", nargs="*", default=list(bench.SUITES),
      help="engine, kernels, e2e (default all); or compare OLD.json NEW.json")
    a("--out", default="benchmarks/out", help="folder for the JSON files (benchmarks/out)")
    a("--quick", action="store_true", help="short smoke runs (not for figures)")
    a("--root", default=".", help="the checkout holding benchmarks/ (default .)")
    a("--fail-if", default=None, metavar="median:N%",
      help="compare: exit 1 when a median is slower by more than N%% and than its noise")
    a("--csv", default=None, metavar="PATH",
      help="compare: write the comparison (one file given: its timings) as CSV")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.suites[:1] == ["compare"]:
        from . import bench_history  # the comparison of results files, a library module

        return bench_history.compare_command(args.suites[1:], args.fail_if, args.csv)
    if args.fail_if or args.csv:
        raise CLIError("--fail-if and --csv go with 'tinymeta bench compare'")
    try:
        bench.run_suites(args.suites, args.out, quick=args.quick, root=args.root)
    except RuntimeError as e:
        raise CLIError(str(e)) from None
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_train, add_eval,
                                                                 add_eval_runs, add_plot,
                                                                 add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinymeta", description="few-shot meta-learning on tinymeta")
    parser.add_argument("--version", action="version", version=f"tinymeta {__version__}")
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
    except (CLIError, runs.TrainingError, distributed.DistributedError, ValueError, OSError,
            ImportError, FloatingPointError) as e:
        # one process: print; MPI: once if every rank failed alike, else abort the job
        distributed.report_error(f"tinymeta {args.command}: error: {e}", e)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"tinymeta {args.command}: interrupted", file=sys.stderr)
        return 130
