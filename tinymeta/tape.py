"""The tape: primitives, trace levels, and the gradient tape they are recorded on.

A *primitive* is an array function with a VJP rule per argument. Calling one
(``bind``) looks at its arguments: plain arrays go straight to the backend
kernel; Tensors are handed to the innermost *trace* among them, whose
``process(prim, args, params)`` sees them through :func:`unbox`.

``GradTrace`` (one per ``grad`` / ``vjp``) is a Wengert list of nodes
``(primitive, input values, parent ids, params, output value)``. Its values live
one level down, so that a ``grad`` inside a ``grad`` records its own forward and
backward sweeps on the outer tape: gradients of gradients to any order, with
perturbations of different levels kept apart. The reverse sweep over it is
:func:`tinymeta.transforms.reverse.backward`; the other traces are forward mode's
``JVPTrace`` (:mod:`tinymeta.transforms.forward`) and ``make_tape``'s
``CaptureTrace`` (:mod:`tinymeta.compile`).

Traces are numbered by a global counter (:func:`new_level`); a trace created
later is an inner one. A tape lives as long as the Tensors that point to it:
once ``grad`` returns, nothing refers to it and its memory goes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

from . import kernels
from .config import config
from .tensor import Tensor

_levels = itertools.count(1)


def new_level() -> int:
    """A level above every trace's so far: a trace created later is an inner one."""
    return next(_levels)


class _Phase:
    """Which sweep is running: "forward" or "backward" (shown by ``make_tape``)."""

    name = "forward"


phase = _Phase()


class Primitive:
    """An array function the tape records, with one VJP rule per argument.

    ``impl`` runs on backend arrays. Built-in primitives take it from the active
    backend by ``kernel`` name; user-defined ones (:func:`primitive`) bring it.
    """

    __slots__ = ("name", "impl", "kernel", "vjps", "vjp_argnum", "vjp_pre", "jvps", "jvp_all",
                 "differentiable")

    def __init__(self, name: str, impl: Callable | None = None, kernel: str | None = None,
                 differentiable: bool = True) -> None:
        self.name = name
        self.kernel = kernel
        self.impl = impl
        self.vjps: tuple = ()
        self.vjp_argnum: Callable | None = None
        self.vjp_pre: Callable | None = None
        self.jvps: tuple = ()
        self.jvp_all: Callable | None = None
        self.differentiable = differentiable
        if kernel is not None:
            _builtin.append(self)
            if kernels._state.module is not None:
                self.impl = getattr(kernels._state.module, kernel)

    def __call__(self, *args: Any, **params: Any) -> Any:
        # the body of bind(), inlined: this is the hottest call in the engine
        top = None
        boxed = False
        for a in args:
            if type(a) is Tensor:
                boxed = True
                t = a._trace
                if t is not None and (top is None or t.level > top.level):
                    top = t
        if top is not None:
            return top.process(self, args, params)
        if boxed:
            return _evaluate(self, args, params)
        return _run(self, args, params)

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"


_builtin: list[Primitive] = []


def _rebind_kernels(module) -> None:
    for prim in _builtin:
        prim.impl = getattr(module, prim.kernel)


kernels.on_switch(_rebind_kernels)


def defvjp(prim: Primitive, *rules: Callable | None, pre: Callable | None = None) -> None:
    """Register VJP rules, one per positional argument (None: not differentiable there).

    A rule is ``rule(g, ans, *args, **params) -> cotangent of that argument``, where
    ``g`` is the cotangent of the output ``ans``; ``None`` declares the argument
    non-differentiable (its cotangent is zero, like ``where``'s condition). A
    primitive with no rule for an argument it is differentiated in raises. Rules
    must use tinymeta ops only, so that the backward sweep can itself be recorded
    and differentiated.

    ``pre(g, ans, *args, **params) -> g'``, when given, runs once per node before the
    rules, which then receive g' for g: the part of the chain rule that every argument
    shares (for relu(x W + b): ḡ·1[ans > 0], the cotangent of x W + b) is computed once.
    """
    prim.vjps = tuple(rules)
    prim.vjp_pre = pre


def defvjp_argnum(prim: Primitive, rule: Callable) -> None:
    """Register one VJP rule for every argument: ``rule(argnum, g, ans, args, params)``."""
    prim.vjp_argnum = rule


def defjvp(prim: Primitive, *rules: Callable | None) -> None:
    """Register JVP rules, one per positional argument (None: zero tangent from there).

    A rule is ``rule(t, ans, *args, **params) -> the output's tangent from that
    argument's tangent t`` (the contributions of several arguments are added).
    With JVP rules, ``jvp`` runs in true forward mode and ``hvp`` runs forward
    over reverse; a primitive without them is handled by transposing its VJP.
    """
    prim.jvps = tuple(rules)


def defjvp_all(prim: Primitive, rule: Callable) -> None:
    """Register one JVP rule for all arguments: ``rule(tangents, ans, args, params)``,
    ``tangents[i]`` None where argument i carries none."""
    prim.jvp_all = rule


def primitive(fun: Callable, name: str | None = None) -> Primitive:
    """Make a user-defined primitive of an array function; give it rules with :func:`defvjp`."""
    return Primitive(name or getattr(fun, "__name__", "primitive"), impl=fun)


# ---- calling a primitive -----------------------------------------------------------

def bind(prim: Primitive, args: tuple | list, params: dict) -> Any:
    """Apply ``prim``: at the innermost trace among ``args``, or on plain arrays."""
    top = None
    for a in args:
        if type(a) is Tensor:
            t = a._trace
            if t is not None and (top is None or t.level > top.level):
                top = t
    if top is None:
        return _evaluate(prim, args, params)
    return top.process(prim, args, params)


