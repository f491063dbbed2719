"""Saving and loading pytrees of arrays: one ``.npz`` file, no pickle, written atomically.

The file holds the leaves as ``leaf_0``, ``leaf_1``, … and, under ``__tree__``, a JSON
text describing the tree (dicts with string keys, lists, tuples, None, and leaves:
arrays, or Python ints, floats, bools and strings) plus optional JSON metadata under
``__meta__``. Writing goes to a temporary file in the same folder, then ``os.replace``, so
a reader never sees half a file.

Reading believes nothing it has not checked: the zip directory's declared sizes against a
limit (:data:`MAX_BYTES`) and each array's header against its size before anything is
inflated, no object arrays (nothing is ever unpickled), a tree description that
:func:`save` could have written, and on request (``like=``) the structure, shapes and
dtypes of a template. Every refusal is a one-line ``ValueError`` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
import zipfile
import zlib
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


# ---- reading ------------------------------------------------------------------------------

#: The most bytes :func:`load` (and :func:`read_npz`) will inflate by default: 1 GiB, the sum
#: of the sizes that the file's zip directory declares for its arrays. It is checked, with
#: every array's declared shape, before any array is read, so that a small file that would
#: inflate to gigabytes (a decompression bomb) is refused at once; ``max_bytes=`` raises it.
MAX_BYTES = 1 << 30

#: The dtype kinds :func:`load` accepts for a leaf: booleans, integers, floats, complex.
LEAF_KINDS = "biufc"

#: What a damaged zip file can raise while its directory or members are read (the readers
#: turn each into a ValueError naming the file).
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
               RuntimeError, struct.error, ValueError, OverflowError, UnicodeDecodeError)


def read_npz(path: str | os.PathLike, max_bytes: int | None = MAX_BYTES,
             kinds: str = LEAF_KINDS) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file by name, checked before anything is inflated.

    The zip directory's declared member sizes must sum to at most ``max_bytes`` (None: no
    limit); each member must be an ``.npy`` array whose header (version 1 or 2) declares a
    dtype of one of ``kinds`` (never an object dtype: nothing is unpickled) and a shape that
    accounts exactly for the member's declared size. Only then is each member read.

    Raises:
        ValueError: naming the file (and the member) for an empty, truncated or damaged
            file, a size over the limit, or a member that is not such an array.
        OSError: the file cannot be opened (the error names it).
    """
    p = os.fspath(path)
    with open(p, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ValueError(f"load: {p} is empty (0 bytes), not an .npz file")
        _sniff(p, f.read(6))
        f.seek(0)
        try:
            zf = zipfile.ZipFile(f)
        except ZIP_ERRORS as e:
            raise ValueError(f"load: {p} is not a valid .npz (zip) file ({e})") from None
        with zf:
            infos = zf.infolist()
            _check_directory(p, infos, max_bytes)
            out = {}
            for info in infos:
                try:
                    out[info.filename[:-4]] = _read_member(zf, info, kinds)
                except ZIP_ERRORS as e:
                    raise ValueError(f"load: {p}: cannot read {info.filename} "
                                     f"({type(e).__name__}: {e})") from None
    return out


def _sniff(p: str, head: bytes) -> None:
    """Name what a file that is no zip is, by its first bytes."""
    if head[:1] == b"\x80":
        raise ValueError(f"load: {p} holds pickled data, which tinymeta refuses")
    if head == b"\x93NUMPY":
        raise ValueError(f"load: {p} is a single .npy array, not an .npz file of tinymeta.save")
    if head[:2] != b"PK":
        raise ValueError(f"load: {p} is not an .npz (zip) file (it starts with {head!r})")


def _check_directory(p: str, infos: list, max_bytes: int | None) -> None:
    names = [i.filename for i in infos]
    bad = [n for n in names if not n.endswith(".npy")]
    if bad or len(set(names)) != len(names):
        what = f"a member {bad[0]!r} that is no .npy array" if bad else "repeated members"
        raise ValueError(f"load: {p} is not an .npz file of arrays: it holds {what}")
    total = sum(i.file_size for i in infos)
    if max_bytes is not None and total > max_bytes:
        raise ValueError(f"load: {p} declares {total} bytes of arrays, more than the limit "
                         f"max_bytes={max_bytes}; pass a larger max_bytes if it is meant")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, kinds: str) -> np.ndarray:
    """One ``.npy`` member: its header checked against ``kinds`` and its declared size."""
    fmt = np.lib.format
    with zf.open(info) as m:
        version = fmt.read_magic(m)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(m)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(m)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if dtype.hasobject:
            raise ValueError("an object array, which needs pickle; tinymeta refuses pickle")
        if dtype.kind not in kinds or dtype.fields is not None:
            raise ValueError(f"dtype {dtype} is not one of the kinds {kinds!r}")
        nbytes = math.prod(shape) * dtype.itemsize
        if m.tell() + nbytes != info.file_size:
            raise ValueError(f"its header declares shape {shape} of {dtype} ({nbytes} bytes) "
                             f"but the member holds {info.file_size - m.tell()} bytes")
        buf = bytearray(nbytes)
        view, got = memoryview(buf), 0
        while got < nbytes:
            n = m.readinto(view[got:])
            if not n:
                raise EOFError("the member ends early")
            got += n
    arr = np.frombuffer(buf, dtype=dtype)
    return arr.reshape(shape, order="F" if fortran else "C")


