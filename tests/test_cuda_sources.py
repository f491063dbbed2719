"""The CUDA sources of the cupy backend, checked without a GPU.

1. Every ``tinymeta/kernels/cuda/*.cu`` compiles to PTX for sm_90 (with the options the
   backend and cupy pass: ``--std=c++14``, ``-ftz=true``), by ``nvcc -ptx`` where
   nvcc is on the PATH and by NVRTC (``libnvrtc`` of the CUDA toolkit, of the
   nvidia-cuda-nvrtc wheel or of cupy, through ctypes) where one loads: a syntax or type
   error in a kernel fails CI. Each compiler must also reject a deliberately broken copy.
2. A host emulator runs the same sources on the CPU: a small header maps ``__global__``,
   ``blockIdx`` / ``threadIdx``, ``__shared__`` and ``__syncthreads`` onto C++ (one OS
   thread per CUDA thread and a ``std::barrier`` per block where a source synchronises;
   threads run one after another elsewhere), g++ builds a shared library, and ctypes
   launches a kernel as ``cuLaunchKernel`` does, from an array of argument pointers,
   checking each argument's type against the kernel's C signature. Each kernel is then
   compared with the NumPy reference on outputs poisoned with NaN.
3. :func:`emulated_cupy` builds a stand-in ``cupy`` module (NumPy arrays, ``RawModule``
   served by the emulator, ``empty`` poisoned with NaN) under which
   ``tinymeta.kernels.cupy_backend`` imports and runs on the CPU; ``test_cupy_backend.py``
   runs its device tests under it as well.

What this does not show: anything of the real device (memory model, warp scheduling,
launch limits, NVRTC's options as cupy passes them, cupy's own semantics, speed). Those
are the ``gpu``-marked tests, run on a lent GPU by ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest

import tinymeta.kernels
from tinymeta.kernels import numpy_backend as ref

CUDA_DIR = Path(tinymeta.kernels.__file__).parent / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
ARCH = "sm_90"

# every kernel the cupy backend launches, by source file
KERNELS = {
    "elementwise.cu": ("relu", "relu_grad", "bias_act", "sub_scaled"),
    "sq_err.cu": ("sq_err_mean", "sq_err_mean_grad"),
    "conv.cu": ("im2col", "col2im"),
}

_KERNEL_DECL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')


def _entries(ptx: str) -> set[str]:
    return set(re.findall(r"\.entry\s+(\w+)", ptx))


# ---- 1. compile to PTX ---------------------------------------------------------------


def _nvcc() -> str | None:
    return shutil.which("nvcc")


def _nvcc_ptx(source: str, name: str) -> tuple[bool, str]:
    """(ok, PTX or the compiler's log) from ``nvcc -ptx -arch=sm_90``."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / name
        src.write_text(source)
        ptx = Path(d) / "out.ptx"
        r = subprocess.run([_nvcc(), "-ptx", f"-arch={ARCH}", "-ftz=true", "-std=c++14", "-o",
                            str(ptx), str(src)],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            return False, r.stderr + r.stdout
        return True, ptx.read_text()


def _nvrtc_candidates() -> list[str]:
    found = []
    for entry in sys.path:  # the nvidia-cuda-nvrtc wheel: site-packages/nvidia/cu*/lib
        found += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "lib", "libnvrtc.so*")))
        found += sorted(glob.glob(os.path.join(entry, "nvidia", "cuda_nvrtc", "lib",
                                               "libnvrtc.so*")))
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            found += sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so*")))
    lib = ctypes.util.find_library("nvrtc")
    if lib:
        found.append(lib)
    return [f for f in found if "builtins" not in os.path.basename(f)]


_nvrtc_lib: list = []


def _nvrtc() -> ctypes.CDLL | None:
    """libnvrtc through ctypes, or None where none loads."""
    if not _nvrtc_lib:
        lib = None
        for path in _nvrtc_candidates():
            try:
                lib = ctypes.CDLL(path)
                break
            except OSError:
                continue
        _nvrtc_lib.append(lib)
    return _nvrtc_lib[0]


