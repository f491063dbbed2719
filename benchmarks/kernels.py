"""Kernel benchmarks: each fused kernel on the numba backend against the NumPy reference.

Run from a checkout:

    OPENBLAS_NUM_THREADS=1 python benchmarks/kernels.py [--json out.json] [--plot out.png]

For every kernel (linear, linear_relu, relu_grad, sq_err_mean, sq_err_mean_grad,
sub_scaled, and the convolution's forward, input gradient and filter gradient) and size, the
reference and the numba kernel are timed back to back in one process with
:func:`tinymeta.bench.compare` (median and IQR over repeated runs, the two kernels' runs
interleaved so that a slow spell of the shared machine hits both), on the shapes of the
sinusoid workload (25 tasks, K = 10 points, widths 1 and 40) and on square sizes up to
2048² (the convolutions: on Conv4's shapes, below). Throughput is GFLOP/s, and the
fraction of peak sets it against this machine's peak, measured in the same run by a 2048³
BLAS matmul of the same dtype (:func:`tinymeta.bench.peak_gflops`), before and after the
kernels, the better of the two taken (load on a shared machine only ever lowers it). The
elementwise kernels are bound by memory, not arithmetic: their GB/s (bytes read and written
once) is the figure to read there.

FLOP counted: linear 2·m·k·n + m·n per product (the bias add), linear_relu one more per
output (the max); linear_relu_vjp (the backward pass of linear_relu as the engine's rules
run it: relu_grad, the two adjoint GEMMs x̄ = ḡ Wᵀ and W̄ = xᵀ ḡ, the bias sum) two GEMMs
and 2 per output; relu_grad 1 per entry (the select), sq_err_mean 3 (subtract, square,
add), sq_err_mean_grad 2 (subtract, scale), sub_scaled 2 (scale, subtract).

Bytes counted (each operand read once, each result written once): linear x, W, b and the
output; linear_relu_vjp g, x, W, ans, and the cotangents x̄, W̄, b̄; relu_grad 3 arrays;
sq_err_mean 2 arrays and the (B,) result; sq_err_mean_grad 3 arrays and the (B,) input;
sub_scaled 3 arrays. The arithmetic intensity of a case is FLOP / bytes (``Case.intensity``):
the elementwise kernels sit at 1/12–1/4 FLOP per byte in float32, far left of the ridge
P / B of this machine's two measured roofs, the FLOP peak P (a BLAS GEMM,
:func:`tinymeta.bench.peak_gflops`) and the bandwidth B (a STREAM-triad-like kernel on
arrays far beyond the caches, :func:`tinymeta.bench.peak_gbytes`). Each case is reported
as a fraction of the roof that bounds it, min(P, I·B): for a memory-bound case the fraction
of the measured bandwidth. ``--roofline PATH`` draws every case on the roofline.
Figures above 100% of a roof, and timings whose IQR is over 10% of the median, are listed
as warnings under the table (:func:`tinymeta.bench.guard`).

The convolutions (NHWC, filters (3, 3, C_in, C_out), "same" padding) run as the engine runs
them, from the backend's kernels: conv_fwd = im2col(x) · W (the patches, then one GEMM);
conv_dx = col2im(ḡ Wᵀ) (one GEMM, then the scatter-add of the patches' cotangents); conv_dW
= im2col(x)ᵀ ḡ (the patches, then one GEMM). FLOP: the GEMM's 2·P·K·C_out, P = N·H'·W'
patches of K = 9·C_in entries, plus P·K adds for col2im. Bytes: the input, the filters and
the output once (the patch matrix, P·K entries, is written and read on top). Sizes: Conv4's
first two blocks on Omniglot (28×28×1 → 14×14×64 and 14×14×64 → 7×7×64, stride 2) for
40, 160 and 640 images, and two larger ones of the miniImageNet net (84×84×3 → 32 and
42×42×32 → 32 channels, stride 1, 40 images).

OPENBLAS_NUM_THREADS defaults to 1 here (numba's kernels are single-threaded, and BLAS
threads fighting over shared cores stall); it is set before NumPy is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads OpenBLAS

import argparse  # noqa: E402
import datetime  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402

from tinymeta import bench, bench_history  # noqa: E402
from tinymeta.kernels import numpy_backend  # noqa: E402

KERNELS = ("linear", "linear_relu", "linear_relu_vjp", "relu_grad", "sq_err_mean",
           "sq_err_mean_grad", "sub_scaled", "conv_fwd", "conv_dx", "conv_dW")
CONV_KERNELS = ("conv_fwd", "conv_dx", "conv_dW")
# (label, (H, W, C_in), C_out, stride, images): Conv4's blocks 1 and 2 on Omniglot, and
# blocks 1 and 2 of the miniImageNet net (stride 1; its 2 × 2 max-pool comes after)
CONV_SHAPES = tuple(
    [(f"o1 28²x1 s2 x{n}", (28, 28, 1), 64, 2, n) for n in (40, 160, 640)]
    + [(f"o2 14²x64 s2 x{n}", (14, 14, 64), 64, 2, n) for n in (40, 160, 640)]
    + [("m1 84²x3 s1 x40", (84, 84, 3), 32, 1, 40),
       ("m2 42²x32 s1 x40", (42, 42, 32), 32, 1, 40)])
SQUARES = (64, 256, 1024, 2048)
# (label, x shape, W shape, b shape) of the sinusoid MLP 1-40-40-1 on 25 tasks of 10 points
SINUSOID_LINEAR = (
    ("sin 1->40 per-task", (25, 10, 1), (25, 1, 40), (25, 1, 40)),
    ("sin 40->40 per-task", (25, 10, 40), (25, 40, 40), (25, 1, 40)),
    ("sin 40->1 per-task", (25, 10, 40), (25, 40, 1), (25, 1, 1)),
    ("sin 40->40 shared", (25, 10, 40), (40, 40), (40,)),
)
# the backward pass of relu(x W + b) at the sinusoid shapes: per-task W, and the first
# inner step's θ_0 broadcast over the tasks (a stride-0 view, as broadcast_to makes it)
SINUSOID_VJP = (
    ("sin 1->40 per-task", (25, 10, 1), (25, 1, 40), False),
    ("sin 40->40 per-task", (25, 10, 40), (25, 40, 40), False),
    ("sin 40->1 per-task", (25, 10, 40), (25, 40, 1), False),
    ("sin 40->40 broadcast", (25, 10, 40), (40, 40), True),
    ("sin 40->1 broadcast", (25, 10, 40), (40, 1), True),
)
SINUSOID_ARRAYS = (("sin (25,10,1)", (25, 10, 1)), ("sin (25,10,40)", (25, 10, 40)),
                   ("sin (25,40,40)", (25, 40, 40)))


@dataclass
class Case:
    kernel: str
    label: str
    args: tuple
    flops: int  # floating-point operations per call
    nbytes: int  # bytes moved per call: operands read once, results written once

    @property
    def intensity(self) -> float:
        """Arithmetic intensity: FLOP per byte moved."""
        return self.flops / self.nbytes
    pair: tuple | None = None  # (reference, numba) of this case, else kernel_pair(kernel)


def _linear_cases(name: str, rng, dtype, sizes) -> list[Case]:
    extra = 2 if name == "linear_relu" else 1  # bias add (and max) per output
    shapes = list(SINUSOID_LINEAR) + [(f"{n}^2", (n, n), (n, n), (n,)) for n in SQUARES]
    cases = []
    for label, xs, ws, bs in shapes:
        if sizes is not None and label not in sizes:
            continue
        x, W, b = (rng.standard_normal(s).astype(dtype) for s in (xs, ws, bs))
        out = np.broadcast_shapes(xs[:-1], ws[:-2] + (1,)) + ws[-1:]
        m, k, n = xs[-2], xs[-1], ws[-1]
        batch = math.prod(out[:-2])
        flops = bench.gemm_flops(m, k, n, batch) + extra * math.prod(out)
        nbytes = (x.size + W.size + b.size + math.prod(out)) * x.itemsize
        cases.append(Case(name, label, (x, W, b), flops, nbytes))
    return cases


def linear_relu_vjp(backend):
    """The backward pass of relu(x W + b) from the backend's kernels, as the engine's rules
    run it: ḡ_z = ḡ·1[ans > 0] (relu_grad), x̄ = ḡ_z Wᵀ (matmul_nt), W̄ = xᵀ ḡ_z
    (matmul_tn), b̄ = Σ_rows ḡ_z; returns the three cotangents flattened into one array."""
    def vjp(g, x, W, ans):
        gz = backend.relu_grad(g, ans)
        gx, gW = backend.matmul_nt(gz, W), backend.matmul_tn(x, gz)
        gb = gz.sum(axis=-2, keepdims=True)
        return np.concatenate([gx.reshape(-1), gW.reshape(-1), gb.reshape(-1)])

    return vjp


def _vjp_cases(name: str, rng, dtype, sizes) -> list[Case]:
    shapes = list(SINUSOID_VJP) + [(f"{n}^2", (n, n), (n, n), False) for n in SQUARES]
    cases = []
    for label, xs, ws, broadcast in shapes:
        if sizes is not None and label not in sizes:
            continue
        x, W = (rng.standard_normal(s).astype(dtype) for s in (xs, ws))
        if broadcast:
            W = np.broadcast_to(W, (xs[0],) + ws)
        m, k, n = xs[-2], xs[-1], W.shape[-1]
        out = xs[:-1] + (n,)
        batch = math.prod(out[:-2])
        ans = np.maximum(rng.standard_normal(out), 0).astype(dtype)
        g = rng.standard_normal(out).astype(dtype)
        # two GEMMs of the forward's size, the select and the bias sum per output
        flops = 2 * bench.gemm_flops(m, k, n, batch) + 2 * math.prod(out)
        nbytes = (x.size + math.prod(ws) + 3 * math.prod(out) + batch * k * n) * x.itemsize
        cases.append(Case(name, label, (g, x, W, ans), flops, nbytes))
    return cases


def conv_kernel(name: str, backend, x_shape: tuple, stride: int) -> Callable:
    """The conv forward, input gradient or filter gradient from ``backend``'s kernels, as the
    engine's rules run it, for images of ``x_shape`` and 3 × 3 "same" filters."""
    from tinymeta.ops.conv import conv_padding

    kernel, strides = (3, 3), (stride, stride)
    conv = {"kernel": kernel, "stride": strides,
            "padding": conv_padding(x_shape[-3:-1], kernel, strides, "same")}

    def fwd(x, W):
        return backend.matmul(backend.im2col(x, **conv), W)

    def dx(g, W):
        return backend.col2im(backend.matmul_nt(g, W), x_shape, **conv)

    def dW(x, g):
        cols = backend.im2col(x, **conv)
        return backend.matmul_tn(cols.reshape(-1, cols.shape[-1]), g.reshape(-1, g.shape[-1]))

    return {"conv_fwd": fwd, "conv_dx": dx, "conv_dW": dW}[name]


