"""The official Omniglot one-shot classification runs and the Modified Hausdorff baseline.

Each run (Lake, Salakhutdinov and Tenenbaum, Science 2015) is a 20-way, 1-shot, within-alphabet
task: ``runNN/training/classMM.png`` holds one drawing of each of 20 classes,
``runNN/test/itemKK.png`` 20 queries and ``runNN/class_labels.txt`` the answers, one line per
query: ``runNN/test/itemKK.png runNN/training/classMM.png``.  A method's score on a run is the
share of queries it assigns to a wrong training class.

The baseline is the Modified Hausdorff Distance (Dubuisson and Jain 1994) as Lake et al.'s demo
uses it: each original 105x105 image becomes the (row, column) coordinates of its ink pixels,
centred on their mean, and

    d(A, B) = max(mean_a min_b |a - b|, mean_b min_a |a - b|)    (Euclidean)

A query takes the training class at the smallest distance; ties go to the lowest class index.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np

from tinymeta.io import ZIP_ERRORS
from tinymeta.tasks.omniglot import IMAGE_SIZE, SOURCE_SIZE, decode_png, preprocess

__all__ = [
    "OneShotRun",
    "RunScores",
    "format_report",
    "image_to_points",
    "load_runs",
    "mhd_matrix",
    "mhd_predict",
    "modified_hausdorff_distance",
    "score_runs",
    "score_runs_with",
]

PathLike = Union[str, "os.PathLike[str]"]
PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

_LABELS_RE = re.compile(r"^(?:([^/]+)/)?(run\d+)/class_labels\.txt$")

#: The most bytes one file of the runs may hold (an Omniglot PNG holds about a kilobyte):
#: a larger zip member or file is refused unread.
MAX_FILE_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OneShotRun:
    """One classification run.

    Attributes:
        name: ``"run01"`` etc.
        train_images: (n_train, 105, 105) bool, ink True; the training classes sorted by file
            name (class index ``i`` is ``train_names[i]``).
        test_images: (n_test, 105, 105) bool, ink True; the queries sorted by file name.
        answers: (n_test,) int64, the index of each query's right training class.
        train_names, test_names: the files as written in ``class_labels.txt``
            (``runNN/training/classMM.png``, ``runNN/test/itemKK.png``).
    """

    name: str
    train_images: np.ndarray
    test_images: np.ndarray
    answers: np.ndarray
    train_names: tuple[str, ...]
    test_names: tuple[str, ...]

    def preprocessed(
        self, center: bool = True, size: int = IMAGE_SIZE
    ) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) as the Omniglot loader's float32 (n, size, size) model inputs."""
        return (
            preprocess(self.train_images, center=center, size=size),
            preprocess(self.test_images, center=center, size=size),
        )


