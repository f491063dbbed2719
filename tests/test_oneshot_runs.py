"""Tests of the one-shot runs parser and the Modified Hausdorff baseline."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tinymeta.tasks.oneshot_runs import (
    OneShotRun,
    RunScores,
    format_report,
    image_to_points,
    load_runs,
    mhd_matrix,
    mhd_predict,
    modified_hausdorff_distance,
    score_runs,
    score_runs_with,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
RUNS_ZIP = DATA / "one_shot_runs_01-10.zip"
needs_data = pytest.mark.skipif(
    not RUNS_ZIP.exists(), reason=f"real one-shot runs not found at {RUNS_ZIP}"
)
# Lake et al.'s demo: Modified Hausdorff Distance, runs 01-10
EXPECTED_MHD = [45.0, 35.0, 40.0, 25.0, 30.0, 15.0, 60.0, 35.0, 40.0, 55.0]


@pytest.fixture
def pil():
    return pytest.importorskip("PIL.Image", reason='Pillow decodes PNGs: pip install -e ".[data]"')


def image(shape: tuple[int, int], pixels: list[tuple[int, int]]) -> np.ndarray:
    im = np.zeros(shape, dtype=bool)
    for r, c in pixels:
        im[r, c] = True
    return im


# --------------------------------------------------------------------------------------------
# Modified Hausdorff Distance
# --------------------------------------------------------------------------------------------


def test_points_are_centred() -> None:
    pts = image_to_points(image((8, 8), [(1, 2), (3, 2), (5, 5)]))
    np.testing.assert_allclose(pts.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(pts[0], [1 - 3, 2 - 3])
    with pytest.raises(ValueError, match="no ink"):
        image_to_points(np.zeros((4, 4), dtype=bool))


def test_mhd_hand_made() -> None:
    # A: one pixel; B: three in a row around it after centring, at -2, 0, +2.
    a = image((12, 12), [(5, 5)])
    b = image((12, 12), [(5, 3), (5, 5), (5, 7)])
    # A->B: 0; B->A: (2 + 0 + 2) / 3
    assert mhd_matrix(a[None], b[None])[0, 0] == pytest.approx(4 / 3, abs=1e-12)
    assert modified_hausdorff_distance(image_to_points(a), image_to_points(b)) == pytest.approx(
        4 / 3, abs=1e-12
    )
    # a diagonal pair against a single pixel: sqrt(2) both ways; translation does not matter
    c = image((30, 30), [(10, 10), (12, 12)])
    d = image((30, 30), [(20, 3)])
    assert mhd_matrix(c[None], d[None])[0, 0] == pytest.approx(math.sqrt(2), abs=1e-12)
    assert mhd_matrix(c[None], c[None])[0, 0] == 0.0


def test_fast_mhd_is_bit_identical_to_reference() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.random((6, 31, 27)) < rng.uniform(0.02, 0.3, size=(6, 1, 1))
    imgs[:, 15, 13] = True  # at least one ink pixel each
    fast = mhd_matrix(imgs[:3], imgs[3:])
    ref = np.array(
        [
            [modified_hausdorff_distance(image_to_points(a), image_to_points(b)) for b in imgs[3:]]
            for a in imgs[:3]
        ]
    )
    np.testing.assert_array_equal(fast, ref)
    # symmetric by construction
    np.testing.assert_array_equal(mhd_matrix(imgs[3:], imgs[:3]), fast.T)


def test_ties_go_to_lowest_index() -> None:
    x = image((10, 10), [(2, 2), (2, 3), (3, 3)])
    y = image((10, 10), [(5, 5), (6, 6)])
    assert mhd_predict(np.stack([y, x, x]), x[None]).tolist() == [1]
    assert mhd_predict(np.stack([x, x]), y[None]).tolist() == [0]
    # a dot is as far from a horizontal pair as from a vertical one (0.5), exactly
    dot = image((10, 10), [(5, 5)])
    horizontal = image((10, 10), [(5, 5), (5, 6)])
    vertical = image((10, 10), [(5, 5), (6, 5)])
    d = mhd_matrix(dot[None], np.stack([y, horizontal, vertical]))
    assert d[0, 1] == d[0, 2] == 0.5 and d[0, 0] > 0.5
    assert mhd_predict(np.stack([y, horizontal, vertical]), dot[None]).tolist() == [1]
    assert mhd_predict(np.stack([y, vertical, horizontal]), dot[None]).tolist() == [1]


# --------------------------------------------------------------------------------------------
# report and scoring
# --------------------------------------------------------------------------------------------


def test_format_report() -> None:
    text = format_report([45.0, 35.0])
    assert text == "run01 error 45.0%\nrun02 error 35.0%\nmean error 40.0%"
    scores = RunScores({"run03": 12.5, "run07": 30.0}, 21.25)
    assert format_report(scores).splitlines() == [
        "run03 error 12.5%",
        "run07 error 30.0%",
        "mean error 21.2%",
    ]
    assert format_report(scores.errors) == format_report(scores)


def _toy_run() -> OneShotRun:
    x = image((105, 105), [(50, 50), (51, 50), (52, 50)])
    y = image((105, 105), [(50, 50), (50, 51), (50, 52), (50, 53)])
    z = image((105, 105), [(40, 40), (45, 45), (40, 45)])
    train = np.stack([x, y, z])
    test = np.stack([np.roll(y, 3, axis=0), np.roll(z, -5, axis=1), x])
    return OneShotRun(
        "run01",
        train,
        test,
        np.array([1, 2, 0]),
        tuple(f"run01/training/class{i:02d}.png" for i in (1, 2, 3)),
        tuple(f"run01/test/item{i:02d}.png" for i in (1, 2, 3)),
    )


def test_score_runs_toy() -> None:
    scores = score_runs([_toy_run()])
    assert scores.errors == {"run01": 0.0} and scores.mean == 0.0
    always_zero = score_runs_with(lambda tr, te: np.zeros(len(te), dtype=int), [_toy_run()])
    assert always_zero.errors["run01"] == pytest.approx(200 / 3)


def test_score_runs_with_checks_predictions() -> None:
    with pytest.raises(ValueError, match="integer class"):
        score_runs_with(lambda tr, te: np.zeros(2, dtype=int), [_toy_run()])
    with pytest.raises(ValueError, match="out of range"):
        score_runs_with(lambda tr, te: np.full(len(te), 3), [_toy_run()])


def test_score_runs_with_preprocessed_inputs(pil) -> None:
    seen = {}

    def predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        seen["shapes"] = (train.shape, test.shape, train.dtype)
        flat_tr, flat_te = train.reshape(len(train), -1), test.reshape(len(test), -1)
        d = ((flat_te[:, None] - flat_tr[None]) ** 2).sum(-1)
        return d.argmin(axis=1)

    scores = score_runs_with(predict, [_toy_run()], preprocessed=True)
    assert seen["shapes"] == ((3, 28, 28), (3, 28, 28), np.float32)
    assert scores.errors["run01"] == 0.0  # centred images: the shifts do not matter


# --------------------------------------------------------------------------------------------
# parsing (a hand-made fixture)
# --------------------------------------------------------------------------------------------


def _write_runs(root: Path, pil, label_order: list[int] | None = None) -> Path:
    """root/run01/{training,test}/ with 3 classes and 3 items, items answer 2, 3, 1."""
    toy = _toy_run()
    run = root / "run01"
    (run / "training").mkdir(parents=True)
    (run / "test").mkdir()
    for i, im in enumerate(toy.train_images, 1):
        pil.fromarray(~im).convert("1").save(run / "training" / f"class{i:02d}.png")
    for i, im in enumerate(toy.test_images, 1):
        pil.fromarray(~im).convert("1").save(run / "test" / f"item{i:02d}.png")
    lines = [
        f"run01/test/item{i + 1:02d}.png run01/training/class{a + 1:02d}.png"
        for i, a in enumerate(toy.answers)
    ]
    order = label_order if label_order is not None else range(len(lines))
    (run / "class_labels.txt").write_text("\n".join(lines[i] for i in order) + "\n")
    return root


def _zip_dir(folder: Path, zip_path: Path, top: bool) -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                base = folder if top else folder.parent
                zf.write(p, p.relative_to(base).as_posix())
    return zip_path


def test_parse_folder_and_zip(tmp_path: Path, pil) -> None:
    root = _write_runs(tmp_path / "all_runs", pil, label_order=[2, 0, 1])
    toy = _toy_run()
    sources = [
        root,  # runNN at the top
        tmp_path,  # runNN one level down
        _zip_dir(root, tmp_path / "top.zip", top=True),
        _zip_dir(root, tmp_path / "nested.zip", top=False),
    ]
    for src in sources:
        (run,) = load_runs(src)
        assert run.name == "run01"
        assert run.train_images.dtype == bool and run.train_images.shape == (3, 105, 105)
        np.testing.assert_array_equal(run.train_images, toy.train_images)
        np.testing.assert_array_equal(run.test_images, toy.test_images)
        np.testing.assert_array_equal(run.answers, toy.answers)  # label order does not matter
        assert run.train_names == toy.train_names and run.test_names == toy.test_names
    assert load_runs(root, runs=[1])[0].name == "run01"
    with pytest.raises(FileNotFoundError, match="run02"):
        load_runs(root, runs=["run02"])


def test_parse_errors_name_the_file(tmp_path: Path, pil) -> None:
    root = _write_runs(tmp_path / "r", pil)
    labels = root / "run01" / "class_labels.txt"
    good = labels.read_text()
    labels.write_text(good + "run01/test/item04.png\n")
    with pytest.raises(ValueError, match=r"class_labels\.txt line 4"):
        load_runs(root)
    labels.write_text(good.replace("class03", "class09"))
    with pytest.raises(FileNotFoundError, match="class09"):
        load_runs(root)
    labels.write_text(good)
    (root / "run01" / "test" / "item02.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="item02.png"):
        load_runs(root)
    (root / "run01" / "test" / "item02.png").unlink()
    with pytest.raises(FileNotFoundError, match="item02.png"):
        load_runs(root)
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        load_runs(tmp_path / "nothing_here")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="class_labels"):
        load_runs(empty)


# --------------------------------------------------------------------------------------------
# the real runs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_runs() -> list[OneShotRun]:
    pytest.importorskip("PIL", reason='Pillow decodes PNGs: pip install -e ".[data]"')
    if not RUNS_ZIP.exists():
        pytest.skip(f"real one-shot runs not found at {RUNS_ZIP}")
    return load_runs(RUNS_ZIP)


@needs_data
def test_real_runs_parsed(real_runs: list[OneShotRun]) -> None:
    assert [r.name for r in real_runs] == [f"run{i:02d}" for i in range(1, 11)]
    for run in real_runs:
        assert run.train_images.shape == (20, 105, 105) and run.train_images.dtype == bool
        assert run.test_images.shape == (20, 105, 105)
        assert sorted(run.answers.tolist()) == list(range(20))  # one query per class
        assert run.train_names[0] == f"{run.name}/training/class01.png"
        ink = run.train_images.mean(axis=(1, 2))
        assert np.all((ink > 0.005) & (ink < 0.3))  # ink is the sparse (black) part


@needs_data
def test_real_runs_mhd_errors(real_runs: list[OneShotRun]) -> None:
    scores = score_runs(real_runs)
    assert list(scores.errors.values()) == EXPECTED_MHD
    assert scores.mean == 38.0
    report = format_report(scores)
    assert report.splitlines()[0] == "run01 error 45.0%"
    assert report.splitlines()[-1] == "mean error 38.0%"