def _conv_cases(name: str, rng, dtype, sizes) -> list[Case]:
    from tinymeta.kernels import numba_backend

    cases = []
    for label, (H, W, c_in), c_out, stride, n in CONV_SHAPES:
        if sizes is not None and label not in sizes:
            continue
        x_shape = (n, H, W, c_in)
        Ho, Wo = -(-H // stride), -(-W // stride)
        P, K = n * Ho * Wo, 9 * c_in
        x = rng.standard_normal(x_shape).astype(dtype)
        Wm = rng.standard_normal((K, c_out)).astype(dtype)
        g = rng.standard_normal((n, Ho, Wo, c_out)).astype(dtype)
        args = {"conv_fwd": (x, Wm), "conv_dx": (g, Wm), "conv_dW": (x, g)}[name]
        flops = bench.gemm_flops(P, K, c_out) + (P * K if name == "conv_dx" else 0)
        nbytes = (x.size + Wm.size + g.size) * x.itemsize
        pair = (conv_kernel(name, numpy_backend, x_shape, stride),
                conv_kernel(name, numba_backend, x_shape, stride))
        cases.append(Case(name, label, args, flops, nbytes, pair))
    return cases


def _array_cases(name: str, rng, dtype, sizes) -> list[Case]:
    def arr(shape):
        return rng.standard_normal(shape).astype(dtype)

    shapes = list(SINUSOID_ARRAYS) + [(f"{n}^2", (n, n)) for n in SQUARES]
    cases = []
    for label, shape in shapes:
        if sizes is not None and label not in sizes:
            continue
        n, item, tasks = math.prod(shape), np.dtype(dtype).itemsize, shape[0]
        if name == "relu_grad":
            args, flops, nbytes = (arr(shape), arr(shape)), n, 3 * n * item
        elif name == "sq_err_mean":
            args, flops, nbytes = (arr(shape), arr(shape)), 3 * n, (2 * n + tasks) * item
        elif name == "sq_err_mean_grad":
            args = (arr((tasks,)), arr(shape), arr(shape))
            flops, nbytes = 2 * n, (3 * n + tasks) * item
        else:  # sub_scaled
            args, flops, nbytes = (arr(shape), arr(shape), 0.01), 2 * n, 3 * n * item
        cases.append(Case(name, label, args, flops, nbytes))
    return cases


def size_labels(name: str) -> list[str]:
    """The size labels of kernel ``name``, smallest first within each family."""
    if name in CONV_KERNELS:
        return [label for label, *_ in CONV_SHAPES]
    shapes = (SINUSOID_VJP if name == "linear_relu_vjp" else SINUSOID_LINEAR
              if name.startswith("linear") else SINUSOID_ARRAYS)
    return [label for label, *_ in shapes] + [f"{n}^2" for n in SQUARES]


def cases_for(name: str, rng, dtype, sizes=None) -> list[Case]:
    """The benchmark cases of kernel ``name`` (only the labels in ``sizes``, if given)."""
    build = (_vjp_cases if name == "linear_relu_vjp" else _conv_cases
             if name in CONV_KERNELS else _linear_cases
             if name.startswith("linear") else _array_cases)
    return build(name, rng, dtype, sizes)


def kernel_pair(name: str) -> tuple[Callable, Callable]:
    """(NumPy reference, numba backend) functions of kernel ``name``."""
    from tinymeta.kernels import numba_backend

    if name == "linear_relu_vjp":
        return linear_relu_vjp(numpy_backend), linear_relu_vjp(numba_backend)
    return getattr(numpy_backend, name), getattr(numba_backend, name)


def check_agree(name: str, ref_fn: Callable, fast_fn: Callable, args: tuple) -> None:
    """Refuse to time a numba kernel whose result differs from the reference's."""
    want, got = ref_fn(*args), fast_fn(*args)
    rtol = 1e-4 if want.dtype == np.float32 else 1e-10
    if got.dtype != want.dtype or not np.allclose(got, want, rtol=rtol, atol=rtol):
        raise RuntimeError(f"{name}: the numba kernel disagrees with the reference; "
                           "run the kernel tests (pytest tests/test_kernels.py)")


def machine() -> dict:
    """What the numbers were measured on, and when."""
    model = bench.cpu_name()
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name')} {blas.get('version')}"
    except (TypeError, KeyError):  # only a label: older NumPy has no mode="dicts"
        blas = "unknown"
    import numba

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "blas": blas,
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "loadavg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


@dataclass
class Peaks:
    """The two measured roofs, each the better of a run before and one after the kernels."""

    gflops: float
    gbytes: float
    flop_label: str  # how each was measured
    band_label: str
    detail: dict


def measure_peaks(dtype, peak_n: int, peak_min_time: float, quick: bool) -> Callable:
    """Measure both roofs now; returns ``finish()``, which measures them again and gives
    :class:`Peaks` (the higher of each pair: load on a shared machine only lowers a peak)."""
    triad = dict(repeat=3, min_time=0.02) if quick else {}
    flop = [bench.peak_gflops(n=peak_n, dtype=dtype, min_time=peak_min_time)]
    band = [bench.peak_gbytes(**triad)]

    def finish() -> Peaks:
        flop.append(bench.peak_gflops(n=peak_n, dtype=dtype, min_time=peak_min_time))
        band.append(bench.peak_gbytes(**triad))
        return Peaks(max(flop), max(band), f"{peak_n}³ {np.dtype(dtype).name} GEMM"
                     f"{', quick: short runs' if quick else ''}",
                     f"triad on 3 × {bench.TRIAD_N * 8 >> 20} MiB float64", {
            "peak_gflops_start": flop[0], "peak_gflops_end": flop[1],
            "peak_gbytes_start": band[0], "peak_gbytes_end": band[1]})

    return finish


def _row(case: Case, dtype, timings: dict) -> dict:
    row = {"kernel": case.kernel, "size": case.label,
           "shapes": [list(np.shape(a)) for a in case.args if np.ndim(a)],
           "dtype": np.dtype(dtype).name, "flops": case.flops, "bytes": case.nbytes,
           "intensity": case.intensity}
    for backend, t in timings.items():
        row[backend] = {"median_s": t.median, "iqr_s": t.iqr, "runs_s": list(t.runs),
                        "number": t.number, "gflops": t.gflops, "gbytes_per_s": t.gbytes}
    row["speedup"] = row["numpy"]["median_s"] / row["numba"]["median_s"]
    return row


def _against_roofs(rows: list, timings: list, peaks: Peaks) -> list[str]:
    """Each row's fractions of the two roofs and of the one that bounds it; the warnings."""
    ridge = peaks.gflops / peaks.gbytes
    warnings, noisy = [], []
    for row, ts in zip(rows, timings):
        row["bound"] = "memory" if row["intensity"] < ridge else "compute"
        roof = bench.roofline(row["intensity"], peaks.gflops, peaks.gbytes)
        for backend, t in ts.items():
            r = row[backend]
            r["frac_peak"] = r["gflops"] / peaks.gflops
            r["frac_bandwidth"] = r["gbytes_per_s"] / peaks.gbytes
            r["frac_roof"] = r["gflops"] / roof
            name = f"{backend} {row['kernel']} {row['size']}"
            warnings += bench.guard(name, t, peaks.gflops, peaks.gbytes, peaks.flop_label,
                                    peaks.band_label, noise=False)
            if t.rel_iqr > bench.NOISY:
                noisy.append(f"{name} ({100 * t.rel_iqr:.0f}%)")
    if noisy:  # one line for them all: on a busy machine there can be many
        warnings.append(f"noisy, the IQR over {100 * bench.NOISY:.0f}% of the median: "
                        + ", ".join(noisy) + "; rerun on a quieter machine or with more "
                        "repeats")
    return warnings


def run(kernels=KERNELS, dtype=np.float32, repeat: int = 15, min_time: float = 0.02,
        peak_n: int = 2048, sizes: set | None = None, peak_min_time: float = 0.2,
        progress=None, quick: bool = False) -> dict:
    """Time every kernel and size against the two measured roofs; the JSON-ready results.

    The roofs are measured before and after the kernels and the higher of each taken;
    ``progress(row)`` is called after each kernel and size.
    """
    rng = np.random.default_rng(0)
    start = machine()
    finish = measure_peaks(dtype, peak_n, peak_min_time, quick)
    rows, timings = [], []
    for name in kernels:
        for case in cases_for(name, rng, dtype, sizes):
            ref_fn, fast_fn = case.pair or kernel_pair(name)
            check_agree(name, ref_fn, fast_fn, case.args)
            ts = bench.compare({"numpy": ref_fn, "numba": fast_fn}, *case.args, repeat=repeat,
                               min_time=min_time, flops=case.flops, bytes=case.nbytes)
            rows.append(_row(case, dtype, ts))
            timings.append(ts)
            if progress is not None:
                progress(rows[-1])
    peaks = finish()
    warnings = _against_roofs(rows, timings, peaks)
    return {"machine": start, "loadavg_end": machine()["loadavg"], "peak_gflops": peaks.gflops,
            "peak_gbytes": peaks.gbytes, "peaks": f"P: {peaks.flop_label}; B: {peaks.band_label}",
            **peaks.detail,
            "peak_n": peak_n, "quick": quick, "dtype": np.dtype(dtype).name, "repeat": repeat,
            "min_time_s": min_time, "results": rows, "warnings": warnings}


HEADER = (f"{'kernel':<17}{'size':<19}{'numpy µs':>18}{'numba µs':>18}{'speedup':>9}"
          f"{'FLOP/B':>8}{'bound':>8}{'numba GF/s':>12}{'numba GB/s':>12}{'numpy %rf':>11}"
          f"{'numba %rf':>11}")


def _sig(v: float, digits: int) -> str:
    """``v`` to ``digits`` significant digits, never in e-notation."""
    if v == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:.{decimals}f}"


