"""A small timing harness, so that users benchmark their own kernels the way the project does.

A kernel's time is the median over ``repeat`` runs of the mean time per call, each run a
loop of ``number`` calls that lasts at least ``min_time`` seconds; the spread is the
interquartile range (IQR) of those runs. :func:`compare` times several kernels on the same
arguments with their runs interleaved, for side-by-side ratios on a noisy machine.
Throughput is FLOP/s, and the fraction of peak sets it against this machine's own peak,
measured in the same process by a large BLAS matmul::

    import numpy as np
    from tinymeta import bench

    x = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    t = bench.measure(np.tanh, x)                 # Timing(median=…, iqr=…, runs=…, number=…)
    peak = bench.peak_gflops()                     # a 2048³ float32 GEMM, in GFLOP/s
    print(bench.gflops(x.size, t.median) / peak)   # fraction of peak (counting 1 FLOP a tanh)

Why the standard library's :mod:`timeit`, not a hand-written loop nor pytest-benchmark:
``timeit`` is the standard library's well-kept timer, so the harness adds no dependency; it
times with :func:`time.perf_counter`, switches the garbage collector off while it times (a
collection does not land in one run), and runs the ``number`` calls in a loop compiled from
its own template, so what it adds is one Python call of ``fn`` per call (about 0.05–0.1 µs,
the same for every kernel compared). The loop length follows ``Timer.autorange``'s 1-2-5
sequence, stopped at ``min_time`` rather than at its fixed 0.2 s, and each run is one
``Timer.timeit``. pytest-benchmark calibrates in much the same way, but it is a pytest
plugin with no public API outside a test session; ``benchmarks/bench_kernels_pytest.py``
uses it where it belongs, inside pytest.

Timings on a shared machine are noisy: compare medians taken side by side in one run, and
read the IQR before reading a difference. Set ``OPENBLAS_NUM_THREADS`` (e.g. to 1) before
NumPy is imported, so that BLAS and numba do not fight over the cores.
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import timeit
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Timing", "measure", "compare", "peak_gflops", "gflops", "gemm_flops"]


class Timing(NamedTuple):
    """Seconds per call: the median and interquartile range over the runs, and each run."""

    median: float
    iqr: float
    runs: tuple[float, ...]  # mean seconds per call of each run
    number: int  # calls per run

    @property
    def best(self) -> float:
        """The fastest run's seconds per call."""
        return min(self.runs)


def _calibrate(timer: timeit.Timer, min_time: float) -> int:
    """The least of 1, 2, 5, 10, 20, 50, … calls whose loop lasts at least ``min_time``:
    ``Timer.autorange``'s sequence, stopped at ``min_time`` rather than its fixed 0.2 s."""
    scale = 1
    while True:
        for step in (1, 2, 5):
            number = scale * step
            if timer.timeit(number) >= min_time:
                return number
        scale *= 10


def _summary(runs: tuple[float, ...], number: int) -> Timing:
    if len(runs) >= 2:
        q1, _, q3 = statistics.quantiles(runs, n=4, method="inclusive")
    else:
        q1 = q3 = runs[0]
    return Timing(median=statistics.median(runs), iqr=q3 - q1, runs=runs, number=number)


def compare(fns: Mapping[str, Callable[..., Any]], *args: Any, repeat: int = 7,
            min_time: float = 0.05, warmup: int = 1, **kwargs: Any) -> dict[str, Timing]:
    """Time several functions on the same arguments, their runs interleaved.

    Each function is warmed up (``warmup`` calls: a JIT compiles, caches fill) and given a
    loop length of its own, so that one run lasts at least ``min_time`` seconds; then the
    ``repeat`` runs go round robin (A B A B …), so that a slow spell of a shared machine
    falls on every function alike rather than on whichever was timed then.

    Args:
        fns: name -> function; each is called as ``fn(*args, **kwargs)``, result discarded.
        *args, **kwargs: the arguments, bound once (not re-created per call).
        repeat: runs per function (the median and IQR are over these).
        min_time: the least duration of one run, in seconds.
        warmup: calls made before timing.

    Returns:
        name -> :class:`Timing`, in seconds per call.
    """
    if repeat < 1:
        raise ValueError(f"compare: repeat must be at least 1; got {repeat}")
    if min_time <= 0:
        raise ValueError(f"compare: min_time must be positive; got {min_time}")
    timers, numbers = {}, {}
    for name, fn in fns.items():
        call = functools.partial(fn, *args, **kwargs) if args or kwargs else fn
        for _ in range(warmup):
            call()
        timers[name] = timeit.Timer(call)
        numbers[name] = _calibrate(timers[name], min_time)
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, timer in timers.items():
            runs[name].append(timer.timeit(numbers[name]) / numbers[name])
    return {name: _summary(tuple(runs[name]), numbers[name]) for name in fns}


