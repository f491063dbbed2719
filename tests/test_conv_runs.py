"""Omniglot runs with Conv4 (``--model conv4``) and ANIL (``--anil``), on the small synthetic
data set of ``test_classify.py``: every algorithm's meta-gradient, MAML's two second-order
methods agreeing, the compiled step equal to the eager one, training, evaluation, resume,
the official-runs predictor, the masks, the refusals, and an MLP run's config.json as
before."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("PIL", reason='Pillow is needed to decode PNGs: pip install -e ".[data]"')

import tinymeta as tm  # noqa: E402
from tinymeta import io, meta, runs  # noqa: E402
from tinymeta.cli import main  # noqa: E402
from tinymeta.runs import RunConfig, meta_gradient  # noqa: E402
from tinymeta.runs.official import run_predictor  # noqa: E402
from tinymeta.runs.omniglot import OmniglotSetup, load_splits  # noqa: E402
from tinymeta.runs.setup import to_backend  # noqa: E402

pytestmark = pytest.mark.usefixtures("omniglot_cache")


def tiny(data_zip: str, **kw) -> RunConfig:
    """3-way 1-shot Conv4 of 4 filters a block, 2 tasks a batch, float64."""
    base = dict(data=(data_zip,), ways=3, shots=1, query=1, hidden=(4,), meta_batch=2,
                inner_steps=1, iterations=4, eval_every=2, val_tasks=3, log_every=2,
                checkpoint_every=2, val_alphabets=("Beta",), dtype="float64", model="conv4")
    base.update(kw)
    return RunConfig.create(task="omniglot", **base)


def a_batch(cfg: RunConfig, seed: int = 0):
    setup = OmniglotSetup(cfg)
    train, _, _ = load_splits(cfg.options)
    return setup, to_backend(setup._for_model(train.sample(2, 3, 1, 1, seed=seed)))


def test_conv4_batches_are_images_and_params_are_conv4s(data_zip):
    setup, batch = a_batch(tiny(data_zip).resolved())
    assert batch.support_x.shape == (2, 3, 28, 28, 1)
    assert batch.query_x.shape == (2, 3, 28, 28, 1)
    params = setup.init_params()
    assert [p.shape for p in params[:2]] == [(3, 3, 1, 4), (4,)]
    assert params[-2].shape == (2 * 2 * 4, 3) and params[-1].dtype == np.float64
    assert setup.loss_fn(params, batch.support_x, batch.support_y).shape == (2,)


@pytest.mark.parametrize("algo", OmniglotSetup.algos)
def test_every_algorithm_gives_a_finite_meta_gradient(data_zip, algo):
    cfg = tiny(data_zip, algo=algo, inner_steps=2, cg_steps=2).resolved()
    setup, batch = a_batch(cfg)
    theta = setup.init_params()
    g, info = meta_gradient(cfg, setup, setup.adapt_mask(theta), {"theta": theta}, batch)
    for a, b in zip(g["theta"], theta):
        assert a.shape == b.shape and np.all(np.isfinite(a))
    assert np.any(g["theta"][0] != 0)  # the body is meta-learned


@pytest.mark.parametrize("anil", [False, True])
def test_maml_unrolled_equals_hvp_chain(data_zip, anil):
    setup, batch = a_batch(tiny(data_zip, inner_steps=2, anil=anil).resolved())
    theta = setup.init_params()
    mask = setup.adapt_mask(theta)
    g1, _ = meta.maml(setup.loss_fn, theta, batch, 0.1, 2, method="unrolled", adapt=mask)
    g2, _ = meta.maml(setup.loss_fn, theta, batch, 0.1, 2, method="hvp_chain", adapt=mask)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13)


def test_compiled_step_is_bitwise_eager(data_zip):
    cfg = tiny(data_zip, inner_steps=2).resolved()
    setup, _ = a_batch(cfg)
    theta = setup.init_params()
    mask = setup.adapt_mask(theta)

    def step(theta, batch):
        g, info = meta_gradient(cfg, setup, mask, {"theta": theta}, batch)
        return g["theta"], info["query_loss"]

    compiled = tm.compile(step)
    with tm.set_backend("numpy"):
        for seed in (0, 1):  # the second call replays the recorded tape
            batch = a_batch(cfg, seed)[1]
            for a, b in zip(tm.tree_leaves(step(theta, batch)),
                            tm.tree_leaves(compiled(theta, batch))):
                np.testing.assert_array_equal(a, b)


def test_masks(data_zip):
    setup = OmniglotSetup(tiny(data_zip, anil=True).resolved())
    assert setup.adapt_mask(setup.init_params()) == [False] * 8 + [True, True]
    setup = OmniglotSetup(tiny(data_zip).resolved())
    assert setup.adapt_mask(setup.init_params()) == [True, False] * 4 + [True, True]
    mlp = OmniglotSetup(tiny(data_zip, model="mlp", hidden=(8, 8), anil=True).resolved())
    assert mlp.adapt_mask(mlp.init_params()) == [{"W": False, "shift": False},
                                                 {"W": False, "shift": False},
                                                 {"W": True, "b": True}]


@pytest.mark.parametrize("settings, match", [
    ({"algo": "reptile", "anil": True}, "--anil needs an adapt= mask"),
    ({"hidden": (8, 8)}, "takes one width"),
    ({"bn": False}, "drop --no-bn"),
    ({"model": "resnet"}, "--model must be one of mlp, conv4"),
])
def test_refusals(data_zip, settings, match):
    with pytest.raises(ValueError, match=match):
        tiny(data_zip, **settings).resolved().validate()


def test_config_json_of_an_mlp_run_is_as_before():
    """The options added here are written only when set: an MLP run's config.json keeps the
    keys earlier versions wrote (and a conv4 run's round-trips)."""
    mlp = RunConfig.create(task="omniglot").to_json()
    assert "model" not in mlp and "anil" not in mlp
    conv = RunConfig.create(task="omniglot", model="conv4", anil=True)
    d = conv.to_json()
    assert d["model"] == "conv4" and d["anil"] is True
    assert RunConfig.from_json(d).task_options() == conv.task_options()


def test_conv4_hidden_defaults_to_its_filters_and_old_configs_read_as_64(data_zip):
    """A conv4 run's resolved ``hidden`` is Conv4's one filter count, 64 (not the MLP's
    widths); a config.json written before that default, with the MLP's widths, still
    builds 64 filters a block."""
    cfg = tiny(data_zip, hidden=None).resolved()
    assert cfg.hidden == (64,)
    assert OmniglotSetup(cfg).init_params()[0].shape == (3, 3, 1, 64)
    old = tiny(data_zip).to_json() | {"hidden": [256, 128, 64, 64]}
    params = OmniglotSetup(RunConfig.from_json(old).resolved()).init_params()
    assert [p.shape[-1] for p in params[:8:2]] == [64, 64, 64, 64]
    assert tiny(data_zip, model="mlp", hidden=None).resolved().hidden == (256, 128, 64, 64)


def test_train_eval_and_resume_from_the_command_line(data_zip, tmp_path, capsys):
    common = ["train", "--task", "omniglot", "--model", "conv4", "--hidden", "4", "--data",
              data_zip, "--ways", "3", "--shots", "1", "--meta-batch", "2", "--iterations",
              "4", "--eval-every", "2", "--val-tasks", "3", "--val-alphabets", "Beta",
              "--checkpoint-every", "2", "--dtype", "float64", "--no-progress", "--anil"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(common + ["--out", a]) == 0
    assert main(common + ["--out", b, "--stop-after", "2"]) == 0
    assert main(common + ["--out", b, "--resume"]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model"] == "conv4" and config["anil"] is True
    for name in ("params.npz", "best.npz"):
        for x, y in zip(tm.tree_leaves(io.load(tmp_path / "a" / name)),
                        tm.tree_leaves(io.load(tmp_path / "b" / name))):
            np.testing.assert_array_equal(x, y)
    assert main(["eval", a, "--tasks", "4", "--steps", "0,1"]) == 0
    report = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert report["tasks"] == 4 and set(report["accuracy"]) == {"0", "1"}
    capsys.readouterr()


def test_the_runs_predictor_feeds_images_to_conv4(data_zip):
    cfg = tiny(data_zip).resolved()
    setup = OmniglotSetup(cfg)
    theta = setup.init_params()
    rng = np.random.default_rng(0)
    train, test = rng.random((3, 28, 28)), rng.random((5, 28, 28))
    got = run_predictor(cfg, theta, steps=1)(train, test)
    adapted = meta.adapt(setup.loss_fn, theta, train.reshape(1, 3, 28, 28, 1),
                         np.arange(3)[None], cfg.inner_lr, 1, setup.adapt_mask(theta))
    want = np.argmax(tm.nn.conv4(adapted, test.reshape(1, 5, 28, 28, 1))[0], axis=-1)
    np.testing.assert_array_equal(got, want)


def test_a_tiny_conv4_run_trains(data_zip, tmp_path):
    result = runs.train(tiny(data_zip), str(tmp_path / "run"), progress=False)
    assert result["finished"] and result["best_iteration"] in (2, 4)
