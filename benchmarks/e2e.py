"""End to end: one meta-gradient of the sinusoid workload, tinymeta beside PyTorch, JAX, autograd.

Run from a checkout (the peers are optional: pip install -e ".[bench]")::

    OPENBLAS_NUM_THREADS=1 python benchmarks/e2e.py --json e2e.json --plot e2e.png [--quick]

The workload (issue 4, so that figures compare across projects): the MLP 1-40-40-1 with
ReLU, params W1 (1,40), b1 (40,), W2 (40,40), b2 (40,), W3 (40,1), b3 (1,); 25 sinusoid
tasks, K = 10 support and 10 query points, inner learning rate α = 0.01, the MSE as the
mean over the K points, the meta-loss the mean over tasks of the query MSE after T inner
steps; float32. The configs:

1. second-order MAML, T = 1;        2. second-order MAML, T = 5;
3. first-order MAML, T = 1;         4. per-task support HVPs of 25 tasks: one HVP of the
   summed support loss at task-batched θ (25, …) along a random v;
5. iMAML, λ = 1, 5 proximal steps and 5 CG iterations from x₀ = 0;

and second-order MAML for T = 1 … 5 (unrolled and hvp_chain) for the time-against-T plot.

Implementations: tinymeta eager and tinymeta compiled (``tm.compile`` of the whole
meta-gradient function) on each backend (numba, the default where installed, and numpy);
the peers of benchmarks/peers.py (PyTorch eager with a loop over tasks, torch.func + vmap,
JAX jit + vmap, HIPS autograd with a loop), each skipped with its reason when its library
is absent; and, for first-order MAML T = 1, a hand-written NumPy forward and backward (the
floor an engine over NumPy can approach).

Output: a table (median time, interquartile range, the engine's count of recorded primitive
calls ``len(tm.make_tape(f)(...))``, the float32 error against the float64 result, and the
ratio of each tinymeta time to each peer's), JSON (written atomically), a plot of time
against T (when matplotlib is importable), and the float64 check of every peer's
meta-gradient against tinymeta's (a second, outside check of correctness).

Threading: OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS default to 1 and
XLA_FLAGS to one Eigen thread for JAX (set before NumPy and JAX load; the values in force
are printed and saved); PyTorch runs with torch.set_num_threads(1). ``--cpu N`` also pins
the whole process to core N.
"""

from __future__ import annotations

import os
import sys

_NUMPY_PRELOADED = "numpy" in sys.modules
THREAD_DEFAULTS = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}
for _key, _value in THREAD_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers as peer_impls  # noqa: E402

import tinymeta as tm  # noqa: E402
from tinymeta import bench, bench_history  # noqa: E402

SIZES = (1, 40, 40, 1)
NUM_TASKS = 25
K = 10
ALPHA = 0.01
LAM = 1.0
PROX_STEPS = 5
CG_STEPS = 5
T_SWEEP = (1, 2, 3, 4, 5)
CHECK_RTOL = 1e-9


# --------------------------------------------------------------------------- workload
@dataclass(frozen=True)
class Workload:
    """The inputs of every config, as NumPy arrays of one dtype."""

    params: list  # θ_0: [W1, b1, W2, b2, W3, b3]
    batch: Any  # TaskBatch(support_x, support_y, query_x, query_y), (B, K, 1) each
    theta: list  # task-batched θ (B, …) for the HVP config
    v: list  # the random direction of the HVP, like theta


def workload(dtype: Any = np.float32, num_tasks: int = NUM_TASKS, k: int = K,
             seed: int = 0) -> Workload:
    """The benchmark inputs: θ_0 by tinymeta's fan-in init, B sinusoid tasks, θ and v."""
    params = tm.nn.mlp_init(SIZES, seed=seed, dtype=dtype)
    b = tm.tasks.Sinusoid().sample(num_tasks, k, k, seed=seed + 1, dtype=dtype)
    batch = tm.tasks.TaskBatch(b.support_x, b.support_y, b.query_x, b.query_y)
    rng = np.random.default_rng(seed + 2)
    theta = [(p + 0.1 * rng.standard_normal((num_tasks,) + p.shape)).astype(dtype)
             for p in params]
    v = [rng.standard_normal(t.shape).astype(dtype) for t in theta]
    return Workload(params, batch, theta, v)


