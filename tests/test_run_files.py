"""Every file a run reads is checked: damaged or crafted config.json, checkpoints, params,
logs and reports are refused with one line naming the file; resume reproduces the
uninterrupted run (early stopping and logs included); the divergence guard and debug_nans
stop a run naming the iteration; options that cannot be meant are refused."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import numpy as np
import pytest

import tinymeta as tm
import tinymeta.runs.loop as loop_mod
from tinymeta import cli, io, runs
from tinymeta.runs import RunConfig, RunFolder

SMALL = ["--meta-batch", "5", "--shots", "5", "--hidden", "16,16", "--no-progress"]

pytestmark = pytest.mark.usefixtures("omniglot_cache")


@pytest.fixture(autouse=True)
def numpy_backend():
    with tm.set_backend("numpy"):
        yield


def run_cli(args, capsys):
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_naming(err: str, name: str) -> bool:
    return err.count("\n") == 1 and name in err and "Traceback" not in err


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> str:
    """A finished float32 sinusoid run of 4 iterations, checkpoint every 2."""
    out = str(tmp_path_factory.mktemp("base") / "run")
    with tm.set_backend("numpy"):
        assert cli.main(["train", *SMALL, "--iterations", "4", "--checkpoint-every", "2",
                         "--log-every", "2", "--out", out]) == 0
    return out


@pytest.fixture
def run(base_run, tmp_path) -> str:
    out = str(tmp_path / "run")
    shutil.copytree(base_run, out)
    return out


def edit_config(out: str, **changes) -> None:
    path = os.path.join(out, "config.json")
    d = json.load(open(path))
    d.update(changes)
    for k in [k for k, v in changes.items() if v is ...]:
        del d[k]
    with open(path, "w") as f:
        json.dump(d, f)


# ---- config.json --------------------------------------------------------------------------


@pytest.mark.parametrize("changes, what", [
    ({"dtype": "int8"}, "--dtype must be float32 or float64; got 'int8'"),
    ({"inner_lr": "0.01"}, "'inner_lr' must be a finite number or null; got '0.01' (str)"),
    ({"hidden": 40}, "'hidden' must be a list of integers or null; got 40"),
    ({"task": 5}, "unknown task 5"),
    ({"algo": "magic"}, "unknown algorithm 'magic'"),
    ({"seed": -1}, "--seed must be >= 0"),
    ({"iterations": True}, "'iterations' must be an integer"),
    ({"lam": float("nan")}, "'lam' must be a finite number"),
    ({"hidden": [100000, 100000]}, "--hidden needs widths in 1..65536"),
    ({"hidden": [40000, 40000]}, "more than 134217728"),
    ({"meta_batch": 10 ** 9}, "data points a batch"),
    ({"backend": "torch"}, "--backend must be numpy or numba or cupy"),
    ({"cg_tol": -1.0}, "--cg-tol must be >= 0"),
    ({"frobnicate": 1}, "unknown settings ['frobnicate']"),
])
def test_eval_refuses_a_config_json_it_cannot_trust(run, capsys, changes, what):
    """eval no longer believes config.json: every setting's type and range is checked
    (dtype int8 used to score 2.3970 instead of 3.5065 and exit 0)."""
    edit_config(run, **changes)
    code, out, err = run_cli(["eval", run, "--tasks", "5", "--steps", "0"], capsys)
    assert code == 1 and out == ""
    assert one_line_naming(err, os.path.join(run, "config.json")), err
    assert what in err, err


@pytest.mark.parametrize("content", [b'{"task": "sinusoid", "algo": "ma', b"", b"\xff\xfe\x00",
                                     b"[1, 2]", b"null", b"[" * 100000])
def test_a_truncated_or_foreign_config_json_is_named(run, capsys, content):
    with open(os.path.join(run, "config.json"), "wb") as f:
        f.write(content)
    code, _, err = run_cli(["eval", run, "--tasks", "5"], capsys)
    assert code == 1 and one_line_naming(err, os.path.join(run, "config.json")), err


def test_a_config_json_symlinked_to_a_binary_file_is_named(run, capsys):
    path = os.path.join(run, "config.json")
    os.unlink(path)
    os.symlink(os.path.join(run, "params.npz"), path)
    code, _, err = run_cli(["train", "--resume", "--out", run], capsys)
    assert code == 1 and one_line_naming(err, path), err


def test_an_old_config_json_without_the_new_setting_loads_with_its_default(run):
    edit_config(run, divergence_guard=...)
    assert "divergence_guard" not in json.load(open(os.path.join(run, "config.json")))
    cfg = RunFolder(run).read_config()
    assert cfg.divergence_guard == runs.DIVERGENCE_FACTOR == 1000.0
    runs.evaluate(run, tasks=3, steps=[0])


# ---- options that cannot be meant ---------------------------------------------------------


@pytest.mark.parametrize("args, option", [
    (["--cg-tol", "-1"], "--cg-tol"), (["--cg-tol", "nan"], "--cg-tol"),
    (["--damping", "-5"], "--damping"), (["--seed", "-1"], "--seed"),
    (["--lam", "inf"], "--lam"), (["--divergence-guard", "-2"], "--divergence-guard"),
])
def test_options_that_cannot_be_meant_are_refused_naming_them(tmp_path, capsys, args, option):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", *args, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {option}:" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_eval_seed_must_be_non_negative(run, capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", run, "--eval-seed", "-1"])
    assert "argument --eval-seed" in capsys.readouterr().err


# ---- checkpoints --------------------------------------------------------------------------


def rewrite_checkpoint(out: str, edit) -> str:
    """Load checkpoint.npz, let ``edit(tree, meta)`` change it, save it back."""
    path = os.path.join(out, "checkpoint.npz")
    tree, meta = io.load(path, with_metadata=True)
    edit(tree, meta)
    io.save(path, tree, metadata=meta)
    return path


def _set(key, value):
    def edit(tree, meta):
        tree[key] = value
    return edit


def _opt(key, fn):
    def edit(tree, meta):
        tree["opt_state"][key] = fn(tree["opt_state"][key])
    return edit


def _meta(key, value):
    def edit(tree, meta):
        if value is ...:
            del meta[key]
        else:
            meta[key] = value
    return edit


@pytest.mark.parametrize("edit, what", [
    (_set("iteration", -5), "iteration -5 is outside 0..4"),
    (_set("iteration", 10 ** 6), "iteration 1000000 is outside 0..4"),
    (_set("iteration", 2.5), "tree['iteration'] should be a int; got float"),
    (_set("skipped", 7), "skipped 7 is outside 0..4"),
    (_opt("step", lambda s: np.asarray(2.5)), r"tree['opt_state']['step'] is float64"),
    (_opt("step", lambda s: np.asarray(3, np.int64)), "step count 3 is not iteration"),
    (_opt("m", lambda m: {"theta": [np.ones(3, np.float32)] + m["theta"][1:]}),
     "tree['opt_state']['m']['theta'][0] is float32 of shape (3,)"),
    (_set("model", {"theta": [np.asarray(p, np.float64) for p in tm.nn.mlp_init(
        [1, 16, 16, 1])]}), "is float64 of shape (1, 16); expected float32"),
    (_opt("v", lambda v: {"theta": [np.full_like(v["theta"][0], np.nan)] + v["theta"][1:]}),
     "opt_state holds NaN"),
    (_meta("rng", ...), "lacks the task sampler's RNG state"),
    (_meta("rng", {"bit_generator": "PCG64", "state": {"state": "x", "inc": 1}}),
     "RNG state cannot be restored"),
    (_meta("rng", {"bit_generator": "MT19937"}), "not PCG64's"),
    (_meta("window", ["a"]), "'window' must be a list"),
    (_meta("stopped_early", {"patience": -1}), "'stopped_early' must be"),
])
def test_a_checkpoint_is_checked_against_the_run(run, capsys, edit, what):
    path = rewrite_checkpoint(run, edit)
    code, _, err = run_cli(["train", "--resume", "--iterations", "6", "--out", run], capsys)
    assert code == 1 and one_line_naming(err, path), err
    assert what in err, err


def test_a_float64_checkpoint_in_a_float32_run_is_refused_from_python_too(run):
    def to64(tree, meta):
        tree["model"] = tm.tree_map(lambda a: np.asarray(a, np.float64), tree["model"])
    rewrite_checkpoint(run, to64)
    with pytest.raises(ValueError, match="checkpoint.npz: tree\\['model'\\]\\['theta'\\]\\[0\\] "
                       "is float64"):
        RunFolder(run).load_checkpoint(RunFolder(run).read_config().resolved())


def test_resume_iterations_below_at_and_above_what_is_done(run, capsys):
    config = json.load(open(os.path.join(run, "config.json")))
    code, _, err = run_cli(["train", "--resume", "--iterations", "2", "--out", run], capsys)
    assert code == 1 and "--iterations 2 is below the 4 iterations" in err
    assert json.load(open(os.path.join(run, "config.json"))) == config  # not rewritten
    code, out, _ = run_cli(["train", "--resume", "--out", run], capsys)
    assert code == 0 and "already finished at iteration 4" in out and "trained" not in out
    code, out, _ = run_cli(["train", "--resume", "--iterations", "6", "--out", run], capsys)
    assert code == 0 and out.startswith("trained")
    assert io.load(os.path.join(run, "checkpoint.npz"))["iteration"] == 6


# ---- params -------------------------------------------------------------------------------


@pytest.mark.parametrize("make, what", [
    (lambda p: [a.astype(np.int64) for a in p], "is int64 of shape (1, 16); expected float32"),
    (lambda p: [a.astype(np.complex64) for a in p], "is complex64"),
    (lambda p: p[:-1], "should be a list of 6; got a list of 5"),
    (lambda p: {"W": p}, "should be a list of 6; got a dict"),
    (lambda p: [p[0].T] + p[1:], "shape (16, 1); expected float32 of shape (1, 16)"),
    (lambda p: [np.full_like(p[0], np.inf)] + p[1:], "NaN or infinite"),
])
def test_eval_refuses_params_that_do_not_fit_the_run(run, capsys, make, what):
    path = os.path.join(run, "params.npz")
    io.save(path, make(io.load(path)))
    code, _, err = run_cli(["eval", run, "--tasks", "3", "--steps", "0"], capsys)
    assert code == 1 and one_line_naming(err, path), err
    assert what in err, err


@pytest.mark.parametrize("damage", [
    lambda b: b"", lambda b: b[: len(b) // 2], lambda b: b[:30] + bytes([b[30] ^ 1]) + b[31:],
    lambda b: b"\x80\x04K\x01.",
])
def test_damaged_params_files_are_named(run, capsys, damage):
    path = os.path.join(run, "params.npz")
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(damage(raw))
    code, _, err = run_cli(["eval", run, "--tasks", "3", "--steps", "0"], capsys)
    assert code == 1 and one_line_naming(err, path), err


# ---- logs ---------------------------------------------------------------------------------


def test_a_half_written_last_log_line_is_dropped_with_a_message(tmp_path, capsys):
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    common = ["train", *SMALL, "--checkpoint-every", "3", "--log-every", "2"]
    assert run_cli(common + ["--iterations", "8", "--out", full], capsys)[0] == 0
    with crash_at(6):
        cli.main(common + ["--iterations", "8", "--out", cut])
    with open(os.path.join(cut, "train.jsonl"), "a") as f:
        f.write('{"iteration": 6, "query_lo')  # a kill in the middle of a write
    code, _, err = run_cli(["train", "--resume", "--out", cut, "--no-progress"], capsys)
    assert code == 0 and "dropped its half-written last line" in err
    assert os.path.join(cut, "train.jsonl") in err
    assert same_run(full, cut)


def test_a_last_log_line_without_its_newline_is_completed(tmp_path, capsys):
    """A kill between a line and its newline: the resumed run's lines do not glue onto it."""
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    common = ["train", *SMALL, "--checkpoint-every", "2", "--log-every", "2", "--iterations",
              "8"]
    assert run_cli(common + ["--out", full], capsys)[0] == 0
    with crash_at(5):
        cli.main(common + ["--out", cut])
    path = os.path.join(cut, "train.jsonl")
    text = open(path).read()
    assert text.endswith("\n")
    with open(path, "w") as f:
        f.write(text[:-1])
    assert run_cli(["train", "--resume", "--out", cut, "--no-progress"], capsys)[0] == 0
    assert same_run(full, cut)


