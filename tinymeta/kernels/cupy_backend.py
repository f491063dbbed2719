"""The cupy GPU backend: every kernel of the NumPy reference, on cupy arrays.

Arrays are cupy arrays end to end: a NumPy array reaching a kernel (a constant a user
closed over, an index array) is uploaded once there, and every result stays on the
device. Matmuls go to cuBLAS through ``cupy.matmul``, batched over the task axis (a
stack of inputs against one shared matrix is one GEMM on the stacked rows). The fused
kernels (the bias and relu epilogue after the GEMM of ``linear`` / ``linear_relu``,
``relu``, ``relu_grad``, ``sq_err_mean`` and its gradient, ``sub_scaled``, and the
convolution's ``im2col`` and ``col2im``) are CUDA sources of the project,
``tinymeta/kernels/cuda/*.cu``, compiled by cupy's NVRTC on first use, in float32 and
float64. Arrays a fused kernel cannot take (other dtypes,
mixed dtypes, broadcasts it does not cover) get cupy's unfused expression of the
reference, so every input the reference takes works here too.

Importing this module (which ``tm.set_backend("cupy")`` does) checks that cupy is
installed and that a CUDA device is usable, and raises an ImportError or a RuntimeError
that says which is missing and how to install. Importing ``tinymeta`` never imports
cupy.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np

_INSTALL = (
    'install the cupy wheel that matches the CUDA version of the driver: pip install -e ".[gpu]" '
    "(cupy-cuda13x, for CUDA 13), or pip install cupy-cuda12x for CUDA 12; `nvidia-smi` shows "
    "the CUDA version. Without a GPU use tm.set_backend('numba') or 'numpy'"
)


def _import_cupy() -> tuple:
    """cupy and cupyx, after checking that a CUDA device is usable."""
    try:
        import cupy
        import cupyx
    except ModuleNotFoundError as e:
        if e.name not in ("cupy", "cupyx"):
            raise
        raise ImportError(f"set_backend('cupy'): cupy is not installed; {_INSTALL}") from e
    except ImportError as e:
        raise ImportError(
            f"set_backend('cupy'): cupy is installed but failed to import ({e}); {_INSTALL}"
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise RuntimeError(
            f"set_backend('cupy'): cupy is installed but no CUDA device is usable ({e}): the "
            f"cupy backend needs an NVIDIA GPU and a driver recent enough for the cupy wheel; "
            f"{_INSTALL}"
        ) from e
    if count < 1:
        raise RuntimeError(
            f"set_backend('cupy'): cupy is installed but it sees no CUDA device; {_INSTALL}"
        )
    return cupy, cupyx


cp, cupyx = _import_cupy()

xp = cp
name = "cupy"
ndarray = cp.ndarray
array_types: tuple = (cp.ndarray,)


def asarray(x, dtype=None):
    return cp.asarray(x, dtype=dtype)


def to_numpy(x):
    return cp.asnumpy(x)


def zeros(shape, dtype):
    return cp.zeros(shape, dtype)


def ones(shape, dtype):
    return cp.ones(shape, dtype)


def _device(a: Any) -> Any:
    """A NumPy array uploaded to the device; a device array or a Python number as it is."""
    return cp.asarray(a) if isinstance(a, np.ndarray) else a


def _device_index(index: Any) -> Any:
    """An index with its NumPy index arrays uploaded (cupy indexes with device arrays)."""
    if isinstance(index, tuple):
        return tuple(_device_index(i) for i in index)
    return _device(index)


def _elementwise(ufunc):
    def kernel(*args):
        return ufunc(*[_device(a) for a in args])

    kernel.__name__ = kernel.__qualname__ = getattr(ufunc, "__name__", "kernel")
    kernel.__doc__ = f"cupy.{kernel.__name__} on device arrays (NumPy inputs uploaded)."
    return kernel


# ---- elementwise -----------------------------------------------------------
add = _elementwise(cp.add)
subtract = _elementwise(cp.subtract)
multiply = _elementwise(cp.multiply)
true_divide = _elementwise(cp.true_divide)
negative = _elementwise(cp.negative)
power = _elementwise(cp.power)
exp = _elementwise(cp.exp)
log = _elementwise(cp.log)
sqrt = _elementwise(cp.sqrt)
tanh = _elementwise(cp.tanh)
absolute = _elementwise(cp.absolute)
sign = _elementwise(cp.sign)
maximum = _elementwise(cp.maximum)
minimum = _elementwise(cp.minimum)
where = _elementwise(cp.where)
greater = _elementwise(cp.greater)
greater_equal = _elementwise(cp.greater_equal)
less = _elementwise(cp.less)
less_equal = _elementwise(cp.less_equal)
equal = _elementwise(cp.equal)
not_equal = _elementwise(cp.not_equal)
isfinite = _elementwise(cp.isfinite)
logical_and = _elementwise(cp.logical_and)
logical_or = _elementwise(cp.logical_or)
logical_not = _elementwise(cp.logical_not)


def sigmoid(x):
    # 1 / (1 + e^{-x}) written to stay finite for large |x|
    x = _device(x)
    e = cp.exp(-cp.abs(x))
    return cp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def maximum_share(x, y):
    """d max(x, y)/dx: 1 where x > y, 0.5 at ties, 0 where x < y."""
    x, y = _device(x), _device(y)
    share = (x > y) + 0.5 * (x == y)
    return share.astype(cp.result_type(x, y), copy=False)


def cast(x, dtype):
    return _device(x).astype(dtype)


# ---- reductions --------------------------------------------------------------
def sum(x, axis, keepdims):  # noqa: A001  (the primitive's own name)
    return cp.sum(_device(x), axis=axis, keepdims=keepdims)


def amax(x, axis, keepdims):
    return cp.amax(_device(x), axis=axis, keepdims=keepdims)


def logsumexp(x, axis, keepdims):
    x = _device(x)
    m = cp.amax(x, axis=axis, keepdims=True)
    m = cp.where(cp.isfinite(m), m, 0)
    s = cp.log(cp.sum(cp.exp(x - m), axis=axis, keepdims=True)) + m
    return s if keepdims else cp.squeeze(s, axis=axis)


def log_softmax(x, axis):
    x = _device(x)
    return x - logsumexp(x, (axis,), True)


# ---- shapes --------------------------------------------------------------------
def reshape(x, shape):
    return cp.reshape(_device(x), shape)


def transpose(x, axes):
    return cp.transpose(_device(x), axes)


def broadcast_to(x, shape):
    return cp.broadcast_to(_device(x), shape)


def getitem(x, index):
    return _device(x)[_device_index(index)]


def scatter_add(g, index, shape):
    """zeros(shape) with g added at x[index]; duplicate indices accumulate (atomics)."""
    g = _device(g)
    out = cp.zeros(shape, dtype=g.dtype)
    cupyx.scatter_add(out, _device_index(index), g)
    return out


def concatenate(*xs, axis):
    return cp.concatenate([_device(x) for x in xs], axis=axis)


def stop_gradient(x):
    return x


# ---- linear algebra (cuBLAS) ------------------------------------------------------
def _shared_matrix(y):
    """The one matrix behind a stack of copies (a broadcast with zero batch strides), or None.

    θ_0 broadcast to the B tasks before the first inner step is such a stack.
    """
    if y.ndim > 2 and all(s == 0 for s in y.strides[:-2]):
        return y[(0,) * (y.ndim - 2)]
    return None


def matmul(x, y):
    """x @ y (NumPy's batched, broadcasting rules), by cuBLAS.

    As in the reference: an inner dimension of 1 is a broadcast multiply (an outer
    product), and a stack of inputs against one matrix, or against a broadcast stack of
    one matrix, is one GEMM on the stacked rows instead of a batched GEMM.
    """
    x, y = _device(x), _device(y)
    if x.ndim >= 2 and y.ndim >= 2 and x.shape[-1] == 1 and y.shape[-2] == 1:
        return cp.multiply(x, y)
    if x.ndim > 2 and y.ndim == x.ndim and x.shape[:-2] == y.shape[:-2]:
        shared = _shared_matrix(y)
        if shared is not None:
            y = shared
    if y.ndim == 2 and x.ndim > 2:
        return cp.matmul(x.reshape(-1, x.shape[-1]), y).reshape(x.shape[:-1] + y.shape[-1:])
    return cp.matmul(x, y)


def matmul_nt(x, y):
    """x @ yᵀ over the last two axes (both operands 2-D or more); cuBLAS reads yᵀ in place."""
    return matmul(x, cp.swapaxes(_device(y), -1, -2))


def matmul_tn(x, y):
    """xᵀ @ y over the last two axes (both operands 2-D or more)."""
    return matmul(cp.swapaxes(_device(x), -1, -2), y)


# ---- the project's CUDA kernels ---------------------------------------------------------
# Each .cu file is one cupy RawModule, compiled by NVRTC on first use (cupy caches the
# binary on disk); its kernels are extern "C" tm_<kernel>_f32 / tm_<kernel>_f64.

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_BLOCK = 256  # threads per block of the grid-stride kernels
_MAX_BLOCKS = 4096  # a grid-stride loop covers any n with at most this many blocks
_REDUCE_THREADS = 256  # TM_REDUCE_THREADS in sq_err.cu
_NVRTC_OPTIONS = ("--std=c++14",)

_modules: dict = {}
_functions: dict = {}


def cuda_source(filename: str) -> str:
    """The text of one of the package's CUDA sources, ``tinymeta/kernels/cuda/<filename>``."""
    return resources.files(__package__).joinpath("cuda", filename).read_text()


def _function(filename: str, kernel: str, dtype):
    """The compiled ``tm_<kernel>_<f32|f64>`` of ``cuda/<filename>``."""
    key = (kernel, dtype)
    fn = _functions.get(key)
    if fn is None:
        module = _modules.get(filename)
        if module is None:
            module = cp.RawModule(code=cuda_source(filename), options=_NVRTC_OPTIONS)
            _modules[filename] = module
        fn = module.get_function(f"tm_{kernel}_{_SUFFIX[dtype]}")
        _functions[key] = fn
    return fn


def _grid(n: int) -> tuple:
    return (min((n + _BLOCK - 1) // _BLOCK, _MAX_BLOCKS),)


def _is_float(a) -> bool:
    return isinstance(a, cp.ndarray) and a.dtype in _SUFFIX


def _same_float(*arrays) -> bool:
    dt = arrays[0].dtype if isinstance(arrays[0], cp.ndarray) else None
    return dt in _SUFFIX and all(isinstance(a, cp.ndarray) and a.dtype == dt for a in arrays)


# Each fused kernel has an ``_..._into`` form that writes a given C-contiguous output
# (the tests poison it with NaN first, so an element a kernel leaves unwritten shows).

def _relu_into(x, out) -> None:
    n = x.size
    _function("elementwise.cu", "relu", x.dtype)(_grid(n), (_BLOCK,), (x, out, np.int64(n)))


def relu(x):
    """max(x, 0) in one pass (NaN kept, as np.maximum keeps it)."""
    x = _device(x)
    if not _is_float(x) or x.size == 0:
        return cp.maximum(x, 0)
    x = cp.ascontiguousarray(x)
    out = cp.empty(x.shape, x.dtype)
    _relu_into(x, out)
    return out


def _relu_grad_into(g, x, out) -> None:
    n = x.size
    _function("elementwise.cu", "relu_grad", x.dtype)(_grid(n), (_BLOCK,),
                                                      (g, x, out, np.int64(n)))


def relu_grad(g, x):
    """g where x > 0, else 0, in one pass: the VJP of relu (relu'(0) = 0)."""
    g, x = _device(g), _device(x)
    if not _same_float(g, x) or g.shape != x.shape or x.size == 0:
        return cp.where(x > 0, g, 0).astype(cp.result_type(g, x), copy=False)
    g, x = cp.ascontiguousarray(g), cp.ascontiguousarray(x)
    out = cp.empty(x.shape, x.dtype)
    _relu_grad_into(g, x, out)
    return out


def _bias_act_into(z, b, relu: bool) -> bool:
    """z += b (then relu) in place by the epilogue kernel; False where it does not apply.

    It covers z C-contiguous of shape (..., rows, cols) with one bias row for all,
    b of shape (cols,) (or with leading 1s), or one bias row per task, b of shape
    z.shape[:-2] + (1, cols) (tm.nn.linear's (B, 1, out)).
    """
    if not _same_float(z, b) or z.ndim < 1 or z.size == 0 or not z.flags.c_contiguous:
        return False
    cols = z.shape[-1]
    if b.ndim <= z.ndim and b.shape[-1:] == (cols,) and b.size == cols:
        task_size, b_task_stride = z.size, 0
    elif z.ndim >= 2 and b.shape == z.shape[:-2] + (1, cols):
        task_size, b_task_stride = z.shape[-2] * cols, cols
    else:
        return False
    b = cp.ascontiguousarray(b)
    n = z.size
    _function("elementwise.cu", "bias_act", z.dtype)(
        _grid(n), (_BLOCK,),
        (z, b, np.int64(n), np.int64(task_size), np.int64(cols), np.int64(b_task_stride),
         np.int32(1 if relu else 0)))
    return True


def linear(x, W, b):
    """x W + b: the GEMM in cuBLAS, the bias in one epilogue pass over its output."""
    x, W, b = _device(x), _device(W), _device(b)
    z = matmul(x, W)
    if not _bias_act_into(z, b, relu=False):
        z += b
    return z


def linear_relu(x, W, b):
    """relu(x W + b): the GEMM in cuBLAS, bias and relu in one epilogue pass."""
    x, W, b = _device(x), _device(W), _device(b)
    z = matmul(x, W)
    if not _bias_act_into(z, b, relu=True):
        z += b
        cp.maximum(z, 0, out=z)
    return z


def _sq_err_mean_into(p, y, out) -> None:
    B = p.shape[0]
    m = p.size // B
    threads = min(_REDUCE_THREADS, max(32, 1 << (m - 1).bit_length()))  # a power of two
    _function("sq_err.cu", "sq_err_mean", p.dtype)((B,), (threads,), (p, y, out, np.int64(m)))


def sq_err_mean(p, y):
    """Per-task mean of (p − y)² over all axes but the first: one block per task."""
    p, y = _device(p), _device(y)
    if not _same_float(p, y) or p.shape != y.shape or p.ndim < 1 or p.size == 0:
        d = p - y
        d *= d
        return cp.sum(d.reshape(d.shape[0], -1), axis=1) / (d.size // d.shape[0])
    p, y = cp.ascontiguousarray(p), cp.ascontiguousarray(y)
    out = cp.empty(p.shape[:1], p.dtype)
    _sq_err_mean_into(p, y, out)
    return out


def _sq_err_mean_grad_into(g, p, y, out) -> None:
    n = p.size
    m = n // p.shape[0]
    _function("sq_err.cu", "sq_err_mean_grad", p.dtype)(
        _grid(n), (_BLOCK,), (g, p, y, out, np.int64(n), np.int64(m), p.dtype.type(2.0 / m)))


def sq_err_mean_grad(g, p, y):
    """g[:, None, ...] · 2 (p − y) / n in one pass: the VJP of sq_err_mean in p."""
    g, p, y = _device(g), _device(p), _device(y)
    if not _same_float(g, p, y) or p.shape != y.shape or g.shape != p.shape[:1] \
            or p.size == 0:
        n = p.size // p.shape[0]
        d = p - y
        d *= (2.0 / n) * g.reshape(g.shape + (1,) * (p.ndim - 1))
        return d
    g, p, y = cp.ascontiguousarray(g), cp.ascontiguousarray(p), cp.ascontiguousarray(y)
    out = cp.empty(p.shape, p.dtype)
    _sq_err_mean_grad_into(g, p, y, out)
    return out


def _sub_scaled_into(x, d, scale, out) -> None:
    n = x.size
    _function("elementwise.cu", "sub_scaled", x.dtype)(
        _grid(n), (_BLOCK,), (x, d, x.dtype.type(scale), out, np.int64(n)))


def sub_scaled(x, d, scale):
    """x − scale · d in one pass (a gradient step θ − α∇L)."""
    x, d = _device(x), _device(d)
    if not _same_float(x, d) or x.shape != d.shape or x.size == 0:
        return x - scale * d
    x, d = cp.ascontiguousarray(x), cp.ascontiguousarray(d)
    out = cp.empty(x.shape, x.dtype)
    _sub_scaled_into(x, d, scale, out)
    return out


# ---- convolution: patch extraction and its adjoint (cuda/conv.cu) ---------------------------
# Parameters as the primitives pass them: kernel (kh, kw), stride (sh, sw), padding
# ((pt, pb), (pl, pr)); images (…, H, W, C), patches (…, H', W', kh·kw·C).

def _patches_shape(x_shape, kernel, stride, padding) -> tuple:
    (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = kernel, stride, padding
    *lead, H, W, C = x_shape
    return (*lead, (H + pt + pb - kh) // sh + 1, (W + pl + pr - kw) // sw + 1, kh * kw * C)


def _conv_launch(kernel_name, src, out, image_shape, patches_shape, kernel, stride,
                 padding) -> None:
    (kh, kw), (sh, sw), ((pt, _), (pl, _)) = kernel, stride, padding
    *_, H, W, C = image_shape
    Ho, Wo = patches_shape[-3], patches_shape[-2]
    n = out.size
    geometry = (H, W, C, Ho, Wo, kh, kw, sh, sw, pt, pl)
    _function("conv.cu", kernel_name, src.dtype)(
        _grid(n), (_BLOCK,), (src, out, np.int64(n), *(np.int64(v) for v in geometry)))


def _im2col_into(x, out, kernel, stride, padding) -> None:
    _conv_launch("im2col", x, out, x.shape, out.shape, kernel, stride, padding)


def _col2im_into(cols, out, kernel, stride, padding) -> None:
    _conv_launch("col2im", cols, out, out.shape, cols.shape, kernel, stride, padding)


def _taps(kernel, stride, Ho, Wo):
    """The strided slice of the padded images that each tap (a, b) of the window reads."""
    (kh, kw), (sh, sw) = kernel, stride
    return [(a, b, (Ellipsis, slice(a, a + sh * (Ho - 1) + 1, sh),
                    slice(b, b + sw * (Wo - 1) + 1, sw), slice(None)))
            for a in range(kh) for b in range(kw)]


def im2col(x, kernel, stride, padding):
    """The patches (…, H', W', kh·kw·C) of the images x (…, H, W, C), zero-padded: one thread
    per patch entry (cupy's slices of the padded images for other dtypes)."""
    x = _device(x)
    shape = _patches_shape(x.shape, kernel, stride, padding)
    if not _is_float(x) or x.size == 0:
        (pt, pb), (pl, pr) = padding
        padded = cp.pad(x, [(0, 0)] * (x.ndim - 3) + [(pt, pb), (pl, pr), (0, 0)])
        taps = _taps(kernel, stride, shape[-3], shape[-2])
        return cp.concatenate([padded[index] for _, _, index in taps], axis=-1)
    out = cp.empty(shape, x.dtype)
    _im2col_into(cp.ascontiguousarray(x), out, kernel, stride, padding)
    return out


def col2im(cols, x_shape, kernel, stride, padding):
    """The adjoint of :func:`im2col`: one thread per image entry sums the patch entries that
    read it (cupy's strided adds for other dtypes)."""
    cols = _device(cols)
    if not _is_float(cols) or cols.size == 0:
        (kh, kw), ((pt, pb), (pl, pr)) = kernel, padding
        *lead, H, W, C = x_shape
        Ho, Wo = cols.shape[-3], cols.shape[-2]
        out = cp.zeros((*lead, H + pt + pb, W + pl + pr, C), dtype=cols.dtype)
        patches = cols.reshape(*lead, Ho, Wo, kh, kw, C)
        for a, b, index in _taps(kernel, stride, Ho, Wo):
            out[index] += patches[..., a, b, :]
        return cp.ascontiguousarray(out[..., pt:pt + H, pl:pl + W, :])
    out = cp.empty(tuple(x_shape), cols.dtype)
    _col2im_into(cp.ascontiguousarray(cols), out, kernel, stride, padding)
    return out