def as_dtype(w: Workload, dtype: Any) -> Workload:
    def cast(a: Any) -> np.ndarray:
        return np.asarray(a, dtype=dtype)

    return Workload([cast(p) for p in w.params],
                    tm.tasks.TaskBatch(*(cast(a) for a in w.batch[:4])),
                    [cast(t) for t in w.theta], [cast(t) for t in w.v])


@dataclass(frozen=True)
class Config:
    key: str
    title: str
    kind: str  # "maml", "hvp" or "imaml"
    T: int = 0
    order: int = 2


CONFIGS = {c.key: c for c in (
    [Config(f"maml2_T{t}", f"second-order MAML, T={t}", "maml", t, 2) for t in T_SWEEP]
    + [Config("fomaml_T1", "first-order MAML, T=1", "maml", 1, 1),
       Config("hvp25", "per-task support HVPs, 25 tasks", "hvp"),
       Config("imaml", f"iMAML, {PROX_STEPS} proximal steps + {CG_STEPS} CG", "imaml",
              PROX_STEPS)])}
TABLE_CONFIGS = ("maml2_T1", "maml2_T5", "fomaml_T1", "hvp25", "imaml")


# --------------------------------------------------------------------------- tinymeta
def loss_fn(params: Any, x: Any, y: Any) -> Any:
    """Per-task query or support losses (B,): the MSE of the MLP, mean over the K points."""
    return tm.nn.mse(tm.nn.mlp(params, x), y)


def tinymeta_function(cfg: Config, method: str = "unrolled") -> Callable:
    """The function of the config, of (params, batch) or, for the HVP, (theta, v, sx, sy).

    Its first output is the meta-gradient (or H·v), a list like params.
    """
    if cfg.kind == "maml":
        T, order = cfg.T, cfg.order

        def meta_gradient(params: Any, batch: Any) -> Any:
            return tm.meta.maml(loss_fn, params, batch, ALPHA, T, order=order, method=method)

        return meta_gradient
    if cfg.kind == "hvp":
        def support_hvp(theta: Any, v: Any, sx: Any, sy: Any) -> Any:
            return tm.hvp(lambda th: tm.sum(loss_fn(th, sx, sy)), (theta,), (v,))

        return support_hvp

    def imaml_gradient(params: Any, batch: Any) -> Any:
        return tm.meta.imaml(loss_fn, params, batch, ALPHA, cfg.T, LAM, CG_STEPS)

    return imaml_gradient


def tinymeta_args(cfg: Config, w: Workload) -> tuple:
    if cfg.kind == "hvp":
        return (w.theta, w.v, w.batch.support_x, w.batch.support_y)
    return (w.params, w.batch)


def tinymeta_result(cfg: Config, out: Any) -> list:
    g = out if cfg.kind == "hvp" else out[0]
    return [np.asarray(a) for a in g]


def tinymeta_reference(cfg: Config, w: Workload) -> list:
    """The config's result by tinymeta eager on the NumPy backend (float64 for checks)."""
    with tm.set_backend("numpy"):
        return tinymeta_result(cfg, tinymeta_function(cfg)(*tinymeta_args(cfg, w)))


