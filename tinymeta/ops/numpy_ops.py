"""The primitives under NumPy's names: each forward, and right under it its VJP rule.

A rule ``rule(g, ans, *args, **params)`` maps the output cotangent ``g`` to the
cotangent of one argument. Beside it, a JVP rule ``rule(t, ans, *args, **params)``
maps one argument's tangent ``t`` to the output's (forward mode: ``jvp``, and
``hvp`` as forward over reverse). Rules are written only in tinymeta ops, never raw
arrays, so a backward sweep run under an outer transform is itself recorded
and higher orders hold by construction. Binary rules undo NumPy broadcasting
visibly with :func:`unbroadcast`.

Python scalars stay Python scalars (NEP 50 weak typing): ``x * 2.0`` keeps a
float32 ``x`` float32. The fused model primitives built on this table (``linear``,
``sq_err_mean``, ...) are in :mod:`tinymeta.ops.fused`.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from ..kernels import get_backend
from ..tape import Primitive, defjvp, defjvp_all, defvjp, defvjp_argnum
from ..tensor import Tensor, install_ops

# ---- helpers ------------------------------------------------------------------------


def shape(x: Any) -> tuple:
    """The shape of a Tensor, an array or a Python scalar (``()``)."""
    while type(x) is Tensor:  # (Tensor.shape, inlined: this is called on every rule)
        x = x._value
    try:
        return x.shape
    except AttributeError:
        return ()


def ndim(x: Any) -> int:
    return len(shape(x))


def _normalize_axes(axis: Any, nd: int, op: str) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(nd))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        a = int(a)
        if not -nd <= a < nd:
            raise ValueError(f"{op}: axis {a} is out of range for an input of {nd} dimensions")
        out.append(a % nd)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {axis!r}")
    return tuple(sorted(out))


def _kept_shape(in_shape: tuple, axes: tuple) -> tuple:
    return tuple(1 if i in axes else s for i, s in enumerate(in_shape))


def _zeros_like_value(x: Any) -> Any:
    return get_backend().zeros(shape(x), x.dtype)


def unbroadcast(g: Any, target: tuple) -> Any:
    """Undo NumPy broadcasting: sum ``g`` down to the shape ``target`` it was broadcast from."""
    gshape = shape(g)
    target = tuple(target)
    if gshape == target:
        return g
    lead = len(gshape) - len(target)
    ones = tuple(lead + i for i, s in enumerate(target) if s == 1 and gshape[lead + i] != 1)
    if not ones:  # only leading axes to sum away
        return _sum(g, axis=tuple(range(lead)), keepdims=False)
    if not lead:  # only length-1 axes: keepdims leaves the target shape
        return _sum(g, axis=ones, keepdims=True)
    g = _sum(g, axis=tuple(range(lead)) + ones, keepdims=False)
    return _reshape(g, shape=target)


# =====================================================================================
# Elementwise arithmetic
# =====================================================================================

add = Primitive("add", kernel="add")
defvjp(add,
       lambda g, ans, x, y: unbroadcast(g, shape(x)),
       lambda g, ans, x, y: unbroadcast(g, shape(y)))
defjvp(add, lambda t, ans, x, y: t, lambda t, ans, x, y: t)

subtract = Primitive("subtract", kernel="subtract")
defvjp(subtract,
       lambda g, ans, x, y: unbroadcast(g, shape(x)),
       lambda g, ans, x, y: unbroadcast(negative(g), shape(y)))
defjvp(subtract, lambda t, ans, x, y: t, lambda t, ans, x, y: negative(t))

multiply = Primitive("multiply", kernel="multiply")
defvjp(multiply,
       lambda g, ans, x, y: unbroadcast(g * y, shape(x)),
       lambda g, ans, x, y: unbroadcast(g * x, shape(y)))
defjvp(multiply, lambda t, ans, x, y: t * y, lambda t, ans, x, y: x * t)

divide = Primitive("divide", kernel="true_divide")
defvjp(divide,
       lambda g, ans, x, y: unbroadcast(g / y, shape(x)),
       lambda g, ans, x, y: unbroadcast(negative(g) * ans / y, shape(y)))
defjvp(divide, lambda t, ans, x, y: t / y, lambda t, ans, x, y: negative(t) * ans / y)

negative = Primitive("negative", kernel="negative")
defvjp(negative, lambda g, ans, x: negative(g))
defjvp(negative, lambda t, ans, x: negative(t))


def _power_base_factor(g, x, y):
    # ḡ · y x^(y−1), elementwise (for a Python exponent 2 or 1, without a power call)
    if type(y) in (int, float):
        if y == 2:
            return g * (x * 2.0)
        if y == 1:
            return g
        return g * (y * power(x, y - 1))
    return g * y * power(x, y - 1)


def _log_base(x):
    # log x, taken as 0 where x == 0 (the limit of x^y log x along y > 0); a Python base
    # stays a Python number so that it does not up-cast a float32 exponent
    if type(x) in (int, float):
        return math.log(x) if x > 0 else (0.0 if x == 0 else math.nan)
    return log(where(equal(x, 0), 1.0, x))


def _vjp_power_base(g, ans, x, y):
    return unbroadcast(_power_base_factor(g, x, y), shape(x))


def _vjp_power_exponent(g, ans, x, y):
    return unbroadcast(g * _log_base(x) * ans, shape(y))


power = Primitive("power", kernel="power")
defvjp(power, _vjp_power_base, _vjp_power_exponent)
defjvp(power,
       lambda t, ans, x, y: _power_base_factor(t, x, y),
       lambda t, ans, x, y: t * _log_base(x) * ans)


# =====================================================================================
# Elementwise functions
# =====================================================================================

exp = Primitive("exp", kernel="exp")
defvjp(exp, lambda g, ans, x: g * ans)
defjvp(exp, lambda t, ans, x: t * ans)

log = Primitive("log", kernel="log")
defvjp(log, lambda g, ans, x: g / x)
defjvp(log, lambda t, ans, x: t / x)

sqrt = Primitive("sqrt", kernel="sqrt")
defvjp(sqrt, lambda g, ans, x: g * 0.5 / ans)
defjvp(sqrt, lambda t, ans, x: t * 0.5 / ans)

tanh = Primitive("tanh", kernel="tanh")
defvjp(tanh, lambda g, ans, x: g * (1.0 - ans * ans))
defjvp(tanh, lambda t, ans, x: t * (1.0 - ans * ans))

sigmoid = Primitive("sigmoid", kernel="sigmoid")
defvjp(sigmoid, lambda g, ans, x: g * ans * (1.0 - ans))
defjvp(sigmoid, lambda t, ans, x: t * ans * (1.0 - ans))

relu = Primitive("relu", kernel="relu")
defvjp(relu, lambda g, ans, x: _relu_grad(g, x))
defjvp(relu, lambda t, ans, x: _relu_grad(t, x))

# ḡ · 1[x > 0] in one kernel (relu'(0) = 0); linear in ḡ, and zero derivative in x
_relu_grad = Primitive("relu_grad", kernel="relu_grad")
defvjp(_relu_grad, lambda g, ans, gin, x: _relu_grad(g, x), None)
defjvp(_relu_grad, lambda t, ans, gin, x: _relu_grad(t, x), None)

abs = Primitive("abs", kernel="absolute")  # noqa: A001
defvjp(abs, lambda g, ans, x: g * sign(x))  # abs'(0) = 0
defjvp(abs, lambda t, ans, x: t * sign(x))

_maximum_share = Primitive("maximum_share", kernel="maximum_share", differentiable=False)

maximum = Primitive("maximum", kernel="maximum")
defvjp(maximum,  # ties split 0.5 / 0.5
       lambda g, ans, x, y: unbroadcast(g * _maximum_share(x, y), shape(x)),
       lambda g, ans, x, y: unbroadcast(g * _maximum_share(y, x), shape(y)))
defjvp(maximum,
       lambda t, ans, x, y: t * _maximum_share(x, y),
       lambda t, ans, x, y: t * _maximum_share(y, x))

minimum = Primitive("minimum", kernel="minimum")
defvjp(minimum,
       lambda g, ans, x, y: unbroadcast(g * _maximum_share(y, x), shape(x)),
       lambda g, ans, x, y: unbroadcast(g * _maximum_share(x, y), shape(y)))
defjvp(minimum,
       lambda t, ans, x, y: t * _maximum_share(y, x),
       lambda t, ans, x, y: t * _maximum_share(x, y))

where = Primitive("where", kernel="where")
defvjp(where,
       None,  # the condition is not differentiable
       lambda g, ans, c, x, y: unbroadcast(where(c, g, 0.0), shape(x)),
       lambda g, ans, c, x, y: unbroadcast(where(c, 0.0, g), shape(y)))
defjvp(where,
       None,
       lambda t, ans, c, x, y: where(c, t, 0.0),
       lambda t, ans, c, x, y: where(c, 0.0, t))

_astype = Primitive("astype", kernel="cast")
defvjp(_astype, lambda g, ans, x, dtype: _astype(g, dtype=np.dtype(x.dtype)))
defjvp(_astype, lambda t, ans, x, dtype: _astype(t, dtype=dtype))


def astype(x: Any, dtype: Any) -> Any:
    """``x`` cast to ``dtype``; the cotangent is cast back."""
    return _astype(x, dtype=np.dtype(dtype))


# =====================================================================================
# Non-differentiable: comparisons, masks, stop_gradient
# =====================================================================================

greater = Primitive("greater", kernel="greater", differentiable=False)
greater_equal = Primitive("greater_equal", kernel="greater_equal", differentiable=False)
less = Primitive("less", kernel="less", differentiable=False)
less_equal = Primitive("less_equal", kernel="less_equal", differentiable=False)
equal = Primitive("equal", kernel="equal", differentiable=False)
not_equal = Primitive("not_equal", kernel="not_equal", differentiable=False)
sign = Primitive("sign", kernel="sign", differentiable=False)
logical_and = Primitive("logical_and", kernel="logical_and", differentiable=False)
logical_or = Primitive("logical_or", kernel="logical_or", differentiable=False)
logical_not = Primitive("logical_not", kernel="logical_not", differentiable=False)
isfinite = Primitive("isfinite", kernel="isfinite", differentiable=False)

stop_gradient = Primitive("stop_gradient", kernel="stop_gradient", differentiable=False)


# =====================================================================================
# Reductions
# =====================================================================================

_sum = Primitive("sum", kernel="sum")


def _vjp_sum(g, ans, x, axis, keepdims):
    if not keepdims:
        g = _reshape(g, shape=_kept_shape(shape(x), axis))
    return broadcast_to(g, shape(x))


defvjp(_sum, _vjp_sum)
defjvp(_sum, lambda t, ans, x, axis, keepdims: _sum(t, axis=axis, keepdims=keepdims))


def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    """Σ over ``axis`` (None: all; an int or a tuple, negative allowed)."""
    return _sum(x, axis=_normalize_axes(axis, ndim(x), "sum"), keepdims=bool(keepdims))


def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """Σ over ``axis`` divided by the number of terms."""
    axes = _normalize_axes(axis, ndim(x), "mean")
    n = 1
    for a in axes:
        n *= shape(x)[a]
    return _sum(x, axis=axes, keepdims=bool(keepdims)) / n


_amax = Primitive("max", kernel="amax")


def _amax_share(ans, x, axis, keepdims):
    """1[x = max] / (number of tied maxima): ties share the cotangent equally."""
    if not keepdims:
        ans = _reshape(ans, shape=_kept_shape(shape(x), axis))
    hit = astype(equal(x, ans), x.dtype)
    return hit / _sum(hit, axis=axis, keepdims=True)


def _vjp_amax(g, ans, x, axis, keepdims):
    if not keepdims:
        g = _reshape(g, shape=_kept_shape(shape(x), axis))
    return g * _amax_share(ans, x, axis, keepdims)


defvjp(_amax, _vjp_amax)
defjvp(_amax, lambda t, ans, x, axis, keepdims:
       _sum(_amax_share(ans, x, axis, keepdims) * t, axis=axis, keepdims=keepdims))


def max(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    """max over ``axis``; the cotangent is split equally among tied maxima."""
    return _amax(x, axis=_normalize_axes(axis, ndim(x), "max"), keepdims=bool(keepdims))


_logsumexp = Primitive("logsumexp", kernel="logsumexp")


def _vjp_logsumexp(g, ans, x, axis, keepdims):
    if not keepdims:
        kept = _kept_shape(shape(x), axis)
        g = _reshape(g, shape=kept)
        ans = _reshape(ans, shape=kept)
    return g * exp(x - ans)


defvjp(_logsumexp, _vjp_logsumexp)
defjvp(_logsumexp, lambda t, ans, x, axis, keepdims:
       _sum(t * exp(x - (ans if keepdims else _reshape(ans, shape=_kept_shape(shape(x), axis)))),
            axis=axis, keepdims=keepdims))


def logsumexp(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """log Σ exp(x) over ``axis``, computed with the maximum shifted out."""
    return _logsumexp(x, axis=_normalize_axes(axis, ndim(x), "logsumexp"),
                      keepdims=bool(keepdims))


_log_softmax = Primitive("log_softmax", kernel="log_softmax")
defvjp(_log_softmax,
       lambda g, ans, x, axis: g - exp(ans) * _sum(g, axis=(axis,), keepdims=True))
defjvp(_log_softmax,
       lambda t, ans, x, axis: t - _sum(t * exp(ans), axis=(axis,), keepdims=True))


def log_softmax(x: Any, axis: int = -1) -> Any:
    """x − logsumexp(x) along ``axis``."""
    return _log_softmax(x, axis=_normalize_axes(axis, ndim(x), "log_softmax")[0])


def softmax(x: Any, axis: int = -1) -> Any:
    """exp(log_softmax(x))."""
    return exp(log_softmax(x, axis))


# =====================================================================================
# Shapes
# =====================================================================================

_reshape = Primitive("reshape", kernel="reshape")
defvjp(_reshape, lambda g, ans, x, shape: _reshape(g, shape=tuple(x.shape)))
defjvp(_reshape, lambda t, ans, x, shape: _reshape(t, shape=shape))


def reshape(x: Any, newshape: Any) -> Any:
    """``x`` with a new shape of the same size (one entry may be -1)."""
    if isinstance(newshape, (int, np.integer)):
        newshape = (int(newshape),)
    old = shape(x)
    newshape = tuple(newshape)
    size = math.prod(old)
    if -1 in newshape:
        rest = -math.prod(newshape)
        if newshape.count(-1) != 1 or rest <= 0 or size % rest:
            raise ValueError(f"reshape: cannot reshape an input of shape {old} into {newshape}")
        newshape = tuple(size // rest if s == -1 else s for s in newshape)
    elif math.prod(newshape) != size:
        raise ValueError(f"reshape: cannot reshape an input of shape {old} into {newshape}")
    if newshape == old:
        return x
    return _reshape(x, shape=newshape)


_transpose = Primitive("transpose", kernel="transpose")
defvjp(_transpose,
       lambda g, ans, x, axes: _transpose(g, axes=tuple(int(i) for i in np.argsort(axes))))
defjvp(_transpose, lambda t, ans, x, axes: _transpose(t, axes=axes))


def transpose(x: Any, axes: Any = None) -> Any:
    """Permute the axes (reversed when ``axes`` is None)."""
    nd = ndim(x)
    if axes is None:
        axes = tuple(range(nd - 1, -1, -1))
    axes = tuple(int(a) % nd if nd else int(a) for a in axes)
    if sorted(axes) != list(range(nd)):
        raise ValueError(f"transpose: axes {axes} are not a permutation of {nd} dimensions")
    return _transpose(x, axes=axes)


def swapaxes(x: Any, a: int, b: int) -> Any:
    """Exchange two axes."""
    nd = ndim(x)
    perm = list(range(nd))
    a, b = a % nd, b % nd
    perm[a], perm[b] = perm[b], perm[a]
    return _transpose(x, axes=tuple(perm))


_broadcast_to = Primitive("broadcast_to", kernel="broadcast_to")
defvjp(_broadcast_to, lambda g, ans, x, shape: unbroadcast(g, tuple(x.shape)))
defjvp(_broadcast_to, lambda t, ans, x, shape: _broadcast_to(t, shape=shape))


def broadcast_to(x: Any, newshape: Any) -> Any:
    """``x`` broadcast to ``newshape`` (NumPy rules); the VJP sums back."""
    newshape = tuple(newshape)
    if shape(x) == newshape:
        return x
    return _broadcast_to(x, shape=newshape)  # a shape that does not fit raises, named


def expand_dims(x: Any, axis: int) -> Any:
    """Insert a length-1 axis at ``axis``."""
    s = list(shape(x))
    nd = len(s) + 1
    if not -nd <= axis < nd:
        raise ValueError(f"expand_dims: axis {axis} out of range for {nd} dimensions")
    s.insert(axis % nd, 1)
    return _reshape(x, shape=tuple(s))


def squeeze(x: Any, axis: Any = None) -> Any:
    """Remove length-1 axes (all of them, or those named)."""
    s = shape(x)
    if axis is None:
        axes = tuple(i for i, n in enumerate(s) if n == 1)
    else:
        axes = _normalize_axes(axis, len(s), "squeeze")
        for a in axes:
            if s[a] != 1:
                raise ValueError(f"squeeze: axis {a} of shape {s} does not have length 1")
    return _reshape(x, shape=tuple(n for i, n in enumerate(s) if i not in axes))


# ---- indexing ----

_getitem = Primitive("getitem", kernel="getitem")
_scatter_add = Primitive("scatter_add", kernel="scatter_add")
defvjp(_getitem, lambda g, ans, x, index: _scatter_add(g, index=index, shape=tuple(x.shape)))
defvjp(_scatter_add, lambda g, ans, x, index, shape: _getitem(g, index=index))
defjvp(_getitem, lambda t, ans, x, index: _getitem(t, index=index))
defjvp(_scatter_add, lambda t, ans, x, index, shape: _scatter_add(t, index=index, shape=shape))


def _plain_index(index: Any) -> Any:
    if isinstance(index, tuple):
        return tuple(_plain_index(i) for i in index)
    if type(index) is Tensor:
        if index._trace is not None:
            raise TypeError(
                "getitem: an index array must not be a traced value; compute a mask and "
                "use tm.where, or pass the indices as a plain array"
            )
        return index._value
    if isinstance(index, list):
        return np.asarray(index)
    return index


def getitem(x: Any, index: Any) -> Any:
    """``x[index]``: basic slices and integer arrays; the VJP accumulates duplicate indices."""
    return _getitem(x, index=_plain_index(index))


# ---- joining ----

_concatenate = Primitive("concatenate", kernel="concatenate")


def _vjp_concatenate(argnum, g, ans, args, params):
    axis = params["axis"]
    start = 0
    for a in args[:argnum]:
        start += shape(a)[axis]
    stop = start + shape(args[argnum])[axis]
    index = (slice(None),) * axis + (slice(start, stop),)
    return _getitem(g, index=index)


defvjp_argnum(_concatenate, _vjp_concatenate)


def _jvp_concatenate(tangents, ans, args, params):
    parts = [t if t is not None else _zeros_like_value(a) for t, a in zip(tangents, args)]
    return _concatenate(*parts, axis=params["axis"])


defjvp_all(_concatenate, _jvp_concatenate)


def concatenate(xs: Any, axis: int = 0) -> Any:
    """Join arrays along an existing axis."""
    xs = list(xs)
    if not xs:
        raise ValueError("concatenate: needs at least one array")
    nd = ndim(xs[0])
    if nd == 0:
        raise ValueError("concatenate: zero-dimensional arrays cannot be concatenated")
    return _concatenate(*xs, axis=_normalize_axes(axis, nd, "concatenate")[0])


def stack(xs: Any, axis: int = 0) -> Any:
    """Join arrays along a new axis."""
    xs = list(xs)
    if not xs:
        raise ValueError("stack: needs at least one array")
    shapes = {shape(x) for x in xs}
    if len(shapes) != 1:
        raise ValueError(f"stack: all inputs must have the same shape; got {sorted(shapes)}")
    return concatenate([expand_dims(x, axis) for x in xs], axis=axis)


# =====================================================================================
# Linear algebra
# =====================================================================================


def _vjp_matmul_0(g, ans, x, y):
    """x̄ = ḡ yᵀ (batched: transposing the last two axes), summed over broadcast batch axes."""
    if ndim(y) == 1:
        gx = expand_dims(g, -1) * y
    elif ndim(x) == 1:
        gx = squeeze(matmul(y, expand_dims(g, -1)), -1)
    else:
        gx = matmul_nt(g, y)
    return unbroadcast(gx, shape(x))


def _vjp_matmul_1(g, ans, x, y):
    """ȳ = xᵀ ḡ (batched: transposing the last two axes), summed over broadcast batch axes."""
    if ndim(y) == 2 and ndim(x) > 2:
        # a shared matrix under a batch of inputs: the sum over the batch is one GEMM
        n, m = shape(y)
        return matmul_tn(reshape(x, (-1, n)), reshape(g, (-1, m)))
    if ndim(x) == 1 and ndim(y) == 1:
        gy = g * x
    elif ndim(x) == 1:
        gy = expand_dims(x, -1) * expand_dims(g, -2)
    elif ndim(y) == 1:
        gy = squeeze(matmul_tn(x, expand_dims(g, -1)), -1)
    else:
        gy = matmul_tn(x, g)
    return unbroadcast(gy, shape(y))


matmul = Primitive("matmul", kernel="matmul")
defvjp(matmul, _vjp_matmul_0, _vjp_matmul_1)
defjvp(matmul, lambda t, ans, x, y: matmul(t, y), lambda t, ans, x, y: matmul(x, t))

# The two transposed products the matmul rules need, as primitives of their own, so a
# reverse sweep costs one call per product rather than a transpose and a product
# (BLAS reads the transposed operand in place). Both operands have two or more axes.
matmul_nt = Primitive("matmul_nt", kernel="matmul_nt")  # x yᵀ
matmul_tn = Primitive("matmul_tn", kernel="matmul_tn")  # xᵀ y
defvjp(matmul_nt,  # C = A Bᵀ: Ā = C̄ B, B̄ = C̄ᵀ A
       lambda g, ans, x, y: unbroadcast(matmul(g, y), shape(x)),
       lambda g, ans, x, y: unbroadcast(matmul_tn(g, x), shape(y)))
defjvp(matmul_nt,
       lambda t, ans, x, y: matmul_nt(t, y),
       lambda t, ans, x, y: matmul_nt(x, t))
defvjp(matmul_tn,  # C = Aᵀ B: Ā = B C̄ᵀ, B̄ = A C̄
       lambda g, ans, x, y: unbroadcast(matmul_nt(y, g), shape(x)),
       lambda g, ans, x, y: unbroadcast(matmul(x, g), shape(y)))
defjvp(matmul_tn,
       lambda t, ans, x, y: matmul_tn(t, y),
       lambda t, ans, x, y: matmul_tn(x, t))


def dot(x: Any, y: Any) -> Any:
    """Σ x·y over all entries (the inner product of two same-shaped arrays)."""
    if shape(x) != shape(y):
        raise ValueError(f"vdot: shapes differ: {shape(x)} and {shape(y)}")
    return sum(x * y)


vdot = dot


# =====================================================================================
# Tensor's operators
# =====================================================================================
# tensor.py, a layer below, cannot import this table, so the table hands itself down:
# x + y calls add(x, y), x @ y matmul(x, y), x.sum() sum(x), and so on.

install_ops(sys.modules[__name__])