def measure(fn: Callable[..., Any], *args: Any, repeat: int = 7, min_time: float = 0.05,
            warmup: int = 1, **kwargs: Any) -> Timing:
    """Time ``fn(*args, **kwargs)``: :func:`compare` with one function.

    Returns:
        A :class:`Timing` in seconds per call: the median and IQR over ``repeat`` runs of
        at least ``min_time`` seconds each, after ``warmup`` calls.
    """
    return compare({"fn": fn}, *args, repeat=repeat, min_time=min_time, warmup=warmup,
                   **kwargs)["fn"]


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else the platform's label)."""
    import platform

    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gflops(flops: float, seconds: float) -> float:
    """Throughput in GFLOP/s of ``flops`` floating-point operations done in ``seconds``."""
    if seconds <= 0:
        raise ValueError(f"gflops: seconds must be positive; got {seconds}")
    return flops / seconds / 1e9


def gemm_flops(m: int, k: int, n: int, batch: int = 1) -> int:
    """FLOP of ``batch`` products of an (m, k) by a (k, n) matrix: 2·m·k·n each."""
    return 2 * batch * m * k * n


def peak_gflops(n: int = 2048, dtype: Any = np.float32, repeat: int = 5,
                min_time: float = 0.2, seed: int = 0) -> float:
    """This machine's peak, in GFLOP/s: an (n, n) by (n, n) BLAS matmul, timed here and now.

    The fastest run is taken (a peak is the best the machine did; noise only slows a run
    down). It uses as many BLAS threads as the process has, so set ``OPENBLAS_NUM_THREADS``
    to the count the kernels being compared run on.

    Args:
        n: the matrix side; 2048 or more reaches BLAS's steady state.
        dtype: the floating-point type the peak is for (float32 peaks about twice float64).
        repeat, min_time: as in :func:`measure`.
        seed: for the random operands.

    Returns:
        2 n³ / (seconds of the fastest run) / 1e9.
    """
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=np.result_type(a, b))
    t = measure(np.matmul, a, b, out=out, repeat=repeat, min_time=min_time)
    return gflops(gemm_flops(n, n, n), t.best)


#: The benchmark suite of a checkout: ``tinymeta bench NAME`` runs ``benchmarks/FILE``.
SUITES = {"engine": "engine.py", "kernels": "kernels.py", "e2e": "e2e.py"}


def run_suites(names: list[str], out: str, quick: bool = False, root: str = ".") -> None:
    """Run the benchmark scripts ``names`` of the checkout ``root``, JSON into ``out``.

    One after another, each in a subprocess with ``OPENBLAS_NUM_THREADS=1`` unless set.

    Raises:
        ValueError: an unknown suite, or a root without the benchmark scripts.
        RuntimeError: a benchmark that exited with a non-zero status.
    """
    bench_dir = os.path.join(root, "benchmarks")
    for name in names:
        if name not in SUITES:
            raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
        if not os.path.exists(os.path.join(bench_dir, SUITES[name])):
            raise ValueError(f"no {os.path.join(bench_dir, SUITES[name])}: run tinymeta bench "
                             "from a checkout of tinymeta (or pass --root)")
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    for name in names:
        cmd = [sys.executable, os.path.join(bench_dir, SUITES[name]), "--json",
               os.path.join(out, f"{name}.json")]
        if quick and name != "engine":
            cmd.append("--quick")
        print("$ " + " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, env=env)
        if rc:
            raise RuntimeError(f"{name} benchmark exited with status {rc}")
