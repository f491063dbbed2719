"""A property of every reader of the files a user hands the program: hypothesis damages a
real file (truncation, bit flips, spliced bytes, a JSON value or an array leaf replaced by one
of another type or shape) and the reader either reads it or raises one of its documented
errors (ValueError, TrainingError, FileNotFoundError), whose message names the file."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("PIL", reason='Pillow is needed to decode PNGs: pip install -e ".[data]"')

import tinymeta as tm  # noqa: E402
from tinymeta import cli, io  # noqa: E402
from tinymeta.runs import RunFolder, TrainingError  # noqa: E402
from tinymeta.tasks.omniglot import Omniglot  # noqa: E402
from tinymeta.tasks.oneshot_runs import load_runs  # noqa: E402

DOCUMENTED = (ValueError, TrainingError, FileNotFoundError)
SETTINGS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow], deadline=None)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 30, 10 ** 30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=6)


@st.composite
def damaged_bytes(draw, raw: bytes) -> bytes:
    """Truncated, one or a few bits flipped, or a run of bytes replaced."""
    kind = draw(st.sampled_from(["truncate", "flip", "splice"]))
    if kind == "truncate":
        return raw[:draw(st.integers(0, max(len(raw) - 1, 0)))]
    out = bytearray(raw)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    i = draw(st.integers(0, len(out) - 1))
    junk = draw(st.binary(min_size=1, max_size=16))
    out[i:i + len(junk)] = junk
    return bytes(out)


@st.composite
def json_with_a_value_replaced(draw, obj):
    """The JSON object with one (possibly nested) value replaced by a drawn one."""
    obj = json.loads(json.dumps(obj))
    node, key = obj, None
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        if not isinstance(node[key], (dict, list)) or not node[key] or draw(st.booleans()):
            break
        node = node[key]
    if key is not None:
        node[key] = draw(JSON_VALUES)
    return obj


def refused_or_read(read, *names) -> None:
    """``read()`` succeeds, or raises a documented error naming one of ``names``."""
    try:
        read()
    except DOCUMENTED as e:
        msg = str(e)
        assert any(str(n) in msg for n in names), msg
        assert "\n" not in msg.strip(), msg


# ---- the files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real sinusoid Meta-SGD run (params, lrs, checkpoint, logs) and its eval.json."""
    out = tmp_path_factory.mktemp("real") / "run"
    with tm.set_backend("numpy"):
        assert cli.main(["train", "--algo", "metasgd", "--meta-batch", "3", "--shots", "3",
                         "--hidden", "4", "--iterations", "3", "--log-every", "1",
                         "--no-progress", "--out", str(out)]) == 0
        assert cli.main(["eval", str(out), "--tasks", "4", "--steps", "0,1"]) == 0
    return out


@pytest.fixture
def run(run_dir, tmp_path) -> Path:
    out = tmp_path / "run"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(run_dir, out)
    return out


def read_all(out: Path) -> None:
    """Every reader of a run folder: the config, the model, the checkpoint, the logs, the
    report."""
    folder = RunFolder(out)
    cfg = folder.read_config().resolved()
    with tm.set_backend("numpy"):
        folder.load_model(cfg)
        folder.load_checkpoint(cfg)
    folder.read_log("train.jsonl")
    folder.read_eval()


@pytest.mark.parametrize("name", ["config.json", "params.npz", "lrs.npz", "checkpoint.npz",
                                  "train.jsonl", "eval.json"])
@SETTINGS
@given(data=st.data())
def test_damaged_bytes_of_a_run_file(run, name, data):
    path = run / name
    raw = path.read_bytes()
    path.write_bytes(data.draw(damaged_bytes(raw)))
    try:
        refused_or_read(lambda: read_all(run), path)
    finally:
        path.write_bytes(raw)


@pytest.mark.parametrize("name", ["config.json", "eval.json"])
@SETTINGS
@given(data=st.data())
def test_a_json_value_of_another_type(run, name, data):
    path = run / name
    raw = path.read_bytes()
    path.write_text(json.dumps(data.draw(json_with_a_value_replaced(json.loads(raw)))))
    try:
        refused_or_read(lambda: read_all(run), path)
    finally:
        path.write_bytes(raw)


@SETTINGS
@given(data=st.data())
def test_a_log_line_of_another_type(run, data):
    path = run / "train.jsonl"
    raw = path.read_text()
    lines = raw.splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    lines[i] = json.dumps(data.draw(json_with_a_value_replaced(json.loads(lines[i]))))
    path.write_text("\n".join(lines) + "\n")
    try:
        refused_or_read(lambda: read_all(run), path)
    finally:
        path.write_text(raw)


LEAVES = st.builds(
    lambda shape, dtype: np.ones(shape, dtype=dtype),
    st.lists(st.integers(0, 4), max_size=3).map(tuple),
    st.sampled_from([np.float32, np.float64, np.int64, np.complex64, np.bool_, np.float16]))


@pytest.mark.parametrize("name", ["params.npz", "lrs.npz", "checkpoint.npz"])
@SETTINGS
@given(data=st.data())
def test_an_array_of_another_shape_or_dtype(run, name, data):
    path = run / name
    raw = path.read_bytes()
    tree, meta = io.load(path, with_metadata=True)
    leaves, treedef = tm.tree_flatten(tree)
    i = data.draw(st.integers(0, len(leaves) - 1))
    leaves[i] = data.draw(LEAVES | JSON_VALUES.filter(lambda v: isinstance(
        v, (bool, int, float, str)) or v is None))
    io.save(path, tm.tree_unflatten(treedef, leaves), metadata=meta)
    try:
        refused_or_read(lambda: read_all(run), path)
    finally:
        path.write_bytes(raw)


# ---- the data and the official runs --------------------------------------------------------


@pytest.fixture(scope="module")
def data_zip(tmp_path_factory) -> bytes:
    from synthetic_omniglot import write_zip

    return write_zip(tmp_path_factory.mktemp("omniglot") / "images_background.zip").read_bytes()


@SETTINGS
@given(data=st.data())
def test_a_damaged_omniglot_zip(data_zip, tmp_path, data):
    path = tmp_path / "bg.zip"
    path.write_bytes(data.draw(damaged_bytes(data_zip)))
    refused_or_read(lambda: Omniglot(path, cache=False), path)


@pytest.fixture(scope="module")
def runs_zip(tmp_path_factory) -> bytes:
    from test_eval_runs import drawing

    root = tmp_path_factory.mktemp("runs")
    path = root / "runs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        lines = []
        for k in range(1, 5):
            for part, name in (("training", f"class{k:02d}"), ("test", f"item{k:02d}")):
                im = root / "im.png"
                drawing(k, part == "test").save(im)
                zf.write(im, f"run01/{part}/{name}.png")
            lines.append(f"run01/test/item{k:02d}.png run01/training/class{k:02d}.png")
        zf.writestr("run01/class_labels.txt", "\n".join(lines) + "\n")
    os.unlink(root / "im.png")
    return path.read_bytes()


@SETTINGS
@given(data=st.data())
def test_a_damaged_runs_zip(runs_zip, tmp_path, data):
    path = tmp_path / "runs.zip"
    path.write_bytes(data.draw(damaged_bytes(runs_zip)))
    refused_or_read(lambda: load_runs(path), path)