def _nvrtc_ptx(source: str, name: str) -> tuple[bool, str]:
    """(ok, PTX or the compiler's log) from NVRTC for compute_90 (the PTX of sm_90)."""
    lib = _nvrtc()
    prog = ctypes.c_void_p()
    status = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0,
                                    None, None)
    assert status == 0, f"nvrtcCreateProgram returned {status}"
    try:
        opts = [b"--gpu-architecture=compute_90", b"--std=c++14", b"-ftz=true"]  # as cupy
        argv = (ctypes.c_char_p * len(opts))(*opts)
        status = lib.nvrtcCompileProgram(prog, len(opts), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        if status != 0:
            return False, log.value.decode(errors="replace")
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(prog, ptx)
        return True, ptx.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


COMPILERS = {
    "nvcc": (_nvcc_ptx, lambda: None if _nvcc() else "nvcc is not on the PATH"),
    "nvrtc": (_nvrtc_ptx, lambda: None if _nvrtc() else
              "no libnvrtc loads (pip install nvidia-cuda-nvrtc, or a CUDA toolkit)"),
}


def _use(compiler: str):
    compile_fn, missing = COMPILERS[compiler]
    reason = missing()
    if reason:
        pytest.skip(f"{compiler}: {reason}")
    return compile_fn


def test_the_sources_are_the_ones_the_backend_loads():
    assert [s.name for s in SOURCES] == sorted(KERNELS)


@pytest.mark.parametrize("compiler", sorted(COMPILERS))
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_source_compiles_to_ptx_for_sm90(compiler, source):
    compile_fn = _use(compiler)
    ok, out = compile_fn(source.read_text(), source.name)
    assert ok, f"{compiler} could not compile {source.name}:\n{out}"
    want = {f"tm_{k}_{s}" for k in KERNELS[source.name] for s in ("f32", "f64")}
    assert want <= _entries(out), f"{source.name}: entries missing: {want - _entries(out)}"


@pytest.mark.parametrize("compiler", sorted(COMPILERS))
def test_a_type_error_fails_the_compile(compiler):
    """The tester tested: an undeclared name in a template body must not compile."""
    compile_fn = _use(compiler)
    source = (CUDA_DIR / "sq_err.cu").read_text()
    broken = source.replace("T c = two_over_m * g[i / m];", "T c = two_over_mm * g[i / m];")
    assert broken != source
    ok, log = compile_fn(broken, "broken.cu")
    assert not ok and "two_over_mm" in log


# ---- 2. the host emulator --------------------------------------------------------------

_SHIM = r"""
// CUDA on the host, for tests: one OS thread per CUDA thread where a kernel synchronises.
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

struct tm_dim3 { unsigned x = 1, y = 1, z = 1; };
static tm_dim3 gridDim, blockDim;
static thread_local tm_dim3 blockIdx, threadIdx;
static thread_local std::barrier<>* tm_block_barrier = nullptr;

static inline void __syncthreads() {
    if (tm_block_barrier == nullptr) {
        std::fprintf(stderr, "emulator: __syncthreads in a kernel launched without threads\n");
        std::abort();
    }
    tm_block_barrier->arrive_and_wait();
}
static inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
static inline double __dmul_rn(double a, double b) { volatile double r = a * b; return r; }

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static  // blocks run one at a time, so one static array serves each

template <class F>
static void tm_run(unsigned gx, unsigned bx, int threaded, F&& body) {
    gridDim = tm_dim3{gx, 1, 1};
    blockDim = tm_dim3{bx, 1, 1};
    for (unsigned b = 0; b < gx; ++b) {
        if (!threaded) {
            for (unsigned t = 0; t < bx; ++t) {
                blockIdx = tm_dim3{b, 0, 0};
                threadIdx = tm_dim3{t, 0, 0};
                body();
            }
            continue;
        }
        std::barrier<> bar(bx);
        std::vector<std::thread> threads;
        threads.reserve(bx);
        for (unsigned t = 0; t < bx; ++t) {
            threads.emplace_back([&, b, t] {
                blockIdx = tm_dim3{b, 0, 0};
                threadIdx = tm_dim3{t, 0, 0};
                tm_block_barrier = &bar;
                body();
            });
        }
        for (auto& th : threads) th.join();
    }
}
"""

# C parameter types and what a kernel argument must be for each
_POINTEES = {"float": np.float32, "double": np.float64, "int": np.int32,
             "long long": np.int64}
_SCALARS = {"float": (np.float32, ctypes.c_float), "double": (np.float64, ctypes.c_double),
            "int": (np.int32, ctypes.c_int), "long long": (np.int64, ctypes.c_longlong)}


def _parse_params(params: str) -> list[tuple[str, str]]:
    """[(C type, name)] of a kernel's parameter list, e.g. ('const float*', 'x')."""
    out = []
    for p in params.split(","):
        p = " ".join(p.replace("*", " * ").split())
        m = re.match(r"(.*?)\s*(\w+)$", p)
        ctype = m.group(1).replace(" *", "*").replace("__restrict__", "").strip()
        out.append((" ".join(ctype.split()), m.group(2)))
    return out


def _launcher(kernel: str, params: list[tuple[str, str]]) -> str:
    args = ", ".join(f"*static_cast<{t}*>(a[{i}])" for i, (t, _) in enumerate(params))
    return (f'extern "C" void tm_launch_{kernel}(unsigned gx, unsigned bx, int threaded, '
            f"void** a) {{\n    tm_run(gx, bx, threaded, [&] {{ {kernel}({args}); }});\n}}\n")


def _cxx() -> str | None:
    return shutil.which("g++") or shutil.which("clang++")


def _cache_dir() -> Path:
    d = Path(tempfile.gettempdir()) / f"tinymeta-cuda-emulator-{os.getuid()}"
    d.mkdir(exist_ok=True)
    return d


class EmulatedKernel:
    """One kernel of an emulated module, called as cupy's RawKernel: ``k(grid, block, args)``."""

    def __init__(self, lib: ctypes.CDLL, name: str, params: list, threaded: bool) -> None:
        self.name, self.params, self.threaded = name, params, threaded
        self._launch = getattr(lib, f"tm_launch_{name}")
        self._launch.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int,
                                 ctypes.POINTER(ctypes.c_void_p)]
        self._launch.restype = None
        self.launches = 0

    def __call__(self, grid, block, args, shared_mem=0, stream=None) -> None:
        grid, block = tuple(grid), tuple(block)
        assert len(grid) == 1 and len(block) == 1, f"{self.name}: 1-D launches only"
        assert 1 <= grid[0] <= 2**31 - 1, f"{self.name}: grid {grid}"
        assert 1 <= block[0] <= 1024, f"{self.name}: block {block}"
        assert len(args) == len(self.params), (
            f"{self.name}: {len(args)} arguments for {len(self.params)} parameters")
        keep = []
        slots = (ctypes.c_void_p * len(args))()
        for i, (a, (ctype, pname)) in enumerate(zip(args, self.params)):
            if ctype.endswith("*"):
                base = ctype[:-1].replace("const", "").strip()
                assert isinstance(a, np.ndarray), f"{self.name}({pname}): got {type(a)}"
                assert a.dtype == _POINTEES[base], (
                    f"{self.name}({pname}): a {a.dtype} array for a {ctype} parameter")
                assert a.flags.c_contiguous, f"{self.name}({pname}): not C-contiguous"
                assert "const" in ctype or a.flags.writeable, f"{self.name}({pname}): read-only"
                cell = ctypes.c_void_p(a.ctypes.data)
            else:
                np_type, c_type = _SCALARS[ctype]
                assert type(a) is np_type, (
                    f"{self.name}({pname}): {type(a).__name__} for a {ctype} parameter "
                    f"(pass a NumPy {np_type.__name__})")
                cell = c_type(a)
            keep.append(cell)
            slots[i] = ctypes.addressof(cell)
        self.launches += 1
        self._launch(grid[0], block[0], 1 if self.threaded else 0, slots)


