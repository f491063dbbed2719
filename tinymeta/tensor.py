"""``Tensor``: an immutable array plus its place on a tape.

A Tensor outside any transform (``tm.tensor(data)``) is a constant: it holds a
read-only array. Inside a transform, a Tensor is a *box*: ``_value`` is the
value one trace level down (an array, or a Tensor of an outer trace), and
``(_trace, _id)`` is its variable on the tape of its own level.

Operators and methods mirror ``ndarray``'s and call tinymeta's primitives, which
:mod:`tinymeta.ops` (a layer above) hands down with :func:`install_ops`: this
module imports no part of it. ``__array_ufunc__ = None`` makes NumPy defer to the
Tensor in mixed expressions (``ndarray @ Tensor`` reaches ``Tensor.__rmatmul__``).

A trace is any object with ``level`` (an int: a trace created later is an inner one
with a higher level), ``refuses_concrete`` (True when its recording must not depend
on values: ``bool()``, ``float()``, ``.data`` of its Tensors then raise) and
``process(prim, args, params)``; this module knows no trace class.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from . import kernels

# the primitive table behind Tensor's operators and methods: tinymeta.ops.numpy_ops
_ops: Any = None


def install_ops(table: Any) -> None:
    """Make ``table`` the primitives Tensor's operators and methods call: ``table.add``
    for ``x + y``, ``table.matmul`` for ``x @ y``, ``table.sum`` for ``x.sum()``, ...
    :mod:`tinymeta.ops.numpy_ops` calls it once its table is defined."""
    global _ops
    _ops = table


class Tensor:
    """An immutable array on a tape. Build constants with :func:`tinymeta.tensor`."""

    __slots__ = ("_value", "_trace", "_id", "__weakref__")
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __init__(self, value: Any, trace: Any = None, id: int = -1) -> None:
        self._value = value
        self._trace = trace
        self._id = id

    # ---- what the Tensor holds ----
    def _raw(self) -> Any:
        v = self._value
        while type(v) is Tensor:
            v = v._value
        return v

    def _captured(self) -> bool:
        # whether a trace at this level or below records a program that must not depend on
        # values (make_tape / compile): its ``refuses_concrete`` says so
        t: Any = self
        while type(t) is Tensor:
            if t._trace is not None and t._trace.refuses_concrete:
                return True
            t = t._value
        return False

    @property
    def data(self) -> Any:
        """The array (read-only). Outside the derivative: use ops to keep it."""
        if self._captured():
            raise TypeError(
                f"Tensor.data of a traced value at {_user_line()} while make_tape/compile "
                "records would bake this value into the tape; compute with tinymeta ops"
            )
        v = self._raw()
        if self._trace is None:
            return v
        view = v.view()
        if isinstance(view, np.ndarray):  # (cupy arrays have no write lock)
            view.flags.writeable = False
        return view

    @property
    def shape(self) -> tuple:
        return self._raw().shape

    @property
    def dtype(self) -> Any:
        return self._raw().dtype

    @property
    def ndim(self) -> int:
        return self._raw().ndim

    @property
    def size(self) -> int:
        return self._raw().size

    def __len__(self) -> int:
        return len(self._raw())

    def __repr__(self) -> str:
        if self._trace is None:
            return f"Tensor({self._value!r})"
        kind = type(self._trace).__name__
        level = self._trace.level
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, traced by {kind} {level})"

    # ---- refusing to drop the derivative ----
    def _refuse(self, what: str) -> None:
        if self._trace is None:
            return
        if self._captured():
            raise TypeError(
                f"{what} of a traced value (shape {self.shape}) at {_user_line()} while "
                "make_tape/compile records: the tape would depend on data values. Write "
                "the branch with tm.where, or keep this function out of tm.compile"
            )
        raise TypeError(
            f"{what} of a traced Tensor (shape {self.shape}) at {_user_line()} would "
            "silently drop its derivative: compute with tinymeta ops (tm.where, "
            "tm.maximum, ...), or take tm.stop_gradient(x) for a value outside the "
            "derivative"
        )

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        self._refuse("np.asarray")
        v = self._value
        if not isinstance(v, (np.ndarray, np.generic, int, float, bool, complex)):
            raise TypeError(
                f"np.asarray of a Tensor holding a {type(v).__module__}.{type(v).__name__} "
                "(a device array): copy it to the host with tm.get_backend().to_numpy(x.data)"
            )
        return np.asarray(v, dtype=dtype)

    def __bool__(self) -> bool:
        self._refuse("bool()")
        return bool(self._value)

    def __float__(self) -> float:
        self._refuse("float()")
        return float(self._value)

    def __int__(self) -> int:
        self._refuse("int()")
        return int(self._value)

    def __index__(self) -> int:
        self._refuse("operator.index()")
        return int(self._value)

    def item(self) -> Any:
        self._refuse(".item()")
        return self._value.item()

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError(
            "Tensor is immutable: item assignment is not supported; build a new array "
            "with tm.where or tm.concatenate"
        )

    __hash__ = object.__hash__

    # ---- operators ----
    def __add__(self, o): return _ops.add(self, o)
    def __radd__(self, o): return _ops.add(o, self)
    def __sub__(self, o): return _ops.subtract(self, o)
    def __rsub__(self, o): return _ops.subtract(o, self)
    def __mul__(self, o): return _ops.multiply(self, o)
    def __rmul__(self, o): return _ops.multiply(o, self)
    def __truediv__(self, o): return _ops.divide(self, o)
    def __rtruediv__(self, o): return _ops.divide(o, self)
    def __pow__(self, o): return _ops.power(self, o)
    def __rpow__(self, o): return _ops.power(o, self)
    def __matmul__(self, o): return _ops.matmul(self, o)
    def __rmatmul__(self, o): return _ops.matmul(o, self)
    def __neg__(self): return _ops.negative(self)
    def __pos__(self): return self
    def __abs__(self): return _ops.abs(self)
    def __getitem__(self, index): return _ops.getitem(self, index)
    def __lt__(self, o): return _ops.less(self, o)
    def __le__(self, o): return _ops.less_equal(self, o)
    def __gt__(self, o): return _ops.greater(self, o)
    def __ge__(self, o): return _ops.greater_equal(self, o)
    def __eq__(self, o): return _ops.equal(self, o)  # type: ignore[override]
    def __ne__(self, o): return _ops.not_equal(self, o)  # type: ignore[override]
    def __and__(self, o): return _ops.logical_and(self, o)
    def __rand__(self, o): return _ops.logical_and(o, self)
    def __or__(self, o): return _ops.logical_or(self, o)
    def __ror__(self, o): return _ops.logical_or(o, self)
    def __invert__(self): return _ops.logical_not(self)

    # ---- methods ----
    def sum(self, axis=None, keepdims=False): return _ops.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return _ops.mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return _ops.max(self, axis, keepdims)
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops.reshape(self, shape)
    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops.transpose(self, axes or None)
    def swapaxes(self, a, b): return _ops.swapaxes(self, a, b)
    def squeeze(self, axis=None): return _ops.squeeze(self, axis)
    def astype(self, dtype): return _ops.astype(self, dtype)
    def exp(self): return _ops.exp(self)
    def log(self): return _ops.log(self)
    def tanh(self): return _ops.tanh(self)

    @property
    def T(self): return _ops.transpose(self, None)


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """A constant Tensor holding a read-only copy of ``data`` (on the active backend).

    tinymeta is functional: derivatives come from ``grad`` / ``vjp`` applied to a
    function, not from flags on arrays, so ``requires_grad=True`` is refused with
    a pointer to ``tm.grad``.
    """
    if requires_grad:
        raise ValueError(
            "tensor: requires_grad=True is not how tinymeta takes derivatives; write a "
            "function f(x) and call tm.grad(f)(x) (or tm.vjp(f, x)) instead"
        )
    if type(data) is Tensor:
        data = data._raw()
    arr = kernels.get_backend().asarray(data, dtype=dtype).copy()
    if isinstance(arr, np.ndarray):  # (cupy arrays have no write lock: immutable by convention)
        arr.flags.writeable = False
    return Tensor(arr)


def _user_line() -> str:
    """file:line of the innermost stack frame outside the tinymeta and NumPy packages."""
    here = os.path.dirname(os.path.abspath(__file__))
    numpy_dir = os.path.dirname(os.path.abspath(np.__file__))
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith((here + os.sep, numpy_dir + os.sep)):
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"