class _Files:
    """Read-only access to the files of a zip or a folder by '/'-separated relative name."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self._zip: zipfile.ZipFile | None = None
        if source.is_dir():
            self.names = sorted(
                p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()
            )
        elif source.is_file():
            try:
                self._zip = zipfile.ZipFile(source)
            except ZIP_ERRORS as err:
                raise ValueError(f"{source}: not a readable zip file ({err})") from err
            self.names = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
        else:
            raise FileNotFoundError(f"one-shot runs source not found: {source}")
        self._set = set(self.names)

    def label(self, name: str) -> str:
        return f"{self.source}!{name}" if self._zip is not None else str(self.source / name)

    def read(self, name: str) -> bytes:
        """The bytes of ``name``, refused unread when its (declared) size is over
        :data:`MAX_FILE_BYTES`."""
        if name not in self._set:
            raise FileNotFoundError(f"missing file {self.label(name)}")
        if self._zip is not None:
            size = self._zip.getinfo(name).file_size
        else:
            size = (self.source / name).stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{self.label(name)} holds {size} bytes, more than the "
                             f"{MAX_FILE_BYTES} a file of the runs may")
        if self._zip is not None:
            try:
                return self._zip.read(name)
            except ZIP_ERRORS as err:
                raise ValueError(f"cannot read {self.label(name)}: {err}") from None
        return (self.source / name).read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _read_image(files: _Files, name: str) -> np.ndarray:
    """One drawing: a 105x105 PNG with some ink (a ValueError naming it otherwise)."""
    label = files.label(name)
    ink = decode_png(files.read(name), label, size=(SOURCE_SIZE, SOURCE_SIZE))
    if not ink.any():
        raise ValueError(f"{label}: the image is blank (no ink)")
    return ink


def _parse_run(files: _Files, prefix: str, run: str) -> OneShotRun:
    labels_name = f"{prefix}{run}/class_labels.txt"
    text = files.read(labels_name).decode("utf-8", errors="replace")
    pairs: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        tokens = line.split()
        ok = (
            len(tokens) == 2
            and tokens[0].startswith(f"{run}/test/")
            and tokens[1].startswith(f"{run}/training/")
        )
        if not ok:
            raise ValueError(
                f"{files.label(labels_name)} line {lineno}: expected "
                f"'{run}/test/<item>.png {run}/training/<class>.png', got {line.strip()!r}"
            )
        if tokens[0] in pairs:
            raise ValueError(f"{files.label(labels_name)} line {lineno}: {tokens[0]} repeated")
        pairs[tokens[0]] = tokens[1]
    if not pairs:
        raise ValueError(f"{files.label(labels_name)}: no answers")
    train_names = tuple(
        sorted(
            n[len(prefix) :]
            for n in files.names
            if n.startswith(f"{prefix}{run}/training/") and n.lower().endswith(".png")
        )
    )
    if not train_names:
        raise FileNotFoundError(
            f"no training images under {files.label(f'{prefix}{run}/training/')}"
        )
    test_names = tuple(sorted(pairs))
    in_folder = {n[len(prefix):] for n in files.names
                 if n.startswith(f"{prefix}{run}/test/") and n.lower().endswith(".png")}
    absent = sorted(set(test_names) - in_folder)
    if absent:
        raise FileNotFoundError(f"{files.label(labels_name)} names {absent[0]}, missing from "
                                "the test folder")
    unnamed = sorted(in_folder - set(test_names))
    if unnamed:  # a run scored on fewer items than it holds
        raise ValueError(f"{files.label(labels_name)} answers {len(test_names)} test items "
                         f"but {run}/test holds {len(in_folder)}: no answer for {unnamed[0]}")
    index = {n: i for i, n in enumerate(train_names)}
    missing = sorted(set(pairs.values()) - set(index))
    if missing:
        raise FileNotFoundError(
            f"{files.label(labels_name)} names {missing[0]}, missing from the training folder"
        )
    answers = np.array([index[pairs[t]] for t in test_names], dtype=np.int64)
    train = np.stack([_read_image(files, prefix + n) for n in train_names])
    test = np.stack([_read_image(files, prefix + n) for n in test_names])
    return OneShotRun(run, train, test, answers, train_names, test_names)


def load_runs(source: PathLike, runs: Iterable[int | str] | None = None) -> list[OneShotRun]:
    """Parse the one-shot runs of a zip file or a folder.

    The ``runNN/`` folders may sit at the top of ``source`` or one folder down.

    Args:
        source: e.g. ``one_shot_runs_01-10.zip`` or the unpacked ``all_runs`` folder.
        runs: which runs (numbers like ``1`` or names like ``"run01"``); default all, sorted.

    Raises:
        FileNotFoundError: when ``source``, or a file a run names, does not exist.
        ValueError: naming the file when ``class_labels.txt`` or a PNG is malformed (not a
            105x105 image, blank, over :data:`MAX_FILE_BYTES`), when ``class_labels.txt``
            leaves a test item without its answer, or when ``source`` holds no runs.
    """
    files = _Files(Path(source))
    try:
        found: dict[str, str] = {}
        for name in files.names:
            m = _LABELS_RE.match(name)
            if m:
                found.setdefault(m.group(2), f"{m.group(1)}/" if m.group(1) else "")
        if not found:
            raise ValueError(f"{source}: no runNN/class_labels.txt at the top or one level down")
        if runs is None:
            wanted = sorted(found)
        else:
            wanted = [r if isinstance(r, str) else f"run{int(r):02d}" for r in runs]
            absent = [r for r in wanted if r not in found]
            if absent:
                raise FileNotFoundError(f"{source}: no {', '.join(absent)}")
        return [_parse_run(files, found[r], r) for r in wanted]
    finally:
        files.close()


# --------------------------------------------------------------------------------------------
# Modified Hausdorff Distance
# --------------------------------------------------------------------------------------------


def image_to_points(image: np.ndarray) -> np.ndarray:
    """(m, 2) float64 (row, column) coordinates of the ink pixels, minus their mean."""
    pts = np.argwhere(np.asarray(image, dtype=bool)).astype(np.float64)
    if pts.shape[0] == 0:
        raise ValueError("image has no ink")
    return pts - pts.mean(axis=0)


def modified_hausdorff_distance(a: np.ndarray, b: np.ndarray) -> float:
    """MHD of two (m, 2) point sets by the full pairwise distance matrix (the reference)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    sq = (a[:, None, 0] - b[None, :, 0]) ** 2
    sq += (a[:, None, 1] - b[None, :, 1]) ** 2
    return float(max(np.sqrt(sq.min(axis=1)).mean(), np.sqrt(sq.min(axis=0)).mean()))


