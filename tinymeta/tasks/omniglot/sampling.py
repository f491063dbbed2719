"""Omniglot N-way K-shot tasks: the characters as classes, their subsets and splits by
alphabet, the task sampler (whole batches or a shard ``tasks=(lo, hi)`` of one) and its random
affine augmentation.

Each character can be augmented by rotations of 0, 90, 180 and 270 degrees; every rotation of
a character is a class of its own.  Class ``c`` is character ``c // len(rotations)`` rotated
by ``np.rot90(image, rotations[c % len(rotations)])`` (counter-clockwise quarter turns).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..base import TaskBatch
from .cache import load_source
from .reading import IMAGE_SIZE, PathLike

# --------------------------------------------------------------------------------------------
# the data set
# --------------------------------------------------------------------------------------------


def _make_rng(seed: int | None, rng: np.random.Generator | None) -> np.random.Generator:
    """``rng`` when given, else a new Generator from ``seed``; both given is an error."""
    if rng is not None and seed is not None:
        raise ValueError("give seed or rng, not both")
    return rng if rng is not None else np.random.default_rng(seed)


class Omniglot:
    """Omniglot characters, with rotated copies as extra classes, and a task sampler.

    Args:
        sources: one or several zip files / folders in the Omniglot layout. A character
            (by alphabet and character name) found in several sources is kept once, from the
            first source holding it, e.g. the Greek and Latin shared by
            ``images_background_small1`` and ``images_background_small2``.
        rotations: quarter turns (``np.rot90``'s k) that make classes; ``(0,)`` for none.
        center: centre each image's ink before resizing (see :func:`preprocess`).
        image_size: side of the stored images.
        cache: use the per-source ``.npz`` cache.
        cache_dir: cache folder (default ``$TINYMETA_CACHE`` or ``~/.cache/tinymeta``).

    Attributes:
        images: (n_characters, n_drawers, image_size, image_size) float32, ink 1.0.
        characters: ``(alphabet, character)`` of each row of ``images``, sorted.
        files: (n_characters, n_drawers) PNG file names.
        rotations: the rotations; class ``c`` is character ``c // len(rotations)`` turned
            by ``rotations[c % len(rotations)]`` quarter turns.
        center: whether the images were centred (None when built from arrays without it).
    """

    def __init__(
        self,
        sources: PathLike | Sequence[PathLike],
        *,
        rotations: Sequence[int] = (0, 1, 2, 3),
        center: bool = True,
        image_size: int = IMAGE_SIZE,
        cache: bool = True,
        cache_dir: PathLike | None = None,
    ) -> None:
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        if not sources:
            raise ValueError("no Omniglot sources given")
        seen: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        for src in sources:
            imgs, chars, files = load_source(
                src, center=center, size=image_size, cache=cache, cache_dir=cache_dir
            )
            for i, name in enumerate(chars):
                if name not in seen:
                    seen[name] = (imgs[i], files[i])
        names = sorted(seen)
        drawers = {seen[n][0].shape[0] for n in names}
        if len(drawers) != 1:
            raise ValueError(f"sources disagree on the number of drawings per character: {drawers}")
        images = np.stack([seen[n][0] for n in names])
        files = np.stack([seen[n][1] for n in names])
        self._set(images, names, files, rotations)
        self.center = center

    # construction helpers ------------------------------------------------------------------

    def _set(
        self,
        images: np.ndarray,
        characters: Sequence[tuple[str, str]],
        files: np.ndarray | None,
        rotations: Sequence[int],
    ) -> None:
        """Check and store the images, their names and files and the rotation classes."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be (C, D, S, S), got {images.shape}")
        if len(characters) != images.shape[0]:
            raise ValueError("one (alphabet, character) name per character is needed")
        rot = tuple(int(r) % 4 for r in rotations)
        if not rot or len(set(rot)) != len(rot):
            raise ValueError(f"rotations must be distinct quarter turns, got {rotations!r}")
        self.images = images
        self.characters = [(str(a), str(c)) for a, c in characters]
        self.files = (
            np.asarray(files, dtype=str)
            if files is not None
            else np.full(images.shape[:2], "", dtype=str)
        )
        self.rotations = rot
        self._rot = np.asarray(rot, dtype=np.int64)
        self._table: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        characters: Sequence[tuple[str, str]],
        *,
        rotations: Sequence[int] = (0, 1, 2, 3),
        files: np.ndarray | None = None,
        center: bool | None = None,
    ) -> Omniglot:
        """Build a data set from preprocessed (C, D, S, S) images and their names.

        ``center`` records how the images were preprocessed (None: unknown).
        """
        obj = cls.__new__(cls)
        obj._set(images, characters, files, rotations)
        obj.center = center
        return obj

    def _view(self, rows: np.ndarray, rotations: Sequence[int] | None = None) -> Omniglot:
        """A data set of the characters at ``rows``, with ``rotations`` (default: these)."""
        obj = Omniglot.from_arrays(
            self.images[rows],
            [self.characters[i] for i in rows],
            rotations=self.rotations if rotations is None else rotations,
            files=self.files[rows],
            center=self.center,
        )
        return obj

    # properties -------------------------------------------------------------------------

    @property
    def alphabets(self) -> list[str]:
        """Sorted names of the alphabets present."""
        return sorted({a for a, _ in self.characters})

    @property
    def num_characters(self) -> int:
        """Number of distinct characters (before rotation)."""
        return self.images.shape[0]

    @property
    def num_drawers(self) -> int:
        """Drawings per character (20 for Omniglot)."""
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """Side of the images."""
        return self.images.shape[2]

    @property
    def num_classes(self) -> int:
        """Number of classes: characters times rotations."""
        return self.num_characters * len(self.rotations)

    def __len__(self) -> int:
        return self.num_classes

    def __repr__(self) -> str:
        return (
            f"Omniglot({len(self.alphabets)} alphabets, {self.num_characters} characters x "
            f"{len(self.rotations)} rotations = {self.num_classes} classes, "
            f"{self.num_drawers} drawings, {self.image_size}x{self.image_size})"
        )

    # classes ----------------------------------------------------------------------------

    def class_info(self, c: int) -> tuple[str, str, int]:
        """``(alphabet, character, quarter_turns)`` of class ``c``."""
        if not 0 <= c < self.num_classes:
            raise IndexError(f"class {c} out of range [0, {self.num_classes})")
        alpha, char = self.characters[c // len(self.rotations)]
        return alpha, char, self.rotations[c % len(self.rotations)]

    def class_images(self, c: int) -> np.ndarray:
        """The (D, S, S) images of class ``c``, rotated."""
        _, _, k = self.class_info(c)
        return np.ascontiguousarray(np.rot90(self.images[c // len(self.rotations)], k, (1, 2)))

    # splits -------------------------------------------------------------------------------

    def subset(self, alphabets: Iterable[str], rotations: Sequence[int] | None = None) -> Omniglot:
        """A copy holding only the characters of ``alphabets`` (all must be present)."""
        wanted = set(alphabets)
        unknown = wanted - set(self.alphabets)
        if unknown:
            raise ValueError(f"unknown alphabets: {sorted(unknown)}")
        rows = np.array([i for i, (a, _) in enumerate(self.characters) if a in wanted], dtype=int)
        return self._view(rows, rotations)

    def split(
        self, val_alphabets: Iterable[str], val_rotations: Sequence[int] | None = None
    ) -> tuple[Omniglot, Omniglot]:
        """Split by alphabet: ``(rest, val)`` where ``val`` holds exactly ``val_alphabets``.

        No character is in both parts. ``val_rotations`` (default: the same rotations) sets
        the rotations of the held-out part.
        """
        val_set = set(val_alphabets)
        val = self.subset(val_set, val_rotations)
        rest = [a for a in self.alphabets if a not in val_set]
        if not rest:
            raise ValueError("the split leaves no alphabets outside val_alphabets")
        return self.subset(rest), val

    def with_rotations(self, rotations: Sequence[int]) -> Omniglot:
        """The same characters with other rotation classes."""
        return self._view(np.arange(self.num_characters), rotations)

    # sampling -----------------------------------------------------------------------------

    #: Largest rotated copy of the images (bytes) that :meth:`sample` keeps for speed; above
    #: it, sampling rotates on the fly (about three times slower per image).
    max_table_bytes: int = 512 * 2**20

    def _class_table(self) -> np.ndarray | None:
        """(num_classes * num_drawers, S, S) images of every class, built on first use."""
        table = getattr(self, "_table", None)
        if table is None and len(self.rotations) * self.images.nbytes <= self.max_table_bytes:
            if self.rotations == (0,):
                table = self.images
            else:
                table = np.stack([np.rot90(self.images, k, axes=(2, 3)) for k in self.rotations], 1)
            table = table.reshape(-1, self.image_size, self.image_size)
            self._table = table
        return table

    def _gather(self, classes: np.ndarray, drawers: np.ndarray) -> np.ndarray:
        """Rotated images of (classes, drawers), both shape (B, M) -> (B, M, S, S)."""
        s = self.image_size
        table = self._class_table()
        if table is not None:  # one row gather: class c's drawings are rows c*D .. c*D+D-1
            out = table[(classes * self.num_drawers + drawers).ravel()]
            return out.reshape(*classes.shape, s, s)
        n_rot = len(self.rotations)
        flat = self.images.reshape(-1, s, s)
        rows = ((classes // n_rot) * self.num_drawers + drawers).ravel()
        turns = self._rot[classes % n_rot].ravel()
        out = np.empty((rows.size, s, s), dtype=np.float32)
        for k in np.unique(turns):  # at most four groups, each a block gather
            sel = np.flatnonzero(turns == k)
            block = flat[rows[sel]]
            out[sel] = np.rot90(block, int(k), axes=(1, 2)) if k else block
        return out.reshape(*classes.shape, s, s)

    def sample(
        self,
        num_tasks: int,
        ways: int,
        shots: int,
        queries: int,
        *,
        seed: int | None = None,
        rng: np.random.Generator | None = None,
        flatten: bool = True,
        augment: bool | Mapping[str, float] = False,
        tasks: tuple[int, int] | None = None,
    ) -> TaskBatch:
        """Draw ``num_tasks`` N-way K-shot classification tasks.

        For each task ``ways`` distinct classes are drawn; label ``j`` of task ``b`` is class
        ``params[b, j]``, so the class-to-label mapping is a fresh random permutation per task.
        Each class gets ``shots`` support and ``queries`` query images from distinct drawers;
        the points of each set are in random order.

        Args:
            num_tasks: B.
            ways, shots, queries: N, K and Q.
            seed, rng: a seed or a Generator (not both); same seed, same batch.
            flatten: x of shape (B, N*K, S*S) if True, else (B, N*K, S, S).
            augment: apply :func:`augment` to the images (True for its defaults, or a mapping
                of its keyword arguments). Off by default.
            tasks: (lo, hi): only tasks lo … hi − 1 of the B drawn (an MPI rank's share).
                Every random number of the whole batch is still drawn, so the result is the
                whole batch's tasks lo … hi − 1 exactly and ``rng`` ends where it would;
                only those tasks' images are gathered and augmented.

        Returns:
            ``TaskBatch(support_x, support_y, query_x, query_y, params)`` with float32 x,
            int64 y in ``0..ways-1`` and ``params`` the (B, N) int64 class indices.
        """
        gen = _make_rng(seed, rng)
        b, n, k, q = int(num_tasks), int(ways), int(shots), int(queries)
        if b < 1 or n < 1 or k < 1 or q < 0:
            raise ValueError("need num_tasks >= 1, ways >= 1, shots >= 1, queries >= 0")
        if n > self.num_classes:
            raise ValueError(f"{n}-way tasks need {n} classes, the data set has {self.num_classes}")
        if k + q > self.num_drawers:
            raise ValueError(f"shots + queries = {k + q} > {self.num_drawers} drawings per class")
        lo, hi = (0, b) if tasks is None else (int(tasks[0]), int(tasks[1]))
        if not 0 <= lo <= hi <= b:
            raise ValueError(f"sample: tasks ({lo}, {hi}) is not a range of the {b} tasks")
        all_classes = np.broadcast_to(
            np.arange(self.num_classes, dtype=np.int64), (b, self.num_classes)
        )
        classes = gen.permuted(all_classes, axis=1)[:, :n]
        all_drawers = np.broadcast_to(np.arange(self.num_drawers), (b, n, self.num_drawers))
        drawers = gen.permuted(all_drawers, axis=2)[:, :, : k + q]

        def one_set(start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
            m = n * count
            order = gen.permuted(np.broadcast_to(np.arange(m), (b, m)), axis=1)[lo:hi]
            labels = order // count  # point i shows label labels[i] ...
            slot = start + order % count  # ... drawn by the slot-th drawer picked for it
            drw = drawers[np.arange(lo, hi)[:, None], labels, slot]
            x = self._gather(np.take_along_axis(classes[lo:hi], labels, axis=1), drw)
            return x, labels.astype(np.int64)

        sx, sy = one_set(0, k)
        if q:
            qx, qy = one_set(k, q)
        else:
            s = self.image_size
            qx, qy = np.empty((hi - lo, 0, s, s), np.float32), np.empty((hi - lo, 0), np.int64)
        if augment:
            kwargs = dict(augment) if isinstance(augment, Mapping) else {}
            # every distortion of the batch drawn, those of tasks lo … hi − 1 applied
            sx = _augment_images(sx, gen, part_of=(b * n * k, lo * n * k), **kwargs)
            qx = _augment_images(qx, gen, part_of=(b * n * q, lo * n * q), **kwargs)
        if flatten:
            pixels = sx.shape[-2] * sx.shape[-1]
            sx = sx.reshape(hi - lo, n * k, pixels)
            qx = qx.reshape(hi - lo, n * q, pixels)
        return TaskBatch(sx, sy, qx, qy, classes[lo:hi])


# --------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------


def _augment_images(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    part_of: tuple[int, int] | None = None,
    max_shift: float = 2.0,
    max_scale: float = 0.1,
    max_shear: float = 0.1,
    max_rotation: float = 0.0,
) -> np.ndarray:
    """Random small affine distortions (:func:`augment`), with ``part_of`` for the tasks
    that one MPI rank keeps.

    ``part_of = (m, start)``: ``images`` are the flattened images start … start + len − 1
    of m; the distortions are drawn for all m, so that ``rng`` advances as for the whole
    set and each image gets the distortion it would get there, and only these are resampled.
    """
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim < 2:
        raise ValueError(f"need (..., H, W) images, got shape {arr.shape}")
    lead, (h, w) = arr.shape[:-2], arr.shape[-2:]
    flat = arr.reshape(-1, h * w)
    mine = flat.shape[0]
    m, start = (mine, 0) if part_of is None else part_of
    if m == 0:
        return arr.copy()
    shift = rng.uniform(-max_shift, max_shift, size=(m, 2))
    scale = rng.uniform(1.0 - max_scale, 1.0 + max_scale, size=(m, 2))
    shear = rng.uniform(-max_shear, max_shear, size=m)
    angle = np.deg2rad(rng.uniform(-max_rotation, max_rotation, size=m))
    # forward map on centred (y, x): p' = R(angle) @ Shear @ Scale @ p + shift
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shr = np.zeros((m, 2, 2))
    shr[:, 0, 0] = shr[:, 1, 1] = 1.0
    shr[:, 1, 0] = shear  # x' = x + shear * y
    sc = np.zeros((m, 2, 2))
    sc[:, 0, 0], sc[:, 1, 1] = scale[:, 0], scale[:, 1]
    inv = np.linalg.inv(rot @ shr @ sc).astype(np.float32)  # output pixel -> source position
    if part_of is not None:  # the rest is per image: resample only these
        inv, shift, m = inv[start : start + mine], shift[start : start + mine], mine
        if m == 0:
            return arr.copy()
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    gy = (np.arange(h, dtype=np.float32) - cy).repeat(w)[None, :]  # (1, h*w) centred rows
    gx = np.tile(np.arange(w, dtype=np.float32) - cx, h)[None, :]
    ty, tx = shift[:, :1].astype(np.float32), shift[:, 1:].astype(np.float32)
    dy, dx = gy - ty, gx - tx  # (m, h*w)
    # source positions, clipped to the zero border of a padded copy (1 before, 2 after)
    sy = np.clip(inv[:, 0, :1] * dy + inv[:, 0, 1:] * dx + cy, -1.0, float(h))
    sx = np.clip(inv[:, 1, :1] * dy + inv[:, 1, 1:] * dx + cx, -1.0, float(w))
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - y0, sx - x0
    wp = w + 3
    padded = np.zeros((m, h + 3, wp), dtype=np.float32)
    padded[:, 1 : h + 1, 1 : w + 1] = flat.reshape(m, h, w)
    base = (np.arange(m) * ((h + 3) * wp))[:, None] + (y0.astype(np.int64) + 1) * wp
    base += x0.astype(np.int64) + 1
    src = padded.ravel()
    top = src[base] * (1 - fx) + src[base + 1] * fx
    bottom = src[base + wp] * (1 - fx) + src[base + wp + 1] * fx
    out = top * (1 - fy) + bottom * fy
    return out.reshape(*lead, h, w)


def augment(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    max_shift: float = 2.0,
    max_scale: float = 0.1,
    max_shear: float = 0.1,
    max_rotation: float = 0.0,
) -> np.ndarray:
    """Random small affine distortions, one independent draw per image (numpy only).

    Each image gets a shift uniform in ``[-max_shift, max_shift]`` pixels per axis, a scale
    uniform in ``[1 - max_scale, 1 + max_scale]`` per axis, a shear ``x += s * y`` with ``s``
    uniform in ``[-max_shear, max_shear]`` and a rotation uniform in
    ``[-max_rotation, max_rotation]`` degrees, about the image centre; pixels are resampled
    bilinearly with zero outside.

    Args:
        images: (..., H, W) float images.
        rng: the Generator to draw the distortions from.

    Returns:
        float32 array of the same shape.
    """
    return _augment_images(
        images,
        rng,
        max_shift=max_shift,
        max_scale=max_scale,
        max_shear=max_shear,
        max_rotation=max_rotation,
    )


def augment_batch(batch: TaskBatch, rng: np.random.Generator, **kwargs: float) -> TaskBatch:
    """Apply :func:`augment` to the support and query images of a batch.

    Works on flattened (B, M, S*S) inputs (square images) as well as (B, M, S, S) ones.
    """

    def one(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 3:
            side = int(round(np.sqrt(x.shape[-1])))
            if side * side != x.shape[-1]:
                raise ValueError(f"flattened images of size {x.shape[-1]} are not square")
            return _augment_images(x.reshape(*x.shape[:-1], side, side), rng, **kwargs).reshape(
                x.shape
            )
        return _augment_images(x, rng, **kwargs)

    return batch._replace(support_x=one(batch.support_x), query_x=one(batch.query_x))