# --------------------------------------------------------------------------- NumPy floor
def numpy_fomaml_floor(params: list, batch: Any, lr: float) -> list:
    """First-order MAML, T = 1, forward and backward written by hand in NumPy.

    Inner step per task: θ_1 = θ_0 − α ∇L_S(θ_0) (the support gradient by hand, every task
    at the shared θ_0); meta-gradient (1/B) Σ_e ∇L_Q^e(θ_1^e) (the query gradient by hand
    at the task-batched θ_1, summed over tasks inside the GEMMs). A matmul whose inner
    dimension is 1 is written as a broadcast multiply.
    """
    W1, b1, W2, b2, W3, b3 = params
    sx, sy, qx, qy = batch[:4]
    B, Kp = sx.shape[:2]
    # support forward, all tasks at θ_0
    z1 = sx * W1 + b1  # (B,K,1)·(1,40): the inner dimension 1 as a broadcast
    h1 = np.maximum(z1, 0)
    z2 = h1 @ W2 + b2
    h2 = np.maximum(z2, 0)
    dp = (h2 @ W3 + b3 - sy) * (2.0 / Kp)  # ∂L_S^e/∂pred of the per-task mean
    # support backward, per task
    h1T, h2T = h1.transpose(0, 2, 1), h2.transpose(0, 2, 1)
    gW3, gb3 = h2T @ dp, dp.sum(1)
    dz2 = (dp * W3.T) * (z2 > 0)
    gW2, gb2 = h1T @ dz2, dz2.sum(1)
    dz1 = (dz2 @ W2.T) * (z1 > 0)
    gW1, gb1 = sx.transpose(0, 2, 1) @ dz1, dz1.sum(1)
    # the inner step: task-batched θ_1
    V1, c1 = W1 - lr * gW1, b1 - lr * gb1
    V2, c2 = W2 - lr * gW2, b2 - lr * gb2
    V3, c3 = W3 - lr * gW3, b3 - lr * gb3
    # query forward at θ_1
    z1 = qx * V1 + c1[:, None, :]
    h1 = np.maximum(z1, 0)
    z2 = h1 @ V2 + c2[:, None, :]
    h2 = np.maximum(z2, 0)
    dp = (h2 @ V3 + c3[:, None, :] - qy) * (2.0 / (Kp * B))  # the mean over tasks, too
    # query backward, summed over tasks and points in each GEMM
    n = B * qx.shape[1]
    gW3 = h2.reshape(n, -1).T @ dp.reshape(n, -1)
    gb3 = dp.sum((0, 1))
    dz2 = (dp * V3.transpose(0, 2, 1)) * (z2 > 0)
    gW2 = h1.reshape(n, -1).T @ dz2.reshape(n, -1)
    gb2 = dz2.sum((0, 1))
    dz1 = (dz2 @ V2.transpose(0, 2, 1)) * (z1 > 0)
    gW1 = qx.reshape(n, -1).T @ dz1.reshape(n, -1)
    gb1 = dz1.sum((0, 1))
    return [gW1, gb1, gW2, gb2, gW3, gb3]


# --------------------------------------------------------------------------- peers
def peer_function(peer: Any, cfg: Config, w: Workload) -> Callable:
    """The peer's zero-argument function for this config on these (converted) inputs."""
    if cfg.kind == "maml":
        return peer.maml(w.params, w.batch, ALPHA, cfg.T, cfg.order)
    if cfg.kind == "hvp":
        return peer.hvp(w.theta, w.v, w.batch)
    return peer.imaml(w.params, w.batch, ALPHA, cfg.T, LAM, CG_STEPS)


def load_peers(names: list) -> tuple[dict, dict]:
    """({name: peer}, {name: why skipped}) for the requested peers."""
    loaded, skipped = {}, {}
    for name in names:
        try:
            loaded[name] = peer_impls.load(name)
        except peer_impls.Unavailable as e:
            skipped[name] = str(e)
    return loaded, skipped


def skipped_lines(skipped: dict) -> list[str]:
    """One line per reason (a missing library, e.g. torch for both PyTorch peers), naming
    every implementation it skips, rather than a line per implementation or case."""
    by_reason: dict = {}
    for name, why in skipped.items():
        by_reason.setdefault(why, []).append(name)
    return [f"skipped {', '.join(names)}: {why}" for why, names in by_reason.items()]


def rel_error(a: list, b: list) -> float:
    """‖a − b‖ / ‖b‖ over all leaves together (float64)."""
    num = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
              for x, y in zip(a, b, strict=True))
    den = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in b)
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


# --------------------------------------------------------------------------- harness
# The harness is the standard library's timeit (autorange, then repeat; medians), as in
# benchmarks/engine.py. pytest-benchmark's BenchmarkFixture is made by its pytest plugin
# from a pytest node, config, logger and warner; driving it from a plain script means
# faking those internals, and the suite must also run (--quick, in the tests) where
# pytest-benchmark is not installed. timeit switches the garbage collector off while it
# times, for every implementation alike.
def measure(fn: Callable, quick: bool, repeat: int | None = None,
            first_call_s: float | None = None) -> dict:
    """Median seconds per call of ``fn`` after warm-up; the first call is timed apart.

    The first call includes any compilation (JAX's jit, tinymeta's capture, numba's
    JIT or cache load; ``first_call_s`` when the caller made it); a second warm-up call
    follows. Full mode: ``Timer.autorange`` picks the number of calls per run (≥ 0.2 s),
    then ``repeat`` runs (default 9); quick mode: calls per run for ~10 ms, 3 runs.
    """
    if first_call_s is None:
        t0 = time.perf_counter()
        fn()
        first_call_s = time.perf_counter() - t0
    fn()
    timer = timeit.Timer(fn)
    if quick:
        one = timer.timeit(number=1)
        number = max(1, int(0.01 / max(one, 1e-7)))
        repeat = repeat or 3
    else:
        number, _ = timer.autorange()
        repeat = repeat or 9
    runs = sorted(r / number for r in timer.repeat(repeat=repeat, number=number))
    q = statistics.quantiles(runs, n=4) if len(runs) > 1 else [runs[0]] * 3
    return {"median_s": statistics.median(runs), "q1_s": q[0], "q3_s": q[2],
            "min_s": runs[0], "number": number, "repeat": repeat,
            "first_call_s": first_call_s}


