"""Reading Omniglot sources: the PNG files of a zip or folder, decoded and preprocessed.

A source has the layout of the public Omniglot release,
``<split>/<Alphabet>/character<NN>/<id>_<drawer>.png``, and is read straight from the zip files
(``images_background.zip``, ``images_evaluation.zip``, ``images_background_small1.zip``, ...)
or from unpacked folders.  A folder may hold the alphabets directly or one level of split
folders above them.

Preprocessing (the convention of Santoro et al. 2016 and Finn et al. 2017):

* ink is 1.0 and background 0.0 (the PNGs are one-bit with black ink);
* with ``center=True`` each 105x105 image is shifted by a whole number of pixels, *before*
  resizing, so that the centre of mass of its ink lands on the image centre (ink shifted past
  the border is dropped; for Omniglot this is rare and at most a few pixels);
* the float image is then resized to 28x28 with Pillow's ``BOX`` filter (an area average, so
  values stay within [0, 1]) and stored as float32.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ...io import ZIP_ERRORS

#: A source (a zip file or a folder) as a string or a path.
PathLike = Union[str, "os.PathLike[str]"]

#: Side of the original Omniglot images.
SOURCE_SIZE = 105
#: Side of the preprocessed images.
IMAGE_SIZE = 28
#: Pillow resampling filter used by :func:`preprocess` (recorded in the cache key).
RESAMPLE = "BOX"
#: Grey level below which a pixel of a non-one-bit PNG counts as ink.
INK_THRESHOLD = 128
#: The most bytes one PNG of a source may hold (an Omniglot PNG holds about a kilobyte): a
#: larger zip member or file is refused unread.
MAX_PNG_BYTES = 1 << 20

_CHARACTER_RE = re.compile(r"^character\d+$")
_PIL_HINT = 'Pillow is needed to decode Omniglot PNG files: pip install -e ".[data]"'


def _pil_image() -> Any:
    """Import ``PIL.Image`` lazily, with an install hint when Pillow is missing."""
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(_PIL_HINT) from err
    return Image


# --------------------------------------------------------------------------------------------
# decoding and preprocessing
# --------------------------------------------------------------------------------------------


def decode_png(data: bytes, name: str = "<bytes>",
               size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one PNG into a boolean ink mask (True where the pixel is ink, i.e. dark).

    One-bit images (Omniglot's) are read directly: black (0) is ink. Other modes are
    converted to grey and pixels below ``INK_THRESHOLD`` count as ink. With ``size``
    (width, height), an image of another size is refused from its header, before its
    pixels are decoded.

    Raises:
        ValueError: naming ``name`` when the bytes are not a decodable image, or not of
            ``size``.
    """
    Image = _pil_image()
    try:
        with Image.open(io.BytesIO(data)) as im:
            if size is not None and im.size != tuple(size):
                raise _WrongSize(f"{name}: the image is {im.size[0]}x{im.size[1]}, expected "
                                 f"{size[0]}x{size[1]}")
            im.load()
            if im.mode == "1":
                return ~np.asarray(im, dtype=bool)
            grey = np.asarray(im.convert("L"))
    except _WrongSize:
        raise
    except Exception as err:  # Pillow raises several unrelated types on bad input
        raise ValueError(f"cannot decode PNG {name}: {err}") from err
    return grey < INK_THRESHOLD


class _WrongSize(ValueError):
    """An image whose header declares another size than the one asked for."""


def _center_shift(ink: np.ndarray) -> np.ndarray:
    """Shift each (H, W) image by whole pixels so its ink centre of mass is at the centre."""
    n, h, w = ink.shape
    mass = ink.sum(axis=(1, 2))
    safe = np.where(mass > 0, mass, 1.0)
    com_y = (ink.sum(axis=2) * np.arange(h)).sum(axis=1) / safe
    com_x = (ink.sum(axis=1) * np.arange(w)).sum(axis=1) / safe
    dy = np.where(mass > 0, np.rint((h - 1) / 2.0 - com_y), 0).astype(int)
    dx = np.where(mass > 0, np.rint((w - 1) / 2.0 - com_x), 0).astype(int)
    out = np.zeros_like(ink)
    for i in range(n):  # one slice copy per image; the shifts differ per image
        sy, sx = dy[i], dx[i]
        if abs(sy) >= h or abs(sx) >= w:
            continue
        out[i, max(sy, 0) : h + min(sy, 0), max(sx, 0) : w + min(sx, 0)] = ink[
            i, max(-sy, 0) : h + min(-sy, 0), max(-sx, 0) : w + min(-sx, 0)
        ]
    return out


def preprocess(images: np.ndarray, center: bool = True, size: int = IMAGE_SIZE) -> np.ndarray:
    """Turn original ink images into the loader's float32 model inputs.

    Args:
        images: (n, H, W) or (H, W) ink images, boolean or float in [0, 1], ink = 1 / True
            (Omniglot: 105x105).
        center: shift each image by whole pixels at the original resolution, before the
            resize, so that its ink centre of mass is at the image centre.
        size: side of the output images (28 as in Finn et al.).

    Returns:
        (n, size, size) float32 array, ink 1.0 and background 0.0, resized with Pillow's
        ``BOX`` filter (area averaging) from the float image.
    """
    Image = _pil_image()
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected (n, H, W) or (H, W) images, got shape {arr.shape}")
    ink = arr.astype(np.float32)
    if center:
        ink = _center_shift(ink)
    out = np.empty((ink.shape[0], size, size), dtype=np.float32)
    box = Image.Resampling.BOX
    for i in range(ink.shape[0]):
        out[i] = np.asarray(Image.fromarray(ink[i]).resize((size, size), box), dtype=np.float32)
    return out


