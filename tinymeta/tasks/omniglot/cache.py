"""The Omniglot cache: a source's decoded arrays kept in one ``.npz`` file per content key.

:func:`load_source` returns the arrays of one source, from its cache file when that file is
valid, else decoded (:mod:`.reading`) and written to the cache.  A cache file lives in a user
cache directory (see :func:`default_cache_dir`), is named after the source and a digest of its
content key (the SHA-256 of the source's bytes: the zip file's, or each PNG's with its path in
a folder; and the preprocessing settings), and is written atomically; a cache file that cannot
be read, whose checksum or content key does not match, is rebuilt, never used.  Hashing the
bytes costs about a millisecond a megabyte (1.3 ms for the 1.3 MB ``images_background_small1``
zip, whose whole cached load takes about 45 ms) and, unlike a file's size and time, cannot be
fooled by a source rewritten with the same size and time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...io import atomic_write, read_npz
from .reading import (
    IMAGE_SIZE,
    INK_THRESHOLD,
    RESAMPLE,
    PathLike,
    _decode_layout,
    _Layout,
    _scan,
    _SourceArrays,
)

#: Bump when the cached arrays or the key change meaning; old cache files are then rebuilt.
#: 2: the key holds the source's content hash (1: its files' sizes and times).
CACHE_FORMAT_VERSION = 2


def default_cache_dir() -> Path:
    """``$TINYMETA_CACHE`` when set, else ``~/.cache/tinymeta``."""
    env = os.environ.get("TINYMETA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tinymeta"


def _hash_file(h: Any, path: str | Path) -> int:
    """Feed the bytes of ``path`` to the hash ``h``; return their count."""
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return n


def _source_key(layout: _Layout, center: bool, size: int) -> dict[str, Any]:
    """Everything the cached arrays depend on: the source's content and the settings."""
    path = layout.path.resolve()
    h = hashlib.sha256()
    if layout.kind == "zip":
        files: dict[str, Any] = {"size": _hash_file(h, path), "sha256": h.hexdigest()}
    else:
        count = 0
        for names in layout.characters.values():
            for name in names:
                rel = Path(name).relative_to(layout.path).as_posix()
                h.update(f"{rel}\t{os.stat(name).st_size}\n".encode())
                _hash_file(h, name)
                count += 1
        files = {"count": count, "sha256": h.hexdigest()}
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "kind": layout.kind,
        "path": str(path),
        "files": files,
        "center": bool(center),
        "size": int(size),
        "resample": RESAMPLE,
        "ink_threshold": INK_THRESHOLD,
    }


def _checksum(arrays: _SourceArrays) -> str:
    """SHA-256 (hex) of the arrays' shape and float32 bytes, the names and the file names."""
    h = hashlib.sha256()
    h.update(str(arrays.images.shape).encode())
    h.update(np.ascontiguousarray(arrays.images, dtype=np.float32).tobytes())
    h.update(json.dumps([list(c) for c in arrays.characters]).encode())
    h.update(json.dumps(arrays.files.tolist()).encode())
    return h.hexdigest()


def _cache_path(cache_dir: Path, layout: _Layout, key: Mapping[str, Any]) -> Path:
    """``cache_dir/omniglot-<stem>-<digest>.npz``: the source's name without ``.zip`` (other
    characters than ``A-Za-z0-9_.-`` as ``_``) and the first 20 hex digits of the key's
    SHA-256."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", layout.path.name.removesuffix(".zip")) or "source"
    return cache_dir / f"omniglot-{stem}-{digest}.npz"


def _read_cache(path: Path, key: Mapping[str, Any]) -> _SourceArrays:
    """Load and verify one cache file; raises ValueError (or any reading error) when bad.

    The file is read by :func:`tinymeta.io.read_npz`: its declared sizes checked before
    anything is inflated, no pickle, and the file closed whatever happens.
    """
    z = read_npz(path, kinds="fU")
    missing = {"meta", "images", "alphabets", "characters", "files"} - set(z)
    if missing:
        raise ValueError(f"arrays {sorted(missing)} missing")
    meta = json.loads(str(z["meta"][()]))
    if not isinstance(meta, dict) or meta.get("key") != json.loads(json.dumps(key)):
        raise ValueError("content key mismatch")
    images, alphabets, chars, files = (z[k] for k in ("images", "alphabets", "characters",
                                                      "files"))
    if images.dtype != np.float32 or images.ndim != 4:
        raise ValueError(f"bad images array {images.dtype} {images.shape}")
    if not (len(alphabets) == len(chars) == images.shape[0]) or files.shape != images.shape[:2]:
        raise ValueError("inconsistent array shapes")
    arrays = _SourceArrays(
        images, [(str(a), str(c)) for a, c in zip(alphabets, chars, strict=True)], files
    )
    if meta.get("checksum") != _checksum(arrays):
        raise ValueError("checksum mismatch")
    return arrays


def _write_cache(path: Path, key: Mapping[str, Any], arrays: _SourceArrays) -> None:
    """Write ``arrays`` with ``key`` and their checksum to ``path``, atomically
    (:func:`tinymeta.io.atomic_write`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"key": key, "checksum": _checksum(arrays)}, sort_keys=True)
    with atomic_write(path, binary=True) as f:
        np.savez(
            f,
            images=arrays.images,
            alphabets=np.array([a for a, _ in arrays.characters], dtype=str),
            characters=np.array([c for _, c in arrays.characters], dtype=str),
            files=arrays.files,
            meta=np.array(meta),
        )


def load_source(
    source: PathLike,
    *,
    center: bool = True,
    size: int = IMAGE_SIZE,
    cache: bool = True,
    cache_dir: PathLike | None = None,
) -> tuple[np.ndarray, list[tuple[str, str]], np.ndarray]:
    """Decode (or read from the cache) one Omniglot source.

    Args:
        source: a zip file or a folder in the Omniglot layout.
        center, size: preprocessing settings, see :func:`preprocess`.
        cache: read and write the cache; ``False`` always decodes.
        cache_dir: folder of the cache files (default :func:`default_cache_dir`).

    Returns:
        ``(images, characters, files)``: (C, D, size, size) float32 images, the
        ``(alphabet, character)`` names sorted, and the (C, D) PNG file names.

    Raises:
        FileNotFoundError: when ``source`` does not exist.
        ValueError: naming the file when a source has no Omniglot layout or a PNG is bad.
    """
    layout = _scan(Path(source))
    if not cache:
        arrays = _decode_layout(layout, center, size)
        return arrays.images, arrays.characters, arrays.files
    key = _source_key(layout, center, size)
    path = _cache_path(
        Path(cache_dir) if cache_dir is not None else default_cache_dir(), layout, key
    )
    if path.exists():
        try:
            arrays = _read_cache(path, key)
        except Exception as err:  # unreadable, truncated, stale: rebuild, never use
            warnings.warn(
                f"rebuilding invalid Omniglot cache {path}: {type(err).__name__}: {err}",
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            return arrays.images, arrays.characters, arrays.files
    arrays = _decode_layout(layout, center, size)
    try:
        _write_cache(path, key, arrays)
    except OSError as err:  # a read-only or full disk costs the cache, not the data
        warnings.warn(f"could not write Omniglot cache {path}: {err}", RuntimeWarning, stacklevel=3)
    return arrays.images, arrays.characters, arrays.files
