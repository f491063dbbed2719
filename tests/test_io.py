"""tm.save / tm.load: round trips, atomic writes, and refusal of pickled files."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from tinymeta import io, nn


def test_round_trip_keeps_structure_dtype_and_values(tmp_path):
    tree = {"params": nn.mlp_init([1, 4, 1]), "step": np.asarray(7, np.int64), "n": 3,
            "lr": 0.5, "flag": True, "none": None, "pair": (np.zeros(2), "name")}
    path = tmp_path / "model.npz"
    io.save(path, tree, metadata={"rng": {"state": 2 ** 127 + 1}})
    back, meta = io.load(path, with_metadata=True)
    assert isinstance(back["params"], list) and isinstance(back["pair"], tuple)
    for a, b in zip(tree["params"], back["params"]):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert back["n"] == 3 and back["lr"] == 0.5 and back["flag"] is True
    assert back["none"] is None and back["pair"][1] == "name"
    assert int(back["step"]) == 7
    assert meta == {"rng": {"state": 2 ** 127 + 1}}
    assert io.load(path)["n"] == 3


def test_save_writes_exactly_the_path_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "weights.bin"
    io.save(path, [np.ones(2)])
    io.save(path, [np.zeros(2)])  # replaces
    assert sorted(os.listdir(tmp_path)) == ["weights.bin"]
    np.testing.assert_array_equal(io.load(path)[0], [0.0, 0.0])


def test_refuses_pickled_files(tmp_path):
    raw = tmp_path / "raw.pkl"
    with open(raw, "wb") as f:
        pickle.dump([np.ones(2)], f)
    with pytest.raises(ValueError, match="pickle"):
        io.load(raw)
    header = '{"format": "tinymeta.pytree/1", "tree": {"list": [{"array": 0}]}}'
    obj = tmp_path / "obj.npz"
    np.savez(obj, leaf_0=np.array([{"evil": 1}], dtype=object), __tree__=np.array(header))
    with pytest.raises(ValueError, match="pickle"):
        io.load(obj)


def test_refuses_foreign_npz_and_unsaveable_trees(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, x=np.ones(2))
    with pytest.raises(ValueError, match="tinymeta.save"):
        io.load(other)
    with pytest.raises(TypeError, match="keys"):
        io.save(tmp_path / "x.npz", {1: np.ones(1)})
    with pytest.raises(TypeError, match="dtype"):
        io.save(tmp_path / "x.npz", [np.array([object()], dtype=object)])


def test_top_level_save_load_when_exported(tmp_path):
    import tinymeta as tm

    if not hasattr(tm, "save"):
        pytest.skip("tinymeta/__init__.py does not export save/load yet")
    tm.save(tmp_path / "p.npz", [np.ones(3)])
    np.testing.assert_array_equal(tm.load(tmp_path / "p.npz")[0], np.ones(3))


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "data.json"
    io.write_json(path, {"a": 1})
    with pytest.raises(RuntimeError, match="half way"):
        with io.atomic_write(path) as f:
            f.write('{"a": ')
            raise RuntimeError("half way")
    assert json.loads(path.read_text()) == {"a": 1}  # the old file, whole
    assert sorted(os.listdir(tmp_path)) == ["data.json"]  # no temporary file left
    io.write_json(tmp_path / "sub" / "new.json", [1, 2], indent=1)  # folder created
    assert json.loads((tmp_path / "sub" / "new.json").read_text()) == [1, 2]
