"""What a new user meets: evaluation reports kept by protocol, --steps val reading the
validation protocol's report, training that shows its validations, plots, the quickstart's
checks, and --version."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("PIL", reason='Pillow is needed to decode PNGs: pip install -e ".[data]"')

from test_classify import tiny  # noqa: E402  (a config on the synthetic Omniglot set)

from tinymeta import cli, runs  # noqa: E402
from tinymeta.version import __version__  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--meta-batch", "5", "--shots", "5", "--hidden", "16,16", "--no-progress"]


@pytest.fixture(autouse=True)
def numpy_backend_and_cache(tmp_path_factory, monkeypatch):
    import tinymeta as tm

    monkeypatch.setenv("TINYMETA_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    with tm.set_backend("numpy"):
        yield


def run_cli(args, capsys):
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


# ---- 1. evaluations never clobber each other ----------------------------------------------


def test_a_quick_probe_does_not_replace_the_validation_report(data_zip, tmp_path, capsys):
    """The validation protocol's report (600 tasks) survives a probe (20 tasks) written after
    it, and --steps val reads it, naming its file; the probe alone is refused."""
    out = str(tmp_path / "run")
    runs.train(tiny(data_zip, iterations=4), out, progress=False)
    val = ["eval", out, "--alphabets", "Beta", "--query", "1", "--steps", "0,1,2,3"]
    assert run_cli(val + ["--tasks", "600"], capsys)[0] == 0
    code, _, err = run_cli(val[:-1] + ["0,1", "--tasks", "20"], capsys)  # the probe
    assert code == 0
    assert "eval.json held a report of another protocol, kept as" in err
    kept = sorted(os.listdir(os.path.join(out, "evals")))
    assert len(kept) == 2 and any("600tasks" in k for k in kept), kept
    latest = json.loads(Path(out, "eval.json").read_text())
    assert latest["tasks"] == 20  # eval.json is the latest, in its usual layout
    full = json.loads(Path(out, "evals", next(k for k in kept if "600tasks" in k)).read_text())
    acc = {int(t): r["mean"] for t, r in full["accuracy"].items()}
    want = min(t for t in acc if acc[t] == max(acc.values()))  # argmax, ties to fewer
    steps, report, path = runs.validation_steps(out)
    assert steps == want and report["tasks"] == 600 and path.endswith(".json")
    assert "600tasks" in os.path.basename(path)
    os.unlink(path)  # only the probe is left: refused, with the command that makes one
    with pytest.raises(ValueError, match=r"holds 20 tasks, fewer than 600.*tinymeta eval .*"
                       r"--tasks 600 .*--alphabets Beta --query 1` first"):
        runs.validation_steps(out)
    assert runs.validation_steps(out, min_tasks=20)[2].endswith(".json")


def test_sinusoid_reports_are_kept_per_protocol(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_cli(["train", *SMALL, "--iterations", "3", "--out", out], capsys)[0] == 0
    code, _, err = run_cli(["eval", out, "--tasks", "40", "--steps", "0,1"], capsys)
    assert code == 0 and "kept as" in err and "another protocol" not in err
    first = json.loads(Path(out, "eval.json").read_text())
    assert first["params_sha256"] and first["adaptation"] == "gradient"
    # the same protocol again: the same file, nothing replaced
    code, _, err = run_cli(["eval", out, "--tasks", "40", "--steps", "0,1"], capsys)
    assert "another protocol" not in err and len(os.listdir(os.path.join(out, "evals"))) == 1
    code, _, err = run_cli(["eval", out, "--tasks", "30", "--steps", "0,1"], capsys)
    assert "another protocol" in err and len(os.listdir(os.path.join(out, "evals"))) == 2


def test_an_old_eval_json_is_kept_before_it_is_replaced(tmp_path, capsys):
    """A run evaluated before reports were kept has only eval.json: a new evaluation of
    another protocol keeps it under evals/ first."""
    out = str(tmp_path / "run")
    assert run_cli(["train", *SMALL, "--iterations", "3", "--out", out], capsys)[0] == 0
    old = {"mse": {"0": {"mean": 1.0, "ci95": 0.1, "median": 1.0, "n_bad": 0}},
           "tasks": 7, "eval_seed": 3, "shots": 5, "query": 100, "inner_lr": 0.01,
           "algo": "maml"}
    Path(out, "eval.json").write_text(json.dumps(old))
    assert run_cli(["eval", out, "--tasks", "30", "--steps", "0"], capsys)[0] == 0
    kept = [json.loads(Path(out, "evals", k).read_text())
            for k in os.listdir(os.path.join(out, "evals"))]
    assert old in kept and len(kept) == 2


# ---- 3. training shows what drives it -----------------------------------------------------


def test_without_tqdm_a_run_prints_about_twenty_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm fails
    args = ["train", "--meta-batch", "2", "--shots", "2", "--hidden", "4", "--iterations", "300",
            "--log-every", "5", "--out", str(tmp_path / "run")]
    code, _, err = run_cli(args, capsys)
    assert code == 0
    lines = [x for x in err.splitlines() if x.startswith("iteration ")]
    assert 15 <= len(lines) <= 21, lines
    assert lines[-1].startswith("iteration 300/300")
    log = [json.loads(x) for x in open(tmp_path / "run" / "train.jsonl")]
    assert len(log) == 60  # --log-every keeps its meaning in train.jsonl


def test_validations_are_shown_with_the_best_and_the_patience_left(data_zip, tmp_path,
                                                                     capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    runs.train(tiny(data_zip, outer_lr=1e-30, patience=2, iterations=40), str(tmp_path / "a"))
    err = capsys.readouterr().err
    shown = [x for x in err.splitlines() if "validation accuracy" in x]
    val = [json.loads(x) for x in open(tmp_path / "a" / "val.jsonl")]
    assert len(shown) == len(val) == 3  # the third validation without a better one stops it
    first = f"{val[0]['accuracy']:.2f}%"
    assert first in shown[0] and "patience 2 left" in shown[0]
    assert f"(best {first} at 2, patience 0 left)" in shown[2]


def test_the_bar_postfix_holds_the_validation(data_zip, tmp_path, monkeypatch):
    """With tqdm, the bar's postfix: loss, the last validation, the best and the patience."""
    postfixes = []

    class Bar:
        def __init__(self, **kw):
            pass

        def update(self, n):
            pass

        def set_postfix(self, d, refresh=True):
            postfixes.append(dict(d))

        def close(self):
            pass

    fake = type(sys)("tqdm")
    fake.tqdm = Bar
    monkeypatch.setitem(sys.modules, "tqdm", fake)
    runs.train(tiny(data_zip, iterations=4, patience=3), str(tmp_path / "a"))
    last = postfixes[-1]
    assert set(last) == {"loss", "val", "best", "patience"}
    assert last["val"].endswith("%") and "@" in last["best"]


