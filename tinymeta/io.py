"""Saving and loading pytrees of arrays: one ``.npz`` file, no pickle, written atomically.

The file holds the leaves as ``leaf_0``, ``leaf_1``, … and, under ``__tree__``, a JSON
text describing the tree (dicts with string keys, lists, tuples, None, and leaves:
arrays, or Python ints, floats, bools and strings) plus optional JSON metadata under
``__meta__``. Loading uses ``numpy.load(allow_pickle=False)``: a file that needs pickle
is refused. Writing goes to a temporary file in the same folder, then ``os.replace``, so
a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from . import kernels

_FORMAT = "tinymeta.pytree/1"


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "_raw"):  # a constant Tensor
        x = x._raw()
    return np.asarray(kernels.get_backend().to_numpy(x) if not isinstance(x, np.ndarray) else x)


def _encode(tree: Any, arrays: list) -> Any:
    if isinstance(tree, dict):
        for k in tree:
            if not isinstance(k, str):
                raise TypeError(f"save: dict keys must be strings; got {k!r}")
        return {"dict": {k: _encode(tree[k], arrays) for k in sorted(tree)}}
    if isinstance(tree, tuple) and hasattr(type(tree), "_fields"):
        raise TypeError(f"save: a NamedTuple ({type(tree).__name__}) cannot be rebuilt without "
                        "importing its class; save tree._asdict() instead")
    if isinstance(tree, list):
        return {"list": [_encode(v, arrays) for v in tree]}
    if isinstance(tree, tuple):
        return {"tuple": [_encode(v, arrays) for v in tree]}
    if tree is None:
        return {"none": None}
    if isinstance(tree, (bool, int, float, str)):
        return {type(tree).__name__: tree}
    arr = _to_numpy(tree)
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"save: cannot store an array of dtype {arr.dtype} without pickle")
    arrays.append(arr)
    return {"array": len(arrays) - 1}


def _decode(node: Any, data: Any) -> Any:
    (kind, value), = node.items()
    if kind == "dict":
        return {k: _decode(v, data) for k, v in value.items()}
    if kind == "list":
        return [_decode(v, data) for v in value]
    if kind == "tuple":
        return tuple(_decode(v, data) for v in value)
    if kind == "none":
        return None
    if kind in ("bool", "int", "float", "str"):
        return value
    if kind == "array":
        return data[f"leaf_{int(value)}"]
    raise ValueError(f"load: unknown node kind {kind!r} in the tree description")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, binary: bool = False) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; when the block ends without an
    error, flush and fsync it, rename it onto ``path`` (``os.replace``, atomic on POSIX) and
    fsync the folder where the platform allows; on an error, remove it. A reader sees the
    old file or the whole new one, never half a file, and a crash leaves no partial file at
    ``path``. The folder is created if missing."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:  # make the rename durable where the platform allows it
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_json(path: str | os.PathLike, obj: Any, **dumps: Any) -> None:
    """``json.dump(obj, **dumps)`` into ``path`` atomically (:func:`atomic_write`), with a
    final newline."""
    with atomic_write(path) as f:
        json.dump(obj, f, **dumps)
        f.write("\n")


def save(path: str | os.PathLike, tree: Any, metadata: dict | None = None) -> None:
    """Write a pytree of arrays (and JSON-able ``metadata``) to ``path``, atomically.

    The file is written exactly at ``path`` (no ``.npz`` is appended).
    """
    arrays: list = []
    desc = _encode(tree, arrays)
    header = json.dumps({"format": _FORMAT, "tree": desc})
    entries = {f"leaf_{i}": a for i, a in enumerate(arrays)}
    entries["__tree__"] = np.array(header)
    if metadata is not None:
        entries["__meta__"] = np.array(json.dumps(metadata))
    with atomic_write(path, binary=True) as f:
        np.savez(f, allow_pickle=False, **entries)


def _open(path: str | os.PathLike) -> Any:
    try:
        data = np.load(os.fspath(path), allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"load: {os.fspath(path)} needs pickle to be read, which tinymeta "
                         f"refuses ({e})") from None
    if not isinstance(data, np.lib.npyio.NpzFile) or "__tree__" not in data.files:
        raise ValueError(f"load: {os.fspath(path)} is not a file written by tinymeta.save")
    return data


def load(path: str | os.PathLike, with_metadata: bool = False) -> Any:
    """Read a pytree written by :func:`save` (NumPy arrays); refuse anything pickled.

    With ``with_metadata=True`` return ``(tree, metadata)`` (metadata None if absent).
    """
    try:
        data = _open(path)
    except zipfile.BadZipFile:
        raise ValueError(f"load: {os.fspath(path)} is not a valid .npz file") from None
    with data:
        try:
            header = json.loads(str(data["__tree__"]))
            if header.get("format") != _FORMAT:
                raise ValueError(f"load: unknown format {header.get('format')!r}")
            tree = _decode(header["tree"], data)
            meta = json.loads(str(data["__meta__"])) if "__meta__" in data.files else None
        except ValueError as e:
            if "pickle" in str(e):
                raise ValueError(f"load: {os.fspath(path)} holds pickled data, which tinymeta "
                                 "refuses") from None
            raise
    return (tree, meta) if with_metadata else tree
