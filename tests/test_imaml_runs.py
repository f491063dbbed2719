"""iMAML in the run layer: its settings and their defaults, config.json written before
them, train.jsonl's stationarity, and evaluation as trained (``"mse_proximal"``)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import tinymeta as tm
from tinymeta import cli, meta, runs
from tinymeta.runs import RunConfig, RunFolder
from tinymeta.runs.folder import protocol_name, write_json

SMALL = ["--meta-batch", "4", "--shots", "5", "--hidden", "8,8", "--no-progress",
         "--dtype", "float64"]


@pytest.fixture(autouse=True)
def numpy_backend():
    with tm.set_backend("numpy"):
        yield


def test_imaml_defaults_and_that_only_imaml_stores_its_inner_solver(tmp_path):
    cfg = RunConfig.create(algo="imaml").resolved()
    assert (cfg.inner_solver, cfg.inner_steps, cfg.lam, cfg.linear_solver, cfg.cg_steps,
            cfg.newton_cg_steps, cfg.inner_tol) == ("newton-cg", 3, 1.0, "minres", 5, 5, 1e-3)
    gd = RunConfig.create(algo="imaml", inner_solver="gd").resolved()
    assert gd.inner_steps == runs.IMAML_STEPS["gd"] == 16
    maml = RunConfig.create(algo="maml").resolved().to_json()
    assert not {"inner_solver", "inner_tol", "newton_cg_steps", "linear_solver"} & set(maml)
    assert maml["lam"] == 1.0 and maml["cg_steps"] == 5  # as config.json always held them
    with pytest.raises(ValueError, match="--inner-solver applies to --algo imaml only"):
        RunConfig.create(algo="maml", inner_solver="gd").resolved().validate()
    with pytest.raises(ValueError, match="stop applies to --linear-solver cg only"):
        RunConfig.create(algo="imaml", on_negative_curvature="stop").resolved().validate()


def test_an_imaml_config_json_from_before_the_inner_solvers_reads_as_it_ran(tmp_path):
    old = RunConfig.create(algo="imaml", inner_steps=5, lam=1.0, cg_steps=5).resolved()
    stored = {k: v for k, v in old.to_json().items()
              if k not in ("inner_solver", "inner_tol", "newton_cg_steps", "linear_solver")}
    write_json(str(tmp_path / "config.json"), stored)
    cfg = RunFolder(str(tmp_path)).read_config()
    assert (cfg.inner_solver, cfg.inner_tol, cfg.linear_solver) == ("gd", 0.0, "cg")
    assert cfg.resolved().to_json()["inner_solver"] == "gd"


def test_cli_imaml_settings_reach_the_config_and_the_log(tmp_path, capsys):
    out = str(tmp_path / "im")
    assert cli.main(["train", *SMALL, "--algo", "imaml", "--inner-solver", "gd",
                     "--inner-steps", "4", "--inner-tol", "0.01", "--linear-solver",
                     "normal-cg", "--lam", "2", "--iterations", "3", "--log-every", "1",
                     "--out", out]) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert (cfg["inner_solver"], cfg["inner_steps"], cfg["inner_tol"], cfg["linear_solver"],
            cfg["lam"]) == ("gd", 4, 0.01, "normal-cg", 2.0)
    log = RunFolder(out).read_log()
    assert len(log) == 3 and all(len(r["stationarity"]) == 4 for r in log)
    assert all(0 <= s for r in log for s in r["stationarity"])
    assert cli.main(["train", *SMALL, "--algo", "maml", "--inner-solver", "gd",
                     "--iterations", "2", "--out", str(tmp_path / "m")]) == 1
    assert "applies to --algo imaml only" in capsys.readouterr().err


def test_eval_reports_the_proximal_adaptation_beside_gradient_steps(tmp_path, capsys):
    out = str(tmp_path / "im")
    assert cli.main(["train", *SMALL, "--algo", "imaml", "--iterations", "2",
                     "--out", out]) == 0
    capsys.readouterr()
    assert cli.main(["eval", out, "--tasks", "6", "--steps", "0,1,2"]) == 0
    text = capsys.readouterr().out
    report = json.load(open(os.path.join(out, "eval.json")))
    assert report["adaptation"] == "gradient+proximal"
    assert set(report["mse_proximal"]) == set(report["mse"]) == {"0", "1", "2"}
    assert set(report["mse_proximal"]["1"]) == set(report["mse"]["1"])
    assert report["mse_proximal"]["0"] == report["mse"]["0"]  # both start at θ_0
    assert report["proximal"] == {"solver": "newton-cg", "lam": 1.0, "lr": 0.01,
                                  "tol": 1e-3, "cg_steps": 5}
    assert "proximal" in text.splitlines()[1]
    # the numbers: the solver's own iterates, scored on the same test tasks
    cfg, model = runs.load_model(out)
    setup = runs.TASKS["sinusoid"](cfg)
    batch, _ = setup.test_batch(6, 5, 100, 1000)
    phi, _ = meta.proximal_adapt(setup.loss_fn, model["theta"], batch.support_x,
                                 batch.support_y, 1.0, 2, solver="newton-cg", tol=1e-3)
    want = np.mean(setup.scores(phi, batch.query_x, batch.query_y))
    np.testing.assert_allclose(report["mse_proximal"]["2"]["mean"], want, rtol=1e-12)
    # λ = 0, another protocol: kept beside, not over, the first report
    first = protocol_name(report)
    assert cli.main(["eval", out, "--tasks", "6", "--steps", "0,1,2",
                     "--proximal-lam", "0"]) == 0
    report0 = json.load(open(os.path.join(out, "eval.json")))
    assert report0["proximal"]["lam"] == 0.0 and protocol_name(report0) != first
    assert os.path.exists(os.path.join(out, "evals", first + ".json"))


def test_proximal_lam_is_refused_for_other_algorithms(tmp_path, capsys):
    out = str(tmp_path / "m")
    assert cli.main(["train", *SMALL, "--algo", "maml", "--iterations", "2",
                     "--out", out]) == 0
    capsys.readouterr()
    assert cli.main(["eval", out, "--tasks", "4", "--proximal-lam", "1"]) == 1
    err = capsys.readouterr().err
    assert "--proximal-lam applies to imaml runs" in err and "Traceback" not in err
    report = json.load(open(os.path.join(out, "eval.json"))) if os.path.exists(
        os.path.join(out, "eval.json")) else None
    assert report is None
    assert cli.main(["eval", out, "--tasks", "4", "--steps", "0,1"]) == 0
    report = json.load(open(os.path.join(out, "eval.json")))
    assert report["adaptation"] == "gradient" and "mse_proximal" not in report