@dataclass(frozen=True)
class _InkGrid:
    """An image's ink pixels with per-row nearest-ink tables for fast exact MHD."""

    rows: np.ndarray  # (m,) ink pixel rows, argwhere order
    cols: np.ndarray  # (m,) ink pixel columns
    y: np.ndarray  # (H,) centred row coordinate of each pixel row
    x: np.ndarray  # (W,) centred column coordinate of each pixel column
    ink_rows: np.ndarray  # (R,) rows holding ink
    last: np.ndarray  # (R, W) largest ink column <= c in that row, -1 if none
    next: np.ndarray  # (R, W) smallest ink column >= c in that row, W if none


def _ink_grid(image: np.ndarray) -> _InkGrid:
    ink = np.asarray(image, dtype=bool)
    if ink.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {ink.shape}")
    h, w = ink.shape
    pts = np.argwhere(ink)
    if pts.shape[0] == 0:
        raise ValueError("image has no ink")
    mean = pts.astype(np.float64).mean(axis=0)  # the same mean as image_to_points
    ink_rows = np.flatnonzero(ink.any(axis=1))
    sub = ink[ink_rows]
    cols = np.arange(w)
    last = np.maximum.accumulate(np.where(sub, cols, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(sub, cols, w)[:, ::-1], axis=1)[:, ::-1]
    return _InkGrid(
        pts[:, 0],
        pts[:, 1],
        np.arange(h, dtype=np.float64) - mean[0],
        np.arange(w, dtype=np.float64) - mean[1],
        ink_rows,
        last,
        np.ascontiguousarray(nxt),
    )


def _directed(a: _InkGrid, b: _InkGrid) -> float:
    """mean over a's ink of the distance to b's nearest ink, bit-identical to the reference.

    For a pixel of ``a`` and a row of ``b``, the nearest ink of that row is the nearest ink
    column on the left or on the right (rounded subtraction and squaring are monotone), and
    adding the row's constant squared vertical offset keeps the order; so the row-wise minima
    give exactly the same squared distances as the full matrix, with R instead of m columns.
    """
    w = b.x.shape[0]
    kl = np.searchsorted(b.x, a.x, side="right") - 1  # largest column with b.x <= a.x
    kr = np.searchsorted(b.x, a.x, side="left")  # smallest column with b.x >= a.x
    left = np.where(kl[None, :] >= 0, b.last[:, np.clip(kl, 0, w - 1)], -1)
    right = np.where(kr[None, :] < w, b.next[:, np.clip(kr, 0, w - 1)], w)
    dl = np.where(left >= 0, (a.x[None, :] - b.x[np.clip(left, 0, w - 1)]) ** 2, np.inf)
    dr = np.where(right < w, (a.x[None, :] - b.x[np.clip(right, 0, w - 1)]) ** 2, np.inf)
    rowmin = np.minimum(dl, dr).T  # (W of a, R of b): min over the row's ink of dx**2
    dy2 = (a.y[:, None] - b.y[b.ink_rows][None, :]) ** 2  # (H of a, R of b)
    sq = dy2[a.rows] + rowmin[a.cols]  # (m, R)
    return float(np.sqrt(sq.min(axis=1)).mean())


def mhd_matrix(test_images: np.ndarray, train_images: np.ndarray) -> np.ndarray:
    """(n_test, n_train) Modified Hausdorff distances between ink images (ink True).

    Equal, bit for bit, to :func:`modified_hausdorff_distance` of :func:`image_to_points`.
    """
    tests = [_ink_grid(im) for im in test_images]
    trains = [_ink_grid(im) for im in train_images]
    out = np.empty((len(tests), len(trains)), dtype=np.float64)
    for i, t in enumerate(tests):
        for j, c in enumerate(trains):
            out[i, j] = max(_directed(t, c), _directed(c, t))
    return out


def mhd_predict(train_images: np.ndarray, test_images: np.ndarray) -> np.ndarray:
    """Nearest training class by MHD for each test image; ties go to the lowest index."""
    return np.argmin(mhd_matrix(test_images, train_images), axis=1)


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------


class RunScores(NamedTuple):
    """Per-run error rates in percent (by run name) and their mean."""

    errors: dict[str, float]
    mean: float


def _as_runs(runs: Sequence[OneShotRun] | PathLike) -> Sequence[OneShotRun]:
    if isinstance(runs, (str, os.PathLike)):
        return load_runs(runs)
    return runs


def score_runs_with(
    predict_fn: PredictFn,
    runs: Sequence[OneShotRun] | PathLike,
    *,
    preprocessed: bool = False,
    center: bool = True,
) -> RunScores:
    """Score a classifier on the runs.

    Args:
        predict_fn: ``predict_fn(train_images, test_images) -> (n_test,)`` integer indices of
            the predicted training classes.
        runs: parsed runs or a source for :func:`load_runs`.
        preprocessed: give ``predict_fn`` the loader's (n, 28, 28) float32 images (see
            :func:`tinymeta.tasks.omniglot.preprocess`) instead of the original boolean
            105x105 ones; what a model trained on :class:`~tinymeta.tasks.omniglot.Omniglot`
            needs.
        center: the centring setting used when ``preprocessed``.
    """
    errors: dict[str, float] = {}
    for run in _as_runs(runs):
        if preprocessed:
            train, test = run.preprocessed(center=center)
        else:
            train, test = run.train_images, run.test_images
        pred = np.asarray(predict_fn(train, test))
        if pred.shape != run.answers.shape or not np.issubdtype(pred.dtype, np.integer):
            raise ValueError(
                f"{run.name}: predict_fn must return {run.answers.shape[0]} integer class "
                f"indices, got {pred.dtype} {pred.shape}"
            )
        if pred.min() < 0 or pred.max() >= len(run.train_names):
            raise ValueError(f"{run.name}: predicted class index out of range")
        wrong = int(np.count_nonzero(pred != run.answers))
        errors[run.name] = wrong * 100.0 / run.answers.shape[0]
    if not errors:
        raise ValueError("no runs to score")
    return RunScores(errors, sum(errors.values()) / len(errors))


def score_runs(runs: Sequence[OneShotRun] | PathLike) -> RunScores:
    """Score the Modified Hausdorff Distance baseline on the runs (original images)."""
    return score_runs_with(mhd_predict, runs)


def format_report(errors: RunScores | Mapping[str, float] | Sequence[float]) -> str:
    """One line per run, ``run01 error 45.0%``, then ``mean error 38.0%``.

    Accepts :class:`RunScores`, a mapping of run name to error percent, or a sequence of
    error percents (named run01, run02, ...).
    """
    if isinstance(errors, RunScores):
        errors = errors.errors
    if not isinstance(errors, Mapping):
        errors = {f"run{i:02d}": float(e) for i, e in enumerate(errors, 1)}
    if not errors:
        raise ValueError("no errors to report")
    lines = [f"{name} error {err:.1f}%" for name, err in errors.items()]
    lines.append(f"mean error {sum(errors.values()) / len(errors):.1f}%")
    return "\n".join(lines)
