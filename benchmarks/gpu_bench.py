"""The cupy backend on a GPU: kernel check, fused kernels, end-to-end meta-gradients.

Run on a machine with a CUDA GPU and cupy (``benchmarks/gpu_check.sh`` does, with
PYTHONPATH set to the checkout)::

    python benchmarks/gpu_bench.py --out OUT_DIR            # check, kernels, end to end
    python benchmarks/gpu_bench.py --check-only --out DIR   # the kernel check alone
    python benchmarks/gpu_bench.py --dry-run --out DIR      # tiny sizes, numpy backend, CPU

1. Kernel check: every kernel the primitives call (every name of the NumPy reference
   that a primitive uses) on fresh random inputs, in float64 and float32, against the
   NumPy reference on the host copies of the same inputs: the relative error
   max|got − want| / max|want|, the dtype and the shape; the project's CUDA kernels also
   write into outputs poisoned with NaN first, so an element they leave unwritten shows;
   no result may hold a NaN.
2. Kernels: each fused kernel against cupy's unfused expression of the same maths (the
   expression a user writes), on the shapes of the two workloads below; speedup is
   unfused time / fused time. Times are wall clock over back-to-back calls, one device
   synchronisation per batch of calls: what a tape of such calls costs.
3. End to end: the second-order MAML meta-gradient, ``tm.meta.maml`` in both methods
   (``unrolled``, ``hvp_chain``), float32, on
   - the sinusoid workload: MLP 1-40-40-1, 25 tasks, K = 10 support and 10 query points,
     T = 1 and 5 (Finn et al. 2017), inner learning rate 0.01;
   - the large configuration: the Omniglot-shaped MLP 784-256-128-64-64-20, meta-batch 32,
     20-way 5-shot (100 support and 100 query points per task, synthetic inputs and
     balanced labels: the cost does not depend on the pixels), cross-entropy, T = 5, 20
     and 40, inner learning rate 0.1;
   with, where they import, the same meta-gradient in PyTorch (torch.func grad + vmap over
   tasks, a Python loop over inner steps) and in JAX (jit of grad of vmap, the inner loop a
   lax.scan, matmul precision "highest" so that float32 is not TF32) on the same device.
   Reported: the median time of a meta-step after a warm-up call (the warm-up, compilation
   included, apart), the peak device memory the step added (cupy: a memory hook on the
   pool; PyTorch: max_memory_allocated; JAX: the process's peak_bytes_in_use, cumulative
   over the run, so an upper bound), the meta-loss, and the relative difference of each
   meta-gradient from tinymeta's unrolled one.

A time budget (``--budget-s``) bounds the end-to-end part: runs left when it is spent are
listed as skipped. Results: ``bench.json`` and ``bench.md`` (or ``kernel_check.json`` with
``--check-only``) under ``--out`` (default ``$OUT``).
"""

from __future__ import annotations

import os

# before JAX can be imported: no 75 % preallocation beside cupy's and PyTorch's pools
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import tinymeta as tm  # noqa: E402
import tinymeta.meta  # noqa: E402, F401
import tinymeta.nn  # noqa: E402, F401
from tinymeta import bench_history, tape  # noqa: E402
from tinymeta.kernels import numpy_backend as ref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))  # the checkout whose commit is recorded
from tinymeta.tasks import Sinusoid, TaskBatch  # noqa: E402

TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

# ---- 1. the kernel check ---------------------------------------------------------------

# the project's CUDA kernels, by the ``_<name>_into(*inputs, out)`` form of the cupy backend
POISONED = ("relu", "relu_grad", "sq_err_mean", "sq_err_mean_grad", "sub_scaled", "im2col",
            "col2im")
# the convolution kernels' keyword arguments that their ``_<name>_into`` forms take
CONV_INTO = ("kernel", "stride", "padding")


def kernel_names() -> list[str]:
    """Every kernel a built-in primitive calls (the names every backend must provide)."""
    return sorted({p.kernel for p in tape._builtin})


