"""A small synthetic Omniglot set in the zip layout of the real one, for tests that train.

Three alphabets (Alpha: 3 characters, Beta: 2, Gamma: 2), 20 drawers each, every drawing
a 105x105 one-bit image of the character's three strokes jittered by its drawer. The
``data_zip`` fixture (tests/conftest.py) writes it once a session.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ALPHABETS = {"Alpha": 3, "Beta": 2, "Gamma": 2}  # characters per alphabet
N_DRAWERS = 20


def draw(character: int, drawer: int) -> Image.Image:
    """A 105x105 one-bit drawing: the character's strokes, jittered by the drawer."""
    shape = np.random.default_rng(character).integers(20, 85, size=(3, 4))
    jitter = np.random.default_rng(1000 * character + drawer).integers(-4, 5, size=(3, 4))
    im = Image.new("1", (105, 105), 1)
    d = ImageDraw.Draw(im)
    for line in shape + jitter:
        d.line([tuple(line[:2]), tuple(line[2:])], fill=0, width=4)
    return im


def write_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        c = 0
        for alpha, n in ALPHABETS.items():
            for k in range(1, n + 1):
                for d in range(1, N_DRAWERS + 1):
                    buf = _png_bytes(draw(c, d))
                    zf.writestr(f"images_background/{alpha}/character{k:02d}/{c:04d}_{d:02d}.png",
                                buf)
                c += 1
    return path


def _png_bytes(im: Image.Image) -> bytes:
    b = io.BytesIO()
    im.save(b, format="PNG")
    return b.getvalue()
