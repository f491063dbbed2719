"""The cupy backend: its kernels against the NumPy reference, the engine and MAML on it, no
implicit host transfers, the errors without cupy or without a device, and the GPU
benchmark's dry run.

The device tests take the fixture ``gpu_backend`` and run twice where they can:

- ``cupy``: the real backend on a CUDA device (marked ``gpu``; skipped with a one-line
  reason where cupy or a device is missing: ``benchmarks/gpu_check.sh`` runs them on a lent
  GPU with ``-m gpu``);
- ``emulated``: the same backend code over the stand-in cupy of ``test_cuda_sources.py``,
  whose RawModule runs the project's CUDA sources on the CPU (NumPy arrays, outputs of
  ``empty`` poisoned with NaN). This shows the backend's glue and the kernels' logic here;
  it says nothing of cupy's own behaviour or of the device.

The kernel check itself is ``benchmarks/gpu_bench.py``'s (``check_kernels`` over
``kernel_cases``), the table the device run uses too.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_cuda_sources import emulated_cupy, emulated_cupy_backend

import tinymeta as tm
import tinymeta.meta  # noqa: F401
import tinymeta.nn  # noqa: F401
from tinymeta.tasks import Sinusoid, TaskBatch

ROOT = Path(__file__).resolve().parents[1]
KERNELS_DIR = ROOT / "tinymeta" / "kernels"


def _load_gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" /
                                                  "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_bench = _load_gpu_bench()


def _device_missing() -> str | None:
    """Why the real cupy backend cannot run here (one line), or None."""
    try:
        import cupy
    except ImportError as e:
        return f"cupy is not importable ({type(e).__name__}): pip install -e '.[gpu]'"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        return "no usable CUDA device: " + " ".join(str(e).split())
    return None if count > 0 else "cupy sees no CUDA device"


DEVICE_MISSING = _device_missing()


@pytest.fixture(params=[
    "emulated",
    pytest.param("cupy", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(DEVICE_MISSING is not None,
                                                   reason=str(DEVICE_MISSING))]),
])
def gpu_backend(request):
    """The cupy backend module: on the device, or over the host emulator."""
    if request.param == "cupy":
        yield importlib.import_module("tinymeta.kernels.cupy_backend")
        return
    with emulated_cupy_backend() as backend:
        yield backend


def _on(backend):
    """``tm.set_backend("cupy")`` selecting ``backend`` (the previous backend restored after)."""
    assert sys.modules["tinymeta.kernels.cupy_backend"] is backend
    return tm.set_backend("cupy")


# ---- the kernels ---------------------------------------------------------------------------


def test_every_kernel_has_a_case_in_the_check():
    names = {name for name, _, _ in gpu_bench.kernel_cases(np.random.default_rng(0),
                                                           np.float64)}
    missing = set(gpu_bench.kernel_names()) - names
    assert not missing, f"gpu_bench.kernel_cases has no case for {sorted(missing)}"


def _module_names(path: Path) -> dict:
    """Public top-level names of a module file -> their parameter names (None: not a def)."""
    names: dict = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            names[node.name] = [a.arg for a in node.args.args] + (
                ["*" + node.args.vararg.arg] if node.args.vararg else []) + [
                a.arg for a in node.args.kwonlyargs]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    names[t.id] = None
    return {k: v for k, v in names.items() if not k.startswith("_")}


def test_the_backend_has_every_name_of_the_reference_with_its_signature():
    """Read from the source, so that it holds without cupy too."""
    ref = _module_names(KERNELS_DIR / "numpy_backend.py")
    gpu = _module_names(KERNELS_DIR / "cupy_backend.py")
    assert not set(ref) - set(gpu), f"missing in cupy_backend: {sorted(set(ref) - set(gpu))}"
    assert set(gpu_bench.kernel_names()) <= set(gpu)
    for name, params in ref.items():
        if params is not None and gpu[name] is not None:
            assert gpu[name] == params, f"{name}: {gpu[name]} differs from the reference's {params}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_kernel_matches_the_reference(gpu_backend, dtype):
    """Fresh random inputs; the project's kernels also into outputs poisoned with NaN."""
    real = not getattr(gpu_backend.xp, "emulated", False)
    rows = gpu_bench.check_kernels(gpu_backend, seed=int(dtype == np.float32) + 7,
                                   dtypes=(dtype,), large=real)
    bad = [f"{r['kernel']} case {r['case']}{' poisoned' if r['poisoned'] else ''}: {r['why']}"
           for r in rows if not r["ok"]]
    assert not bad, "\n".join(bad)
    assert {r["kernel"] for r in rows if r["poisoned"]} == set(gpu_bench.POISONED)


