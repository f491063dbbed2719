"""The command line and the training loop: learning, resume bit for bit, errors, eval, plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tinymeta.runs.loop as loop_mod
from tinymeta import cli, io, runs
from tinymeta.runs import RunConfig, evaluate, train
from tinymeta.runs.setup import summarize
from tinymeta.tree import tree_leaves

SMALL = ["--meta-batch", "5", "--shots", "5", "--hidden", "16,16", "--no-progress"]


def run_cli(args, capsys):
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def numpy_backend():
    import tinymeta as tm

    with tm.set_backend("numpy"):
        yield


def test_maml_learns_to_adapt_and_beats_the_pretrained_baseline(tmp_path):
    results = {}
    for algo in ("maml", "pretrain"):
        cfg = RunConfig(algo=algo, shots=10, iterations=1000, seed=0, log_every=500)
        train(cfg, str(tmp_path / algo), progress=False)
        report = evaluate(str(tmp_path / algo), tasks=200, steps=[0, 1], eval_seed=7)
        results[algo] = {int(k): v["mean"] for k, v in report["mse"].items()}
    maml, pre = results["maml"], results["pretrain"]
    assert maml[1] < 0.6 * maml[0]
    assert maml[1] < 0.7 * pre[1]


@pytest.mark.parametrize("algo", ["maml", "metasgd", "reptile"])
def test_resume_continues_bit_for_bit(tmp_path, capsys, algo):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    common = ["train", "--algo", algo, *SMALL, "--checkpoint-every", "7", "--log-every", "5"]
    assert run_cli(common + ["--iterations", "24", "--out", full], capsys)[0] == 0
    if algo == "reptile":  # annealed: the horizon must stay that of the full run
        args = common + ["--iterations", "24", "--stop-after", "10", "--out", part]
    else:
        args = common + ["--iterations", "10", "--out", part]
    assert run_cli(args, capsys)[0] == 0
    assert run_cli(["train", "--resume", "--out", part, "--iterations", "24", "--no-progress"],
                   capsys)[0] == 0
    for a, b in zip(io.load(os.path.join(full, "params.npz")),
                    io.load(os.path.join(part, "params.npz"))):
        np.testing.assert_array_equal(a, b)
    if algo == "metasgd":
        for a, b in zip(io.load(os.path.join(full, "lrs.npz")),
                        io.load(os.path.join(part, "lrs.npz"))):
            np.testing.assert_array_equal(a, b)
    ck_full = io.load(os.path.join(full, "checkpoint.npz"))
    ck_part = io.load(os.path.join(part, "checkpoint.npz"))
    assert ck_full["iteration"] == ck_part["iteration"] == 24
    for a, b in zip(tree_leaves(ck_full["opt_state"]), tree_leaves(ck_part["opt_state"])):
        np.testing.assert_array_equal(a, b)
    lines = [json.loads(x) for x in open(os.path.join(part, "train.jsonl"))]
    assert [r["iteration"] for r in lines] == [5, 10, 15, 20, 24]


def test_resume_refuses_changed_settings_and_missing_runs(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_cli(["train", *SMALL, "--iterations", "3", "--out", out], capsys)[0] == 0
    code, _, err = run_cli(["train", "--resume", "--algo", "reptile", "--out", out], capsys)
    assert code == 1 and "differs" in err and err.count("\n") == 1
    code, _, err = run_cli(["train", *SMALL, "--iterations", "3", "--out", out], capsys)
    assert code == 1 and "--resume" in err
    code, _, err = run_cli(["train", "--resume", "--out", str(tmp_path / "nope")], capsys)
    assert code == 1 and "no run" in err


@pytest.mark.parametrize("args", [
    ["train", "--algo", "magic", "--out", "x"],
    ["train", "--shots", "-3", "--out", "x"],
    ["train", "--inner-lr", "abc", "--out", "x"],
    ["train"],
    ["eval", "missing-dir-xyz", "--steps", "3..1"],
    ["eval", "missing-dir-xyz"],
    ["frobnicate"],
])
def test_bad_arguments_give_one_line_and_nonzero_exit(args):
    env = dict(os.environ, TINYMETA_BACKEND="numpy")
    r = subprocess.run([sys.executable, "-c", "import sys; from tinymeta.cli import main; "
                        "sys.exit(main(sys.argv[1:]))", *args],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_nonfinite_meta_gradient_stops_naming_the_iteration(tmp_path, capsys, monkeypatch):
    real = loop_mod.meta_gradient
    calls = {"n": 0}

    def poisoned(cfg, setup, mask, model, batch):
        calls["n"] += 1
        g, info = real(cfg, setup, mask, model, batch)
        if calls["n"] == 3:
            g = {"theta": [np.full_like(a, np.nan) for a in g["theta"]]}
        return g, info

    monkeypatch.setattr(loop_mod, "meta_gradient", poisoned)
    code, _, err = run_cli(["train", *SMALL, "--iterations", "6", "--out",
                            str(tmp_path / "a")], capsys)
    assert code == 1 and "iteration 3" in err and "--skip-nonfinite" in err
    calls["n"] = 0
    code, _, _ = run_cli(["train", *SMALL, "--iterations", "6", "--log-every", "6",
                          "--skip-nonfinite", "--out", str(tmp_path / "b")], capsys)
    assert code == 0
    last = json.loads(open(tmp_path / "b" / "train.jsonl").readlines()[-1])
    assert last["skipped"] == 1
    assert all(np.isfinite(a).all() for a in io.load(tmp_path / "b" / "params.npz"))


def test_eval_writes_eval_json_and_prints_a_table(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_cli(["train", *SMALL, "--algo", "fomaml", "--iterations", "5", "--out", out],
                   capsys)[0] == 0
    code, text, _ = run_cli(["eval", out, "--tasks", "50", "--steps", "0..3"], capsys)
    assert code == 0 and "ci95" in text
    report = json.load(open(os.path.join(out, "eval.json")))
    assert sorted(report["mse"], key=int) == ["0", "1", "2", "3"]
    assert set(report["mse"]["1"]) == {"mean", "ci95", "median", "n_bad"}
    again = json.load(open(os.path.join(out, "eval.json")))
    run_cli(["eval", out, "--tasks", "50", "--steps", "0..3"], capsys)
    assert json.load(open(os.path.join(out, "eval.json"))) == again  # fixed eval seed


def test_summarize_counts_bad_tasks():
    s = summarize(np.array([1.0, 2.0, 3.0, 500.0]))
    assert s["n_bad"] == 1 and s["median"] == 2.5
    assert s["ci95"] == pytest.approx(1.96 * np.std([1, 2, 3, 500], ddof=1) / 2)
    s = summarize(np.array([1.0, np.nan, 2.0]))
    assert s["n_bad"] == 1 and s["mean"] is None and s["median"] == 2.0
    assert runs.parse_steps("0..3") == [0, 1, 2, 3]
    assert runs.parse_steps("5,1") == [1, 5]


def test_every_algorithm_trains_a_few_steps(tmp_path, capsys):
    for algo in runs.ALGOS:
        out = str(tmp_path / algo)
        code, text, err = run_cli(["train", *SMALL, "--algo", algo, "--iterations", "2",
                                   "--out", out], capsys)
        assert code == 0, err
        assert os.path.exists(os.path.join(out, "params.npz"))


def test_plot_draws_both_figures_or_says_what_is_missing(tmp_path, capsys, monkeypatch):
    out, base = str(tmp_path / "m"), str(tmp_path / "p")
    run_cli(["train", *SMALL, "--iterations", "3", "--out", out], capsys)
    run_cli(["train", *SMALL, "--algo", "pretrain", "--iterations", "3", "--out", base], capsys)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        code, _, err = run_cli(["plot", out], capsys)
        assert code == 1 and "matplotlib" in err
        return
    code, text, err = run_cli(["plot", out, "--baseline", base], capsys)
    assert code == 0, err
    assert os.path.getsize(os.path.join(out, "predictions.png")) > 1000
    assert os.path.getsize(os.path.join(out, "mse_vs_steps.png")) > 1000
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run_cli(["plot", out], capsys)
    assert code == 1 and "matplotlib" in err and err.count("\n") == 1


def test_maml_chain_trains_like_unrolled_maml_in_float64(tmp_path, capsys):
    outs = {}
    for algo in ("maml", "maml-chain"):
        out = str(tmp_path / algo)
        assert run_cli(["train", *SMALL, "--algo", algo, "--dtype", "float64",
                        "--iterations", "5", "--out", out], capsys)[0] == 0
        outs[algo] = io.load(os.path.join(out, "params.npz"))
    for a, b in zip(outs["maml"], outs["maml-chain"]):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_imaml_settings_reach_the_config(tmp_path, capsys):
    out = str(tmp_path / "im")
    assert run_cli(["train", *SMALL, "--algo", "imaml", "--lam", "100", "--cg-steps", "3",
                    "--linear-solver", "cg", "--on-negative-curvature", "stop",
                    "--iterations", "2", "--out", out], capsys)[0] == 0
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["lam"] == 100.0 and cfg["cg_steps"] == 3
    assert cfg["on_negative_curvature"] == "stop"
    assert cfg["inner_solver"] == "newton-cg" and cfg["inner_steps"] == 3  # iMAML's defaults