class EmulatedModule:
    """cupy.RawModule's stand-in: the CUDA source built for the host by g++."""

    def __init__(self, code: str, options: tuple = (), **_: object) -> None:
        decls = _KERNEL_DECL.findall(code)
        self.params = {name: _parse_params(params) for name, params in decls}
        self.threaded = "__syncthreads" in code
        source = code + "\n" + "".join(_launcher(k, p) for k, p in self.params.items())
        digest = hashlib.sha256((_SHIM + source).encode()).hexdigest()[:16]
        lib = _cache_dir() / f"emulated-{digest}.so"
        if not lib.exists():
            d = Path(tempfile.mkdtemp(dir=_cache_dir()))
            (d / "shim.h").write_text(_SHIM)
            (d / "kernels.cpp").write_text(source)
            r = subprocess.run(
                [_cxx(), "-std=c++20", "-O2", "-ffp-contract=off", "-shared", "-fPIC",
                 "-pthread", "-include", str(d / "shim.h"), str(d / "kernels.cpp"),
                 "-o", str(d / "lib.so")], capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, f"the host build of the CUDA source failed:\n{r.stderr}"
            os.replace(d / "lib.so", lib)
            shutil.rmtree(d, ignore_errors=True)
        self._lib = ctypes.CDLL(str(lib))
        self._kernels: dict = {}

    def get_function(self, name: str) -> EmulatedKernel:
        if name not in self.params:
            raise KeyError(f"no kernel {name!r} in the module; it has {sorted(self.params)}")
        if name not in self._kernels:
            self._kernels[name] = EmulatedKernel(self._lib, name, self.params[name],
                                                 self.threaded)
        return self._kernels[name]


_modules: dict = {}


def emulated_module(filename: str) -> EmulatedModule:
    if filename not in _modules:
        _modules[filename] = EmulatedModule((CUDA_DIR / filename).read_text())
    return _modules[filename]


def needs_cxx():
    if _cxx() is None:
        pytest.skip("no C++ compiler (g++ or clang++) for the host emulator")


def _poisoned(shape, dtype) -> np.ndarray:
    return np.full(shape, np.nan, dtype=dtype)


def _assert_matches(got, want, dtype, what):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    assert not np.isnan(got).any(), f"{what}: NaN in the result (an element left unwritten?)"
    scale = max(float(np.max(np.abs(want), initial=0.0)), np.finfo(dtype).tiny)
    err = float(np.max(np.abs(got - want), initial=0.0)) / scale
    assert err <= (1e-6 if dtype == np.float32 else 1e-14), f"{what}: relative error {err:.3g}"


FLOATS = (np.float32, np.float64)
SUFFIX = {np.float32: "f32", np.float64: "f64"}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n, grid", [(1, 1), (1000, 4), (1000, 1), (257, 2)])
def test_emulated_elementwise_kernels(dtype, n, grid):
    """Grids smaller than n / 256 too: the grid-stride loops must cover every element."""
    needs_cxx()
    rng = np.random.default_rng(n)
    mod = emulated_module("elementwise.cu")
    x, g, d = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    x[: n // 4] = 0.0  # relu's kink
    s = SUFFIX[dtype]
    out = _poisoned(n, dtype)
    mod.get_function(f"tm_relu_{s}")((grid,), (256,), (x, out, np.int64(n)))
    _assert_matches(out, ref.relu(x), dtype, "relu")
    out = _poisoned(n, dtype)
    mod.get_function(f"tm_relu_grad_{s}")((grid,), (256,), (g, x, out, np.int64(n)))
    _assert_matches(out, ref.relu_grad(g, x), dtype, "relu_grad")
    out = _poisoned(n, dtype)
    scale = dtype(0.37)
    mod.get_function(f"tm_sub_scaled_{s}")((grid,), (256,), (x, d, scale, out, np.int64(n)))
    np.testing.assert_array_equal(out, ref.sub_scaled(x, d, 0.37))  # rounded as NumPy's


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("zshape, bshape", [
    ((25, 10, 40), (25, 1, 40)),  # one bias row per task (tm.nn.linear's (B, 1, out))
    ((25, 10, 40), (40,)),  # one row for all
    ((7, 3), (3,)),
    ((2, 3, 5, 4), (2, 3, 1, 4)),
])
def test_emulated_bias_epilogue(dtype, relu, zshape, bshape):
    needs_cxx()
    rng = np.random.default_rng(0)
    z = rng.standard_normal(zshape).astype(dtype)
    b = rng.standard_normal(bshape).astype(dtype)
    want = z + b
    if relu:
        want = np.maximum(want, 0)
    n = z.size
    per_task = len(bshape) == len(zshape)
    task_size = zshape[-2] * zshape[-1] if per_task else n
    stride = zshape[-1] if per_task else 0
    emulated_module("elementwise.cu").get_function(f"tm_bias_act_{SUFFIX[dtype]}")(
        (3,), (256,), (z, b, np.int64(n), np.int64(task_size), np.int64(zshape[-1]),
                       np.int64(stride), np.int32(relu)))
    _assert_matches(z, want, dtype, "bias_act")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("B, m, threads", [(25, 10, 32), (3, 1000, 256), (4, 257, 64),
                                           (1, 1, 32)])
def test_emulated_sq_err_kernels(dtype, B, m, threads):
    """One block per task with a shared-memory tree: block sizes below and above m."""
    needs_cxx()
    rng = np.random.default_rng(m)
    p, y = (rng.standard_normal((B, m)).astype(dtype) for _ in range(2))
    g = rng.standard_normal(B).astype(dtype)
    mod = emulated_module("sq_err.cu")
    s = SUFFIX[dtype]
    out = _poisoned(B, dtype)
    mod.get_function(f"tm_sq_err_mean_{s}")((B,), (threads,), (p, y, out, np.int64(m)))
    _assert_matches(out, ref.sq_err_mean(p, y), dtype, "sq_err_mean")
    out = _poisoned((B, m), dtype)
    mod.get_function(f"tm_sq_err_mean_grad_{s}")(
        (2,), (256,), (g, p, y, out, np.int64(B * m), np.int64(m), dtype(2.0 / m)))
    np.testing.assert_array_equal(out, ref.sq_err_mean_grad(g, p, y))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape, kernel, stride, padding, grid", [
    ((2, 7, 6, 2), (3, 3), (2, 2), ((1, 1), (0, 1)), 4),  # "same" at stride 2: odd pad after
    ((1, 5, 4, 3), (3, 2), (1, 2), ((2, 4), (3, 0)), 1),  # wider padding than the kernel
    ((3, 4, 4, 1), (1, 1), (2, 3), ((0, 0), (0, 0)), 2),
    ((2, 14, 14, 8), (3, 3), (2, 2), ((0, 1), (0, 1)), 3),
])
def test_emulated_conv_kernels(dtype, shape, kernel, stride, padding, grid):
    """im2col and its gather-form adjoint against the reference, small grids included (the
    grid-stride loops must cover every entry): im2col exactly, col2im to rounding."""
    needs_cxx()
    rng = np.random.default_rng(len(shape) + shape[-1])
    conv = {"kernel": kernel, "stride": stride, "padding": padding}
    x = rng.standard_normal(shape).astype(dtype)
    want = ref.im2col(x, **conv)
    N, H, W, C = shape
    Ho, Wo = want.shape[1:3]
    geometry = tuple(np.int64(v) for v in (H, W, C, Ho, Wo, *kernel, *stride, padding[0][0],
                                          padding[1][0]))
    mod = emulated_module("conv.cu")
    s = SUFFIX[dtype]
    out = _poisoned(want.shape, dtype)
    mod.get_function(f"tm_im2col_{s}")((grid,), (256,), (x, out, np.int64(out.size), *geometry))
    np.testing.assert_array_equal(out, want)
    cols = rng.standard_normal(want.shape).astype(dtype)
    out = _poisoned(shape, dtype)
    mod.get_function(f"tm_col2im_{s}")((grid,), (256,), (cols, out, np.int64(out.size),
                                                         *geometry))
    _assert_matches(out, ref.col2im(cols, shape, **conv), dtype, "col2im")