# ---- 4, 5. plots --------------------------------------------------------------------------


def test_plot_refuses_an_omniglot_run_and_writes_where_told(data_zip, tmp_path, capsys,
                                                             monkeypatch):
    pytest.importorskip("matplotlib", reason="plot needs matplotlib: pip install -e '.[plot]'")
    om = str(tmp_path / "om")
    runs.train(tiny(data_zip, iterations=2), om, progress=False)
    code, _, err = run_cli(["plot", om], capsys)
    assert code == 1 and "plot draws sinusoid runs" in err and err.count("\n") == 1
    run, dest = str(tmp_path / "sin"), str(tmp_path / "figures")
    assert run_cli(["train", *SMALL, "--iterations", "3", "--out", run], capsys)[0] == 0
    import matplotlib.figure

    saved = {}
    real = matplotlib.figure.Figure.savefig

    def savefig(fig, path, **kw):
        saved[os.path.basename(path)] = [(a.get_xlabel(), a.get_ylabel()) for a in fig.axes]
        return real(fig, path, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    code, text, err = run_cli(["plot", run, "--out", dest], capsys)
    assert code == 0, err
    assert sorted(os.listdir(dest)) == ["mse_vs_steps.png", "predictions.png"]
    assert not os.path.exists(os.path.join(run, "predictions.png"))
    assert saved["predictions.png"] and all(lab == ("x", "y") for lab in saved["predictions.png"])


# ---- 6. the quickstart and --version ------------------------------------------------------


def test_the_quickstart_checks_what_it_computed():
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, TINYMETA_BACKEND="numpy"))
    assert r.returncode == 0, r.stderr
    m = re.search(r"<grad, v> (\S+)\s+finite differences (\S+)", r.stdout)
    assert m and abs(float(m[1]) - float(m[2])) <= 1e-6 * abs(float(m[2]))
    m = re.search(r"\|H v\| (\S+)\s+max \|H v - finite differences\| (\S+)", r.stdout)
    assert m and float(m[2]) <= 1e-6 * float(m[1])
    assert "forward:" in r.stdout  # and the tape


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"tinymeta {__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def _readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, TINYMETA_BACKEND="numpy"))
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_readmes_python_runs():
    """The README's quickstart as written (its ⟨∇L, v⟩ and the central difference agree),
    and its meta-training loop shortened to 20 iterations."""
    blocks = _readme_blocks()
    quick = next(b for b in blocks if "tm.hvp" in b)
    loop = next(b for b in blocks if "meta.maml" in b)
    a, b = map(float, _run(quick).splitlines()[0].split())
    assert abs(a - b) <= 1e-6 * abs(b)
    assert "range(3000)" in loop
    assert "query loss after one step" in _run(loop.replace("range(3000)", "range(20)"))
