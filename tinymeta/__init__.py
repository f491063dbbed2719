"""tinymeta: a small tape-based reverse-mode autodiff engine for NumPy arrays, and
few-shot meta-learning (MAML, first-order MAML, Reptile, iMAML, Meta-SGD) on it."""

from __future__ import annotations

from . import kernels, meta, nn, optim, tasks, testing  # noqa: E402  (built on the engine above)
from .compile import Compiled, Tape, compile, make_tape
from .config import config
from .io import load, save  # noqa: E402
from .kernels import backend_name, get_backend, set_backend
from .ops import (
    abs,
    add,
    astype,
    broadcast_to,
    col2im,
    concatenate,
    divide,
    dot,
    equal,
    exp,
    expand_dims,
    getitem,
    greater,
    greater_equal,
    im2col,
    isfinite,
    less,
    less_equal,
    log,
    log_softmax,
    logsumexp,
    matmul,
    max,
    maximum,
    mean,
    minimum,
    multiply,
    negative,
    not_equal,
    power,
    relu,
    reshape,
    sigmoid,
    sign,
    softmax,
    sqrt,
    squeeze,
    stack,
    stop_gradient,
    subtract,
    sum,
    swapaxes,
    tanh,
    transpose,
    unbroadcast,
    vdot,
    where,
)
from .tape import Primitive, defjvp, defjvp_all, defvjp, defvjp_argnum, primitive
from .tensor import Tensor, tensor
from .transforms import (
    grad,
    hessian,
    hvp,
    hvp_rev,
    jacobian,
    jvp,
    ravel_pytree,
    value_and_grad,
    vjp,
)
from .tree import tree_flatten, tree_leaves, tree_map, tree_unflatten
from .version import __version__

__all__ = [name for name in dir() if not name.startswith("_")]

kernels.get_backend()  # bind every primitive to the default backend's kernels