def kernel_cases(rng: np.random.Generator, dtype: Any,
                 large: bool = True) -> list[tuple[str, tuple, dict]]:
    """(kernel, host arguments, keyword arguments) covering every kernel, on the shapes of
    the sinusoid workload (25 tasks, K = 10, width 40) and, with ``large``, a few of the
    Omniglot-shaped one (32 tasks, 100 points, 784 → 256)."""
    dtype = np.dtype(dtype)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def pos(*shape):
        return rng.uniform(0.5, 2.0, shape).astype(dtype)

    B, K, n = 25, 10, 40
    x, y = r(B, K, n), r(B, K, n)
    kinked = r(B, K, n)
    kinked[:, :3] = 0.0  # relu's kink, maximum's ties
    with_inf = r(B, n)
    with_inf[0, :3] = (np.inf, -np.inf, np.nan)
    idx = (slice(None), np.array([0, 3, 3, 9]))  # duplicates accumulate in scatter_add
    other = np.float32 if dtype == np.float64 else np.float64
    shared_W = np.broadcast_to(r(n, n), (B, n, n))  # θ_0 broadcast over the tasks
    cases = [
        ("add", (x, r(n)), {}),
        ("subtract", (x, r(B, 1, n)), {}),
        ("multiply", (x, y), {}),
        ("true_divide", (x, pos(B, K, n)), {}),
        ("negative", (x,), {}),
        ("power", (pos(B, n), r(B, n)), {}),
        ("power", (x, 2), {}),
        ("exp", (x,), {}),
        ("log", (pos(B, n),), {}),
        ("sqrt", (pos(B, n),), {}),
        ("tanh", (x,), {}),
        ("absolute", (x,), {}),
        ("sign", (kinked,), {}),
        ("maximum", (kinked, np.zeros_like(kinked)), {}),
        ("minimum", (kinked, np.zeros_like(kinked)), {}),
        ("where", (x > 0, x, r(n)), {}),
        ("greater", (kinked, 0.0), {}),
        ("greater_equal", (kinked, 0.0), {}),
        ("less", (x, y), {}),
        ("less_equal", (kinked, 0.0), {}),
        ("equal", (kinked, 0.0), {}),
        ("not_equal", (kinked, 0.0), {}),
        ("isfinite", (with_inf,), {}),
        ("logical_and", (x > 0, y > 0), {}),
        ("logical_or", (x > 0, y > 0), {}),
        ("logical_not", (x > 0,), {}),
        ("sigmoid", (8.0 * x,), {}),
        ("relu", (kinked,), {}),
        ("relu_grad", (x, kinked), {}),
        ("maximum_share", (kinked, np.zeros_like(kinked)), {}),
        ("cast", (x,), {"dtype": np.dtype(other)}),
        ("sum", (x,), {"axis": (0, 2), "keepdims": False}),
        ("sum", (x > 0,), {"axis": (1,), "keepdims": True}),
        ("amax", (x,), {"axis": (2,), "keepdims": True}),
        ("logsumexp", (x,), {"axis": (2,), "keepdims": False}),
        ("log_softmax", (x,), {"axis": 2}),
        ("reshape", (x,), {"shape": (B, K * n)}),
        ("transpose", (x,), {"axes": (2, 0, 1)}),
        ("broadcast_to", (r(1, n),), {"shape": (B, n)}),
        ("getitem", (x,), {"index": idx}),
        ("getitem", (x,), {"index": (slice(2, 7), 1)}),
        ("scatter_add", (r(B, 4, n),), {"index": idx, "shape": (B, K, n)}),
        ("concatenate", (x, r(B, 3, n)), {"axis": 1}),
        ("stop_gradient", (x,), {}),
        ("matmul", (x, r(B, n, n)), {}),  # batched over the tasks
        ("matmul", (x, r(n, n)), {}),  # one GEMM on the stacked rows
        ("matmul", (x, shared_W), {}),  # a broadcast stack of one matrix
        ("matmul", (r(B, K, 1), r(B, 1, n)), {}),  # inner dimension 1: an outer product
        ("matmul_nt", (x, r(B, 7, n)), {}),
        ("matmul_nt", (x, r(7, n)), {}),
        ("matmul_tn", (x, r(B, K, 7)), {}),
        ("linear", (x, r(B, n, n), r(B, 1, n)), {}),
        ("linear", (x, r(n, n), r(n)), {}),
        ("linear", (r(B, K, 1), r(B, 1, n), r(B, 1, n)), {}),
        ("linear_relu", (x, r(B, n, n), r(B, 1, n)), {}),
        ("linear_relu", (x, r(n, n), r(n)), {}),
        ("linear_relu", (x, r(n, n), r(K, 1)), {}),  # a broadcast the epilogue leaves to cupy
        ("sq_err_mean", (r(B, K, 1), r(B, K, 1)), {}),
        ("sq_err_mean_grad", (r(B), r(B, K, 1), r(B, K, 1)), {}),
        ("sub_scaled", (x, y), {"scale": 0.37}),
    ]
    cases += _conv_cases(r, dtype, large)
    if large:
        cases += [
            ("relu", (r(32, 100, 256),), {}),
            ("matmul", (r(32, 100, 784), r(32, 784, 256)), {}),
            ("linear_relu", (r(32, 100, 784), r(32, 784, 256), r(32, 1, 256)), {}),
            ("sq_err_mean", (r(32, 100, 20), r(32, 100, 20)), {}),
            ("sq_err_mean_grad", (r(32), r(32, 100, 20), r(32, 100, 20)), {}),
            ("sub_scaled", (r(32, 784, 256), r(32, 784, 256)), {"scale": 0.1}),
        ]
    return cases


