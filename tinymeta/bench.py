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
    t = bench.measure(np.tanh, x, flops=x.size, bytes=2 * x.nbytes)  # Timing(median=…, iqr=…)
    peak = bench.peak_gflops()                     # a 2048³ float32 GEMM, in GFLOP/s
    bandwidth = bench.peak_gbytes()                # a STREAM-triad-like a = b + s·c, in GB/s
    print(t.gflops / peak, t.gbytes / bandwidth)   # fractions of the two roofs
    print(bench.guard("tanh", t, peak_gflops=peak, peak_gbytes=bandwidth))  # [] or warnings

The roofline model bounds a kernel of arithmetic intensity I = FLOP / byte moved by
min(P, I·B), P the FLOP peak and B the bandwidth: a kernel left of the ridge I = P / B is
bound by memory, and its figure to read is the fraction of B; right of it, the fraction of P.
:func:`roofline_plot` draws the two measured roofs and a point per kernel.

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
import glob
import os
import statistics
import subprocess
import sys
import timeit
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Timing", "measure", "compare", "peak_gflops", "peak_gbytes", "gflops", "gbytes",
           "gemm_flops", "roofline", "roofline_plot", "guard"]

#: a timing whose interquartile range exceeds this fraction of its median is flagged noisy
NOISY = 0.10