def test_a_bad_log_line_in_the_middle_is_named(run, capsys):
    path = os.path.join(run, "train.jsonl")
    lines = open(path).read().splitlines()
    for bad in ("{oops", '{"iteration": "2"}', '{"iteration": 9}', "[]",
                '{"iteration": 2, "step_s": NaN}'):
        with open(path, "w") as f:
            f.write("\n".join([bad] + lines) + "\n")
        code, _, err = run_cli(["train", "--resume", "--iterations", "6", "--out", run],
                               capsys)
        assert code == 1 and one_line_naming(err, path + " line "), (bad, err)


def test_stray_temporary_files_are_removed_when_a_run_resumes(run, capsys):
    stray = [os.path.join(run, n) for n in (".checkpoint.npz-a1b2c3d4.tmp",
                                            ".train.jsonl-zz_9ab01.tmp")]
    kept = [os.path.join(run, n) for n in (".notes-a1b2c3d4.tmp", "checkpoint.npz-a1b2c3d4.tmp",
                                           ".eval.json-a1b2c3d4.tmp")]
    for p in stray + kept:
        open(p, "w").write("half")
    code, _, err = run_cli(["train", "--resume", "--iterations", "5", "--out", run], capsys)
    assert code == 0
    assert not any(os.path.exists(p) for p in stray)
    assert all(os.path.exists(p) for p in kept)
    assert all(p in err for p in stray)