# --------------------------------------------------------------------------------------------
# reading a source (zip or folder)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """The PNG files of one source grouped by (alphabet, character), names sorted."""

    kind: str  # "zip" or "dir"
    path: Path
    characters: dict[tuple[str, str], list[str]]  # -> member names / file paths


def _split_parts(parts: Sequence[str]) -> tuple[str, str] | None:
    """(alphabet, character) when ``parts`` ends ``<Alphabet>/character<NN>/<file>.png``."""
    if len(parts) not in (3, 4) or not parts[-1].lower().endswith(".png"):
        return None
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    if not _CHARACTER_RE.match(parts[-2]):
        return None
    return parts[-3], parts[-2]


def _layout_error(path: Path) -> ValueError:
    """The error for a source without Omniglot's layout, stating the layout expected."""
    return ValueError(
        f"{path}: no Omniglot images found (expected <Alphabet>/character<NN>/*.png, "
        "optionally under one split folder; pass the .zip files or the unpacked folders)"
    )


def _scan(path: Path) -> _Layout:
    """The Omniglot PNG files of a folder or zip file, grouped by (alphabet, character).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when it is neither a readable zip nor holds the Omniglot layout.
    """
    chars: dict[tuple[str, str], list[str]] = {}
    if path.is_dir():
        kind = "dir"
        for depth_glob in ("*/*/*.*", "*/*/*/*.*"):
            for f in path.glob(depth_glob):
                key = _split_parts(f.relative_to(path).parts)
                if key is not None and f.is_file():
                    chars.setdefault(key, []).append(str(f))
    elif path.is_file():
        kind = "zip"
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except ZIP_ERRORS as err:
            raise ValueError(f"{path}: not a readable zip file ({err})") from err
        for name in names:
            if name.endswith("/"):
                continue
            key = _split_parts(name.split("/"))
            if key is not None:
                chars.setdefault(key, []).append(name)
    else:
        raise FileNotFoundError(f"Omniglot source not found: {path}")
    if not chars:
        raise _layout_error(path)
    for files in chars.values():
        files.sort(key=lambda s: s.replace("\\", "/").rsplit("/", 1)[-1])
    return _Layout(kind, path, dict(sorted(chars.items())))


def _read_file(zf: zipfile.ZipFile | None, path: Path, name: str) -> tuple[bytes, str]:
    """(the bytes of one PNG of a zip or folder, its label), refused unread when its
    (declared) size is over :data:`MAX_PNG_BYTES`."""
    label = f"{path}!{name}" if zf is not None else name
    size = zf.getinfo(name).file_size if zf is not None else os.stat(name).st_size
    if size > MAX_PNG_BYTES:
        raise ValueError(f"{label} holds {size} bytes, more than the {MAX_PNG_BYTES} an "
                         "Omniglot PNG may")
    if zf is None:
        return Path(name).read_bytes(), label
    try:
        return zf.read(name), label
    except ZIP_ERRORS as err:
        raise ValueError(f"cannot read {label}: {err}") from err


@dataclass(frozen=True)
class _SourceArrays:
    """The decoded, preprocessed images of one source with their names."""

    images: np.ndarray  # (C, D, size, size) float32
    characters: list[tuple[str, str]]
    files: np.ndarray  # (C, D) str: the file names (without folders)


def _decode_layout(layout: _Layout, center: bool, size: int) -> _SourceArrays:
    """Decode and :func:`preprocess` every PNG of ``layout``: one row of images per character.

    Raises:
        ValueError: naming the file when a zip member cannot be read or a PNG cannot be
            decoded or is not 105x105, or the character when characters have different
            numbers of drawings.
    """
    counts = {len(v) for v in layout.characters.values()}
    if len(counts) != 1:
        first = next(iter(layout.characters.values()))
        for (alpha, char), names in layout.characters.items():
            if len(names) != len(first):
                raise ValueError(
                    f"{layout.path}: {alpha}/{char} has {len(names)} drawings, "
                    f"others have {len(first)}"
                )
    n_chars, n_draw = len(layout.characters), counts.pop()
    images = np.empty((n_chars, n_draw, size, size), dtype=np.float32)
    files = []
    zf = zipfile.ZipFile(layout.path) if layout.kind == "zip" else None
    try:
        for c, names in enumerate(layout.characters.values()):
            ink = np.empty((n_draw, SOURCE_SIZE, SOURCE_SIZE), dtype=bool)
            for d, name in enumerate(names):
                data, label = _read_file(zf, layout.path, name)
                ink[d] = decode_png(data, label, size=(SOURCE_SIZE, SOURCE_SIZE))
            images[c] = preprocess(ink, center=center, size=size)
            files.append([name.replace("\\", "/").rsplit("/", 1)[-1] for name in names])
    finally:
        if zf is not None:
            zf.close()
    return _SourceArrays(images, list(layout.characters), np.array(files, dtype=str))