def test_the_emulator_refuses_a_wrong_argument_type():
    """A float64 array for a float* parameter, or a Python int for a long long, is refused
    here (a real launch would misread the bytes silently)."""
    needs_cxx()
    k = emulated_module("elementwise.cu").get_function("tm_relu_f32")
    x = np.zeros(4, np.float64)
    with pytest.raises(AssertionError, match="float64 array for a const float"):
        k((1,), (32,), (x, np.zeros(4, np.float32), np.int64(4)))
    x = np.zeros(4, np.float32)
    with pytest.raises(AssertionError, match="pass a NumPy int64"):
        k((1,), (32,), (x, np.zeros(4, np.float32), 4))


# ---- 3. a stand-in cupy over the emulator --------------------------------------------------


class _EmulatedRuntimeError(RuntimeError):
    pass


def _empty(shape, dtype=float, order="C"):
    out = np.empty(shape, dtype=dtype, order=order)
    if out.dtype.kind in "fc":
        out.fill(np.nan)  # poisoned, so that an element no kernel writes shows
    return out


def _empty_like(a, dtype=None, order="K", shape=None):
    out = np.empty_like(a, dtype=dtype, order=order, shape=shape)
    if out.dtype.kind in "fc":
        out.fill(np.nan)
    return out


def _scatter_add(a, slices, value):
    np.add.at(a, slices, value)