def test_atomic_write_names_its_temporary_file_as_the_cleanup_expects(tmp_path):
    from tinymeta.runs.folder import _TEMPORARY

    seen = []
    with io.atomic_write(tmp_path / "checkpoint.npz", binary=True) as f:
        seen = os.listdir(tmp_path)
        f.write(b"x")
    assert len(seen) == 1 and _TEMPORARY.match(seen[0]).group("name") == "checkpoint.npz"


# ---- resume, bit for bit ------------------------------------------------------------------


class Crash(Exception):
    """A kill, as the run folder sees it: the process stops at an iteration's start (or,
    with ``in_checkpoint``, after the iteration's logs but before its checkpoint)."""


@contextlib.contextmanager
def crash_at(at: int, in_checkpoint: bool = False):
    """Within the block, a run dies (raises :class:`Crash`) at iteration ``at``."""
    real_step, real_save = loop_mod.Run.meta_step, RunFolder.save_checkpoint

    def step(self, it):
        if it == at and not in_checkpoint:
            raise Crash
        return real_step(self, it)

    def save(self, ck):
        if ck.iteration == at and in_checkpoint:
            raise Crash
        return real_save(self, ck)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(loop_mod.Run, "meta_step", step)
        m.setattr(RunFolder, "save_checkpoint", save)
        with pytest.raises(Crash):
            yield