@contextlib.contextmanager
def _launches(backend, monkeypatch):
    """Record the (kernel, dtype) of every launch of a project kernel."""
    seen = []
    function = backend._function

    def recording(filename, kernel, dtype):
        seen.append((kernel, np.dtype(dtype).name))
        return function(filename, kernel, dtype)

    monkeypatch.setattr(backend, "_function", recording)
    yield seen


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_workload_shapes_reach_the_fused_kernels(gpu_backend, dtype, monkeypatch):
    """Not silently the unfused fallback: the sinusoid MLP's layers, its loss and the step."""
    be = gpu_backend
    rng = np.random.default_rng(3)

    def r(*shape):
        return be.asarray(rng.standard_normal(shape).astype(dtype))

    with _launches(be, monkeypatch) as seen:
        be.linear_relu(r(25, 10, 1), r(25, 1, 40), r(25, 1, 40))  # outer-product GEMM path
        be.linear_relu(r(25, 10, 40), r(25, 40, 40), r(25, 1, 40))
        be.linear(r(25, 10, 40), r(40, 1), r(1))
        be.relu(r(25, 10, 40))
        be.relu_grad(r(25, 10, 40), r(25, 10, 40))
        be.sq_err_mean(r(25, 10, 1), r(25, 10, 1))
        be.sq_err_mean_grad(be.xp.broadcast_to(r(1), (25,)), r(25, 10, 1), r(25, 10, 1))
        be.sub_scaled(r(25, 40, 40), r(25, 40, 40), 0.01)
    name = np.dtype(dtype).name
    assert seen == [(k, name) for k in ("bias_act", "bias_act", "bias_act", "relu", "relu_grad",
                                        "sq_err_mean", "sq_err_mean_grad", "sub_scaled")]


def test_unsupported_inputs_take_the_unfused_path(gpu_backend, monkeypatch):
    be = gpu_backend
    x = be.asarray(np.arange(6, dtype=np.int64).reshape(2, 3) - 2)
    f32 = be.asarray(np.ones((2, 3), np.float32))
    f64 = be.asarray(np.full((2, 3), 2.0))
    with _launches(be, monkeypatch) as seen:
        relu_int = be.relu(x)
        mixed = be.relu_grad(f32, f64)  # mixed dtypes: cupy's where, NumPy's result type
        step = be.sub_scaled(f64, f32, 0.5)
    assert seen == []
    np.testing.assert_array_equal(be.to_numpy(relu_int), [[0, 0, 0], [1, 2, 3]])
    assert be.to_numpy(mixed).dtype == np.float64
    np.testing.assert_array_equal(be.to_numpy(step), np.full((2, 3), 1.5))


def test_relu_kink_and_nan_hard_coded(gpu_backend):
    be = gpu_backend
    for dtype in (np.float32, np.float64):
        x = be.asarray(np.array([np.nan, -1.0, -0.0, 0.0, 1e-30, 2.0], dtype))
        out = be.to_numpy(be.relu(x))
        np.testing.assert_array_equal(out, np.array([np.nan, 0, 0, 0, 1e-30, 2], dtype))
        g = be.asarray(np.full(6, 3.0, dtype))
        np.testing.assert_array_equal(be.to_numpy(be.relu_grad(g, x)), [0, 0, 0, 0, 3, 3])


def test_numpy_inputs_are_uploaded_and_results_stay_on_the_device(gpu_backend):
    be = gpu_backend
    host = np.arange(12.0).reshape(3, 4)
    dev = be.asarray(host)
    for out in (be.add(dev, host), be.matmul(host, dev.T), be.getitem(dev, (np.array([0, 0]),)),
                be.scatter_add(be.asarray(np.ones((2, 4))), (np.array([1, 1]),), (3, 4))):
        assert isinstance(out, be.ndarray)
    np.testing.assert_array_equal(be.to_numpy(be.scatter_add(
        be.asarray(np.ones((2, 4))), (np.array([1, 1]),), (3, 4)))[1], np.full(4, 2.0))


# ---- the engine and the meta-learning algorithms on the backend -------------------------


def _sinusoid(tasks=4, k=5, dtype=np.float64):
    b = Sinusoid().sample(tasks, k, k, seed=1, dtype=dtype)
    return TaskBatch(b.support_x, b.support_y, b.query_x, b.query_y)


def _mse_loss(params, x, y):
    return tm.nn.mse(tm.nn.mlp(params, x), y)


def _ce_loss(params, x, y):
    return tm.nn.cross_entropy(tm.nn.mlp(params, x), y)


