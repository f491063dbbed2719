"""tm.save / tm.load: round trips, atomic writes, and refusal of pickled files."""

from __future__ import annotations

import io as io_module
import json
import os
import pickle
import struct
import zipfile
import zlib

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


# ---- damaged and crafted files: one ValueError naming the file -----------------------------


def _zip_member(name: str, data: bytes, crc: int, size: int, offset: int) -> tuple:
    """(local header + data, central directory entry) of one deflated zip member."""
    raw = name.encode()
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(data), size,
                        len(raw), 0) + raw + data
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, crc, len(data),
                          size, len(raw), 0, 0, 0, 0, 0, offset) + raw
    return local, central


def write_bomb(path, nbytes: int) -> None:
    """A tinymeta .npz whose one leaf inflates to ``nbytes`` of float64 zeros: a 16 MiB
    deflate block of zeros, flushed so that it decodes on its own, repeated."""
    head = io_module.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f8", "fortran_order": False, "shape": (nbytes // 8,)})
    header = head.getvalue()
    chunk_size = 1 << 24
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(chunk_size)) + c.flush(zlib.Z_FULL_FLUSH)
    data = first + block * (nbytes // chunk_size) + c.flush()
    crc = zlib.crc32(header)
    zeros = bytes(chunk_size)
    for _ in range(nbytes // chunk_size):
        crc = zlib.crc32(zeros, crc)
    tree = json.dumps({"format": "tinymeta.pytree/1", "tree": {"list": [{"array": 0}]}})
    text = io_module.BytesIO()
    np.lib.format.write_array(text, np.array(tree))
    t = text.getvalue()
    t_data = zlib.compress(t, 9)[2:-4]  # raw deflate
    leaf_local, leaf_central = _zip_member("leaf_0.npy", data, crc, len(header) + nbytes, 0)
    tree_local, tree_central = _zip_member("__tree__.npy", t_data, zlib.crc32(t), len(t),
                                           len(leaf_local))
    cd = leaf_central + tree_central
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 2, 2, len(cd),
                      len(leaf_local) + len(tree_local), 0)
    with open(path, "wb") as f:
        f.write(leaf_local + tree_local + cd + end)


def test_a_decompression_bomb_is_refused_before_it_is_inflated(tmp_path):
    """A ~2 MB file that would inflate to 2 GiB: refused by the declared size, naming the
    file; a smaller one loads under a raised limit and is refused under a lower one."""
    bomb = tmp_path / "bomb.npz"
    write_bomb(bomb, 2 << 30)
    assert os.path.getsize(bomb) < 4 << 20
    with pytest.raises(ValueError, match=rf"load: {bomb} declares 21474\d+ bytes.*max_bytes"):
        io.load(bomb)
    small = tmp_path / "small.npz"
    write_bomb(small, 32 << 20)
    with pytest.raises(ValueError, match="small.npz declares"):
        io.load(small, max_bytes=1 << 20)
    (leaf,) = io.load(small)  # the default limit, 1 GiB, takes 32 MiB
    assert leaf.shape == (4 << 20,) and not leaf.any()
    assert io.MAX_BYTES == 1 << 30


def _tree_npz(path, tree_text: str, **arrays) -> None:
    np.savez(path, __tree__=np.array(tree_text), **arrays)


HEADER = '{"format": "tinymeta.pytree/1", "tree": %s}'


@pytest.mark.parametrize("name, make, what", [
    ("empty", lambda p: p.write_bytes(b""), "is empty"),
    ("text", lambda p: p.write_text("hello"), "not an .npz"),
    ("npy", lambda p: np.save(open(p, "wb"), np.ones(2)), "single .npy"),
    ("list", lambda p: _tree_npz(p, "[1]"), "unknown format"),
    ("missing_leaf", lambda p: _tree_npz(p, HEADER % '{"array": 3}'), "names leaf 3"),
    ("bad_node", lambda p: _tree_npz(p, HEADER % '{"set": [1]}'), "unknown or ill-typed"),
    ("two_keys", lambda p: _tree_npz(p, HEADER % '{"none": null, "int": 1}'), "one-key"),
    ("format", lambda p: _tree_npz(p, '{"format": "tinymeta.pytree/9", "tree": {"none": null}}'),
     "unknown format 'tinymeta.pytree/9'"),
    ("not_json", lambda p: _tree_npz(p, "{oops"), "Expecting"),
    ("no_tree", lambda p: np.savez(p, leaf_0=np.ones(2)), "tinymeta.save"),
    ("tree_not_text", lambda p: np.savez(p, __tree__=np.ones(2)), "not a text"),
    ("extra_leaf", lambda p: _tree_npz(p, HEADER % '{"none": null}', leaf_0=np.ones(1)),
     "does not name"),
    ("strings", lambda p: _tree_npz(p, HEADER % '{"array": 0}', leaf_0=np.array(["a"])),
     "not a number"),
    ("nested", lambda p: _tree_npz(p, HEADER % ('{"list": [' * 5000 + "]}" * 5000)),
     "nested too deeply|Expecting|one-key"),
])
def test_damaged_files_give_one_value_error_naming_the_file(tmp_path, name, make, what):
    path = tmp_path / f"{name}.npz"
    make(path)
    with pytest.raises(ValueError, match=what) as info:
        io.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_every_bit_flip_and_truncation_is_refused_or_harmless(tmp_path):
    """Every truncation of a saved file, and a bit flipped in each of its bytes, either
    loads the same tree or raises a ValueError naming the file; nothing else escapes."""
    good = tmp_path / "good.npz"
    io.save(good, {"w": np.arange(6.0).reshape(2, 3), "n": 4})
    raw = good.read_bytes()
    bad = tmp_path / "bad.npz"
    refused = 0
    for i in range(len(raw)):
        for damaged in (raw[:i], raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1:]):
            bad.write_bytes(damaged)
            try:
                back = io.load(bad)
            except ValueError as e:
                assert str(bad) in str(e)
                refused += 1
                continue
            np.testing.assert_array_equal(back["w"], np.arange(6.0).reshape(2, 3))
            assert back["n"] == 4
    assert refused >= len(raw)  # every truncation at least


