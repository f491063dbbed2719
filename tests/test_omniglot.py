"""Tests of the Omniglot loader, cache and task sampler (tinymeta.tasks.omniglot)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL", reason='Pillow is needed to decode PNGs: pip install -e ".[data]"')
from PIL import Image, ImageDraw  # noqa: E402

from tinymeta.tasks import omniglot as om  # noqa: E402
from tinymeta.tasks.base import TaskBatch  # noqa: E402
from tinymeta.tasks.omniglot import Omniglot, augment, augment_batch, preprocess  # noqa: E402
from tinymeta.tasks.omniglot import cache as omniglot_cache  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
SMALL1 = DATA / "images_background_small1.zip"
SMALL2 = DATA / "images_background_small2.zip"
needs_data = pytest.mark.skipif(
    not (SMALL1.exists() and SMALL2.exists()),
    reason=f"real Omniglot files not found under {DATA}",
)

N_DRAWERS = 20


# --------------------------------------------------------------------------------------------
# a small synthetic data set in the Omniglot layout
# --------------------------------------------------------------------------------------------


def draw_character(shape: int, drawer: int, variant: int = 0) -> Image.Image:
    """A 105x105 one-bit image, black ink on white, off-centre and drawer-dependent."""
    im = Image.new("1", (105, 105), 1)
    d = ImageDraw.Draw(im)
    ox, oy = 15 + 2 * (drawer % 5) + 7 * variant, 20 + drawer // 5  # upper left, not centred
    if shape == 0:  # an L
        d.line([(ox, oy), (ox, oy + 40), (ox + 25, oy + 40)], fill=0, width=4)
    elif shape == 1:  # a filled triangle
        d.polygon([(ox, oy), (ox + 35, oy + 5), (ox + 5, oy + 30)], fill=0)
    elif shape == 2:  # an ellipse outline with a tail
        d.ellipse([ox, oy, ox + 30, oy + 20], outline=0, width=3)
        d.line([(ox + 30, oy + 10), (ox + 45, oy + 35)], fill=0, width=3)
    elif shape == 3:  # a cross, longer on one side
        d.line([(ox, oy + 15), (ox + 40, oy + 15)], fill=0, width=3)
        d.line([(ox + 10, oy), (ox + 10, oy + 45)], fill=0, width=3)
    elif shape == 4:  # a zig-zag
        d.line([(ox, oy), (ox + 12, oy + 25), (ox + 24, oy), (ox + 36, oy + 25)], fill=0, width=3)
    else:  # a rectangle and a dot
        d.rectangle([ox, oy, ox + 20, oy + 30], outline=0, width=3)
        d.rectangle([ox + 30, oy + 35, ox + 34, oy + 39], fill=0)
    # a drawer's mark: drawings differ by more than a translation (which centring undoes)
    mx, my = ox + 2 * drawer, oy + 50 + 4 * variant
    d.rectangle([mx, my, mx + 3, my + 3], fill=0)
    return im


def write_split(
    root: Path, alphabets: dict[str, int], shape_offset: int = 0, variant: int = 0
) -> Path:
    """root/<Alphabet>/character<NN>/<id>_<drawer>.png for each alphabet and count."""
    shape = shape_offset
    for alpha, n_chars in alphabets.items():
        for c in range(1, n_chars + 1):
            folder = root / alpha / f"character{c:02d}"
            folder.mkdir(parents=True)
            for d in range(1, N_DRAWERS + 1):
                draw_character(shape % 6, d - 1, variant).save(folder / f"{shape:04d}_{d:02d}.png")
            shape += 1
    return root


def zip_tree(folder: Path, zip_path: Path) -> Path:
    """Zip ``folder`` with its own name as the top-level folder, as the release zips are."""
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(folder.rglob("*")):
            arc = p.relative_to(folder.parent).as_posix()
            zf.write(p, arc + ("/" if p.is_dir() else ""))
    return zip_path


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Never touch the user's cache, whatever a test forgets to pass."""
    monkeypatch.setenv("TINYMETA_CACHE", str(tmp_path_factory.mktemp("default_cache")))


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("omni")
    bg = write_split(base / "images_background", {"Alpha": 3, "Beta": 3})
    extra = write_split(base / "images_extra", {"Alpha": 3, "Gamma": 2}, shape_offset=3, variant=1)
    return {
        "base": base,
        "dir": bg,
        "zip": zip_tree(bg, base / "images_background.zip"),
        "extra_zip": zip_tree(extra, base / "images_extra.zip"),
    }