@dataclass
class Impl:
    key: str
    label: str
    kind: str  # "tinymeta", "peer", "floor"
    mode: str = ""
    backend: str = ""
    method: str = "unrolled"


def tinymeta_impls(backends: list) -> tuple[list, dict]:
    impls, skipped = [], {}
    for be in backends:
        try:
            with tm.set_backend(be):
                pass
        except Exception as e:  # noqa: BLE001  (an uninstalled backend: report why)
            skipped[f"tinymeta ({be})"] = f"{type(e).__name__}: {e}"
            continue
        for mode in ("eager", "compiled"):
            for method in ("unrolled", "hvp_chain"):
                suffix = ", hvp_chain" if method == "hvp_chain" else ""
                impls.append(Impl(f"tinymeta.{mode}.{be}" + (".hvp_chain" if suffix else ""),
                                  f"tinymeta {mode} ({be}{suffix})", "tinymeta", mode, be,
                                  method))
    return impls, skipped


def applies(impl: Impl, cfg: Config) -> bool:
    if impl.kind == "floor":
        return cfg.key == "fomaml_T1"
    if impl.method == "hvp_chain":
        return cfg.kind == "maml" and cfg.order == 2
    return True


def run_case(impl: Impl, cfg: Config, w: Workload, peers: dict, quick: bool,
             repeat: int | None) -> tuple[dict, list | None]:
    """Time one implementation on one config; return (record, its result as NumPy)."""
    rec: dict = {"config": cfg.key, "impl": impl.key, "label": impl.label}
    if impl.kind == "tinymeta":
        base = tinymeta_function(cfg, impl.method)
        args = tinymeta_args(cfg, w)
        with tm.set_backend(impl.backend):
            try:
                rec["engine_count"] = len(tm.make_tape(base)(*args))
            except TypeError as e:
                rec["engine_count"] = None
                rec["engine_count_note"] = _first_line(e)
            f = tm.compile(base) if impl.mode == "compiled" else base
            t0 = time.perf_counter()
            try:
                out = f(*args)  # compiled: the capture
            except TypeError as e:
                if impl.mode != "compiled":
                    raise
                rec["skipped"] = f"tm.compile refuses it: {_first_line(e)}"
                return rec, None
            first = time.perf_counter() - t0
            rec.update(measure(lambda: f(*args), quick, repeat, first_call_s=first))
        return rec, tinymeta_result(cfg, out)
    if impl.kind == "floor":
        fn = lambda: numpy_fomaml_floor(w.params, w.batch, ALPHA)  # noqa: E731
        rec.update(measure(fn, quick, repeat))
        return rec, fn()
    peer = peers[impl.key]
    fn = peer_function(peer, cfg, w)
    block = peer.block
    rec.update(measure(lambda: block(fn()), quick, repeat))
    return rec, peer.numpy(fn())


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


# --------------------------------------------------------------------------- checks
def check_peer(peer: Any, cfg: Config, w64: Workload) -> float:
    """Relative error of the peer's float64 result against tinymeta eager (NumPy backend)."""
    ref = tinymeta_reference(cfg, w64)
    fn = peer_function(peer, cfg, w64)
    return rel_error(peer.numpy(peer.block(fn())), ref)


# --------------------------------------------------------------------------- output
PEER_RATIO_COLUMNS = (("torch_func", "×t.func"), ("torch_eager", "×t.eager"),
                      ("jax", "×JAX"), ("autograd", "×autogr"))