def _text(arrays: dict, name: str) -> str | None:
    """The JSON text stored under ``name`` (a 0-d string array), None when absent."""
    if name not in arrays:
        return None
    a = arrays[name]
    if a.shape != () or a.dtype.kind != "U":
        raise ValueError(f"{name} is not a text (got {a.dtype} of shape {a.shape})")
    return str(a[()])


def _decode(node: Any, arrays: dict, used: set, where: str) -> Any:
    """The tree a node of the description stands for; a ValueError naming ``where`` on a
    description that :func:`save` cannot have written."""
    if not (isinstance(node, dict) and len(node) == 1):
        raise ValueError(f"the tree description at {where} is not a one-key object: {node!r:.80}")
    (kind, value), = node.items()
    if kind == "dict" and isinstance(value, dict):
        return {k: _decode(v, arrays, used, f"{where}[{k!r}]") for k, v in value.items()}
    if kind in ("list", "tuple") and isinstance(value, list):
        items = [_decode(v, arrays, used, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if kind == "list" else tuple(items)
    if kind == "none" and value is None:
        return None
    scalar = {"bool": bool, "int": int, "float": float, "str": str}.get(kind)
    if scalar is not None and type(value) is scalar:
        return value
    if scalar is float and type(value) is int:  # JSON writes 2.0 as 2.0; accept 2 too
        return float(value)
    if kind == "array" and type(value) is int and f"leaf_{value}" in arrays:
        leaf = arrays[f"leaf_{value}"]
        if leaf.dtype.kind not in LEAF_KINDS:
            raise ValueError(f"the leaf at {where} has dtype {leaf.dtype}, not a number")
        used.add(f"leaf_{value}")
        return leaf
    if kind == "array":
        raise ValueError(f"the tree description at {where} names leaf {value!r}, which the "
                         "file does not hold")
    raise ValueError(f"the tree description at {where} has an unknown or ill-typed node "
                     f"{kind!r}: {value!r:.80}")


def _check_like(tree: Any, like: Any, where: str) -> None:
    """Raise a ValueError naming the first place where ``tree`` differs from ``like`` in
    structure, a leaf's shape or dtype, or a scalar's type."""
    if isinstance(like, dict):
        if not isinstance(tree, dict) or sorted(tree) != sorted(like):
            got = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
            raise ValueError(f"{where} should be a dict with keys {sorted(like)}; got {got}")
        for k in like:
            _check_like(tree[k], like[k], f"{where}[{k!r}]")
    elif isinstance(like, (list, tuple)):
        if type(tree) is not type(like) or len(tree) != len(like):
            got = f"{type(tree).__name__} of {len(tree)}" if isinstance(
                tree, (list, tuple)) else type(tree).__name__
            raise ValueError(f"{where} should be a {type(like).__name__} of {len(like)}; "
                             f"got a {got}")
        for i, (t, lk) in enumerate(zip(tree, like)):
            _check_like(t, lk, f"{where}[{i}]")
    elif like is None or isinstance(like, (bool, int, float, str)):
        if type(tree) is not type(like):
            raise ValueError(f"{where} should be a {type(like).__name__}; got "
                             f"{type(tree).__name__}")
    else:
        shape, dtype = tuple(np.shape(like)), np.dtype(like.dtype)
        if not isinstance(tree, np.ndarray):
            raise ValueError(f"{where} should be an array; got {type(tree).__name__}")
        if tree.shape != shape or tree.dtype != dtype:
            raise ValueError(f"{where} is {tree.dtype} of shape {tree.shape}; expected "
                             f"{dtype} of shape {shape}")


def load(path: str | os.PathLike, with_metadata: bool = False, *,
         max_bytes: int | None = MAX_BYTES, like: Any = None) -> Any:
    """Read a pytree written by :func:`save` (NumPy arrays); refuse anything pickled.

    The file is checked before it is believed: its declared sizes against ``max_bytes``
    (default :data:`MAX_BYTES`, 1 GiB; None: no limit) before anything is inflated (see
    :func:`read_npz`), its leaves' dtypes (bool, int, float, complex), and its tree
    description (every node one :func:`save` writes, every leaf it names present). With
    ``like`` (a pytree of arrays and Python scalars, such as the params of a fresh model,
    as flax's and orbax's restore take a target), the tree must have its structure, and each
    leaf its shape and dtype (a scalar its type).

    With ``with_metadata=True`` return ``(tree, metadata)`` (metadata None if absent).

    Raises:
        ValueError: one line naming the file and what is wrong with it.
        OSError: the file cannot be opened (the error names it).
    """
    p = os.fspath(path)
    arrays = read_npz(p, max_bytes, kinds=LEAF_KINDS + "U")  # "U": the JSON texts
    try:
        text = _text(arrays, "__tree__")
        if text is None:
            raise ValueError("it is not a file written by tinymeta.save (no __tree__)")
        header = json.loads(text)
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            fmt = header.get("format") if isinstance(header, dict) else header
            raise ValueError(f"unknown format {fmt!r:.80} (this version reads {_FORMAT})")
        used: set = set()
        tree = _decode(header.get("tree"), arrays, used, "tree")
        extra = sorted(set(arrays) - used - {"__tree__", "__meta__"})
        if extra:
            raise ValueError(f"it holds arrays that its tree does not name: {extra[:5]}")
        meta_text = _text(arrays, "__meta__")
        meta = None if meta_text is None else json.loads(meta_text)
        if like is not None:
            _check_like(tree, like, "tree")
    except (ValueError, RecursionError) as e:
        msg = "the description is nested too deeply" if isinstance(e, RecursionError) else e
        raise ValueError(f"load: {p}: {msg}") from None
    return (tree, meta) if with_metadata else tree