@pytest.fixture(scope="module")
def fixture_set(fixture_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    return Omniglot(fixture_data["zip"], cache_dir=tmp_path_factory.mktemp("cache"))


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def test_counts_and_names(fixture_set: Omniglot) -> None:
    ds = fixture_set
    assert ds.images.shape == (6, N_DRAWERS, 28, 28)
    assert ds.images.dtype == np.float32
    assert ds.alphabets == ["Alpha", "Beta"]
    assert ds.characters[:2] == [("Alpha", "character01"), ("Alpha", "character02")]
    assert ds.num_classes == 24 and len(ds) == 24
    assert ds.files.shape == (6, N_DRAWERS) and ds.files[0, 0] == "0000_01.png"
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert ds.images.max() == 1.0  # ink is 1 (a thick stroke covers whole 28x28 pixels)
    assert (ds.images.reshape(6 * N_DRAWERS, -1) > 0).mean(axis=1).max() < 0.5  # ink is sparse


def test_zip_equals_folders(fixture_data: dict[str, Path], tmp_path: Path) -> None:
    z = Omniglot(fixture_data["zip"], cache=False)
    direct = Omniglot(fixture_data["dir"], cache=False)  # alphabets directly inside
    split_root = tmp_path / "root"
    split_root.mkdir()
    os.symlink(fixture_data["dir"], split_root / "images_background")
    one_level = Omniglot(split_root, cache_dir=tmp_path / "cache")  # one split folder level
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    for other in (direct, one_level):
        assert other.characters == z.characters
        np.testing.assert_array_equal(other.images, z.images)
        np.testing.assert_array_equal(other.files, z.files)


def test_dedupe_across_sources(fixture_data: dict[str, Path], tmp_path: Path) -> None:
    both = Omniglot([fixture_data["zip"], fixture_data["extra_zip"]], cache_dir=tmp_path)
    assert both.alphabets == ["Alpha", "Beta", "Gamma"]
    assert both.num_characters == 3 + 3 + 2  # Alpha counted once
    assert len(set(both.characters)) == both.num_characters
    first = Omniglot(fixture_data["zip"], cache_dir=tmp_path)
    extra = Omniglot(fixture_data["extra_zip"], cache_dir=tmp_path)
    # the first source wins for the shared alphabet
    np.testing.assert_array_equal(both.subset(["Alpha"]).images, first.subset(["Alpha"]).images)
    assert not np.array_equal(first.subset(["Alpha"]).images, extra.subset(["Alpha"]).images)
    # source order does not change the result's order
    rev = Omniglot([fixture_data["extra_zip"], fixture_data["zip"]], cache_dir=tmp_path)
    assert rev.characters == both.characters


def test_rotations_are_distinct_classes(fixture_set: Omniglot) -> None:
    ds = fixture_set
    assert ds.rotations == (0, 1, 2, 3)
    assert ds.class_info(5) == ("Alpha", "character02", 1)
    base = ds.images[1]
    for r in range(4):
        np.testing.assert_array_equal(ds.class_images(4 + r), np.rot90(base, r, axes=(1, 2)))
    flat = {ds.class_images(c).tobytes() for c in range(ds.num_classes)}
    assert len(flat) == ds.num_classes  # every rotation of every character differs
    plain = ds.with_rotations((0,))
    assert plain.num_classes == ds.num_characters
    with pytest.raises(ValueError):
        ds.with_rotations((0, 4))  # 4 quarter turns == 0


def test_split_by_alphabet(fixture_data: dict[str, Path], tmp_path: Path) -> None:
    ds = Omniglot([fixture_data["zip"], fixture_data["extra_zip"]], cache_dir=tmp_path)
    train, val = ds.split(["Beta"])
    assert val.alphabets == ["Beta"] and train.alphabets == ["Alpha", "Gamma"]
    assert not set(train.characters) & set(val.characters)
    assert train.num_characters + val.num_characters == ds.num_characters
    np.testing.assert_array_equal(val.images, ds.images[[a == "Beta" for a, _ in ds.characters]])
    _, val_plain = ds.split(["Beta"], val_rotations=(0,))
    assert val_plain.num_classes == val.num_characters
    with pytest.raises(ValueError, match="Klingon"):
        ds.split(["Klingon"])


def test_centering_puts_ink_mass_at_centre(fixture_data: dict[str, Path]) -> None:
    def com_offsets(images: np.ndarray) -> np.ndarray:
        imgs = images.reshape(-1, 28, 28).astype(np.float64)
        mass = imgs.sum(axis=(1, 2))
        cy = (imgs.sum(axis=2) * np.arange(28)).sum(axis=1) / mass
        cx = (imgs.sum(axis=1) * np.arange(28)).sum(axis=1) / mass
        return np.hypot(cy - 13.5, cx - 13.5)

    centred = Omniglot(fixture_data["zip"], cache=False)
    raw = Omniglot(fixture_data["zip"], cache=False, center=False)
    assert com_offsets(centred.images).max() < 1.0
    assert com_offsets(raw.images).min() > 3.0  # the fixture is drawn off-centre


def test_preprocess_matches_loader(fixture_data: dict[str, Path]) -> None:
    path = fixture_data["dir"] / "Beta" / "character02"
    pngs = sorted(path.glob("*.png"))
    ink = np.stack([~np.asarray(Image.open(p), dtype=bool) for p in pngs])
    ds = Omniglot(fixture_data["dir"], cache=False)
    np.testing.assert_array_equal(preprocess(ink), ds.images[4])
    one = preprocess(ink[0], center=False)
    assert one.shape == (1, 28, 28) and one.dtype == np.float32
    # BOX resampling of a 0/1 image keeps the ink's share of the area
    assert abs(one.mean() - ink[0].mean()) < 0.01


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_missing_source_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "images_nowhere.zip"
    with pytest.raises(FileNotFoundError, match="images_nowhere.zip"):
        Omniglot(missing, cache_dir=tmp_path)


def test_zip_without_layout(tmp_path: Path) -> None:
    bad = tmp_path / "not_omniglot.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("run01/training/class01.png", b"x")
        zf.writestr("readme.txt", b"hello")
    with pytest.raises(ValueError, match="not_omniglot.zip"):
        Omniglot(bad, cache_dir=tmp_path)
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"this is not a zip")
    with pytest.raises(ValueError, match="garbage.zip"):
        Omniglot(garbage, cache_dir=tmp_path)