def _us(t: dict) -> str:
    """Median ± IQR in µs, to 4 and 2 significant digits."""
    return f"{_sig(1e6 * t['median_s'], 4)} ± {_sig(1e6 * t['iqr_s'], 2)}"


def format_row(r: dict) -> str:
    a, b = r["numpy"], r["numba"]
    return (f"{r['kernel']:<17}{r['size']:<19}{_us(a):>18}{_us(b):>18}{r['speedup']:>8.2f}x"
            f"{r['intensity']:>8.3g}{r['bound']:>8}{b['gflops']:>12.3g}{b['gbytes_per_s']:>12.3g}"
            f"{100 * a['frac_roof']:>10.3g}%{100 * b['frac_roof']:>10.3g}%")


def table(data: dict) -> str:
    """The results as a text table, headed by the two roofs they are fractions of."""
    m = data["machine"]
    ridge = data["peak_gflops"] / data["peak_gbytes"]
    lines = [
        f"FLOP peak P: {data['peak_gflops']:.1f} GFLOP/s ({data['peak_n']}³ {data['dtype']} BLAS "
        f"matmul, best of before ({data['peak_gflops_start']:.1f}) and after "
        f"({data['peak_gflops_end']:.1f}); OPENBLAS_NUM_THREADS={m['OPENBLAS_NUM_THREADS']})",
        f"bandwidth B: {data['peak_gbytes']:.1f} GB/s (a = b + s·c on 3 × "
        f"{bench.TRIAD_N * 8 >> 20} MiB float64, best of {data['peak_gbytes_start']:.1f} and "
        f"{data['peak_gbytes_end']:.1f}); ridge P / B = {ridge:.2f} FLOP/byte",
        "%rf: GFLOP/s as a percentage of the roof min(P, FLOP/B · B), i.e. of the bandwidth "
        "for a memory-bound case, of P for a compute-bound one"]
    if data.get("quick"):
        lines.append(f"quick mode: P is a {data['peak_n']}³ GEMM of short runs, a lower bound of "
                     "the machine's; figures above 100% are listed as warnings")
    lines += [HEADER, *[format_row(r) for r in data["results"]]]
    warnings = data.get("warnings") or []
    if warnings:
        lines += [f"warnings ({len(warnings)}):", *[f"  {w}" for w in warnings]]
    return "\n".join(lines) + "\n"


