"""Omniglot meta-training, validation, early stopping, resume and eval (tinymeta.runs),
on a small synthetic data set in the Omniglot layout that the tests write themselves, plus
checks on the real background splits when they are present."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL", reason='Pillow is needed to decode PNGs: pip install -e ".[data]"')

import tinymeta as tm  # noqa: E402
import tinymeta.runs.evaluation as evaluate_mod  # noqa: E402
from tinymeta import distributed, io, runs  # noqa: E402
from tinymeta.cli import main  # noqa: E402
from tinymeta.runs import RunConfig, RunFolder, TrainingError, meta_gradient  # noqa: E402
from tinymeta.runs.omniglot import (  # noqa: E402
    OmniglotSetup,
    default_data,
    load_splits,
    split_names,
)
from tinymeta.runs.setup import to_backend  # noqa: E402
from tinymeta.tasks.base import TaskBatch  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
SMALL = [DATA / "images_background_small1.zip", DATA / "images_background_small2.zip"]
needs_data = pytest.mark.skipif(not all(p.exists() for p in SMALL),
                                reason=f"real Omniglot files not found under {DATA}")

pytestmark = pytest.mark.usefixtures("omniglot_cache")


def tiny(data_zip: str, **kw) -> RunConfig:
    """A config small enough to train in a second: 3-way 1-shot, hidden 8,8."""
    base = dict(data=(data_zip,), ways=3, shots=1, query=2, hidden=(8, 8), meta_batch=2,
                inner_steps=1, iterations=6, eval_every=2, val_tasks=4, log_every=2,
                checkpoint_every=3, val_alphabets=("Beta",), dtype="float64")
    base.update(kw)
    return RunConfig.create(task="omniglot", **base)


def step_fn(cfg: RunConfig, mask=None):
    """(θ, batch) ↦ (meta-gradient, info), as the training loop takes it."""
    setup = OmniglotSetup(cfg)

    def step(theta, batch):
        g, info = meta_gradient(cfg, setup, mask, {"theta": theta}, batch)
        return g["theta"], info

    return step


# ---- settings -----------------------------------------------------------------------------


def test_split_names_takes_commas_and_repeats():
    assert split_names(["a,b", " c "]) == ("a", "b", "c")
    assert split_names("x") == ("x",)
    assert split_names(None) == ()


def test_bn_adapt_defaults_and_refusals(data_zip):
    assert tiny(data_zip).resolved().options.bn_adapt is False  # Finn et al.: BN held out
    assert tiny(data_zip, algo="reptile").resolved().options.bn_adapt is True
    with pytest.raises(ValueError, match="adapts every parameter"):
        tiny(data_zip, algo="imaml", bn_adapt=False).resolved().validate()
    with pytest.raises(ValueError, match="not available for omniglot"):
        tiny(data_zip, algo="metasgd").resolved().validate()
    with pytest.raises(ValueError, match="both validation and test"):
        tiny(data_zip, test_alphabets=("Beta",)).resolved().validate()


def test_reptile_query_trains_on_support_and_query(data_zip):
    """--reptile-query: the learner runs on S ∪ Q, i.e. Reptile's meta-gradient equals that of
    a plain Reptile step on the pooled images."""
    with pytest.raises(ValueError, match="applies to --algo reptile only"):
        tiny(data_zip, algo="maml", reptile_query=True).resolved().validate()
    cfg = tiny(data_zip, algo="reptile", reptile_query=True, inner_steps=2,
               dtype="float64").resolved()
    cfg.validate()
    train, _, _ = load_splits(cfg.options)
    params = OmniglotSetup(cfg).init_params()
    batch = to_backend(train.sample(2, 3, 1, 2, seed=0))
    g, _ = step_fn(cfg)(params, batch)
    pooled = TaskBatch(np.concatenate([batch.support_x, batch.query_x], axis=1),
                       np.concatenate([batch.support_y, batch.query_y], axis=1),
                       batch.query_x, batch.query_y)
    want, _ = tm.meta.reptile(OmniglotSetup.loss_fn, params, pooled, cfg.inner_lr, 2)
    for a, b in zip(tm.tree_leaves(g), tm.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    plain, _ = tm.meta.reptile(OmniglotSetup.loss_fn, params, batch, cfg.inner_lr, 2)
    assert not np.allclose(tm.tree_leaves(g)[0], tm.tree_leaves(plain)[0])
    # --reptile-batch: blocks of the pooled images (3 classes × (1 + 2) images = 9 per task)
    with pytest.raises(ValueError, match="--reptile-batch must be in 1..9"):
        tiny(data_zip, algo="reptile", reptile_query=True, query=2,
             reptile_batch=10).resolved().validate()
    with pytest.raises(ValueError, match="applies to --algo reptile only"):
        tiny(data_zip, algo="fomaml", reptile_batch=3).resolved().validate()
    cfg3 = tiny(data_zip, algo="reptile", reptile_query=True, reptile_batch=3, inner_steps=2,
                dtype="float64").resolved()
    g3, _ = step_fn(cfg3)(params, batch)
    want3, _ = tm.meta.reptile(OmniglotSetup.loss_fn, params, pooled, cfg.inner_lr, 2,
                               inner_batch=3)
    for a, b in zip(tm.tree_leaves(g3), tm.tree_leaves(want3)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_splits_are_disjoint_by_alphabet(data_zip):
    train, val, test = load_splits(tiny(data_zip, test_alphabets=("Gamma",)).resolved().options)
    assert train.alphabets == ["Alpha"] and val.alphabets == ["Beta"]
    assert test.alphabets == ["Gamma"]
    assert train.num_classes == 3 * 4  # rotations are classes of their own


def test_too_few_classes_is_an_error(data_zip):
    with pytest.raises(ValueError, match="fewer than 9-way"):
        load_splits(tiny(data_zip, ways=9).resolved().options)


# ---- the pieces ---------------------------------------------------------------------------


def test_task_accuracies_hard_coded():
    """With all-zero output weights every logit ties, argmax says class 0: accuracy 1/N."""
    cfg = RunConfig.create(task="omniglot", ways=4, hidden=(5,), dtype="float64").resolved()
    setup = OmniglotSetup(cfg)
    params = setup.init_params()
    params[-1]["W"] = np.zeros_like(params[-1]["W"])
    params[-1]["b"] = np.zeros_like(params[-1]["b"])
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(4), (3, 2))
    batch = TaskBatch(rng.random((3, 8, 784)), y, rng.random((3, 8, 784)), y)
    acc = evaluate_mod.scores_by_step(setup, params, batch, 0.1, [0], chunk=2)
    np.testing.assert_array_equal(acc[0], [0.25, 0.25, 0.25])


def test_accuracy_summary_interval():
    cfg = RunConfig.create(task="omniglot").resolved()
    s = OmniglotSetup(cfg).summary(np.array([1.0, 0.5, 0.5, 0.0]))
    assert s["mean"] == pytest.approx(50.0)
    assert s["ci95"] == pytest.approx(1.96 * np.std([100, 50, 50, 0], ddof=1) / 2)


@pytest.mark.parametrize("algo", OmniglotSetup.algos)
def test_compiled_step_is_bitwise_eager(data_zip, algo):
    cfg = tiny(data_zip, algo=algo, inner_steps=2, cg_steps=2).resolved()
    train, _, _ = load_splits(cfg.options)
    params = OmniglotSetup(cfg).init_params()
    mask = OmniglotSetup(cfg).adapt_mask(params)
    eager = step_fn(cfg, mask)
    compiled = tm.compile(step_fn(cfg, mask))
    with tm.set_backend("numpy"):
        for seed in (0, 1):  # the second call replays the recorded tape
            batch = to_backend(train.sample(2, 3, 1, 2, seed=seed))
            g1, i1 = eager(params, batch)
            g2, i2 = compiled(params, batch)
            for a, b in zip(tm.tree_leaves(g1), tm.tree_leaves(g2)):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(i1["query_loss"], i2["query_loss"])


# ---- training -----------------------------------------------------------------------------


def test_train_writes_a_run_and_chooses_on_validation(data_zip, tmp_path):
    out = str(tmp_path / "run")
    result = runs.train(tiny(data_zip), out, progress=False)
    for name in ("config.json", "train.jsonl", "val.jsonl", "checkpoint.npz", "best.npz",
                 "params.npz", "result.json"):
        assert (tmp_path / "run" / name).exists(), name
    val = [json.loads(line) for line in open(tmp_path / "run" / "val.jsonl")]
    assert [r["iteration"] for r in val] == [2, 4, 6]
    best = max(val, key=lambda r: (r["accuracy"], -r["iteration"]))
    assert result["best_iteration"] == best["iteration"]
    assert result["best_val_accuracy"] == pytest.approx(best["accuracy"])
    chosen, meta_info = io.load(tmp_path / "run" / "best.npz", with_metadata=True)
    assert meta_info["iteration"] == best["iteration"]
    for a, b in zip(tm.tree_leaves(io.load(tmp_path / "run" / "params.npz")),
                    tm.tree_leaves(chosen)):
        np.testing.assert_array_equal(a, b)
    assert result["s_per_iteration"] > 0 and result["finished"]


def test_early_stopping(data_zip, tmp_path):
    """A vanishing outer lr keeps validation flat: with patience 2 the run stops at the third
    validation and keeps the first."""
    cfg = tiny(data_zip, outer_lr=1e-30, patience=2, iterations=40, log_every=4)
    result = runs.train(cfg, str(tmp_path / "run"), progress=False)
    assert result["stopped_early"] and result["iteration"] == 6
    assert result["best_iteration"] == 2
    # the steps after the last regular log line (4) are logged at the stop, so the time per
    # iteration covers all 6: the two lines' windows are 4 and 2 steps
    lines = (tmp_path / "run" / "train.jsonl").read_text().splitlines()
    logged = [json.loads(x) for x in lines]
    assert [r["iteration"] for r in logged] == [4, 6]
    want = (4 * logged[0]["step_s"] + 2 * logged[1]["step_s"]) / 6
    assert result["s_per_iteration"] == pytest.approx(want, rel=1e-12) and want > 0


def test_resume_is_bit_for_bit(data_zip, tmp_path):
    cfg = tiny(data_zip, augment=True, iterations=8)
    runs.train(cfg, str(tmp_path / "a"), progress=False)
    partial = runs.train(cfg, str(tmp_path / "b"), progress=False, stop_after=5)
    assert not partial["finished"]
    runs.train(cfg, str(tmp_path / "b"), resume=True, progress=False)
    for name in ("params.npz", "best.npz"):
        for a, b in zip(tm.tree_leaves(io.load(tmp_path / "a" / name)),
                        tm.tree_leaves(io.load(tmp_path / "b" / name))):
            np.testing.assert_array_equal(a, b)
    ca = io.load(tmp_path / "a" / "checkpoint.npz")["model"]
    cb = io.load(tmp_path / "b" / "checkpoint.npz")["model"]
    for a, b in zip(tm.tree_leaves(ca), tm.tree_leaves(cb)):
        np.testing.assert_array_equal(a, b)
    va = (tmp_path / "a" / "val.jsonl").read_text().splitlines()
    vb = (tmp_path / "b" / "val.jsonl").read_text().splitlines()
    assert [json.loads(x)["accuracy"] for x in va] == [json.loads(x)["accuracy"] for x in vb]


def test_an_existing_run_is_not_overwritten(data_zip, tmp_path):
    runs.train(tiny(data_zip, iterations=2), str(tmp_path), progress=False)
    with pytest.raises(TrainingError, match="already holds a run"):
        runs.train(tiny(data_zip, iterations=2), str(tmp_path), progress=False)


# ---- the command line ---------------------------------------------------------------------


def test_cli_train_eval(data_zip, tmp_path, capsys):
    out = str(tmp_path / "run")
    rc = main(["train", "--task", "omniglot", "--data", data_zip, "--ways", "3",
               "--query", "2", "--hidden", "8,8", "--meta-batch", "2", "--inner-steps", "1",
               "--iterations", "4", "--eval-every", "2", "--val-tasks", "4",
               "--val-alphabets", "Beta", "--test-alphabets", "Gamma", "--bn-adapt",
               "--compile", "--no-progress", "--out", out])
    assert rc == 0
    assert "chosen on validation" in capsys.readouterr().out
    cfg = RunFolder(out).read_config()
    assert cfg.options.bn_adapt is True and cfg.compile is True
    assert cfg.options.test_alphabets == ("Gamma",)
    rc = main(["eval", out, "--tasks", "30"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "3-way 1-shot, 30 test tasks" in text and "Gamma (test" in text
    rows = [line.split() for line in text.splitlines()[2:]]
    assert [r[0] for r in rows] == ["0", "1"]
    assert all(r[1].endswith("%") and r[2].endswith("%") for r in rows)
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["accuracy"]["1"]["tasks"] == 30
    params = (tmp_path / "run" / "params.npz").read_bytes()
    assert report["params_sha256"] == hashlib.sha256(params).hexdigest()
    # the step count for the runs is chosen on the validation alphabets, never on the test's
    with pytest.raises(ValueError, match="not the runs' setting on the validation alphabets"):
        runs.validation_steps(out, min_tasks=30)
    assert main(["eval", out, "--tasks", "30", "--alphabets", "Beta", "--steps", "0,1,2"]) == 0
    with pytest.raises(ValueError, match=r"'query': 2.*--alphabets Beta --query 1` first"):
        runs.validation_steps(out, min_tasks=30)  # 2 query images per class: not the runs'
    assert main(["eval", out, "--tasks", "30", "--alphabets", "Beta", "--steps", "0,1,2",
                 "--query", "1"]) == 0
    capsys.readouterr()
    acc = json.loads((tmp_path / "run" / "eval.json").read_text())["accuracy"]
    top = max(a["mean"] for a in acc.values())
    assert runs.validation_steps(out, min_tasks=30)[0] == min(
        int(t) for t, a in acc.items() if a["mean"] == top)
    with pytest.raises(ValueError, match="holds 30 tasks, fewer than 600"):
        runs.validation_steps(out)  # a validation report needs 600 tasks unless told


def test_evaluate_refuses_params_rewritten_while_it_ran(data_zip, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    runs.train(tiny(data_zip, iterations=2), out, progress=False)
    real = evaluate_mod.scores_by_step

    def and_rewrite(setup, theta, *args, **kw):  # as a run still training would
        acc = real(setup, theta, *args, **kw)
        io.save(os.path.join(out, "params.npz"), tm.tree_map(lambda p: p + 1.0, theta))
        return acc

    monkeypatch.setattr(evaluate_mod, "scores_by_step", and_rewrite)
    with pytest.raises(TrainingError, match="changed while it was evaluated"):
        runs.evaluate(out, tasks=3, steps=[1])
    assert not os.path.exists(os.path.join(out, "eval.json"))


def test_a_best_npz_of_another_iteration_is_refused(data_zip, tmp_path):
    """best.npz written after the checkpoint (a crash between the two), then a resume whose
    validations do not rewrite it: its params are not those validation chose."""
    out = str(tmp_path / "run")
    result = runs.train(tiny(data_zip, iterations=4, patience=0), out, progress=False)
    best = os.path.join(out, "best.npz")
    theta, meta_best = io.load(best, with_metadata=True)
    assert meta_best["iteration"] == result["best_iteration"]
    io.save(best, theta, metadata={**meta_best, "iteration": 3})
    with pytest.raises(TrainingError, match="best.npz holds the params of iteration 3, but "
                       f"validation chose iteration {result['best_iteration']}"):
        runs.train(tiny(data_zip, iterations=4, patience=0), out, resume=True,
                       progress=False)


def test_cli_refuses_omniglot_options_elsewhere(tmp_path, capsys):
    rc = main(["train", "--task", "sinusoid", "--ways", "5", "--out", str(tmp_path)])
    assert rc == 1
    assert "--ways applies to --task omniglot only" in capsys.readouterr().err


def test_cli_resume_keeps_settings(data_zip, tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "--task", "omniglot", "--data", data_zip, "--ways", "3", "--hidden", "8",
            "--meta-batch", "2", "--inner-steps", "1", "--iterations", "4", "--val-tasks", "2",
            "--val-alphabets", "Beta", "--no-progress", "--out", out]
    assert main(args + ["--stop-after", "2"]) == 0
    assert "continue with --resume" in capsys.readouterr().out
    assert main(["train", "--resume", "--ways", "4", "--out", out]) == 1
    assert "differs from the run's" in capsys.readouterr().err
    assert main(["train", "--resume", "--no-progress", "--out", out]) == 0


# ---- the real background splits -------------------------------------------------------------


@needs_data
def test_real_splits_hold_out_the_validation_alphabets():
    cfg = RunConfig.create(task="omniglot", data=tuple(map(str, SMALL))).resolved()
    train, val, test = load_splits(cfg.options)
    assert test is None
    assert val.alphabets == ["Tagalog"] and val.num_characters == 17
    assert "Tagalog" not in train.alphabets
    assert train.num_characters == 242 - 17 and train.num_classes == 4 * 225


@needs_data
def test_default_data_finds_the_two_small_splits():
    assert [Path(p).name for p in default_data()] == [p.name for p in SMALL]


def test_imaml_validation_adapts_with_its_inner_solver(data_zip, tmp_path, monkeypatch):
    """The early stopping of an iMAML run scores θ_0 as it is trained: T iterations of its
    inner solver on the validation tasks, not T gradient steps."""
    import tinymeta.runs.loop as loop_mod

    asked = []

    def spy(*args, **kw):
        asked.append(kw.get("proximal"))
        return evaluate_mod.scores_by_step(*args, **kw)

    monkeypatch.setattr(loop_mod, "scores_by_step", spy)
    out = str(tmp_path / "im")
    cfg = tiny(data_zip, algo="imaml", inner_steps=2, iterations=2, eval_every=2, lam=0.5)
    runs.train(cfg, out, progress=False)
    assert asked == [{"solver": "newton-cg", "lam": 0.5, "lr": 0.1, "tol": 1e-3, "cg_steps": 5}]
    cfg = RunFolder(out).read_config().resolved()
    setup = OmniglotSetup(cfg)
    setup.load_training()
    part, _ = setup.validation_batch(distributed.world())
    theta = RunFolder(out).load_checkpoint(cfg).model["theta"]
    phi, _ = tm.meta.proximal_adapt(setup.loss_fn, theta, part.support_x, part.support_y, 0.5,
                                    2, solver="newton-cg", tol=1e-3, cg_steps=5)
    want = setup.validation_score(setup.scores(phi, part.query_x, part.query_y))
    got = RunFolder(out).read_log("val.jsonl")[-1]["accuracy"]
    assert got == pytest.approx(want, abs=1e-12)
