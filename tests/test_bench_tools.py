"""The benchmarker's tools: the roofline (bytes=, gbytes, peak_gbytes, roofline_plot), the
guardrails, provenance, and ``tinymeta bench compare`` with its threshold and CSV.

Figures are held against their definitions on synthetic timings (a measured time cannot be
asserted): the triad's byte count, the roof min(P, I·B), the ratio and its noise.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinymeta import bench, bench_history, cli

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import e2e  # noqa: E402


def _timing(median: float, iqr: float = 0.0, flops: float | None = None,
            nbytes: float | None = None) -> bench.Timing:
    return bench.Timing(median, iqr, (median,), 1, flops, nbytes)


# ---- bytes=, gbytes, the roofs -------------------------------------------------------------


def test_measure_keeps_the_work_and_gives_the_throughputs() -> None:
    x = np.ones(1000)
    t = bench.measure(np.add, x, x, repeat=2, min_time=1e-3, flops=1000, bytes=3 * x.nbytes)
    assert t.flops == 1000 and t.bytes == 24000
    assert t.gflops == 1000 / t.median / 1e9 and t.gbytes == 24000 / t.median / 1e9
    assert t.intensity == 1000 / 24000
    ts = bench.compare({"a": np.add, "m": np.multiply}, x, x, repeat=2, min_time=1e-3,
                       flops=1000, bytes=24000)
    assert all(v.flops == 1000 and v.bytes == 24000 for v in ts.values())
    plain = bench.measure(np.add, x, x, repeat=1, min_time=1e-3)
    with pytest.raises(ValueError, match="pass flops= to measure"):
        _ = plain.gflops
    with pytest.raises(ValueError, match="pass bytes= to measure"):
        _ = plain.gbytes
    assert bench.gbytes(3e9, 1.5) == 2.0
    with pytest.raises(ValueError, match="gbytes: seconds must be positive"):
        bench.gbytes(1.0, 0.0)


def test_peak_gbytes_times_the_triad_and_counts_five_arrays(monkeypatch) -> None:
    seen = {}

    def fake_measure(fn, *args, **kwargs):
        seen["fn"] = fn
        return _timing(0.5)

    monkeypatch.setattr(bench, "measure", fake_measure)
    n = 1000
    assert bench.peak_gbytes(n=n, dtype=np.float32) == 5 * n * 4 / 0.5 / 1e9
    # the timed function is the triad a = b + s·c on the seeded operands
    seen["fn"]()
    cells = seen["fn"].__closure__
    arrays = {id(c.cell_contents): c.cell_contents for c in cells
              if isinstance(c.cell_contents, np.ndarray)}
    rng = np.random.default_rng(0)
    b = rng.standard_normal(n).astype(np.float32)
    c = rng.standard_normal(n).astype(np.float32)
    a = [v for v in arrays.values() if not (np.array_equal(v, b) or np.array_equal(v, c))]
    assert len(a) == 1 and np.allclose(a[0], b + 3.0 * c)


def test_the_roofline_is_the_lower_roof() -> None:
    assert bench.roofline(0.25, peak_gflops=100.0, peak_gbytes=20.0) == 5.0
    assert bench.roofline(10.0, peak_gflops=100.0, peak_gbytes=20.0) == 100.0
    assert bench.roofline(5.0, peak_gflops=100.0, peak_gbytes=20.0) == 100.0  # the ridge


def test_the_roofline_plot(tmp_path: Path, monkeypatch) -> None:
    points = [{"kernel": "relu", "backend": "numba", "intensity": 0.1, "gflops": 1.5},
              {"kernel": "gemm", "backend": "numpy", "intensity": 20.0, "gflops": 80.0}]
    with monkeypatch.context() as m:  # without matplotlib: what to install
        m.setitem(sys.modules, "matplotlib", None)
        with pytest.raises(ImportError, match=r"pip install 'tinymeta\[plot\]'"):
            bench.roofline_plot(points, 100.0, 20.0, str(tmp_path / "s.png"))
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib: pip install -e '.[plot]'")
    path = bench.roofline_plot(points, 100.0, 20.0, str(tmp_path / "r.png"), title="t")
    assert Path(path).read_bytes()[:4] == b"\x89PNG"


# ---- guardrails ----------------------------------------------------------------------------


def test_guard_flags_noise_and_figures_over_a_roof(monkeypatch) -> None:
    assert bench.guard("k", _timing(1e-3, 5e-5, flops=1e6, nbytes=1e6), 10.0, 10.0) == []
    (noisy,) = bench.guard("k", _timing(1e-3, 2e-4))
    assert noisy.startswith("k: noisy, the IQR is 20% of the median")
    assert bench.guard("k", _timing(1e-3, 2e-4), noise=False) == []
    # 2 GFLOP/s against a peak of 1: the peak is off, and how it was measured is said
    (over,) = bench.guard("k", _timing(1e-3, flops=2e6), peak_gflops=1.0, peak="64³ GEMM")
    assert over.startswith("k: 2 GFLOP/s is 200% of the measured peak 1 GFLOP/s (64³ GEMM): "
                           "the peak is underestimated")
    monkeypatch.setattr(bench, "cache_bytes", lambda: 1 << 20)
    (cached,) = bench.guard("k", _timing(1e-3, nbytes=1e6), peak_gbytes=0.5)  # 1 GB/s
    assert "fit in the caches (1 MiB)" in cached and "is 200% of the measured memory" in cached
    (big,) = bench.guard("k", _timing(1e-3, nbytes=4e6), peak_gbytes=1.0)
    assert "400%" in big and "the bandwidth peak is underestimated" in big


def test_e2e_says_one_line_per_missing_library() -> None:
    skipped = {"torch_eager": "torch is not installed", "torch_func": "torch is not installed",
               "jax": "jax is not installed"}
    assert e2e.skipped_lines(skipped) == ["skipped torch_eager, torch_func: torch is not "
                                          "installed", "skipped jax: jax is not installed"]


# ---- provenance ----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_provenance_records_the_commit_and_a_dirty_tree(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    p = bench_history.provenance(str(tmp_path))
    assert p["commit"] == git("rev-parse", "HEAD") and p["dirty"] is False
    (tmp_path / "new.txt").write_text("untracked files do not count")
    assert bench_history.provenance(str(tmp_path))["dirty"] is False
    (tmp_path / "a.txt").write_text("2")
    assert bench_history.provenance(str(tmp_path))["dirty"] is True
    assert p["versions"]["numpy"] == np.__version__ and p["cores"] >= 1 and p["cpu_name"]
    outside = tmp_path / "sub"
    outside.mkdir()
    assert bench_history.git_state("/") == {"commit": None, "dirty": None}

    out = tmp_path / "r.json"
    bench_history.write_results(str(out), {"x": 1}, str(tmp_path))
    saved = json.loads(out.read_text())
    assert saved["x"] == 1 and saved["provenance"]["commit"] == git("rev-parse", "HEAD")


# ---- reading and comparing results files ---------------------------------------------------


KERNELS_FILE = {"results": [{"kernel": "relu", "size": "64^2",
                             "numpy": {"median_s": 2e-6, "iqr_s": 1e-7},
                             "numba": {"median_s": 1e-6, "iqr_s": 5e-8}}]}
E2E_FILE = {"results": [{"config": "maml2_T1", "impl": "tinymeta.eager.numba",
                         "median_s": 1e-3, "q1_s": 0.9e-3, "q3_s": 1.2e-3},
                        {"config": "imaml", "impl": "x", "skipped": "refused"}]}
ENGINE_FILE = {"timings": {"mlp grad": {"median_s": 4e-4, "iqr_s": 2e-5}}}


def test_timings_are_read_from_every_suite_layout() -> None:
    E = bench_history.Entry
    assert bench_history.timings_of(KERNELS_FILE) == {"relu 64^2 numpy": E(2e-6, 1e-7),
                                                      "relu 64^2 numba": E(1e-6, 5e-8)}
    got = bench_history.timings_of(E2E_FILE)
    assert list(got) == ["maml2_T1 tinymeta.eager.numba"]
    assert got["maml2_T1 tinymeta.eager.numba"].iqr == pytest.approx(0.3e-3)
    assert bench_history.timings_of(ENGINE_FILE) == {"mlp grad": E(4e-4, 2e-5)}
    with pytest.raises(ValueError, match="no timings found"):
        bench_history.timings_of({"results": [{"a": 1}]})


def test_ratio_noise_and_verdict() -> None:
    E, Row, verdict = bench_history.Entry, bench_history.Row, bench_history.verdict
    slow = Row("k", E(1.0, 0.1), E(1.3, 0.13))
    assert slow.ratio == 1.3 and slow.noise == pytest.approx(math.hypot(0.1, 0.1))
    assert verdict(slow, 0.10) == "REGRESSION" and verdict(slow, 0.5) == "slower"
    assert verdict(slow, None) == "slower"
    assert verdict(Row("k", E(1.0, 0.1), E(1.12, 0.112)), 0.10) == "same (within noise)"
    assert verdict(Row("k", E(1.0, 0.0), E(0.8, 0.0)), 0.10) == "faster"
    assert bench_history.parse_fail_if("median:10%") == 0.10
    assert bench_history.parse_fail_if(" median : 2.5 % ") == 0.025
    for bad in ("mean:10%", "median:10", "10%", ""):
        with pytest.raises(ValueError, match="--fail-if"):
            bench_history.parse_fail_if(bad)


def _files(tmp_path: Path, new_numba: float) -> tuple[str, str]:
    old = tmp_path / "old.json"
    new = tmp_path / "new.json"
    old.write_text(json.dumps(KERNELS_FILE))
    data = json.loads(json.dumps(KERNELS_FILE))
    data["results"][0]["numba"]["median_s"] = new_numba
    data["provenance"] = {"commit": "abc1234def", "dirty": True, "cpu_name": "CPU", "cores": 2,
                          "versions": {"numpy": "2.0"}, "date": "today"}
    new.write_text(json.dumps(data))
    return str(old), str(new)


def test_bench_compare_exits_non_zero_on_a_regression(tmp_path: Path, capsys) -> None:
    old, new = _files(tmp_path, new_numba=1.5e-6)  # numba 50% slower, noise ≈ 7%
    out = tmp_path / "cmp.csv"
    rc = cli.main(["bench", "compare", old, new, "--fail-if", "median:10%", "--csv", str(out)])
    printed = capsys.readouterr()
    assert rc == 1
    assert printed.err.strip() == ("tinymeta bench compare: 1 timing regressed beyond "
                                   "median:10%: relu 64^2 numba")
    assert "no provenance recorded" in printed.out and "commit abc1234def (dirty)" in printed.out
    line = next(ln for ln in printed.out.splitlines() if ln.startswith("relu 64^2 numba"))
    assert "1.500" in line and "REGRESSION" in line
    rows = list(csv.DictReader(out.open()))
    assert [r["timing"] for r in rows] == ["relu 64^2 numpy", "relu 64^2 numba"]
    assert float(rows[1]["ratio"]) == pytest.approx(1.5)
    assert float(rows[1]["noise"]) == pytest.approx(math.hypot(0.05, 5e-8 / 1.5e-6))
    # a looser threshold, or none: exit 0
    assert cli.main(["bench", "compare", old, new, "--fail-if", "median:60%"]) == 0
    assert cli.main(["bench", "compare", old, new]) == 0


def test_bench_compare_errors_are_one_line(tmp_path: Path, capsys) -> None:
    old, new = _files(tmp_path, new_numba=1e-6)
    for argv, message in [
        (["bench", "compare", old], "give OLD.json NEW.json"),
        (["bench", "compare", old, str(tmp_path / "missing.json")], "missing.json: cannot read"),
        (["bench", "compare", old, new, "--fail-if", "10%"], "--fail-if '10%': expected"),
        (["bench", "kernels", "--fail-if", "median:10%"], "go with 'tinymeta bench compare'"),
    ]:
        assert cli.main(argv) != 0
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err
    (tmp_path / "bad.json").write_text("{")
    assert cli.main(["bench", "compare", old, str(tmp_path / "bad.json")]) != 0
    assert "bad.json: not JSON" in capsys.readouterr().err


def test_one_file_exports_its_timings_as_csv(tmp_path: Path) -> None:
    old, _ = _files(tmp_path, 1e-6)
    out = tmp_path / "t.csv"
    assert cli.main(["bench", "compare", old, "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["timing"] == "relu 64^2 numpy" and float(rows[0]["rel_iqr"]) == 0.05


def test_repeated_runs_are_pooled_and_their_disagreement_is_noise(tmp_path: Path,
                                                                   capsys) -> None:
    E = bench_history.Entry
    a = {"k": E(1.0, 0.05), "only_a": E(1.0, 0.0)}
    b = {"k": E(1.2, 0.03)}
    c = {"k": E(1.1, 0.04)}
    pooled = bench_history.pool([a, b, c])
    assert list(pooled) == ["k"]  # a timing missing from one run is left out
    assert pooled["k"].median == 1.1 and pooled["k"].iqr == pytest.approx(0.2)  # the range

    def write(name: str, numba: float) -> str:
        data = json.loads(json.dumps(KERNELS_FILE))
        data["results"][0]["numba"]["median_s"] = numba
        (tmp_path / name).write_text(json.dumps(data))
        return str(tmp_path / name)

    olds = ",".join([write("o1.json", 1.0e-6), write("o2.json", 1.4e-6)])
    news = ",".join([write("n1.json", 1.3e-6), write("n2.json", 1.35e-6)])
    # alone, the first pair is a 30% regression; pooled, the old runs' spread (0.4 of 1.2)
    # covers the change
    assert cli.main(["bench", "compare", olds.split(",")[0], news.split(",")[0],
                     "--fail-if", "median:10%"]) == 1
    assert cli.main(["bench", "compare", olds, news, "--fail-if", "median:10%"]) == 0
    out = capsys.readouterr().out
    assert out.count("no provenance recorded") == 6
    line = next(ln for ln in out.splitlines()[::-1] if ln.startswith("relu 64^2 numba"))
    assert "same (within noise)" in line