TIMING = {"elapsed_s", "step_s", "s_per_iteration", "train_s", "val_s", "wall_s"}


def _strip(o):
    if isinstance(o, dict):
        return {k: _strip(v) for k, v in o.items() if k not in TIMING}
    if isinstance(o, list):
        return [_strip(v) for v in o]
    return o


def same_run(a: str, b: str) -> bool:
    """The two run folders hold the same files with the same contents, timings aside: params
    and checkpoints array by array (bit for bit), metadata, logs and results record by
    record."""
    names = sorted(n for n in os.listdir(a) if not n.startswith("."))
    assert names == sorted(n for n in os.listdir(b) if not n.startswith(".")), (a, b)
    for name in names:
        pa, pb = os.path.join(a, name), os.path.join(b, name)
        if name.endswith(".npz"):
            (ta, ma), (tb, mb) = io.load(pa, True), io.load(pb, True)
            la, lb = tm.tree_leaves(ta), tm.tree_leaves(tb)
            assert len(la) == len(lb), name
            for x, y in zip(la, lb):
                assert np.asarray(x).dtype == np.asarray(y).dtype, name
                np.testing.assert_array_equal(x, y, err_msg=name)
            assert _strip(ma) == _strip(mb), name
        elif name.endswith(".jsonl"):
            ra = [_strip(json.loads(x)) for x in open(pa)]
            rb = [_strip(json.loads(x)) for x in open(pb)]
            assert ra == rb, name
        elif name.endswith(".json"):
            assert _strip(json.load(open(pa))) == _strip(json.load(open(pb))), name
    return True