def _conv_cases(r: Callable, dtype: np.dtype, large: bool) -> list[tuple[str, tuple, dict]]:
    """im2col and col2im: odd padding after ("same", stride 2), explicit padding wider than
    the kernel, a 1 x 1 window, and integer images (cupy's unfused slices)."""
    geometries = [  # (image shape, kernel, stride, padding)
        ((2, 3, 7, 6, 2), (3, 3), (2, 2), ((1, 1), (0, 1))),
        ((2, 2, 5, 4, 3), (3, 2), (1, 2), ((2, 4), (3, 0))),
        ((3, 4, 4, 1), (1, 1), (2, 3), ((0, 0), (0, 0))),
    ]
    if large:  # Conv4's second block on Omniglot: 32 tasks of 5 images, 14 x 14 x 64
        geometries.append(((32, 5, 14, 14, 64), (3, 3), (2, 2), ((0, 1), (0, 1))))
    cases = []
    for shape, kernel, stride, padding in geometries:
        conv = {"kernel": kernel, "stride": stride, "padding": padding}
        patches = ref.im2col(np.zeros(shape, dtype), **conv).shape
        cases += [("im2col", (r(*shape),), conv),
                  ("col2im", (r(*patches),), {"x_shape": shape, **conv})]
    ints = np.arange(2 * 5 * 4 * 3).reshape(2, 5, 4, 3) - 50
    conv = {"kernel": (2, 2), "stride": (1, 1), "padding": ((1, 0), (0, 1))}
    return cases + [("im2col", (ints,), conv),
                    ("col2im", (ref.im2col(ints, **conv),), {"x_shape": ints.shape, **conv})]


def _upload(backend, a: Any) -> Any:
    if isinstance(a, np.ndarray):
        return backend.asarray(a)
    return a  # Python numbers, dtypes, and index tuples (the backend uploads index arrays)


def _compare(got: np.ndarray, want: np.ndarray, tol: float) -> tuple[float, bool, str]:
    """(relative error, ok, why not) of a result against the reference's."""
    if got.shape != want.shape:
        return float("inf"), False, f"shape {got.shape} != {want.shape}"
    if got.dtype != want.dtype:
        return float("inf"), False, f"dtype {got.dtype} != {want.dtype}"
    if want.dtype.kind not in "fc":
        ok = bool(np.array_equal(got, want))
        return (0.0 if ok else float("inf")), ok, "" if ok else "values differ"
    if np.isnan(got).any() and not np.isnan(want).any():
        return float("nan"), False, "NaN in the result"
    finite = np.isfinite(want)
    if not np.array_equal(np.isfinite(got), finite) or not np.array_equal(
            got[~finite], want[~finite], equal_nan=True):
        return float("inf"), False, "non-finite entries differ"
    scale = max(float(np.max(np.abs(want[finite]), initial=0.0)), np.finfo(want.dtype).tiny)
    err = float(np.max(np.abs(got[finite] - want[finite]), initial=0.0)) / scale
    return err, err <= tol, "" if err <= tol else f"relative error {err:.3g} > {tol:g}"