def format_table(results: list, configs: tuple = TABLE_CONFIGS) -> str:
    """The side-by-side table: one block per config, one row per implementation."""
    by = {(r["config"], r["impl"]): r for r in results}
    lines = [f"{'implementation':<40} {'median ms':>9} {'IQR ms':>7} {'prims':>5} "
             f"{'f32 err':>8} " + " ".join(f"{h:>8}" for _, h in PEER_RATIO_COLUMNS)]
    rule = "-" * len(lines[0])
    for key in configs:
        rows = [r for r in results if r["config"] == key]
        if not rows:
            continue
        lines += [rule, CONFIGS[key].title]
        for r in rows:
            if "median_s" not in r:
                why = r.get("skipped") or "ERROR " + r.get("error", "")
                lines.append(f"  {r['label']:<38} skipped: {why}"[:160])
                continue
            count = r.get("engine_count")
            err = r.get("err_vs_f64")
            cells = [f"  {r['label']:<38}", f"{1e3 * r['median_s']:9.3f}",
                     f"{1e3 * (r['q3_s'] - r['q1_s']):7.3f}",
                     f"{count if count is not None else '-':>5}",
                     f"{err:8.1e}" if err is not None else f"{'-':>8}"]
            for peer, _ in PEER_RATIO_COLUMNS:
                p = by.get((key, peer))
                if r["impl"].startswith(("tinymeta", "numpy")) and p and "median_s" in p:
                    cells.append(f"{r['median_s'] / p['median_s']:8.3f}")
                else:
                    cells.append(f"{'':>8}")
            lines.append(" ".join(cells))
    return "\n".join(lines)


def format_sweep(results: list) -> str:
    impls = []
    for r in results:
        if r["config"].startswith("maml2_T") and r["impl"] not in impls:
            impls.append(r["impl"])
    by = {(r["config"], r["impl"]): r for r in results}
    lines = [f"{'second-order MAML, ms':<40} " + " ".join(f"{'T=' + str(t):>8}" for t in T_SWEEP)]
    for key in impls:
        label = next(r["label"] for r in results if r["impl"] == key)
        cells = []
        for t in T_SWEEP:
            r = by.get((f"maml2_T{t}", key))
            cells.append(f"{1e3 * r['median_s']:8.3f}" if r and "median_s" in r else f"{'-':>8}")
        lines.append(f"  {label:<38} " + " ".join(cells))
    return "\n".join(lines)


def format_first_calls(results: list) -> str:
    lines = [f"{'first call (compile / capture), ms':<40} "
             + " ".join(f"{k:>10}" for k in TABLE_CONFIGS)]
    impls = []
    for r in results:
        if (r["impl"] == "jax" or ".compiled." in r["impl"]) and r["impl"] not in impls:
            impls.append(r["impl"])
    by = {(r["config"], r["impl"]): r for r in results}
    for key in impls:
        label = next(r["label"] for r in results if r["impl"] == key)
        cells = []
        for c in TABLE_CONFIGS:
            r = by.get((c, key))
            cells.append(f"{1e3 * r['first_call_s']:10.1f}" if r and "first_call_s" in r
                         else f"{'-':>10}")
        lines.append(f"  {label:<38} " + " ".join(cells))
    return "\n".join(lines)


def format_checks(checks: list) -> str:
    lines = [f"float64 check: ‖peer − tinymeta‖/‖tinymeta‖, pass at ≤ {CHECK_RTOL:g}"]
    for c in checks:
        status = ("skipped: " + c["skipped"]) if "skipped" in c else (
            f"{c['rel_error']:.2e} {'pass' if c['ok'] else 'FAIL'}")
        lines.append(f"  {c['config']:<10} {c['peer']:<12} {status}")
    return "\n".join(lines)