def _on_device(be, tree):
    return [be.asarray(a) for a in tree]


def _host(be, tree):
    return [np.asarray(be.to_numpy(a)) for a in tree]


def _assert_trees_close(got, want, rtol):
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * float(np.max(np.abs(w))))


def _support_sum(batch):
    """θ_0 ↦ Σ_e L_S^e(θ_0), the summed support loss of the sinusoid MLP."""
    B = batch.support_x.shape[0]
    return lambda ps: tm.sum(_mse_loss(tm.meta.broadcast_tasks(ps, B), batch.support_x,
                                       batch.support_y))


def _derivatives(params, v, batch) -> dict:
    f = _support_sum(batch)
    out = {"grad": tm.grad(f)(params), "hvp": tm.hvp(f, (params,), (v,))}
    for method in ("unrolled", "hvp_chain"):
        out[method] = tm.meta.maml(_mse_loss, params, batch, 0.05, 2, order=2,
                                   method=method)[0]
    return out


def test_grad_hvp_and_maml_agree_with_the_numpy_backend(gpu_backend):
    """float64: the sinusoid MLP's gradient, an HVP, and both second-order MAML methods."""
    be = gpu_backend
    params = tm.nn.mlp_init((1, 8, 8, 1), seed=0, dtype=np.float64)
    batch = _sinusoid()
    v = [np.random.default_rng(2).standard_normal(p.shape) for p in params]
    with tm.set_backend("numpy"):
        want = _derivatives(params, v, batch)
    with _on(be):
        got = _derivatives(_on_device(be, params), _on_device(be, v),
                           TaskBatch(*_on_device(be, batch)))
    for key, tree in got.items():
        assert all(isinstance(a, be.ndarray) for a in tree), key
        _assert_trees_close(_host(be, tree), want[key], 1e-10)


def test_classification_maml_and_imaml_on_the_backend(gpu_backend):
    be = gpu_backend
    rng = np.random.default_rng(4)
    params = tm.nn.mlp_init((6, 5, 3), seed=1, dtype=np.float64)
    labels = np.tile(np.arange(3), (2, 2))
    batch = TaskBatch(rng.standard_normal((2, 6, 6)), labels, rng.standard_normal((2, 6, 6)),
                      labels)
    with tm.set_backend("numpy"):
        want_maml = tm.meta.maml(_ce_loss, params, batch, 0.1, 2, method="hvp_chain")[0]
        want_imaml = tm.meta.imaml(_ce_loss, params, batch, 0.1, 2, lam=2.0, cg_steps=3)[0]
    with _on(be):
        P, B = _on_device(be, params), TaskBatch(*_on_device(be, batch))
        got_maml = tm.meta.maml(_ce_loss, P, B, 0.1, 2, method="hvp_chain")[0]
        got_imaml = tm.meta.imaml(_ce_loss, P, B, 0.1, 2, lam=2.0, cg_steps=3)[0]
    _assert_trees_close(_host(be, got_maml), want_maml, 1e-10)
    _assert_trees_close(_host(be, got_imaml), want_imaml, 1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE_MISSING is not None, reason=str(DEVICE_MISSING))
def test_no_implicit_host_transfer_in_a_maml_step():
    """Inside cupyx.allow_synchronize(False) a device-to-host copy (``.get()``, ``float()``,
    ``bool()`` of a device array) raises; ``np.asarray`` of a cupy array is refused by cupy
    always. Both methods of second-order MAML must run through it."""
    import cupy
    import cupyx

    if not hasattr(cupyx, "allow_synchronize"):
        pytest.skip("this cupy has no cupyx.allow_synchronize")
    be = importlib.import_module("tinymeta.kernels.cupy_backend")
    params = tm.nn.mlp_init((1, 40, 40, 1), seed=0)
    with tm.set_backend("cupy"):
        P = _on_device(be, params)
        B = TaskBatch(*_on_device(be, _sinusoid(25, 10, np.float32)))
        for method in ("unrolled", "hvp_chain"):
            tm.meta.maml(_mse_loss, P, B, 0.01, 2, method=method)  # compile outside the guard
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # allow_synchronize warns that it is deprecated
            with cupyx.allow_synchronize(False):
                grads = [tm.meta.maml(_mse_loss, P, B, 0.01, 2, method=m)[0]
                         for m in ("unrolled", "hvp_chain")]
                with pytest.raises(cupyx.DeviceSynchronized):
                    float(grads[0][0].sum())  # the guard itself works
    assert all(isinstance(a, cupy.ndarray) for g in grads for a in g)
    with pytest.raises(TypeError):
        np.asarray(grads[0][0])


