"""``tinymeta eval-runs``: a model on Lake et al.'s 20-way one-shot runs beside the MHD
baseline (tinymeta.runs.eval_runs), on hand-written runs and on the real ten runs."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL", reason='Pillow is needed to decode PNGs: pip install -e ".[data]"')
from PIL import Image, ImageDraw  # noqa: E402

import tinymeta as tm  # noqa: E402
from tinymeta import io, nn, runs  # noqa: E402
from tinymeta.cli import main  # noqa: E402
from tinymeta.runs import RunConfig, RunFolder  # noqa: E402
from tinymeta.runs.folder import write_json  # noqa: E402
from tinymeta.runs.omniglot import OmniglotSetup  # noqa: E402
from tinymeta.tasks.oneshot_runs import load_runs  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
RUNS_ZIP = DATA / "one_shot_runs_01-10.zip"
needs_runs = pytest.mark.skipif(not RUNS_ZIP.exists(), reason=f"{RUNS_ZIP} not found")
LINE = re.compile(r"^run\d\d error \d+\.\d%  \(mhd \d+\.\d%\)$")


def drawing(character: int, variant: int) -> Image.Image:
    shape = np.random.default_rng(character).integers(15, 90, size=(3, 4))
    jitter = np.random.default_rng(100 * character + variant).integers(-3, 4, size=(3, 4))
    im = Image.new("1", (105, 105), 1)
    d = ImageDraw.Draw(im)
    for line in shape + jitter:
        d.line([tuple(line[:2]), tuple(line[2:])], fill=0, width=3)
    return im


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """Two 20-way runs under one top folder; item k of run r answers class perm_r[k]."""
    root = tmp_path_factory.mktemp("runs") / "all_runs"
    for r in (1, 2):
        run = root / f"run{r:02d}"
        (run / "training").mkdir(parents=True)
        (run / "test").mkdir()
        perm = np.random.default_rng(r).permutation(20)
        lines = []
        for c in range(20):
            drawing(100 * r + c, 0).save(run / "training" / f"class{c + 1:02d}.png")
        for k in range(20):
            drawing(100 * r + perm[k], 1).save(run / "test" / f"item{k + 1:02d}.png")
            lines.append(f"run{r:02d}/test/item{k + 1:02d}.png "
                         f"run{r:02d}/training/class{perm[k] + 1:02d}.png")
        (run / "class_labels.txt").write_text("\n".join(lines) + "\n")
    return root


def make_model(folder: Path, ways: int = 20, bn_adapt: bool = False, seed: int = 0,
               **settings) -> str:
    """A run folder by hand: config.json and params.npz of a random BN MLP."""
    cfg = RunConfig.create(task="omniglot", ways=ways, hidden=(16, 8), inner_steps=3,
                           inner_lr=0.5, bn_adapt=bn_adapt, seed=seed, dtype="float64",
                           **settings)
    folder.mkdir(parents=True)
    write_json(str(folder / "config.json"), cfg.to_json())
    params = OmniglotSetup(cfg.resolved()).init_params()
    rng = np.random.default_rng(seed)
    params = tm.tree_map(lambda p: p + 0.2 * rng.normal(size=p.shape), params)
    io.save(folder / "params.npz", params)
    return str(folder)


def reference_errors(model: str, runs_dir: Path, steps: int | None = None) -> dict:
    """Per-run error of the model by a hand-written loop: plain gradient steps on the 20
    training images (BN over them; held-out leaves untouched), then one pass over the 20
    test items with their own statistics."""
    cfg, trained = runs.load_model(model)
    theta = trained["theta"]
    steps = cfg.inner_steps if steps is None else steps
    out = {}
    for run in load_runs(runs_dir):
        train, test = run.preprocessed(center=True)
        sx, qx = train.reshape(1, 20, 784), test.reshape(1, 20, 784)
        sy = np.arange(20)[None]
        params = tm.tree_map(lambda p: p[None], theta)

        def support_sum(p, sx=sx, sy=sy):
            return tm.sum(OmniglotSetup.loss_fn(p, sx, sy))

        for _ in range(steps):
            g = tm.grad(support_sum)(params)
            params = [{k: (v - cfg.inner_lr * g[i][k]
                           if k in ("W", "b") or cfg.options.bn_adapt else v)
                       for k, v in layer.items()} for i, layer in enumerate(params)]
        pred = np.argmax(np.asarray(nn.bn_mlp(params, qx))[0], axis=-1)
        out[run.name] = 100.0 * np.mean(pred != run.answers)
    return out


@pytest.mark.parametrize("bn_adapt", [False, True])
def test_model_errors_match_a_hand_written_reference(tmp_path, runs_dir, bn_adapt):
    model = make_model(tmp_path / "m", bn_adapt=bn_adapt)
    result = runs.eval_runs(str(runs_dir), model)
    assert result["steps"] == 3
    want = reference_errors(model, runs_dir)
    assert result["model"] == pytest.approx(want)
    assert set(result["mhd"]) == {"run01", "run02"}


def test_output_format(tmp_path, runs_dir, capsys):
    model = make_model(tmp_path / "m")
    assert main(["eval-runs", "--runs", str(runs_dir), "--model", model]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(LINE.match(line) for line in lines[:2]), lines
    errors = [float(line.split()[2].rstrip("%")) for line in lines[:2]]
    assert re.match(r"^mean error \d+\.\d%  \(mhd \d+\.\d%\)$", lines[2])
    assert float(lines[2].split()[2].rstrip("%")) == pytest.approx(np.mean(errors), abs=0.05)


def test_baseline_alone_needs_no_model(runs_dir, capsys):
    assert main(["eval-runs", "--runs", str(runs_dir), "--baseline", "mhd"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.match(r"^run01 error \d+\.\d%$", lines[0]) and lines[-1].startswith("mean error ")


def test_not_twenty_way_is_a_clear_error(tmp_path, runs_dir, capsys):
    model = make_model(tmp_path / "m", ways=5)
    assert main(["eval-runs", "--runs", str(runs_dir), "--model", model]) == 1
    err = capsys.readouterr().err
    assert "20-way" in err and "5-way" in err and "Traceback" not in err


def test_nothing_to_score_is_an_error(runs_dir, capsys):
    assert main(["eval-runs", "--runs", str(runs_dir)]) == 1
    assert "--baseline mhd" in capsys.readouterr().err


@needs_runs
def test_real_runs_baseline_beside_a_model(tmp_path, capsys):
    """The MHD column reproduces the reference per-run errors on the ten runs here."""
    model = make_model(tmp_path / "m")
    assert main(["eval-runs", "--runs", str(RUNS_ZIP), "--model", model]) == 0
    lines = capsys.readouterr().out.splitlines()
    mhd = [float(re.search(r"mhd (\d+\.\d)%", line).group(1)) for line in lines[:10]]
    assert mhd == [45, 35, 40, 25, 30, 15, 60, 35, 40, 55]
    assert lines[-1].endswith("(mhd 38.0%)")


# ---- --steps val: the step count validation chooses ----------------------------------------


def write_val_report(model: str, means: dict[int, float], alphabets=None, sha=None,
                     **setting) -> None:
    """An eval.json by hand: the accuracy per step count on the run's validation alphabets
    in the runs' setting (1 shot, 1 query image per class, the training α; ``setting``
    overrides), and the SHA-256 of its params.npz (hashlib over the file's bytes)."""
    cfg = RunFolder(model).read_config().resolved()
    digest = hashlib.sha256(Path(model, "params.npz").read_bytes()).hexdigest()
    report = {"accuracy": {str(t): {"mean": m, "ci95": 1.0, "tasks": 600}
                           for t, m in means.items()},
              "alphabets": list(cfg.options.val_alphabets if alphabets is None else alphabets),
              "algo": cfg.algo, "tasks": 600, "eval_seed": 1000, "ways": 20, "shots": 1,
              "query": 1,
              "inner_lr": cfg.inner_lr, "params_sha256": digest if sha is None else sha}
    report.update(setting)
    if sha == "absent":
        del report["params_sha256"]
    Path(model, "eval.json").write_text(json.dumps(report))


def test_steps_val_adapts_with_the_validation_argmax(tmp_path, runs_dir, capsys):
    model = make_model(tmp_path / "m")
    # 2 and 4 tie at the top: the fewer steps win; 1 and 6 are lower
    write_val_report(model, {1: 60.0, 2: 72.5, 4: 72.5, 6: 71.0})
    result = runs.eval_runs(str(runs_dir), model, steps="val")
    assert result["steps"] == 2
    assert result["model"] == pytest.approx(reference_errors(model, runs_dir, steps=2))
    assert result["steps_chosen_on"]["accuracy"] == 72.5
    assert main(["eval-runs", "--runs", str(runs_dir), "--model", model, "--steps", "val"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3 and all(LINE.match(line) for line in lines[:2]), lines
    assert "2 adaptation steps, chosen among 1,2,4,6 on 600 validation tasks" in err


def test_steps_val_refuses_what_is_not_this_models_validation(tmp_path, runs_dir, capsys):
    model = make_model(tmp_path / "m")
    with pytest.raises(ValueError, match="eval.json does not exist"):
        runs.eval_runs(str(runs_dir), model, steps="val")
    write_val_report(model, {1: 60.0, 2: 70.0}, alphabets=["Early_Aramaic"])
    with pytest.raises(ValueError, match="not the runs' setting on the validation alphabets"):
        runs.eval_runs(str(runs_dir), model, steps="val")
    for setting in ({"shots": 5}, {"query": 3}, {"inner_lr": 0.05}):
        write_val_report(model, {1: 60.0, 2: 70.0}, **setting)
        with pytest.raises(ValueError, match="not the runs' setting"):
            runs.eval_runs(str(runs_dir), model, steps="val")
    write_val_report(model, {1: 60.0, 2: 70.0}, sha="0" * 64)
    with pytest.raises(ValueError, match="made for other params"):
        runs.eval_runs(str(runs_dir), model, steps="val")
    write_val_report(model, {1: 60.0, 2: 70.0}, sha="absent")
    with pytest.raises(ValueError, match="predates the params check"):
        runs.eval_runs(str(runs_dir), model, steps="val")
    Path(model, "eval.json").write_text('{"accuracy": {"five": {"mean": 1}}}')
    with pytest.raises(ValueError, match="cannot read .*eval.json .*--alphabets Tagalog"):
        runs.eval_runs(str(runs_dir), model, steps="val")
    with pytest.raises(ValueError, match="needs a model"):
        runs.eval_runs(str(runs_dir), None, steps="val")
    write_val_report(model, {1: 60.0, 2: 70.0})
    io.save(Path(model, "params.npz"),
            OmniglotSetup(RunFolder(model).read_config().resolved()).init_params())
    assert main(["eval-runs", "--runs", str(runs_dir), "--model", model, "--steps", "val"]) == 1
    err = capsys.readouterr().err
    assert "made for other params" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["eval-runs", "--runs", str(runs_dir), "--model", model, "--steps", "x"])
    assert e.value.code == 2
    assert "expected an integer >= 0 or 'val'; got 'x'" in capsys.readouterr().err


# ---- damaged runs: each refused naming the file -------------------------------------------


def test_damaged_runs_are_refused_naming_the_file(tmp_path, runs_dir, capsys):
    """19 answers for 20 test items (the run would be scored on 19), an RGB image of
    another size, a blank image: one line naming the file, exit 1, no traceback."""
    import shutil

    model = make_model(tmp_path / "m")

    def damaged(edit) -> tuple[int, str]:
        root = tmp_path / "runs"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(runs_dir, root)
        edit(root / "run02")
        code = main(["eval-runs", "--runs", str(root), "--model", model])
        return code, capsys.readouterr().err

    def nineteen(run):
        labels = run / "class_labels.txt"
        labels.write_text("\n".join(labels.read_text().splitlines()[:19]) + "\n")

    code, err = damaged(nineteen)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "run02/class_labels.txt answers 19 test items but run02/test holds 20" in err
    code, err = damaged(lambda run: Image.new("RGB", (64, 64), "red").save(
        run / "test" / "item03.png"))
    assert code == 1 and "run02/test/item03.png: the image is 64x64, expected 105x105" in err
    code, err = damaged(lambda run: Image.new("1", (105, 105), 1).save(
        run / "training" / "class07.png"))
    assert code == 1 and "run02/training/class07.png: the image is blank" in err
    code, err = damaged(lambda run: (run / "test" / "item05.png").write_bytes(b"\x89PNG\r\n"))
    assert code == 1 and "item05.png" in err and err.count("\n") == 1


def test_eval_runs_refuses_a_sinusoid_model(tmp_path, runs_dir, capsys):
    out = str(tmp_path / "sin")
    assert main(["train", "--iterations", "2", "--meta-batch", "2", "--hidden", "4",
                 "--no-progress", "--out", out]) == 0
    capsys.readouterr()
    assert main(["eval-runs", "--runs", str(runs_dir), "--model", out]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a sinusoid model (train with --task omniglot)" in err


# ---- iMAML: adapted as trained, beside gradient steps --------------------------------------


def proximal_reference(model: str, runs_dir: Path, steps: int, lam: float) -> dict:
    """Per-run error after ``steps`` Newton-CG iterations on the proximal objective, λ."""
    cfg, trained = runs.load_model(model)
    out = {}
    for run in load_runs(runs_dir):
        train, test = (a.reshape(1, 20, 784).astype(np.float64)
                       for a in run.preprocessed(center=True))
        phi, _ = tm.meta.proximal_adapt(OmniglotSetup.loss_fn, trained["theta"], train,
                                        np.arange(20)[None], lam, steps, solver="newton-cg",
                                        tol=1e-3, cg_steps=5)
        pred = np.argmax(np.asarray(nn.bn_mlp(phi, test))[0], axis=-1)
        out[run.name] = 100.0 * np.mean(pred != run.answers)
    return out


def test_imaml_model_is_scored_both_ways(tmp_path, runs_dir, capsys):
    model = make_model(tmp_path / "m", algo="imaml", lam=0.5, bn_adapt=True,
                       inner_solver="newton-cg", inner_tol=1e-3)
    result = runs.eval_runs(str(runs_dir), model, steps=2)
    assert result["model"] == pytest.approx(reference_errors(model, runs_dir, steps=2))
    assert result["model_proximal"] == pytest.approx(
        proximal_reference(model, runs_dir, 2, 0.5))
    assert result["proximal"]["lam"] == 0.5 and result["adaptation"] == "gradient"
    zero = runs.eval_runs(str(runs_dir), model, steps=2, proximal_lam=0.0)
    assert zero["model_proximal"] == pytest.approx(proximal_reference(model, runs_dir, 2, 0.0))
    assert main(["eval-runs", "--runs", str(runs_dir), "--model", model, "--steps", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(re.match(r"^run\d\d error \d+\.\d%  \(proximal \d+\.\d%\)  \(mhd \d+\.\d%\)$",
                        line) for line in lines[:2]), lines
    with pytest.raises(ValueError, match="give --proximal-lam with --steps T"):
        runs.eval_runs(str(runs_dir), model, steps="val", proximal_lam=1.0)


def test_steps_val_chooses_among_both_adaptations(tmp_path, runs_dir, capsys):
    model = make_model(tmp_path / "m", algo="imaml", lam=0.5, bn_adapt=True,
                       inner_solver="newton-cg", inner_tol=1e-3)
    prox = {"solver": "newton-cg", "lam": 0.25, "lr": 0.5, "tol": 1e-3, "cg_steps": 5}
    write_val_report(model, {1: 60.0, 2: 70.0}, adaptation="gradient+proximal", proximal=prox,
                     accuracy_proximal={"1": {"mean": 75.0, "ci95": 1.0},
                                        "2": {"mean": 74.0, "ci95": 1.0}})
    t, kind, _, _ = runs.validation_choice(model)
    assert (t, kind) == (1, "proximal")
    result = runs.eval_runs(str(runs_dir), model, steps="val")
    assert result["steps"] == 1 and result["adaptation"] == "proximal"
    assert result["steps_chosen_on"]["accuracy"] == 75.0
    assert "model_proximal" not in result  # the choice alone is scored
    # with the report's λ (0.25), not the run's (0.5)
    assert result["model"] == pytest.approx(proximal_reference(model, runs_dir, 1, 0.25))
    assert main(["eval-runs", "--runs", str(runs_dir), "--model", model, "--steps", "val"]) == 0
    assert "1 iterations of the proximal solver, chosen among" in capsys.readouterr().err
    write_val_report(model, {1: 60.0, 2: 75.0}, adaptation="gradient+proximal", proximal=prox,
                     accuracy_proximal={"1": {"mean": 70.0, "ci95": 1.0},
                                        "2": {"mean": 75.0, "ci95": 1.0}})
    assert runs.validation_choice(model)[:2] == (2, "gradient")  # a tie: gradient steps
