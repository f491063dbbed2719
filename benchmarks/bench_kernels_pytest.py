"""The kernel benchmarks of ``benchmarks/kernels.py`` as a pytest-benchmark suite.

Run from a checkout (pytest-benchmark installed, e.g. ``pip install 'tinymeta[bench]'``):

    OPENBLAS_NUM_THREADS=1 pytest benchmarks/bench_kernels_pytest.py \
        --benchmark-columns=median,iqr,rounds

The same kernels, sizes and FLOP counts as ``benchmarks/kernels.py``; pytest-benchmark does
the calibration, the statistics, the comparison with saved runs (``--benchmark-autosave``,
``--benchmark-compare``) and the JSON (``--benchmark-json``). Each kernel and size is one
group with its NumPy and numba rows side by side; ``extra_info`` carries FLOP, GFLOP/s and
the fraction of the peak, measured once per session by a 2048³ BLAS matmul.
``-k "sin"`` keeps the sinusoid shapes only.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")
pytest.importorskip("numba")

from tinymeta import bench  # noqa: E402
from tinymeta.kernels import numba_backend, numpy_backend  # noqa: E402

_spec = importlib.util.spec_from_file_location("_kernel_suite",
                                               Path(__file__).with_name("kernels.py"))
suite = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = suite  # dataclasses look their module up there
_spec.loader.exec_module(suite)

BACKENDS = {"numpy": numpy_backend, "numba": numba_backend}
PARAMS = [(name, label) for name in suite.KERNELS for label in suite.size_labels(name)]


@pytest.fixture(scope="session")
def peak() -> float:
    """This machine's float32 peak in GFLOP/s, from a 2048³ BLAS matmul."""
    if os.environ.get("OPENBLAS_NUM_THREADS") is None:
        pytest.skip("set OPENBLAS_NUM_THREADS (e.g. to 1) before running the kernel benchmarks")
    return bench.peak_gflops(n=2048, dtype=np.float32)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("name, size", PARAMS, ids=[f"{n}-{s}" for n, s in PARAMS])
def test_kernel(benchmark, peak, name, size, backend):
    (case,) = suite.cases_for(name, np.random.default_rng(0), np.float32, {size})
    if case.pair is not None:  # a composite of the backend's kernels (the convolutions)
        ref_fn, fast_fn = case.pair
    else:
        ref_fn, fast_fn = numpy_backend.__dict__[name], numba_backend.__dict__[name]
    fn = {"numpy": ref_fn, "numba": fast_fn}[backend]
    suite.check_agree(name, ref_fn, fast_fn, case.args)
    benchmark.group = f"{name} {size}"
    benchmark(fn, *case.args)
    median = benchmark.stats.stats.median
    rate = bench.gflops(case.flops, median)
    benchmark.extra_info.update(flops=case.flops, bytes=case.nbytes, gflops=rate,
                                frac_peak=rate / peak, peak_gflops=peak)