def test_resume_after_an_early_stop_trains_nothing(data_zip, tmp_path, capsys):
    """The issue's reproducer: a run stopped early, params.npz and result.json removed,
    resumed: the same run, no iteration past the stop, no log line rewritten."""
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    args = ["train", "--task", "omniglot", "--data", data_zip, "--ways", "3", "--hidden",
            "8,8", "--val-alphabets", "Beta", "--meta-batch", "2", "--val-tasks", "8",
            "--eval-every", "4", "--patience", "3", "--checkpoint-every", "2", "--log-every",
            "2", "--iterations", "150", "--augment", "--no-progress", "--seed", "9",
            "--outer-lr", "1e-30"]
    assert run_cli(args + ["--out", ref], capsys)[0] == 0
    result = json.load(open(os.path.join(ref, "result.json")))
    assert result["stopped_early"] and result["iteration"] == 16
    shutil.copytree(ref, cut)
    os.unlink(os.path.join(cut, "params.npz"))
    os.unlink(os.path.join(cut, "result.json"))
    logs = {n: os.stat(os.path.join(cut, n)).st_mtime_ns for n in ("train.jsonl", "val.jsonl")}
    code, out, _ = run_cli(["train", "--resume", "--out", cut, "--no-progress"], capsys)
    assert code == 0 and "already finished at iteration 16 (stopped early)" in out
    assert same_run(ref, cut)
    assert logs == {n: os.stat(os.path.join(cut, n)).st_mtime_ns for n in logs}
    # a larger patience continues the run from the stop
    code, out, _ = run_cli(["train", "--resume", "--patience", "4", "--out", cut,
                            "--no-progress"], capsys)
    assert code == 0 and "stopped early to iteration 20" in out


@pytest.mark.parametrize("at, in_checkpoint", [(4, False), (5, False), (7, False), (9, False),
                                               (12, False), (4, True), (8, True),
                                               (12, True)])
def test_kill_and_resume_of_an_omniglot_run_with_early_stopping_is_bit_for_bit(
        data_zip, tmp_path, at, in_checkpoint):
    """Killed at iteration ``at`` (before its step, or after its logs and before its
    checkpoint: a half-saved state), then resumed: every file as the uninterrupted run's,
    logs, best params, checkpoint, the early stop (at 12) and the params chosen."""
    from test_classify import tiny

    cfg = tiny(data_zip, augment=True, iterations=40, eval_every=4, patience=2,
               outer_lr=1e-30, checkpoint_every=3, log_every=2)
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    result = runs.train(cfg, full, progress=False)
    assert result["stopped_early"] and result["iteration"] == 12
    with crash_at(at, in_checkpoint):
        runs.train(cfg, cut, progress=False)
    stored = RunFolder(cut).read_config()
    runs.train(stored, cut, resume=True, progress=False)
    assert same_run(full, cut)