def write_json_atomic(path: str, data: Any) -> None:
    """The results as JSON at ``path``, written atomically, with the commit, the machine and
    the library versions (tinymeta.bench_history.write_results)."""
    bench_history.write_results(path, data, os.path.dirname(os.path.abspath(__file__)),
                                indent=1, default=_jsonable)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def plot_sweep(path: str, results: list, meta: dict) -> str | None:
    """Time against T for second-order MAML, one line per implementation; None if no plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"matplotlib is not importable ({e})"
    fig, ax = plt.subplots(figsize=(11, 5.5))
    colors = plt.get_cmap("tab20").colors
    impls = []
    for r in results:
        if r["config"].startswith("maml2_T") and r["impl"] not in impls:
            impls.append(r["impl"])
    for i, key in enumerate(impls):
        pts = [(CONFIGS[r["config"]].T, 1e3 * r["median_s"]) for r in results
               if r["impl"] == key and r["config"].startswith("maml2_T") and "median_s" in r]
        if not pts:
            continue
        label = next(r["label"] for r in results if r["impl"] == key)
        style = "-" if key.startswith("tinymeta") else "--"
        marker = "s" if ".numpy" in key else ("^" if key.startswith("tinymeta") else "o")
        ax.plot(*zip(*sorted(pts)), style, marker=marker, color=colors[i % len(colors)],
                label=label)
    ax.set_yscale("log")
    ax.set_xlabel("inner steps T")
    ax.set_ylabel("median ms per meta-gradient")
    ax.set_xticks(list(T_SWEEP))
    ax.set_title("second-order MAML, sinusoid 1-40-40-1, 25 tasks, K=10, float32\n"
                 f"{meta['date']}, {meta['cpu']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    try:
        with tm.io.atomic_write(path, binary=True) as f:
            fig.savefig(f, format="png", dpi=120)
    finally:
        plt.close(fig)
    return None


def machine_info() -> dict:
    cpu = bench.cpu_name()
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {"cpu": cpu, "cores": os.cpu_count(), "affinity": affinity,
            "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "tinymeta": tm.__version__,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def threading_info(peers: dict) -> dict:
    info = {k: os.environ.get(k) for k in
            ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS",
             "NUMBA_NUM_THREADS")}
    if _NUMPY_PRELOADED:
        info["note"] = ("NumPy was imported before this module set the thread defaults: "
                        "the BLAS thread count is whatever the caller's environment gave")
    for name, peer in peers.items():
        info[name] = peer.version
    return info


def threading_summary(info: dict, peers: dict) -> str:
    parts = [f"OPENBLAS_NUM_THREADS={info.get('OPENBLAS_NUM_THREADS')}"]
    if "torch_eager" in peers or "torch_func" in peers:
        torch = (peers.get("torch_eager") or peers.get("torch_func")).torch
        parts.append(f"torch.set_num_threads({torch.get_num_threads()}), "
                     f"interop {torch.get_num_interop_threads()}")
    if "jax" in peers:
        parts.append(f"XLA_FLAGS={info.get('XLA_FLAGS')!r}")
    parts.append("numba kernels single-threaded (no parallel=True)")
    try:
        parts.append(f"affinity {sorted(os.sched_getaffinity(0))}")
    except AttributeError:
        pass
    return "; ".join(parts) + ("; " + info["note"] if "note" in info else "")


# --------------------------------------------------------------------------- main
def parse_args(argv: list | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="F", help="write the results as JSON (atomically)")
    ap.add_argument("--plot", metavar="P.png", help="plot time against T (needs matplotlib)")
    ap.add_argument("--quick", action="store_true",
                    help="short timings (3 runs of ~10 ms): a smoke run, not for figures")
    ap.add_argument("--peers", default=",".join(peer_impls.PEERS),
                    help="comma-separated peers to run, or 'none' (default: all)")
    ap.add_argument("--backends", default="numba,numpy",
                    help="tinymeta backends (default: numba,numpy; an absent one is skipped)")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help="comma-separated configs (default: all, with the T sweep)")
    ap.add_argument("--repeat", type=int, default=None, help="timing runs per case")
    ap.add_argument("--no-check", action="store_true", help="skip the float64 peer checks")
    ap.add_argument("--no-floor", action="store_true", help="skip the hand-written NumPy floor")
    ap.add_argument("--cpu", type=int, default=None,
                    help="pin this process (every implementation) to this core")
    return ap.parse_args(argv)


def _split(s: str) -> list:
    return [x for x in (p.strip() for p in s.split(",")) if x and x != "none"]


def main(argv: list | None = None) -> dict:
    args = parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    configs = [CONFIGS[k] for k in _split(args.configs)]
    peers, skipped = load_peers(_split(args.peers))
    impls, tm_skipped = tinymeta_impls(_split(args.backends))
    skipped.update(tm_skipped)
    if not args.no_floor:
        impls.append(Impl("numpy_floor", "NumPy by hand (fwd+bwd floor)", "floor"))
    impls += [Impl(name, peer_impls.LABELS[name], "peer") for name in peers]
    meta = machine_info()
    meta["threading"] = threading_info(peers)
    meta["harness"] = ("timeit: warm-up call (timed apart: compile/capture) and a second "
                       "warm-up, then " + ("3 runs of ~10 ms (--quick)" if args.quick else
                                           "Timer.autorange and 9 runs")
                       + "; median per call")
    meta["loadavg_start"] = _loadavg()
    for line in skipped_lines(skipped):
        print(line, flush=True)
    print("threading: " + "; ".join(f"{k}={v}" for k, v in meta["threading"].items()),
          flush=True)

    w32 = workload(np.float32)
    w64 = as_dtype(w32, np.float64)
    results: list = []
    references: dict = {}

    def reference(cfg: Config) -> list:
        if cfg.key not in references:
            references[cfg.key] = tinymeta_reference(cfg, w64)
        return references[cfg.key]

    cases = [(i, c) for c in configs for i in impls if applies(i, c)]
    for n, (impl, cfg) in enumerate(cases, 1):
        print(f"[{n}/{len(cases)}] {cfg.title}: {impl.label}", file=sys.stderr, flush=True)
        try:
            rec, out = run_case(impl, cfg, w32, peers, args.quick, args.repeat)
        except Exception as e:  # noqa: BLE001  (one broken case must not lose the others)
            rec, out = {"config": cfg.key, "impl": impl.key, "label": impl.label,
                        "error": _first_line(e)}, None
            print(f"  error: {rec['error']}", file=sys.stderr, flush=True)
        if out is not None:
            rec["err_vs_f64"] = rel_error(out, reference(cfg))
        results.append(rec)

    checks: list = []
    if not args.no_check:
        for cfg in configs:
            if cfg.key not in TABLE_CONFIGS and cfg.key != "maml2_T2":
                continue
            for name in _split(args.peers):
                if name not in peers:
                    continue  # not installed: said once, at the start and under the checks
                try:
                    err = check_peer(peers[name], cfg, w64)
                except Exception as e:  # noqa: BLE001  (reported as a failed check)
                    checks.append({"config": cfg.key, "peer": name, "ok": False,
                                   "rel_error": float("nan"), "error": _first_line(e)})
                    continue
                checks.append({"config": cfg.key, "peer": name, "rel_error": err,
                               "ok": err <= CHECK_RTOL})
        if not args.no_floor and "fomaml_T1" in [c.key for c in configs]:
            err = rel_error(numpy_fomaml_floor(w64.params, w64.batch, ALPHA),
                            tinymeta_reference(CONFIGS["fomaml_T1"], w64))
            checks.append({"config": "fomaml_T1", "peer": "numpy_floor", "rel_error": err,
                           "ok": err <= CHECK_RTOL})
    meta["loadavg_end"] = _loadavg()

    print()
    print(f"tinymeta e2e, {meta['date']}, {meta['cpu']} ({meta['cores']} cores), "
          f"float32, load average {meta['loadavg_start']} → {meta['loadavg_end']}")
    print("threading: " + threading_summary(meta["threading"], peers))
    print("×peer = the row's time / the peer's time (below 1: faster than the peer); "
          "prims = len(tm.make_tape(f)(...)); f32 err = ‖result − float64 result‖/‖·‖")
    table = format_table(results, tuple(c.key for c in configs if c.key in TABLE_CONFIGS))
    print(table)
    print()
    print(format_sweep(results))
    print()
    print(format_first_calls(results))
    if checks:
        print()
        print(format_checks(checks))
        missing = [n for n in _split(args.peers) if n not in peers]
        if missing and not args.no_check:
            print(f"  not checked (not installed, see above): {', '.join(missing)}")
    data = {"meta": meta, "workload": {
        "sizes": SIZES, "num_tasks": NUM_TASKS, "k_support": K, "k_query": K, "inner_lr": ALPHA,
        "imaml": {"lam": LAM, "proximal_steps": PROX_STEPS, "cg_steps": CG_STEPS},
        "dtype": "float32"}, "skipped": skipped, "results": results, "checks": checks,
        "table": table}
    if args.plot:
        why = plot_sweep(args.plot, results, meta)
        print(f"plot: {args.plot}" if why is None else f"plot skipped: {why}")
    if args.json:
        write_json_atomic(args.json, data)
        print(f"json: {args.json}")
    return data


def _loadavg() -> list | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    data = main()
    failed = any(not c.get("ok", True) for c in data["checks"]) or any(
        "error" in r for r in data["results"])
    sys.exit(1 if failed else 0)