def test_malformed_png_names_the_file(tmp_path: Path) -> None:
    root = write_split(tmp_path / "bg", {"Alpha": 2})
    bad = root / "Alpha" / "character02" / "0001_07.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="0001_07.png"):
        Omniglot(root, cache=False)
    z = zip_tree(root, tmp_path / "bg.zip")
    with pytest.raises(ValueError, match=r"bg\.zip!bg/Alpha/character02/0001_07\.png"):
        Omniglot(z, cache_dir=tmp_path / "cache")
    Image.new("1", (50, 50), 1).save(bad)
    with pytest.raises(ValueError, match="0001_07.png.*50x50"):
        Omniglot(root, cache=False)


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------


def _only_cache_file(cache: Path) -> Path:
    files = sorted(cache.glob("*.npz"))
    assert len(files) == 1, files
    assert not list(cache.glob("*.tmp"))  # no temporary file left behind
    return files[0]


def test_cache_round_trip(
    fixture_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = Omniglot(fixture_data["zip"], cache=False)
    first = Omniglot(fixture_data["zip"], cache_dir=tmp_path)
    path = _only_cache_file(tmp_path)
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"][()]))
    assert meta["key"]["format_version"] == om.CACHE_FORMAT_VERSION
    assert meta["key"]["center"] is True and meta["key"]["resample"] == "BOX"
    assert len(meta["checksum"]) == 64

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although a valid cache exists")

    monkeypatch.setattr(omniglot_cache, "_decode_layout", no_decoding)
    second = Omniglot(fixture_data["zip"], cache_dir=tmp_path)
    for ds in (first, second):
        np.testing.assert_array_equal(ds.images, fresh.images)
        assert ds.characters == fresh.characters
        np.testing.assert_array_equal(ds.files, fresh.files)


def test_unwritable_cache_still_loads(fixture_data: dict[str, Path], tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.warns(RuntimeWarning, match="could not write Omniglot cache"):
        ds = Omniglot(fixture_data["zip"], cache_dir=not_a_dir)
    assert ds.num_characters == 6


def test_cache_default_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYMETA_CACHE", str(tmp_path / "c"))
    assert om.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TINYMETA_CACHE")
    assert om.default_cache_dir() == Path.home() / ".cache" / "tinymeta"


def test_cache_settings_are_part_of_the_key(fixture_data: dict[str, Path], tmp_path: Path) -> None:
    a = Omniglot(fixture_data["zip"], cache_dir=tmp_path)
    b = Omniglot(fixture_data["zip"], cache_dir=tmp_path, center=False)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert not np.array_equal(a.images, b.images)


def _corrupt_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_garbage(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04" + os.urandom(300))


def _corrupt_arrays(path: Path) -> None:  # a well-formed npz whose arrays do not match
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"] = arrays["images"].copy()
    arrays["images"][0, 0, 0, 0] += 0.5
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _corrupt_key(path: Path) -> None:  # valid arrays and checksum, but built from other files
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"][()]))
    meta["key"]["files"]["size"] += 1
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    "corrupt", [_corrupt_truncate, _corrupt_garbage, _corrupt_arrays, _corrupt_key]
)
def test_corrupt_cache_is_rebuilt(fixture_data: dict[str, Path], tmp_path: Path, corrupt) -> None:
    first = Omniglot(fixture_data["zip"], cache_dir=tmp_path)
    path = _only_cache_file(tmp_path)
    corrupt(path)
    with pytest.warns(RuntimeWarning, match="rebuilding invalid Omniglot cache"):
        again = Omniglot(fixture_data["zip"], cache_dir=tmp_path)
    np.testing.assert_array_equal(again.images, first.images)
    assert again.characters == first.characters
    assert _only_cache_file(tmp_path) == path
    # the rebuilt file is valid: loading it again gives no warning and the same arrays
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third = Omniglot(fixture_data["zip"], cache_dir=tmp_path)
    np.testing.assert_array_equal(third.images, first.images)


def test_changed_source_misses_the_cache(tmp_path: Path) -> None:
    root = write_split(tmp_path / "bg", {"Alpha": 1})
    first = Omniglot(root, cache_dir=tmp_path / "cache")
    target = root / "Alpha" / "character01" / "0000_03.png"
    draw_character(4, 0).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = Omniglot(root, cache_dir=tmp_path / "cache")
    assert not np.array_equal(first.images[0, 2], second.images[0, 2])
    np.testing.assert_array_equal(first.images[0, 3:], second.images[0, 3:])


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------


def _match(ds: Omniglot, cls: int, image: np.ndarray) -> int:
    """The drawer index of ``image`` among class ``cls``'s drawings (exact match)."""
    hits = np.flatnonzero((ds.class_images(cls).reshape(ds.num_drawers, -1) == image).all(axis=1))
    assert hits.size >= 1, "image is not a drawing of its class"
    return int(hits[0])


def test_sample_shapes_labels_and_contents(fixture_set: Omniglot) -> None:
    ds = fixture_set
    b, n, k, q = 3, 5, 2, 3
    batch = ds.sample(b, n, k, q, seed=0)
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (b, n * k, 784) and batch.support_x.dtype == np.float32
    assert batch.query_x.shape == (b, n * q, 784) and batch.query_x.dtype == np.float32
    assert batch.support_y.shape == (b, n * k) and batch.support_y.dtype == np.int64
    assert batch.query_y.shape == (b, n * q) and batch.query_y.dtype == np.int64
    assert batch.params.shape == (b, n)
    for t in range(b):
        classes = batch.params[t]
        assert len(set(classes.tolist())) == n and classes.max() < ds.num_classes
        np.testing.assert_array_equal(np.bincount(batch.support_y[t], minlength=n), [k] * n)
        np.testing.assert_array_equal(np.bincount(batch.query_y[t], minlength=n), [q] * n)
        drawers: dict[int, list[int]] = {j: [] for j in range(n)}
        for x, y in zip(batch.support_x[t], batch.support_y[t], strict=True):
            drawers[int(y)].append(_match(ds, int(classes[y]), x))
        for x, y in zip(batch.query_x[t], batch.query_y[t], strict=True):
            drawers[int(y)].append(_match(ds, int(classes[y]), x))
        for picked in drawers.values():  # K + Q distinct drawings per class
            assert len(set(picked)) == k + q


def test_sample_unflattened_and_no_queries(fixture_set: Omniglot) -> None:
    batch = fixture_set.sample(2, 3, 1, 0, seed=1, flatten=False)
    assert batch.support_x.shape == (2, 3, 28, 28)
    assert batch.query_x.shape == (2, 0, 28, 28) and batch.query_y.shape == (2, 0)


def test_labels_and_order_are_shuffled(fixture_set: Omniglot) -> None:
    batch = fixture_set.sample(200, 5, 2, 1, seed=3)
    # the class -> label mapping is a random permutation: classes are not in sorted order
    assert not all(np.all(np.diff(row) > 0) for row in batch.params)
    # one class gets different labels in different tasks
    labels_of_class0 = {int(np.flatnonzero(row == 0)[0]) for row in batch.params if 0 in row}
    assert len(labels_of_class0) == 5
    # the points of a set are not grouped by label
    assert not all(np.all(np.diff(y) >= 0) for y in batch.support_y)
    # every class is used
    assert set(np.unique(batch.params)) == set(range(fixture_set.num_classes))


def test_sample_reproducible(fixture_set: Omniglot) -> None:
    a = fixture_set.sample(4, 5, 1, 2, seed=7)
    b = fixture_set.sample(4, 5, 1, 2, seed=7)
    c = fixture_set.sample(4, 5, 1, 2, rng=np.random.default_rng(7))
    d = fixture_set.sample(4, 5, 1, 2, seed=8)
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    assert not np.array_equal(a.params, d.params)
    assert not np.array_equal(a.support_x, d.support_x)
    g = np.random.default_rng(0)
    e, f = fixture_set.sample(2, 5, 1, 1, rng=g), fixture_set.sample(2, 5, 1, 1, rng=g)
    assert not np.array_equal(e.support_x, f.support_x)  # a shared rng moves on
    with pytest.raises(ValueError):
        fixture_set.sample(1, 5, 1, 1, seed=1, rng=g)


def test_sample_on_the_fly_rotation_path_agrees(fixture_set: Omniglot) -> None:
    slow = fixture_set.with_rotations(fixture_set.rotations)
    slow.max_table_bytes = 0  # no pre-rotated table
    for x, y in zip(
        fixture_set.sample(3, 6, 2, 2, seed=5), slow.sample(3, 6, 2, 2, seed=5), strict=True
    ):
        np.testing.assert_array_equal(x, y)
    assert slow._table is None


@pytest.mark.parametrize("augment", [False, True, {"max_rotation": 10.0}],
                         ids=["plain", "augment", "augment-rotation"])
@pytest.mark.parametrize("q", [2, 0])
def test_sample_a_share_of_the_tasks_is_that_slice_of_the_batch(
    fixture_set: Omniglot, augment, q: int
) -> None:
    """tasks=(lo, hi) (an MPI rank's share): tasks lo..hi-1 of the whole batch, bit for bit,
    and the Generator ends where the whole batch leaves it."""
    b = 5
    g_all = np.random.default_rng(11)
    whole = fixture_set.sample(b, 4, 2, q, rng=g_all, augment=augment)
    after = g_all.bit_generator.state
    for lo, hi in ((0, 5), (0, 2), (2, 5), (1, 4), (3, 3)):
        g = np.random.default_rng(11)
        part = fixture_set.sample(b, 4, 2, q, rng=g, augment=augment, tasks=(lo, hi))
        for x, y in zip(part, whole, strict=True):
            assert x.shape == (hi - lo, *y.shape[1:])
            np.testing.assert_array_equal(x, y[lo:hi])
        assert g.bit_generator.state == after, (lo, hi)
    with pytest.raises(ValueError, match=r"tasks \(4, 6\) is not a range of the 5 tasks"):
        fixture_set.sample(b, 4, 2, q, seed=0, tasks=(4, 6))


def test_sample_argument_errors(fixture_set: Omniglot) -> None:
    with pytest.raises(ValueError, match="classes"):
        fixture_set.sample(1, 25, 1, 1, seed=0)
    with pytest.raises(ValueError, match="drawings"):
        fixture_set.sample(1, 5, 10, 11, seed=0)
    with pytest.raises(ValueError):
        fixture_set.sample(0, 5, 1, 1, seed=0)


# --------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------


def test_augment_identity_and_reproducible(fixture_set: Omniglot) -> None:
    imgs = fixture_set.images[:2]
    same = augment(imgs, np.random.default_rng(0), max_shift=0, max_scale=0, max_shear=0)
    np.testing.assert_array_equal(same, imgs)
    a = augment(imgs, np.random.default_rng(1))
    b = augment(imgs, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == imgs.shape and a.dtype == np.float32
    assert not np.array_equal(a, imgs)
    assert 0.0 <= a.min() and a.max() <= 1.0 + 1e-6
    ratio = a.sum(axis=(-1, -2)) / imgs.sum(axis=(-1, -2))  # small distortions only
    assert np.all((ratio > 0.6) & (ratio < 1.4))


def test_augment_batch_and_sample_option(fixture_set: Omniglot) -> None:
    plain = fixture_set.sample(2, 4, 2, 2, seed=11)
    aug = fixture_set.sample(2, 4, 2, 2, seed=11, augment=True)
    np.testing.assert_array_equal(aug.support_y, plain.support_y)
    np.testing.assert_array_equal(aug.params, plain.params)
    assert aug.support_x.shape == plain.support_x.shape
    assert not np.array_equal(aug.support_x, plain.support_x)
    after = augment_batch(plain, np.random.default_rng(0), max_shift=1.0)
    assert after.support_x.shape == plain.support_x.shape
    assert after.query_x.shape == plain.query_x.shape
    np.testing.assert_array_equal(after.query_y, plain.query_y)


# --------------------------------------------------------------------------------------------
# the real files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real_cache")


@needs_data
def test_real_small1(real_cache: Path) -> None:
    ds = Omniglot(SMALL1, cache_dir=real_cache)
    assert ds.num_characters == 136 and ds.images.shape == (136, 20, 28, 28)
    assert ds.num_characters * ds.num_drawers == 2720
    assert ds.alphabets == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    assert ds.num_classes == 544
    batch = ds.sample(2, 20, 5, 5, seed=0)
    assert batch.support_x.shape == (2, 100, 784)


@needs_data
def test_real_small2(real_cache: Path) -> None:
    ds = Omniglot(SMALL2, cache_dir=real_cache)
    assert ds.num_characters == 156 and ds.num_characters * ds.num_drawers == 3120
    assert ds.alphabets == ["Greek", "Japanese_(katakana)", "Latin", "Sanskrit", "Tagalog"]


@needs_data
def test_real_both_dedupe_greek_and_latin(real_cache: Path) -> None:
    both = Omniglot([SMALL1, SMALL2], cache_dir=real_cache)
    s1 = Omniglot(SMALL1, cache_dir=real_cache)
    s2 = Omniglot(SMALL2, cache_dir=real_cache)
    shared = {"Greek", "Latin"}
    assert set(s1.alphabets) & set(s2.alphabets) == shared
    n_shared = sum(a in shared for a, _ in s1.characters)
    assert n_shared == 24 + 26
    assert both.num_characters == 136 + 156 - n_shared == 242
    assert len(both.alphabets) == 8
    # the shared characters are the same drawings in both files
    np.testing.assert_array_equal(s1.subset(shared).images, s2.subset(shared).images)
    np.testing.assert_array_equal(both.subset(shared).images, s1.subset(shared).images)
    train, val = both.split(["Greek", "Tagalog"])
    assert not set(train.characters) & set(val.characters)
    assert train.num_characters + val.num_characters == 242


def test_a_zip_rewritten_with_the_same_size_and_time_misses_the_cache(tmp_path: Path) -> None:
    """The cache is keyed on the zip's bytes: two drawings swapped (the same size, the mtime
    set back) give the new images, not the cached old ones."""
    root = write_split(tmp_path / "bg", {"Alpha": 1})
    z = zip_tree(root, tmp_path / "bg.zip")
    first = Omniglot(z, cache_dir=tmp_path / "cache")
    st = z.stat()
    with zipfile.ZipFile(z) as zf:
        members = [(i, zf.read(i)) for i in zf.infolist()]
    swap = {"0000_02.png": "0000_05.png", "0000_05.png": "0000_02.png"}
    with zipfile.ZipFile(z, "w") as zf:  # the same members in the same order, two renamed
        for info, data in members:
            head, _, name = info.filename.rpartition("/")
            info.filename = f"{head}/{swap.get(name, name)}" if head else info.filename
            zf.writestr(info, data)
    os.utime(z, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert z.stat().st_size == st.st_size and z.stat().st_mtime_ns == st.st_mtime_ns
    second = Omniglot(z, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(second.images[0, 1], first.images[0, 4])
    np.testing.assert_array_equal(second.images[0, 4], first.images[0, 1])
    np.testing.assert_array_equal(second.images, Omniglot(z, cache=False).images)


def test_a_truncated_cache_is_rebuilt_without_leaking_a_file(
    fixture_data: dict[str, Path], tmp_path: Path
) -> None:
    import gc
    import warnings

    Omniglot(fixture_data["zip"], cache_dir=tmp_path)
    _corrupt_truncate(_only_cache_file(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Omniglot(fixture_data["zip"], cache_dir=tmp_path)
        gc.collect()
    kinds = [w.category for w in caught]
    assert RuntimeWarning in kinds and ResourceWarning not in kinds, [str(w) for w in caught]


def test_an_oversized_png_member_is_refused_unread(
    fixture_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tinymeta.tasks.omniglot import reading

    monkeypatch.setattr(reading, "MAX_PNG_BYTES", 100)
    with pytest.raises(ValueError, match=r"images_background.zip!.*\.png holds \d+ bytes, more "
                       "than the 100"):
        Omniglot(fixture_data["zip"], cache=False)


def test_a_png_of_another_size_is_refused_from_its_header(tmp_path: Path) -> None:
    root = write_split(tmp_path / "bg", {"Alpha": 1})
    target = root / "Alpha" / "character01" / "0000_03.png"
    Image.new("1", (9000, 9000)).save(target)  # 81 M pixels if decoded
    with pytest.raises(ValueError, match=r"0000_03.png: the image is 9000x9000, expected "
                       "105x105"):
        Omniglot(root, cache=False)