# ---- no cupy, no device ---------------------------------------------------------------------


def _assert_unchanged(before: tuple) -> None:
    assert (tm.backend_name(), tm.get_backend(), tm.relu.impl) == before


def _state() -> tuple:
    return tm.backend_name(), tm.get_backend(), tm.relu.impl


def test_without_cupy_set_backend_says_how_to_install(monkeypatch):
    before = _state()
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` fails as if not installed
    monkeypatch.delitem(sys.modules, "tinymeta.kernels.cupy_backend", raising=False)
    with pytest.raises(ImportError) as e:
        tm.set_backend("cupy")
    msg = str(e.value)
    assert "cupy is not installed" in msg and 'pip install -e ".[gpu]"' in msg
    assert "cupy-cuda13x" in msg
    _assert_unchanged(before)


@pytest.mark.parametrize("failure", ["driver", "no devices"])
def test_without_a_device_set_backend_says_so(monkeypatch, failure):
    before = _state()
    cupy, cupyx = emulated_cupy()

    def count():
        if failure == "driver":
            raise cupy.cuda.runtime.CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device")
        return 0

    cupy.cuda.runtime.getDeviceCount = count
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.delitem(sys.modules, "tinymeta.kernels.cupy_backend", raising=False)
    with pytest.raises(RuntimeError, match="no CUDA device") as e:
        tm.set_backend("cupy")
    assert 'pip install -e ".[gpu]"' in str(e.value)
    _assert_unchanged(before)


def test_set_backend_cupy_here_raises_the_clear_error():
    """This machine as it is: without cupy an ImportError, with cupy but no device a
    RuntimeError; the backend in use stays."""
    if DEVICE_MISSING is None:
        pytest.skip("a CUDA device is present: the error path is not reachable here")
    assert "tinymeta.kernels.cupy_backend" not in sys.modules
    before = _state()
    with pytest.raises((ImportError, RuntimeError)) as e:
        tm.set_backend("cupy")
    msg = str(e.value)
    assert 'pip install -e ".[gpu]"' in msg
    if DEVICE_MISSING.startswith("cupy is not importable"):
        assert isinstance(e.value, ImportError)
    else:
        assert isinstance(e.value, RuntimeError) and "no CUDA device" in msg
    _assert_unchanged(before)
    assert "tinymeta.kernels.cupy_backend" not in sys.modules


def test_importing_tinymeta_does_not_import_cupy():
    env = {k: v for k, v in os.environ.items() if k != "TINYMETA_BACKEND"}
    env["PYTHONPATH"] = str(ROOT)
    code = ("import sys, tinymeta, tinymeta.meta, tinymeta.nn, tinymeta.kernels; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'cupyx')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# ---- the GPU benchmark's dry run ----------------------------------------------------------------


def _run_bench(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TINYMETA_BACKEND="numpy")
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"),
                           "--dry-run", "--out", str(tmp_path), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_gpu_bench_dry_run_writes_its_table_and_json(tmp_path):
    r = _run_bench(tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["meta"]["dry_run"] and report["meta"]["backend"] == "numpy"
    assert report["kernel_check"] and all(row["ok"] for row in report["kernel_check"])
    assert {row["kernel"] for row in report["kernels"]} == {
        "linear", "linear_relu", "relu", "relu_grad", "sq_err_mean", "sq_err_mean_grad",
        "sub_scaled"}
    ran = [row for row in report["e2e"] if row["impl"] == "tinymeta"]
    assert {(row["workload"], row["method"]) for row in ran} == {
        (w, m) for w in ("sinusoid", "omniglot-shaped") for m in ("unrolled", "hvp_chain")}
    for row in ran:
        assert "skipped" not in row and row["step_s"] > 0 and row["finite"]
        assert row["rel_diff_vs_tinymeta_unrolled"] < 1e-4  # float32: the methods agree
    peers = [row for row in report["e2e"] if row["impl"] != "tinymeta"]
    assert {row["impl"] for row in peers} == {"torch", "jax"}
    assert all("skipped" in row or row["step_s"] > 0 for row in peers)
    table = (tmp_path / "bench.md").read_text()
    assert "Second-order MAML meta-step" in table and "| sinusoid | 1 | tinymeta |" in table


def test_gpu_bench_check_only(tmp_path):
    r = _run_bench(tmp_path, "--check-only")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((tmp_path / "kernel_check.json").read_text())
    assert len(report["kernel_check"]) > 100 and not (tmp_path / "bench.json").exists()