def check_kernels(backend, seed: int = 0, dtypes=(np.float64, np.float32),
                  large: bool = True) -> list[dict]:
    """Every kernel of ``backend`` against the NumPy reference: one row per case."""
    rows = []
    rng = np.random.default_rng(seed)
    for dtype in dtypes:
        tol = TOL[np.dtype(dtype)]
        for i, (name, args, kwargs) in enumerate(kernel_cases(rng, dtype, large)):
            want = np.asarray(getattr(ref, name)(*args, **kwargs))
            dev = [_upload(backend, a) for a in args]
            got = backend.to_numpy(getattr(backend, name)(*dev, **kwargs))
            err, ok, why = _compare(np.asarray(got), want, tol)
            rows.append({"kernel": name, "case": i, "dtype": np.dtype(dtype).name,
                         "shape": list(want.shape), "rel_err": err, "tol": tol,
                         "poisoned": False, "ok": ok, "why": why})
            into = getattr(backend, f"_{name}_into", None)
            if name in POISONED and into is not None and want.dtype.kind == "f":
                out = backend.xp.full(want.shape, np.nan, dtype=want.dtype)
                scalars = [kwargs["scale"]] if name == "sub_scaled" else []
                conv = {k: v for k, v in kwargs.items() if k in CONV_INTO}
                into(*[backend.xp.ascontiguousarray(a) for a in dev], *scalars, out, **conv)
                err, ok, why = _compare(np.asarray(backend.to_numpy(out)), want, tol)
                rows.append({"kernel": name, "case": i, "dtype": np.dtype(dtype).name,
                             "shape": list(want.shape), "rel_err": err, "tol": tol,
                             "poisoned": True, "ok": ok, "why": why})
    return rows


# ---- timing and memory -----------------------------------------------------------------


class Device:
    """The backend's array module, its synchronisation and its memory meter."""

    def __init__(self, backend_name: str) -> None:
        tm.set_backend(backend_name)
        self.backend = tm.get_backend()
        self.xp = self.backend.xp
        self.gpu = backend_name == "cupy"

    def sync(self) -> None:
        if self.gpu:
            self.xp.cuda.Device().synchronize()

    def peak_bytes(self, fn: Callable[[], Any]) -> int:
        """The most memory ``fn`` held at once beyond what was held before it."""
        if not self.gpu:
            tracemalloc.start()
            try:
                fn()
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        cp = self.xp

        class Peak(cp.cuda.MemoryHook):
            name = "tinymeta-peak"

            def __init__(self) -> None:
                self.current = self.peak = 0

            def malloc_postprocess(self, **kw) -> None:
                self.current += kw["mem_size"]
                self.peak = max(self.peak, self.current)

            def free_postprocess(self, **kw) -> None:
                self.current -= kw["mem_size"]

        self.sync()
        hook = Peak()
        with hook:
            fn()
            self.sync()
        return hook.peak

    def describe(self) -> dict:
        out = {"backend": tm.backend_name(), "numpy": np.__version__,
               "python": platform.python_version(), "host": platform.node()}
        if self.gpu:
            cp = self.xp
            props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
            name = props["name"]
            out.update(cupy=cp.__version__,
                       device=name.decode() if isinstance(name, bytes) else str(name),
                       cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
                       cuda_driver=cp.cuda.runtime.driverGetVersion())
        return out


def per_call_seconds(fn: Callable[[], Any], sync: Callable[[], None], min_time: float,
                     repeat: int = 5) -> float:
    """Median over ``repeat`` batches of the wall time per call, one sync per batch."""
    fn()
    sync()
    number = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        dt = time.perf_counter() - t0
        if dt >= min_time / repeat or number >= 1 << 14:
            break
        number *= 4
    runs = [dt / number]
    for _ in range(repeat - 1):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        runs.append((time.perf_counter() - t0) / number)
    return statistics.median(runs)


# ---- 2. fused kernels against cupy's unfused expressions ---------------------------------


def fused_and_unfused(be, B: int, K: int, din: int, dout: int, seed: int = 1) -> dict:
    """kernel -> (the backend's fused call, cupy's unfused expression), float32 inputs of a
    layer with B tasks of K points, din inputs and dout outputs."""
    xp = be.xp
    rng = np.random.default_rng(seed)

    def r(*shape):
        return be.asarray(rng.standard_normal(shape).astype(np.float32))

    x, W, b = r(B, K, din), r(B, din, dout), r(B, 1, dout)
    z, g = r(B, K, dout), r(B, K, dout)
    p, y, gt = r(B, K, dout), r(B, K, dout), r(B)
    Wd = r(B, din, dout)
    m = K * dout
    return {
        "linear": (lambda: be.linear(x, W, b), lambda: xp.matmul(x, W) + b),
        "linear_relu": (lambda: be.linear_relu(x, W, b),
                        lambda: xp.maximum(xp.matmul(x, W) + b, 0)),
        "relu": (lambda: be.relu(z), lambda: xp.maximum(z, 0)),
        "relu_grad": (lambda: be.relu_grad(g, z), lambda: xp.where(z > 0, g, 0)),
        "sq_err_mean": (lambda: be.sq_err_mean(p, y),
                        lambda: ((p - y) ** 2).reshape(B, -1).mean(axis=1)),
        "sq_err_mean_grad": (lambda: be.sq_err_mean_grad(gt, p, y),
                             lambda: (2.0 / m) * gt[:, None, None] * (p - y)),
        "sub_scaled": (lambda: be.sub_scaled(W, Wd, 0.1), lambda: W - 0.1 * Wd),
    }