@contextlib.contextmanager
def _allow_synchronize(allow):
    yield


def emulated_cupy() -> tuple[types.ModuleType, types.ModuleType]:
    """(cupy, cupyx) stand-ins: NumPy arrays, and RawModule served by the host emulator."""
    cupy = types.ModuleType("cupy")
    cupy.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    cupy.__file__ = __file__
    cupy.empty, cupy.empty_like = _empty, _empty_like
    cupy.asnumpy = lambda a: np.array(a)
    cupy.RawModule = EmulatedModule
    cupy.emulated = True
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1,
                                    CUDARuntimeError=_EmulatedRuntimeError)
    cupy.cuda = types.SimpleNamespace(runtime=runtime)
    cupyx = types.ModuleType("cupyx")
    cupyx.scatter_add = _scatter_add
    cupyx.allow_synchronize = _allow_synchronize
    return cupy, cupyx


@contextlib.contextmanager
def emulated_cupy_backend():
    """``tinymeta.kernels.cupy_backend`` imported over the stand-in cupy, then forgotten.

    While it is open, ``tm.set_backend("cupy")`` selects it; afterwards the real modules
    (if any were imported) are back in ``sys.modules``.
    """
    import importlib

    needs_cxx()
    names = ("cupy", "cupyx", "tinymeta.kernels.cupy_backend")
    saved = {n: sys.modules.get(n) for n in names}
    in_use = tinymeta.kernels.backend_name()
    fake_cupy, fake_cupyx = emulated_cupy()
    sys.modules["cupy"], sys.modules["cupyx"] = fake_cupy, fake_cupyx
    sys.modules.pop("tinymeta.kernels.cupy_backend", None)
    try:
        yield importlib.import_module("tinymeta.kernels.cupy_backend")
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
        tinymeta.kernels.set_backend(in_use)  # the real module again, where "cupy" was in use


def test_the_backend_imports_over_the_emulated_cupy():
    with emulated_cupy_backend() as be:
        assert be.name == "cupy" and be.xp.emulated
        x = be.asarray(np.array([-1.0, 0.0, 2.0], np.float32))
        np.testing.assert_array_equal(be.to_numpy(be.relu(x)), [0.0, 0.0, 2.0])
        assert be._functions[("relu", np.dtype(np.float32))].launches == 1