def test_a_header_that_lies_about_the_shape_is_refused(tmp_path):
    """A .npy header declaring 10^12 floats over 32 bytes of data (numpy would allocate the
    declared array before reading it)."""
    path = tmp_path / "lie.npz"
    io.save(path, [np.ones(4)])
    with zipfile.ZipFile(path) as zf:
        tree = zf.read("__tree__.npy")
    head = io_module.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__tree__.npy", tree)
        zf.writestr("leaf_0.npy", head.getvalue() + np.ones(4).tobytes())
    with pytest.raises(ValueError, match=r"lie.npz: cannot read leaf_0.npy .*\(1000000000000,\)"):
        io.load(path)


def test_like_checks_structure_shapes_and_dtypes(tmp_path):
    path = tmp_path / "p.npz"
    tree = {"w": [np.ones((2, 3), np.float32), np.zeros(3, np.float32)], "step": 3}
    io.save(path, tree)
    back = io.load(path, like={"w": [np.empty((2, 3), np.float32), np.empty(3, np.float32)],
                               "step": 0})
    np.testing.assert_array_equal(back["w"][0], tree["w"][0])
    cases = [
        ({"w": [np.empty((2, 3), np.float32)], "step": 0}, r"tree\['w'\] should be a list of 1"),
        ({"w": [np.empty((3, 2), np.float32), np.empty(3, np.float32)], "step": 0},
         r"tree\['w'\]\[0\] is float32 of shape \(2, 3\); expected float32 of shape \(3, 2\)"),
        ({"w": [np.empty((2, 3)), np.empty(3, np.float32)], "step": 0},
         r"expected float64 of shape \(2, 3\)"),
        ({"w": [np.empty((2, 3), np.float32), np.empty(3, np.float32)], "step": 0.0},
         r"tree\['step'\] should be a float; got int"),
        ({"v": 1, "step": 0}, r"should be a dict with keys \['step', 'v'\]"),
    ]
    for like, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            io.load(path, like=like)
        assert str(path) in str(info.value)