@pytest.mark.parametrize("algo", ["maml", "metasgd", "reptile"])
def test_kill_and_resume_of_a_sinusoid_run_keeps_the_logs_bit_for_bit(tmp_path, capsys, algo):
    """A checkpoint between log lines keeps the losses of the line in progress."""
    common = ["train", "--algo", algo, *SMALL, "--checkpoint-every", "3", "--log-every", "5",
              "--iterations", "12"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    assert run_cli(common + ["--out", full], capsys)[0] == 0
    with crash_at(8):
        cli.main(common + ["--out", cut])
    assert "window" in io.load(os.path.join(cut, "checkpoint.npz"), True)[1]  # 6, 7 pending
    assert run_cli(["train", "--resume", "--out", cut, "--no-progress"], capsys)[0] == 0
    assert same_run(full, cut)


def test_a_checkpoint_recording_an_early_stop_needs_its_validations(data_zip, tmp_path):
    from test_classify import tiny

    cfg = tiny(data_zip, iterations=40, eval_every=2, patience=2, outer_lr=1e-30)
    out = str(tmp_path / "run")
    runs.train(cfg, out, progress=False)
    val = os.path.join(out, "val.jsonl")
    lines = open(val).read().splitlines()
    with open(val, "w") as f:
        f.write(lines[0] + "\n")
    with pytest.raises(runs.TrainingError, match="records an early stop at iteration 6 that "
                       ".*val.jsonl does not show"):
        runs.train(RunFolder(out).read_config(), out, resume=True, progress=False)


# ---- the divergence guard and debug_nans --------------------------------------------------


@pytest.mark.parametrize("args", [["--inner-lr", "50"], ["--inner-lr", "2"],
                                  ["--algo", "metasgd", "--inner-lr", "5"]])
def test_the_divergence_guard_stops_a_blowing_up_run(tmp_path, capsys, args):
    out = str(tmp_path / "run")
    code, stdout, err = run_cli(["train", *SMALL, *args, "--iterations", "30", "--out", out],
                                capsys)
    assert code == 1 and stdout == "" and err.count("\n") == 1
    assert err.startswith("tinymeta train: error: iteration ") and "exceeds 1000 ×" in err
    assert "--no-divergence-guard" in err
    assert not os.path.exists(os.path.join(out, "params.npz"))


def test_the_divergence_guard_compares_the_running_loss_with_the_start(tmp_path, capsys,
                                                                         monkeypatch):
    """Losses planted: L_S(θ_0) = 2 at the start; the guard (F = 10) trips at the first
    iteration whose window mean exceeds 20, and not before; off with 0; resumable."""
    real = loop_mod.meta_gradient
    query = {1: 1.0, 2: 30.0, 3: 5.0, 4: 100.0, 5: 1.0}  # window means 1, 15.5 | 5, 52.5

    def planted(cfg, setup, mask, model, batch):
        g, info = real(cfg, setup, mask, model, batch)
        planted.n += 1
        B = info["query_loss"].shape[0]
        return g, {**info, "query_loss": np.full(B, query[planted.n]),
                   "support_loss": np.full(B, 2.0)}

    monkeypatch.setattr(loop_mod, "meta_gradient", planted)
    out = str(tmp_path / "run")
    planted.n = 0
    code, _, err = run_cli(["train", *SMALL, "--iterations", "5", "--log-every", "2",
                            "--divergence-guard", "10", "--out", out], capsys)
    assert code == 1 and "iteration 4: the running query loss 52.5 exceeds 10 × the " \
                         "starting loss 2" in err
    planted.n = 0
    code, _, err = run_cli(["train", *SMALL, "--iterations", "5", "--log-every", "2",
                            "--no-divergence-guard", "--out", str(tmp_path / "off")], capsys)
    assert code == 0, err
    assert json.load(open(tmp_path / "off" / "config.json"))["divergence_guard"] == 0.0


def test_the_reference_algorithms_do_not_trip_the_guard(tmp_path, capsys):
    """imaml and metasgd at their defaults (their eval explodes, their training does not)."""
    for algo in ("imaml", "metasgd", "maml", "reptile"):
        out = str(tmp_path / algo)
        code, _, err = run_cli(["train", "--algo", algo, *SMALL, "--dtype", "float64",
                                "--iterations", "30", "--out", out], capsys)
        assert code == 0, err


def test_debug_nans_in_training_names_the_iteration(tmp_path, capsys, monkeypatch):
    real = loop_mod.meta_gradient

    def poisoned(cfg, setup, mask, model, batch):
        poisoned.n += 1
        if poisoned.n == 3:
            batch = batch._replace(support_x=np.full_like(batch.support_x, np.nan))
        return real(cfg, setup, mask, model, batch)

    poisoned.n = 0
    monkeypatch.setattr(loop_mod, "meta_gradient", poisoned)
    monkeypatch.setattr(tm.config, "debug_nans", True)
    code, _, err = run_cli(["train", *SMALL, "--iterations", "5", "--out",
                            str(tmp_path / "run")], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("tinymeta train: error: iteration 3: debug_nans: ")


# ---- evaluation reports -------------------------------------------------------------------


@pytest.mark.parametrize("change, what", [
    ({"mean": float("nan")}, "'mean' must be an accuracy in [0, 100]; got nan"),
    ({"mean": 140.0}, "'mean' must be an accuracy in [0, 100]"),
    ({"ci95": "x"}, "'ci95' must be a number"),
])
def test_steps_val_refuses_a_report_with_a_bad_accuracy(tmp_path, change, what):
    from test_eval_runs import make_model, write_val_report

    model = make_model(tmp_path / "m")
    write_val_report(model, {1: 60.0, 2: 70.0})
    path = os.path.join(model, "eval.json")
    report = json.load(open(path))
    report["accuracy"]["1"].update(change)
    with open(path, "w") as f:
        json.dump(report, f)
    with pytest.raises(ValueError, match="no report of the validation protocol: cannot read") \
            as info:
        runs.validation_steps(model, min_tasks=600)
    assert what in str(info.value) and path in str(info.value)


def test_a_report_written_before_adaptation_and_hashes_is_still_read(run):
    runs.evaluate(run, tasks=3, steps=[0, 1])
    path = os.path.join(run, "eval.json")
    report = json.load(open(path))
    del report["adaptation"], report["params_sha256"]
    json.dump(report, open(path, "w"))
    assert RunFolder(run).read_eval()["mse"]["1"]["n_bad"] == 0


def test_run_config_create_checks_types_from_python():
    with pytest.raises(ValueError, match="the settings: setting 'shots' must be an integer"):
        RunConfig.create(shots=2.5)
    with pytest.raises(ValueError, match="'val_alphabets' must be a list of strings"):
        RunConfig.create(task="omniglot", val_alphabets=[1])