def kernel_bench(dev: Device, shapes: dict, min_time: float) -> list[dict]:
    be = dev.backend
    rows = []
    for label, dims in shapes.items():
        for kernel, (fused, unfused) in fused_and_unfused(be, *dims).items():
            a = np.asarray(be.to_numpy(fused()), dtype=np.float64)
            e = np.asarray(be.to_numpy(unfused()), dtype=np.float64)
            diff = float(np.max(np.abs(a - e))) / max(float(np.max(np.abs(e))), 1e-30)
            tf = per_call_seconds(fused, dev.sync, min_time)
            tu = per_call_seconds(unfused, dev.sync, min_time)
            rows.append({"kernel": kernel, "shapes": label, "dtype": "float32",
                         "fused_us": tf * 1e6, "unfused_us": tu * 1e6, "speedup": tu / tf,
                         "rel_diff": diff})
    return rows


# ---- 3. end to end -----------------------------------------------------------------------


def mlp_params(sizes, seed: int = 0) -> list[np.ndarray]:
    return tm.nn.mlp_init(sizes, seed=seed, dtype=np.float32)


def sinusoid_batch(tasks: int, k: int, seed: int = 0) -> TaskBatch:
    b = Sinusoid().sample(tasks, k, k, seed=seed, dtype=np.float32)
    return TaskBatch(b.support_x, b.support_y, b.query_x, b.query_y)


def classification_batch(tasks: int, n_way: int, k_shot: int, k_query: int, d: int,
                         seed: int = 0) -> TaskBatch:
    """Synthetic N-way K-shot tasks: Gaussian inputs, balanced integer labels."""
    rng = np.random.default_rng(seed)
    ys = np.tile(np.arange(n_way), (tasks, k_shot))
    yq = np.tile(np.arange(n_way), (tasks, k_query))
    xs = rng.standard_normal((tasks, n_way * k_shot, d)).astype(np.float32)
    xq = rng.standard_normal((tasks, n_way * k_query, d)).astype(np.float32)
    return TaskBatch(xs, ys, xq, yq)


def tinymeta_loss(kind: str) -> Callable:
    if kind == "mse":
        return lambda params, x, y: tm.nn.mse(tm.nn.mlp(params, x), y)
    return lambda params, x, y: tm.nn.cross_entropy(tm.nn.mlp(params, x), y)


def _onehot(y: np.ndarray, n: int) -> np.ndarray:
    return (y[..., None] == np.arange(n)).astype(np.float32)


def tinymeta_runner(dev: Device, params, batch, kind: str, lr: float, T: int, method: str):
    """tinymeta: ``tm.meta.maml(..., order=2, method=method)`` on the active backend."""
    be = dev.backend
    P = [be.asarray(p) for p in params]
    data = TaskBatch(*[be.asarray(a) for a in batch[:4]])
    loss_fn = tinymeta_loss(kind)
    info: dict = {}

    def run():
        g, i = tm.meta.maml(loss_fn, P, data, lr, T, order=2, method=method)
        info.update(i)
        return g

    def peak(fn):
        if dev.gpu:
            be.xp.get_default_memory_pool().free_all_blocks()
        return dev.peak_bytes(fn)

    return {"run": run, "loss": lambda: float(be.to_numpy(info["loss"])),
            "numpy": lambda out: [np.asarray(be.to_numpy(g)) for g in out], "sync": dev.sync,
            "peak": peak, "label": f"tinymeta, {tm.backend_name()} backend"}