def _evaluate(prim: Primitive, args: tuple | list, params: dict) -> Any:
    """Run the kernel on plain arrays (constant Tensors unwrapped, and the result rewrapped)."""
    wrap = False
    vals = args
    for a in args:
        if type(a) is Tensor:
            wrap = True
            vals = [x._value if type(x) is Tensor else x for x in args]
            break
    out = _run(prim, vals, params)
    return Tensor(out) if wrap else out


def _run(prim: Primitive, vals: tuple | list, params: dict) -> Any:
    """Call the kernel on arrays; errors come back naming the primitive and the shapes."""
    impl = prim.impl
    if impl is None:
        raise TypeError(f"{prim.name}: no kernel in backend {kernels.backend_name()!r}")
    try:
        out = impl(*vals, **params)
    except (ValueError, TypeError, IndexError) as e:
        raise type(e)(f"{prim.name}: {_describe_args(vals)}: {e}") from e
    if config.debug_nans:
        _check_finite(prim, vals, out)
    return out


def _describe_args(vals) -> str:
    parts = []
    for v in vals:
        if hasattr(v, "shape") and hasattr(v, "dtype"):
            parts.append(f"{v.dtype}{list(v.shape)}")
        else:
            parts.append(type(v).__name__)
    return "inputs " + ", ".join(parts)


def _check_finite(prim: Primitive, vals, out) -> None:
    bad = _nonfinite(out)
    if bad:
        raise FloatingPointError(
            f"debug_nans: {prim.name} produced {bad} from {_describe_args(vals)}"
        )


def _nonfinite(x: Any) -> str:
    """"nan" or "inf" when the float array (or Python float) ``x`` holds one, else ""."""
    while type(x) is Tensor:
        x = x._value
    dt = getattr(x, "dtype", None)
    if dt is None:
        if isinstance(x, (float, complex)) and not math.isfinite(abs(x)):
            return "nan" if x != x else "inf"
        return ""
    if dt.kind not in "fc":
        return ""
    xp = kernels.get_backend().xp
    if bool(xp.all(xp.isfinite(x))):
        return ""
    return "nan" if bool(xp.any(xp.isnan(x))) else "inf"


def check_derivative(kind: str, prim: Primitive, argnum: int | None, d: Any,
                     vals: tuple | list) -> None:
    """``debug_nans`` on a derivative a rule produced: raise where ``d`` holds a NaN or an Inf.

    ``kind`` is "VJP" (a cotangent of the backward sweep: ``argnum`` the argument whose
    cotangent it is, None for the part shared by every argument) or "JVP" (a tangent of
    forward mode). The ``FloatingPointError`` names the primitive whose rule produced it,
    e.g. "debug_nans: the VJP of sqrt produced inf (the cotangent of its argument 0) in
    the backward sweep, from inputs float64[2]".
    """
    bad = _nonfinite(d)
    if not bad:
        return
    if kind == "JVP":
        what, where = "the tangent of its output", "forward mode"
    elif argnum is None:
        what, where = "the cotangent shared by its arguments", "the backward sweep"
    else:
        what, where = f"the cotangent of its argument {argnum}", "the backward sweep"
    plain = [_plain(v) for v in vals]
    raise FloatingPointError(
        f"debug_nans: the {kind} of {prim.name} produced {bad} ({what}) in {where}, from "
        f"{_describe_args(plain)}"
    )


def _plain(v: Any) -> Any:
    while type(v) is Tensor:
        v = v._value
    return v


def _escaped(prim: Primitive) -> None:
    raise ValueError(
        f"{prim.name}: a Tensor from a finished transform was used after the transform "
        "returned (an escaped tracer); return values out of grad/vjp instead of keeping "
        "the Tensors a transformed function received"
    )


def unbox(trace: Any, prim: Primitive, args: tuple | list) -> tuple[list, list[int], bool]:
    """The arguments of a call of ``prim`` as ``trace`` sees them (every trace's ``process``).

    Returns ``(vals, ids, nested)``: each argument one level down (a Tensor of ``trace``
    unwrapped, anything else as it is), its variable id on ``trace`` (-1 when it is not a
    Tensor of ``trace``), and whether some value is still a Tensor (of an outer trace or a
    constant), so that the call must go through :func:`bind` again rather than the kernel.
    Refuses a call once the trace's transform has returned (an escaped tracer).
    """
    if not trace.recording:
        _escaped(prim)
    vals = []
    ids = []
    nested = False
    for a in args:
        if type(a) is Tensor:
            if a._trace is trace:
                v = a._value
                vals.append(v)
                ids.append(a._id)
                if type(v) is Tensor:
                    nested = True
                continue
            nested = True
        vals.append(a)
        ids.append(-1)
    return vals, ids, nested


# ---- the gradient tape ---------------------------------------------------------------

class GradTrace:
    """A Wengert list for reverse mode: row i is the call that produced variable i.

    Recording only; :func:`tinymeta.transforms.reverse.backward` sweeps it.
    """

    __slots__ = ("level", "nodes", "recording", "__weakref__")
    refuses_concrete = False  # its Tensors may be read as values (bool(), float(), .data)

    def __init__(self) -> None:
        self.level = new_level()
        self.nodes: list[tuple] = []
        self.recording = True  # False once the transform's forward pass has returned

    def new_leaf(self, value: Any) -> Tensor:
        self.nodes.append((None, (), (), None, value))
        return Tensor(value, self, len(self.nodes) - 1)

    def process(self, prim: Primitive, args, params: dict) -> Any:
        vals, parents, nested = unbox(self, prim, args)
        out = bind(prim, vals, params) if nested else _run(prim, vals, params)
        if not prim.differentiable:
            return out
        nodes = self.nodes
        nodes.append((prim, vals, parents, params, out))
        return Tensor(out, self, len(nodes) - 1)