class Timing(NamedTuple):
    """Seconds per call: the median and interquartile range over the runs, and each run;
    with the work per call when it was given (``flops=``, ``bytes=``), the throughputs."""

    median: float
    iqr: float
    runs: tuple[float, ...]  # mean seconds per call of each run
    number: int  # calls per run
    flops: float | None = None  # floating-point operations per call
    bytes: float | None = None  # bytes moved (read and written) per call

    @property
    def best(self) -> float:
        """The fastest run's seconds per call."""
        return min(self.runs)

    @property
    def rel_iqr(self) -> float:
        """IQR / median: the spread of the runs against the figure."""
        return self.iqr / self.median if self.median > 0 else float("inf")

    @property
    def gflops(self) -> float:
        """FLOP per call / median seconds, in GFLOP/s (needs ``flops=``)."""
        if self.flops is None:
            raise ValueError("Timing.gflops: no flops given; pass flops= to measure/compare")
        return gflops(self.flops, self.median)

    @property
    def gbytes(self) -> float:
        """Bytes per call / median seconds, in GB/s (needs ``bytes=``)."""
        if self.bytes is None:
            raise ValueError("Timing.gbytes: no bytes given; pass bytes= to measure/compare")
        return gbytes(self.bytes, self.median)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte moved (needs ``flops=`` and ``bytes=``)."""
        if self.flops is None or not self.bytes:
            raise ValueError("Timing.intensity: needs flops= and bytes= (nonzero)")
        return self.flops / self.bytes


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


def _summary(runs: tuple[float, ...], number: int, flops: float | None = None,
             nbytes: float | None = None) -> Timing:
    if len(runs) >= 2:
        q1, _, q3 = statistics.quantiles(runs, n=4, method="inclusive")
    else:
        q1 = q3 = runs[0]
    return Timing(median=statistics.median(runs), iqr=q3 - q1, runs=runs, number=number,
                  flops=flops, bytes=nbytes)


def compare(fns: Mapping[str, Callable[..., Any]], *args: Any, repeat: int = 7,
            min_time: float = 0.05, warmup: int = 1, flops: float | None = None,
            bytes: float | None = None, **kwargs: Any) -> dict[str, Timing]:
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
        flops, bytes: the work of one call, the same for every function (they compute the
            same thing): floating-point operations, and bytes read plus written. Kept in
            each Timing, which then gives ``gflops``, ``gbytes`` and ``intensity``. (So
            ``fn`` cannot take keywords of these two names.)

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
    return {name: _summary(tuple(runs[name]), numbers[name], flops, bytes) for name in fns}


def measure(fn: Callable[..., Any], *args: Any, repeat: int = 7, min_time: float = 0.05,
            warmup: int = 1, flops: float | None = None, bytes: float | None = None,
            **kwargs: Any) -> Timing:
    """Time ``fn(*args, **kwargs)``: :func:`compare` with one function.

    Returns:
        A :class:`Timing` in seconds per call: the median and IQR over ``repeat`` runs of
        at least ``min_time`` seconds each, after ``warmup`` calls; with ``flops`` and
        ``bytes`` (the work of one call) it also gives GFLOP/s, GB/s and the intensity.
    """
    return compare({"fn": fn}, *args, repeat=repeat, min_time=min_time, warmup=warmup,
                   flops=flops, bytes=bytes, **kwargs)["fn"]


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


def gbytes(nbytes: float, seconds: float) -> float:
    """Bandwidth in GB/s (10⁹ bytes) of ``nbytes`` bytes moved in ``seconds``."""
    if seconds <= 0:
        raise ValueError(f"gbytes: seconds must be positive; got {seconds}")
    return nbytes / seconds / 1e9


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


TRIAD_N = 1 << 23  # entries of each triad array: 64 MiB in float64, far beyond a CPU's caches


def peak_gbytes(n: int = TRIAD_N, dtype: Any = np.float64, repeat: int = 5,
                min_time: float = 0.2, seed: int = 0) -> float:
    """This machine's memory bandwidth, in GB/s: a STREAM-triad-like a = b + s·c, timed here.

    NumPy runs it in two passes, ``a = s·c`` then ``a += b``, so one call moves 5 n entries
    (reads c, writes a; reads a and b, writes a): that is the count, without the
    write-allocate traffic (as STREAM counts). The arrays must be far larger than the last
    cache level (the default, 3 × 64 MiB, is for caches up to tens of MiB), or the figure is
    the cache's. The fastest run is taken, as for :func:`peak_gflops`.

    Args:
        n: entries of each of the three arrays.
        dtype: their type (the bandwidth hardly depends on it).
        repeat, min_time: as in :func:`measure`.
        seed: for the random operands.

    Returns:
        5 · n · itemsize / (seconds of the fastest run) / 1e9.
    """
    rng = np.random.default_rng(seed)
    b = rng.standard_normal(n).astype(dtype)
    c = rng.standard_normal(n).astype(dtype)
    a = np.empty_like(b)
    s = np.dtype(dtype).type(3.0)

    def triad() -> None:
        np.multiply(c, s, out=a)
        np.add(a, b, out=a)

    t = measure(triad, repeat=repeat, min_time=min_time, warmup=2)
    return gbytes(5 * n * np.dtype(dtype).itemsize, t.best)


def roofline(intensity: float, peak_gflops: float, peak_gbytes: float) -> float:
    """The attainable GFLOP/s at arithmetic intensity I (FLOP per byte): min(P, I · B)."""
    return min(peak_gflops, intensity * peak_gbytes)


def cache_bytes() -> int | None:
    """The size of the CPU's largest cache, in bytes (Linux's sysfs), or None if unknown."""
    sizes = []
    for index in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(index) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes) if sizes else None


def guard(name: str, t: Timing, peak_gflops: float | None = None,
          peak_gbytes: float | None = None, peak: str = "", bandwidth: str = "",
          noise: bool = True) -> list[str]:
    """The warnings a figure deserves, as lines (empty when it is sound).

    - (``noise``) the IQR is over :data:`NOISY` of the median: the median is loose;
    - the GFLOP/s (``t.flops`` given) exceeds ``peak_gflops``: a measured peak is a lower
      bound of the machine's (too small or too short a peak run, or load during it), so a
      fraction over 100% says the peak, not the kernel, is off;
    - the GB/s (``t.bytes``) exceeds ``peak_gbytes``, the bandwidth of main memory: either
      the kernel's data fits in the caches (:func:`cache_bytes`), whose bandwidth is higher
      and which that roof does not bound, or the peak is underestimated.

    ``peak`` and ``bandwidth`` say how the two peaks were measured.
    """
    out = []
    if noise and t.rel_iqr > NOISY:
        out.append(f"{name}: noisy, the IQR is {100 * t.rel_iqr:.0f}% of the median (over "
                   f"{100 * NOISY:.0f}%): rerun on a quieter machine or with more repeats")
    if t.flops is not None and peak_gflops and t.gflops > peak_gflops:
        out.append(f"{name}: {t.gflops:.3g} GFLOP/s is {100 * t.gflops / peak_gflops:.0f}% of "
                   f"the measured peak {peak_gflops:.3g} GFLOP/s{_paren(peak)}: the peak is "
                   "underestimated; measure it longer or larger, on a quiet machine")
    if t.bytes is not None and peak_gbytes and t.gbytes > peak_gbytes:
        cache = cache_bytes()
        why = (f"its {t.bytes / 1024:.0f} KiB a call fit in the caches ({cache >> 20} MiB), "
               "faster than main memory: that roof does not bound it" if cache and
               t.bytes <= cache else "the bandwidth peak is underestimated; measure it "
               "longer, on a quiet machine")
        out.append(f"{name}: {t.gbytes:.3g} GB/s is {100 * t.gbytes / peak_gbytes:.0f}% of the "
                   f"measured memory bandwidth {peak_gbytes:.3g} GB/s{_paren(bandwidth)}: {why}")
    return out


def _paren(text: str) -> str:
    return f" ({text})" if text else ""


def roofline_plot(points: Sequence[Mapping[str, Any]], peak_gflops: float, peak_gbytes: float,
                  path: str, title: str = "", peaks: str = "") -> str:
    """Draw a roofline: GFLOP/s against arithmetic intensity, log-log, with the two roofs.

    The roofs are the measured peaks: GFLOP/s = I · B left of the ridge I = P / B, and P
    right of it. Each point is one kernel at one size: ``{"kernel", "intensity", "gflops"}``
    and optionally ``"backend"`` (its marker); a kernel keeps one colour.

    Returns:
        ``path``, written (PNG by its extension).

    Raises:
        ImportError: matplotlib is not installed: ``pip install 'tinymeta[plot]'``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("roofline_plot needs matplotlib: pip install 'tinymeta[plot]'") from e
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = [p["intensity"] for p in points] or [1.0]
    grid = np.logspace(np.log10(min(xs) / 2), np.log10(max(max(xs) * 2, 2 * peak_gflops
                                                           / peak_gbytes)), 200)
    ax.plot(grid, np.minimum(peak_gflops, grid * peak_gbytes), color="black", lw=1.5)
    ridge = peak_gflops / peak_gbytes
    ax.annotate(f"B = {peak_gbytes:.3g} GB/s", (ridge / 8, ridge / 8 * peak_gbytes), fontsize=7,
                ha="right", xytext=(-4, 2), textcoords="offset points")
    ax.annotate(f"P = {peak_gflops:.3g} GFLOP/s", (grid[-1], peak_gflops), fontsize=7,
                ha="right", xytext=(0, 4), textcoords="offset points")
    colours = plt.get_cmap("tab10")
    kernels = list(dict.fromkeys(p["kernel"] for p in points))
    markers = dict(zip(dict.fromkeys(p.get("backend", "") for p in points), "os^Dv"))
    for i, name in enumerate(kernels):
        for backend, marker in markers.items():
            mine = [p for p in points if p["kernel"] == name and p.get("backend", "") == backend]
            if mine:
                ax.scatter([p["intensity"] for p in mine], [p["gflops"] for p in mine], s=18,
                           marker=marker, color=colours(i % 10), alpha=0.8,
                           label=f"{name} ({backend})" if backend else name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte moved)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6, ncol=2, loc="lower right", title=peaks or None, title_fontsize=6)
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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