def torch_runner(dev: Device, params, batch, kind: str, lr: float, T: int, method: str):
    """PyTorch torch.func: grad of the mean over a vmap over tasks of the adapted query loss
    (reverse mode through the inner loop: the unrolled method)."""
    import torch
    from torch.func import grad, vmap

    device = torch.device("cuda" if dev.gpu else "cpu")
    n_out = params[-1].shape[0]
    ys, yq = batch.support_y, batch.query_y
    if kind == "ce":
        ys, yq = _onehot(ys, n_out), _onehot(yq, n_out)
    P = [torch.tensor(p, device=device) for p in params]
    data = [torch.tensor(a, device=device) for a in (batch.support_x, ys, batch.query_x, yq)]

    def forward(ps, x):
        h = x
        for i in range(0, len(ps), 2):
            h = h @ ps[i] + ps[i + 1]
            if i < len(ps) - 2:
                h = torch.relu(h)
        return h

    def task_loss(ps, x, y):
        out = forward(ps, x)
        if kind == "mse":
            return ((out - y) ** 2).mean()
        return -(y * torch.log_softmax(out, dim=-1)).sum(-1).mean()

    def task_meta(ps, x, y, xq, yq):
        for _ in range(T):
            g = grad(task_loss)(ps, x, y)
            ps = [p - lr * gp for p, gp in zip(ps, g)]
        return task_loss(ps, xq, yq)

    def meta_loss(ps):
        return vmap(task_meta, in_dims=(None, 0, 0, 0, 0))(ps, *data).mean()

    meta_grad = grad(meta_loss)

    def sync():
        if dev.gpu:
            torch.cuda.synchronize()

    def peak(fn):
        if not dev.gpu:
            return None
        sync()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        sync()
        return torch.cuda.max_memory_allocated() - before

    def loss():
        with torch.no_grad():
            return float(meta_loss(P))

    return {"run": lambda: meta_grad(P), "loss": loss,
            "numpy": lambda out: [o.detach().cpu().numpy() for o in out], "sync": sync,
            "peak": peak, "label": f"PyTorch {torch.__version__} torch.func grad+vmap"}