def write_json_atomic(path: str, data: dict) -> None:
    """The results as JSON at ``path``, written atomically, with the commit, the machine and
    the library versions (tinymeta.bench_history.write_results)."""
    bench_history.write_results(path, data, os.path.dirname(os.path.abspath(__file__)),
                                indent=1)


def roofline(data: dict, path: str) -> str:
    """Every case and backend as a point on this run's roofline (tinymeta.bench.roofline_plot)."""
    points = [{"kernel": r["kernel"], "backend": backend, "intensity": r["intensity"],
               "gflops": r[backend]["gflops"]}
              for r in data["results"] for backend in ("numba", "numpy")]
    m = data["machine"]
    title = (f"tinymeta kernels, {data['dtype']}: {m['cpu']}, OPENBLAS_NUM_THREADS="
             f"{m['OPENBLAS_NUM_THREADS']}, {m['date']}")
    return bench.roofline_plot(points, data["peak_gflops"], data["peak_gbytes"], path,
                               title=title, peaks=data["peaks"])


def plot(data: dict, path: str) -> bool:
    """GFLOP/s against work per call, one panel per kernel; False if matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    kernels = list(dict.fromkeys(r["kernel"] for r in data["results"]))
    cols = 3
    rows_n = math.ceil(len(kernels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 4 * rows_n), squeeze=False)
    for ax, name in zip(axes.flat, kernels):
        rs = sorted((r for r in data["results"] if r["kernel"] == name),
                    key=lambda r: r["flops"])
        x = [r["flops"] for r in rs]
        for backend, style in (("numpy", "o-"), ("numba", "s-")):
            ax.plot(x, [r[backend]["gflops"] for r in rs], style, label=backend)
        ax.axhline(data["peak_gflops"], color="grey", ls="--", label="peak (BLAS matmul)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("FLOP per call")
        ax.set_ylabel("GFLOP/s")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(kernels):]:
        ax.set_visible(False)
    m = data["machine"]
    fig.suptitle(f"tinymeta kernels, {data['dtype']}: {m['cpu']}, "
                 f"OPENBLAS_NUM_THREADS={m['OPENBLAS_NUM_THREADS']}, {m['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="PATH", help="write the results as JSON (atomically)")
    p.add_argument("--plot", metavar="PATH", help="draw GFLOP/s against size (matplotlib)")
    p.add_argument("--roofline", metavar="PATH",
                   help="draw every case on the measured roofline (matplotlib)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--kernels", default=",".join(KERNELS),
                   help="comma-separated subset of: " + ", ".join(KERNELS))
    p.add_argument("--repeat", type=int, default=15, help="runs per measurement (default 15)")
    p.add_argument("--min-time", type=float, default=0.02,
                   help="least seconds per run (default 0.02)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: sinusoid sizes and 64² only, 3 short runs, 1024³ FLOP "
                        "peak of short runs (its fractions flagged above 100%%)")
    args = p.parse_args(argv)
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = sorted(set(kernels) - set(KERNELS))
    if unknown:
        p.error(f"unknown kernels {unknown}; choose from {', '.join(KERNELS)}")
    sizes = None
    repeat, min_time, peak_n, peak_min_time = args.repeat, args.min_time, 2048, 0.2
    if args.quick:
        sizes = {label for label, *_ in SINUSOID_LINEAR + SINUSOID_ARRAYS + SINUSOID_VJP}
        sizes |= {"64^2", CONV_SHAPES[0][0]}
        repeat, min_time, peak_n, peak_min_time = 3, 0.005, 1024, 0.02
    def progress(row):
        print(f"  {row['kernel']} {row['size']}: {row['speedup']:.2f}x", file=sys.stderr)

    data = run(kernels, np.dtype(args.dtype).type, repeat, min_time, peak_n, sizes,
               peak_min_time, progress, quick=args.quick)
    print(table(data))
    m = data["machine"]
    print(f"{m['cpu']}, {m['cpu_count']} cores, {m['blas']}, "
          f"OPENBLAS_NUM_THREADS={m['OPENBLAS_NUM_THREADS']}, numpy {m['numpy']}, "
          f"numba {m['numba']}, {m['date']}, load average {m['loadavg']} -> "
          f"{data['loadavg_end']}")
    if args.json:
        write_json_atomic(args.json, data)
        print(f"wrote {args.json}")
    if args.plot:
        if plot(data, args.plot):
            print(f"wrote {args.plot}")
        else:
            print("--plot: matplotlib is not installed; no plot drawn "
                  "(pip install 'tinymeta[plot]')", file=sys.stderr)
    if args.roofline:
        try:
            print(f"wrote {roofline(data, args.roofline)}")
        except ImportError as e:
            print(f"--roofline: {e}; no plot drawn", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