def jax_runner(dev: Device, params, batch, kind: str, lr: float, T: int, method: str):
    """JAX: jit(grad(mean ∘ vmap over tasks)), the inner loop a lax.scan of T steps
    (reverse mode through it: the unrolled method)."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_default_matmul_precision", "highest")
    device = jax.devices("gpu")[0] if dev.gpu else jax.devices("cpu")[0]
    n_out = params[-1].shape[0]
    ys, yq = batch.support_y, batch.query_y
    if kind == "ce":
        ys, yq = _onehot(ys, n_out), _onehot(yq, n_out)
    P = [jax.device_put(p, device) for p in params]
    data = [jax.device_put(a, device) for a in (batch.support_x, ys, batch.query_x, yq)]

    def forward(ps, x):
        h = x
        for i in range(0, len(ps), 2):
            h = h @ ps[i] + ps[i + 1]
            if i < len(ps) - 2:
                h = jax.nn.relu(h)
        return h

    def task_loss(ps, x, y):
        out = forward(ps, x)
        if kind == "mse":
            return jnp.mean((out - y) ** 2)
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(out, axis=-1), axis=-1))

    def task_meta(ps, x, y, xq, yq):
        def step(p, _):
            g = jax.grad(task_loss)(p, x, y)
            return [a - lr * b for a, b in zip(p, g)], None

        ps, _ = jax.lax.scan(step, ps, None, length=T)
        return task_loss(ps, xq, yq)

    def meta_loss(ps, *d):
        return jnp.mean(jax.vmap(task_meta, in_axes=(None, 0, 0, 0, 0))(ps, *d))

    meta_grad = jax.jit(jax.grad(meta_loss))
    loss_fn = jax.jit(meta_loss)

    def peak(fn):
        before = (device.memory_stats() or {}).get("bytes_in_use")
        fn()
        after = (device.memory_stats() or {}).get("peak_bytes_in_use")
        return None if before is None or after is None else after - before

    return {"run": lambda: jax.block_until_ready(meta_grad(P, *data)),
            "loss": lambda: float(loss_fn(P, *data)),
            "numpy": lambda out: [np.asarray(o) for o in out], "sync": lambda: None,
            "peak": peak, "label": f"JAX {jax.__version__} jit+vmap (lax.scan)"}


RUNNERS = {"tinymeta": tinymeta_runner, "torch": torch_runner, "jax": jax_runner}


def _rel_diff(a: list, b: list) -> float:
    num = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
              for x, y in zip(a, b))
    den = max(float(np.max(np.abs(np.asarray(y, np.float64)))) for y in b)
    return num / max(den, 1e-30)


def _steps(run: Callable, sync: Callable, max_reps: int, target_s: float) -> tuple:
    """(warm-up seconds, median seconds of the timed calls, their number)."""
    t0 = time.perf_counter()
    run()
    sync()
    warm = time.perf_counter() - t0
    reps = int(min(max_reps, max(3, target_s / max(warm, 1e-4))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    return warm, statistics.median(times), reps


def plan(workloads: list[dict], peers: tuple) -> list[tuple]:
    """(impl, workload, T, method) in the order run: tinymeta's both methods on every
    configuration, then each peer on the large configuration first."""
    runs = [("tinymeta", w, T, m) for w in workloads for T in w["T"]
            for m in ("unrolled", "hvp_chain")]
    for peer in peers:
        for w in sorted(workloads, key=lambda w: w["priority"]):
            runs += [(peer, w, T, "unrolled") for T in w["T"]]
    return runs


def e2e(dev: Device, workloads: list[dict], budget_s: float, peers: tuple,
        max_reps: int, target_s: float, rows: list[dict],
        on_row: Callable[[], None] = lambda: None) -> list[dict]:
    """Append one row per planned run to ``rows``, calling ``on_row`` after each (so that a
    run stopped from outside still leaves what it measured)."""
    deadline = time.monotonic() + budget_s
    reference: dict = {}  # (workload, T) -> tinymeta's unrolled meta-gradient, on the host
    unavailable: dict = {}
    for impl, w, T, method in plan(workloads, peers):
        row = {"workload": w["name"], "T": T, "method": method, "impl": impl}
        rows.append(row)
        if impl in unavailable:
            row["skipped"] = unavailable[impl]
            continue
        if time.monotonic() > deadline:
            row["skipped"] = "time budget spent"
            continue
        try:
            r = RUNNERS[impl](dev, w["params"], w["batch"], w["loss"], w["lr"], T, method)
        except ImportError as e:
            unavailable[impl] = f"{impl} is not importable: {e}"
            row["skipped"] = unavailable[impl]
            print(f"  {impl}: skipped ({unavailable[impl]})", flush=True)
            continue
        try:
            warm, t, reps = _steps(r["run"], r["sync"], max_reps, target_s)
            peak = r["peak"](r["run"])
            grads = r["numpy"](r["run"]())
        except Exception as e:  # noqa: BLE001  (recorded in the row: one device run must go on)
            row["skipped"] = f"error: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
            print(f"  {w['name']} T={T} {impl} {method}: {row['skipped']}", flush=True)
            on_row()
            continue
        row.update(label=r["label"], warmup_s=warm, step_s=t, reps=reps, peak_bytes=peak,
                   loss=r["loss"](), finite=bool(all(np.isfinite(g).all() for g in grads)))
        key = (w["name"], T)
        if impl == "tinymeta" and method == "unrolled":
            reference[key] = grads
        if key in reference:
            row["rel_diff_vs_tinymeta_unrolled"] = _rel_diff(grads, reference[key])
        print(f"  {w['name']} T={T} {impl} {method}: {t * 1e3:.2f} ms "
              f"(warm-up {warm:.2f} s, {reps} reps)", flush=True)
        on_row()
    return rows


# ---- the report --------------------------------------------------------------------------


def _mib(b: Any) -> str:
    return "" if b is None else f"{b / 2**20:.1f}"


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [f"# tinymeta cupy backend: {meta.get('device', 'no GPU (dry run)')}", "",
             "```", json.dumps(meta, indent=1), "```", ""]
    check = report.get("kernel_check", [])
    if check:
        bad = [r for r in check if not r["ok"]]
        worst = {}
        for r in check:
            k = (r["kernel"], r["dtype"])
            worst[k] = max(worst.get(k, 0.0), r["rel_err"])
        lines += [f"## Kernel check: {len(check) - len(bad)}/{len(check)} cases agree with the "
                  "NumPy reference", "", "| kernel | dtype | worst relative error |",
                  "| --- | --- | --- |"]
        lines += [f"| {k} | {d} | {e:.2e} |" for (k, d), e in sorted(worst.items())]
        lines += [""] + [f"- FAILED {r['kernel']} case {r['case']} {r['dtype']}"
                         f"{' (poisoned)' if r['poisoned'] else ''}: {r['why']}" for r in bad]
        lines.append("")
    if report.get("kernels"):
        lines += ["## Fused kernels against cupy's unfused expression (float32)", "",
                  "| kernel | shapes (B, K, in, out) | fused µs | unfused µs | speedup |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['kernel']} | {r['shapes']} | {r['fused_us']:.1f} | "
                  f"{r['unfused_us']:.1f} | {r['speedup']:.2f}× |" for r in report["kernels"]]
        lines.append("")
    if report.get("e2e"):
        lines += ["## Second-order MAML meta-step (float32)", "",
                  "| workload | T | impl | method | step ms | warm-up s | peak MiB | meta-loss "
                  "| rel. diff vs tinymeta unrolled |", "| --- | --- | --- | --- | --- | --- "
                  "| --- | --- | --- |"]
        for r in report["e2e"]:
            if "skipped" in r:
                lines.append(f"| {r['workload']} | {r['T']} | {r['impl']} | {r['method']} | "
                             f"skipped: {r['skipped']} | | | | |")
                continue
            diff = r.get("rel_diff_vs_tinymeta_unrolled")
            lines.append(
                f"| {r['workload']} | {r['T']} | {r['impl']} | {r['method']} | "
                f"{r['step_s'] * 1e3:.2f} | {r['warmup_s']:.2f} | {_mib(r['peak_bytes'])} | "
                f"{r['loss']:.4g} | {'' if diff is None else f'{diff:.1e}'} |")
        lines.append("")
    lines += [f"- {n}" for n in report.get("notes", [])]
    return "\n".join(lines) + "\n"


def workloads(dry_run: bool) -> list[dict]:
    if dry_run:
        sin_sizes, sin_tasks, sin_k, sin_T = (1, 8, 8, 1), 3, 4, (1, 2)
        om_sizes, om_tasks, om_n, om_k, om_T = (16, 8, 8, 4, 4, 3), 2, 3, 2, (1, 2)
    else:
        sin_sizes, sin_tasks, sin_k, sin_T = (1, 40, 40, 1), 25, 10, (1, 5)
        om_sizes, om_tasks, om_n, om_k, om_T = (784, 256, 128, 64, 64, 20), 32, 20, 5, (5, 20, 40)
    return [
        {"name": "sinusoid", "sizes": sin_sizes, "params": mlp_params(sin_sizes),
         "batch": sinusoid_batch(sin_tasks, sin_k), "loss": "mse", "lr": 0.01, "T": sin_T,
         "priority": 1},
        {"name": "omniglot-shaped", "sizes": om_sizes, "params": mlp_params(om_sizes),
         "batch": classification_batch(om_tasks, om_n, om_k, om_k, om_sizes[0]),
         "loss": "ce", "lr": 0.1, "T": om_T, "priority": 0},
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-bench-out"),
                    help="folder for bench.json and bench.md (default $OUT)")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes on the numpy backend, on the CPU (no cupy)")
    ap.add_argument("--check-only", action="store_true", help="only the kernel check")
    ap.add_argument("--budget-s", type=float, default=150.0,
                    help="time for the end-to-end runs; later ones are skipped")
    ap.add_argument("--no-peers", action="store_true", help="skip PyTorch and JAX")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    dev = Device("numpy" if args.dry_run else "cupy")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report: dict = {"meta": {**dev.describe(), "dry_run": args.dry_run, "started": started,
                             "argv": sys.argv[1:] if argv is None else argv},
                    "notes": []}
    if args.dry_run:
        report["notes"].append("dry run: numpy backend on the CPU, tiny sizes; the kernel "
                               "check compares the numpy backend with itself; no GPU figure")
    print("kernel check ...", flush=True)
    report["kernel_check"] = check_kernels(dev.backend, large=not args.dry_run)
    n_bad = sum(not r["ok"] for r in report["kernel_check"])
    print(f"  {len(report['kernel_check']) - n_bad}/{len(report['kernel_check'])} cases agree",
          flush=True)
    if args.check_only:
        bench_history.write_results(str(out / "kernel_check.json"), report, HERE, indent=1)
        print(markdown(report))
        return 1 if n_bad else 0

    print("fused kernels ...", flush=True)
    shapes = ({"tiny (2, 3, 4, 5)": (2, 3, 4, 5)} if args.dry_run else
              {"sinusoid (25, 10, 40, 40)": (25, 10, 40, 40),
               "omniglot layer 1 (32, 100, 784, 256)": (32, 100, 784, 256),
               "omniglot layer 2 (32, 100, 256, 128)": (32, 100, 256, 128)})
    report["kernels"] = kernel_bench(dev, shapes, min_time=0.01 if args.dry_run else 0.2)

    def save() -> None:
        bench_history.write_results(str(out / "bench.json"), report, HERE, indent=1)
        (out / "bench.md").write_text(markdown(report))

    print("end to end ...", flush=True)
    peers = () if args.no_peers else ("torch", "jax")
    report["e2e"] = []
    save()
    e2e(dev, workloads(args.dry_run), args.budget_s, peers,
        max_reps=2 if args.dry_run else 10, target_s=0.05 if args.dry_run else 2.0,
        rows=report["e2e"], on_row=save)
    report["meta"]["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    save()
    print(markdown(report))
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
