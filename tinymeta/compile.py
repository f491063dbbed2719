"""The tape as a program: ``make_tape`` records it, ``compile`` replays it.

``make_tape(f)(*args)`` runs ``f`` once under a :class:`CaptureTrace`,
which records every primitive call on backend arrays (the forward pass and, under
``grad``, the reverse sweep) as a flat list of equations on variables, like a jaxpr.

``compile(f)`` records that program once per signature of its inputs (tree
structure, shapes, dtypes, the values of Python scalars, the backend) and then
replays it on fresh inputs as generated straight-line Python: one kernel call a
line, no Tensor objects, no graph bookkeeping, each intermediate freed after its
last use (``compiled.source(*args)`` shows the code). On the NumPy backend a replay
gives the eager results bitwise: it makes the same kernel calls in the same order.

What cannot be captured is refused rather than baked in: during capture,
``bool()``, ``float()``, ``int()``, ``.item()``, ``.data`` and ``np.asarray`` of a
traced value raise a TypeError naming the line, since a tape whose shape depends on
data values would replay the wrong program. Values the function closes over and
random numbers it draws are constants of the recorded program.
"""

from __future__ import annotations

import itertools
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from . import kernels, ops
from .config import config
from .tape import Primitive, bind, new_level, phase, unbox
from .tensor import Tensor
from .transforms import vjp
from .transforms.boundary import argnums_tuple
from .tree import tree_flatten, tree_unflatten

# ---- the capture trace ----------------------------------------------------------------


class Var:
    """A variable of a captured program."""

    __slots__ = ("id", "shape", "dtype")

    def __init__(self, id: int, shape: tuple, dtype: Any) -> None:
        self.id, self.shape, self.dtype = id, shape, dtype

    def __repr__(self) -> str:
        return _var_name(self.id)


class Eqn:
    """One row of a captured program: ``out = prim(*ins, **params)``."""

    __slots__ = ("prim", "ins", "params", "out", "phase")

    def __init__(self, prim: Primitive, ins: list, params: dict, out: Var, phase: str) -> None:
        self.prim, self.ins, self.params, self.out, self.phase = prim, ins, params, out, phase


class CaptureTrace:
    """Records every primitive call as a flat program on variables (``make_tape``).

    Every call, forward and (under ``grad``) backward, becomes one :class:`Eqn` on
    variables (:class:`Var`), like a jaxpr: the program a :class:`Tape` prints and
    replays. Its Tensors refuse to be read as values (``refuses_concrete``).
    """

    __slots__ = ("level", "vars", "eqns", "recording", "__weakref__")
    refuses_concrete = True  # a recorded program must not depend on the values it sees

    def __init__(self) -> None:
        self.level = new_level()
        self.vars: list[Var] = []
        self.eqns: list[Eqn] = []
        self.recording = True

    def _new_var(self, value: Any) -> Var:
        v = Var(len(self.vars), tuple(_shape_of(value)), _dtype_of(value))
        self.vars.append(v)
        return v

    def new_input(self, value: Any) -> Tensor:
        v = self._new_var(value)
        return Tensor(value, self, v.id)

    def process(self, prim: Primitive, args, params: dict) -> Any:
        vals, ids, _ = unbox(self, prim, args)
        ins = [a if i < 0 else self.vars[i] for a, i in zip(args, ids)]
        out = bind(prim, vals, params)
        v = self._new_var(out)
        self.eqns.append(Eqn(prim, ins, params, v, phase.name))
        return Tensor(out, self, v.id)


def _shape_of(x: Any) -> tuple:
    return tuple(getattr(x, "shape", ()))


def _dtype_of(x: Any) -> Any:
    return getattr(x, "dtype", type(x).__name__)


def _var_name(i: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = letters[r] + s
    return s


# ---- the recorded program and its replay -------------------------------------------------

_STATIC = (int, float, bool, complex, str, type(None), np.dtype)


def _is_static(x: Any) -> bool:
    return isinstance(x, _STATIC) or (isinstance(x, type))


class Tape:
    """A recorded program: inputs, one equation per primitive call, outputs.

    ``print(tape)`` lists it one primitive a line with shapes and dtypes;
    ``tape.replay(*args)`` runs the same calls on new inputs of the same
    shapes and dtypes (Python scalars among the arguments are constants of the
    program and are not replaced).
    """

    def __init__(self, invars: list, in_def: Any, static: dict, eqns: list, outs: list,
                 out_def: Any) -> None:
        self.invars, self.in_def, self.static = invars, in_def, static
        self.eqns: list[Eqn] = eqns
        self.outs, self.out_def = outs, out_def
        self._fn: Callable | None = None
        self._source: str | None = None

    def __len__(self) -> int:
        return len(self.eqns)

    def __str__(self) -> str:
        lines = ["tape (" + ", ".join(_typed(v) for v in self.invars) + ")"]
        current = None
        for e in self.eqns:
            if e.phase != current:
                current = e.phase
                lines.append(f"  {current}:")
            args = " ".join(_show_in(a) for a in e.ins)
            params = " ".join(f"{k}={_show_param(v)}" for k, v in e.params.items())
            lines.append(f"    {_typed(e.out)} = {e.prim.name} {args}"
                         + (f"  {params}" if params else ""))
        lines.append("  returns (" + ", ".join(_show_in(o) for o in self.outs) + ")")
        return "\n".join(lines)

    __repr__ = __str__

    def _inputs(self, args: tuple) -> list:
        leaves, _ = tree_flatten(args)
        arrays = [x for i, x in enumerate(leaves) if i not in self.static]
        if len(arrays) != len(self.invars):
            raise ValueError(f"replay: expected {len(self.invars)} array inputs, "
                             f"got {len(arrays)}")
        for v, x in zip(self.invars, arrays):
            xs = tuple(ops.shape(x))
            xd = np.dtype(getattr(x, "dtype", type(x)))
            if xs != v.shape or xd != np.dtype(v.dtype):
                raise ValueError(f"replay: input {_var_name(v.id)} was recorded as {_typed(v)}; "
                                 f"got {_short_dtype(xd)}{list(xs)}")
        return arrays

    def replay(self, *args: Any) -> Any:
        """Run the recorded calls on new inputs (same shapes and dtypes); return the outputs."""
        if self._fn is None:
            self._fn, self._source = _generate(self)
        return tree_unflatten(self.out_def, self._fn(*self._inputs(args)))

    def source(self) -> str:
        """The straight-line Python that :meth:`replay` runs."""
        if self._source is None:
            self._fn, self._source = _generate(self)
        return self._source

    def to_dot(self) -> str:
        """The tape as a Graphviz graph (DOT text; ``dot -Tsvg`` renders it).

        A node per input, per equation (the equation, its value's dtype and shape) and per
        output; an edge per input of an equation, labelled with the variable it carries.
        In the backward section the seed ȳ = 1 (``make_tape(f, backward=True)``'s ``seed``
        equation) and every variable computed from it are cotangents, linear in ȳ: an
        edge from one of them is drawn red and labelled "cotangent". Any other edge there
        carries a value the rule reads (a forward value, or a factor such as 1 − tanh²).
        """
        linear = _seed_dependent(self.eqns)
        consts = itertools.count()
        lines = ["digraph tape {", '  node [shape=box, fontname="Helvetica"];']
        lines += _dot_cluster("inputs", [f'{_dot_id(v)} [shape=ellipse, label="{_typed(v)}"];'
                                         for v in self.invars])
        edges: list[str] = []
        for section in ("forward", "backward"):
            eqns = [e for e in self.eqns if e.phase == section]
            lines += _dot_cluster(section, [_dot_node(e) for e in eqns])
            for e in eqns:
                for a in e.ins:
                    edges += _dot_edge(a, _dot_id(e.out), section == "backward" and
                                       type(a) is Var and a.id in linear, consts)
        for i, o in enumerate(self.outs):
            lines.append(f'  "out{i}" [shape=plaintext, label="returns[{i}]"];')
            edges += _dot_edge(o, f'"out{i}"', False, consts)
        return "\n".join(lines + edges + ["}"]) + "\n"


def _key(a: Any) -> Any:
    # an equation's input or parameter as a dictionary key: Python scalars and other
    # hashable values by type and value, arrays and other objects by identity
    if type(a) is Var:
        return ("v", a.id)
    if isinstance(a, (float, np.floating)):
        return (type(a), repr(a))  # 0.0 and -0.0 are equal but not the same constant
    try:
        hash(a)
    except TypeError:  # arrays, lists
        return ("id", id(a))
    return (type(a), a)


def _dedupe(eqns: list, outs: list) -> tuple[list, list]:
    """Common subexpressions: an equation with the primitive, inputs and parameters of an
    earlier one is dropped and its output read from the earlier one's, so the replay
    computes each value once (primitives are pure, as jax.jit assumes)."""
    same: dict[int, Var] = {}  # dropped output id -> the Var that holds the value
    first: dict[tuple, Var] = {}
    kept: list = []
    for e in eqns:
        ins = [same.get(a.id, a) if type(a) is Var else a for a in e.ins]
        key = (id(e.prim), tuple(_key(a) for a in ins),
               tuple((k, _key(v)) for k, v in sorted(e.params.items())))
        if key in first:
            same[e.out.id] = first[key]
            continue
        first[key] = e.out
        kept.append(Eqn(e.prim, ins, e.params, e.out, e.phase))
    return kept, [same.get(o.id, o) if type(o) is Var else o for o in outs]


def _generate(tape: Tape) -> tuple[Callable, str]:
    """Turn the equations into one Python function: a kernel call a line.

    Repeated equations are computed once (:func:`_dedupe`); dead equations (whose
    outputs reach no output) are dropped; each intermediate is deleted after its last
    use, so memory follows liveness.
    """
    eqns, tape_outs = _dedupe(tape.eqns, tape.outs)
    needed = {o.id for o in tape_outs if type(o) is Var}
    live: list[Eqn] = []
    for e in reversed(eqns):
        if e.out.id in needed:
            live.append(e)
            needed.update(a.id for a in e.ins if type(a) is Var)
    live.reverse()
    last_use: dict[int, int] = {}
    for i, e in enumerate(live):
        for a in e.ins:
            if type(a) is Var:
                last_use[a.id] = i
    out_ids = {o.id for o in tape_outs if type(o) is Var}
    env: dict[str, Any] = {}
    counter = itertools.count()

    def const(value: Any) -> str:
        name = f"k{next(counter)}"
        env[name] = value
        return name

    def name(v: Var) -> str:
        return f"v{v.id}"  # (the printed names, a, b, …, can be Python keywords)

    lines = ["def replay(" + ", ".join(name(v) for v in tape.invars) + "):"]
    for i, e in enumerate(live):
        fn = const(e.prim.impl)
        args = [name(a) if type(a) is Var else (repr(a) if isinstance(a, (int, float, bool))
                                                 and not isinstance(a, np.generic)
                                                 else const(a)) for a in e.ins]
        kw = [f"{k}={const(v)}" for k, v in e.params.items()]
        lines.append(f"    {name(e.out)} = {fn}({', '.join(args + kw)})  # {e.prim.name}")
        dead = [name(a) for a in {a.id: a for a in e.ins if type(a) is Var}.values()
                if last_use[a.id] == i and a.id not in out_ids]
        if dead:
            lines.append(f"    del {', '.join(dead)}")
    outs = [name(o) if type(o) is Var else const(o) for o in tape_outs]
    lines.append(f"    return [{', '.join(outs)}]")
    source = "\n".join(lines) + "\n"
    scope: dict[str, Any] = dict(env)
    exec(source, scope)  # noqa: S102  (our own generated code over our own kernels)
    return scope["replay"], source


def _short_dtype(dt: Any) -> str:
    try:
        d = np.dtype(dt)
    except TypeError:
        return str(dt)
    return {"f": "f", "i": "i", "u": "u", "b": "bool", "c": "c"}.get(d.kind, d.kind) + (
        str(d.itemsize * 8) if d.kind != "b" else "")


def _typed(v: Var) -> str:
    return f"{_var_name(v.id)}:{_short_dtype(v.dtype)}{list(v.shape)}"


def _show_in(a: Any) -> str:
    if type(a) is Var:
        return _var_name(a.id)
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        if a.shape == ():
            return repr(a.item()) if hasattr(a, "item") else "const"
        return f"const:{_short_dtype(a.dtype)}{list(a.shape)}"
    return repr(a)


def _show_param(v: Any) -> str:
    if isinstance(v, np.dtype):
        return _short_dtype(v)
    if isinstance(v, tuple) and any(isinstance(i, (slice, np.ndarray)) for i in v):
        return "[" + ", ".join(_show_index(i) for i in v) + "]"
    return repr(v)


def _show_index(i: Any) -> str:
    if isinstance(i, slice):
        return f"{'' if i.start is None else i.start}:{'' if i.stop is None else i.stop}" + (
            "" if i.step is None else f":{i.step}")
    if isinstance(i, np.ndarray):
        return f"int{list(i.shape)}"
    return repr(i)


# ---- the tape as a graph (Tape.to_dot) ------------------------------------------------


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _dot_id(v: Var) -> str:
    return f'"{_var_name(v.id)}"'  # quoted: a name such as "node" or "edge" is a DOT keyword


def _dot_cluster(name: str, nodes: list[str]) -> list[str]:
    if not nodes:
        return []
    return [f"  subgraph cluster_{name} {{", f'    label="{name}";'] + [
        "    " + n for n in nodes] + ["  }"]


def _seed_dependent(eqns: list) -> set[int]:
    """The ids of the variables computed from the seed: the cotangents (linear in ȳ)."""
    linear: set[int] = set()
    for e in eqns:
        if e.prim is seed or any(type(a) is Var and a.id in linear for a in e.ins):
            linear.add(e.out.id)
    return linear


def _dot_node(e: Eqn) -> str:
    text = [f"{_var_name(e.out.id)} = {e.prim.name} " + " ".join(_show_in(a) for a in e.ins)]
    text += [f"{k}={_show_param(v)}" for k, v in e.params.items()]
    text.append(f"{_short_dtype(e.out.dtype)}{list(e.out.shape)}")
    if e.prim is seed and type(e.ins[0]) is Var:
        y = _var_name(e.ins[0].id)
        text.append(f"seed: \u2202{y}/\u2202{y} = 1")
    label = "\\n".join(_dot_escape(t) for t in text)
    return f'{_dot_id(e.out)} [label="{label}"' + (", style=bold];" if e.prim is seed else "];")


def _dot_edge(a: Any, dst: str, cotangent: bool, consts: Any) -> list[str]:
    """The edge from ``a`` (a variable, or a constant given a node k0, k1, …) to ``dst``."""
    if type(a) is not Var:
        k = f'"k{next(consts)}"'
        return [f'  {k} [shape=plaintext, label="{_dot_escape(_show_in(a))}"];',
                f'  {k} -> {dst} [label="constant"];']
    if cotangent:
        return [f'  {_dot_id(a)} -> {dst} [label="{_var_name(a.id)}: cotangent", '
                'color="red", fontcolor="red"];']
    return [f'  {_dot_id(a)} -> {dst} [label="{_var_name(a.id)}"];']


def _capture(fn: Callable, args: tuple) -> tuple[Tape, Any]:
    """Run ``fn(*args)`` under a capture trace; return the tape and the result."""
    trace = CaptureTrace()
    leaves, in_def = tree_flatten(args)
    boxed, invars, static = [], [], {}
    for i, x in enumerate(leaves):
        if _is_static(x):
            static[i] = x
            boxed.append(x)
            continue
        t = trace.new_input(_as_input(x))
        invars.append(trace.vars[t._id])
        boxed.append(t)
    try:
        out = fn(*tree_unflatten(in_def, boxed))
    finally:
        trace.recording = False
    out_leaves, out_def = tree_flatten(out)
    outs, values = [], []
    for o in out_leaves:
        if type(o) is Tensor and o._trace is trace:
            outs.append(trace.vars[o._id])
            values.append(o._value)
        elif type(o) is Tensor and o._trace is not None and o._trace.level > trace.level:
            raise ValueError("make_tape: a Tensor of an inner transform escaped it")
        else:
            outs.append(o)
            values.append(o)
    tape = Tape(invars, in_def, static, list(trace.eqns), outs, out_def)
    return tape, tree_unflatten(out_def, values)


def _seed_ones(y: Any) -> Any:
    return kernels.get_backend().ones(tuple(getattr(y, "shape", ())),
                                      np.dtype(getattr(y, "dtype", np.float64)))


# ȳ = ∂y/∂y = 1, the cotangent a reverse sweep starts from, as an equation of the tape
# (make_tape(f, backward=True)) so that the printed sweep shows where it starts.
seed = Primitive("seed", impl=_seed_ones, differentiable=False)


def _value_and_grad_seeded(f: Callable, argnums: Any) -> Callable:
    """``value_and_grad(f, argnums)`` with its seed ȳ = 1 computed by the ``seed`` primitive."""

    def value_and_grad_f(*args: Any) -> tuple:
        nums = argnums_tuple(argnums, len(args), "make_tape")

        def partial(*diff: Any) -> Any:
            full = list(args)
            for n, d in zip(nums, diff):
                full[n] = d
            return f(*full)

        out, vjp_fn = vjp(partial, *[args[n] for n in nums])
        s, dt = ops.shape(out), np.dtype(getattr(out, "dtype", np.float64))
        if s != () or dt.kind not in "fc":
            raise TypeError(f"make_tape(backward=True) needs a scalar float output; got shape "
                            f"{s}, dtype {dt}: use make_tape on a function that calls tm.vjp")
        saved, phase.name = phase.name, "backward"  # the seed opens the backward section
        try:
            ybar = seed(out)
        finally:
            phase.name = saved
        grads = vjp_fn(ybar)
        return out, grads[0] if isinstance(argnums, int) else grads

    return value_and_grad_f


def make_tape(f: Callable, backward: bool = False, argnums: Any = 0) -> Callable:
    """Return a function that runs ``f`` and returns its recorded :class:`Tape`.

    With ``backward=True`` the tape is that of ``value_and_grad(f, argnums)``:
    the forward pass, then the reverse sweep, each primitive a line (as
    ``jax.make_jaxpr`` shows a program); the sweep starts from the equation
    ``seed y``, the cotangent ȳ = ∂y/∂y = 1 of the output y. Python scalars among the
    arguments are constants of the tape.
    """
    fn = _value_and_grad_seeded(f, argnums) if backward else f

    def taped(*args: Any) -> Tape:
        return _capture(fn, args)[0]

    return taped


def _as_input(x: Any) -> Any:
    if type(x) is Tensor:
        if x._trace is not None:
            raise TypeError("make_tape/compile: inputs must be arrays, not traced Tensors "
                            "(compile the outermost function)")
        return x._value
    B = kernels.get_backend()
    return x if isinstance(x, B.array_types) else B.asarray(x)


def _signature(args: tuple) -> tuple:
    leaves, treedef = tree_flatten(args)
    sig = [kernels.backend_name(), treedef]
    for x in leaves:
        if _is_static(x):
            sig.append(("static", type(x), x))
        else:
            sig.append((tuple(ops.shape(x)), str(np.dtype(getattr(x, "dtype", type(x))))))
    return tuple(sig)


DEFAULT_CACHE_SIZE = 64  # recordings a compiled function keeps (least recently used dropped)


class Compiled:
    """``f`` recorded once per input signature and replayed (see :func:`compile`).

    Keeps at most ``cache_size`` recordings, least recently used dropped first.
    ``recordings`` counts the recordings made, ``evictions`` those dropped.
    """

    def __init__(self, f: Callable, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"compile: cache_size must be an int >= 1; got {cache_size!r}")
        self.f = f
        self.cache_size = cache_size
        self.tapes: OrderedDict[tuple, Tape] = OrderedDict()
        self.recordings = 0
        self.evictions = 0
        self.__doc__ = getattr(f, "__doc__", None)
        self.__name__ = getattr(f, "__name__", "compiled")

    def __call__(self, *args: Any) -> Any:
        if config.debug_nans:  # eager, so that every primitive and rule is checked
            return self.f(*args)
        sig = _signature(args)
        tapes = self.tapes
        tape = tapes.get(sig)
        if tape is None:
            tape, out = _capture(self.f, args)
            self._keep(sig, tape)
            return out
        tapes.move_to_end(sig)
        return tape.replay(*args)

    def _keep(self, sig: tuple, tape: Tape) -> None:
        """Keep a new recording; past ``cache_size``, drop the least recently used."""
        self.tapes[sig] = tape
        self.recordings += 1
        if len(self.tapes) > self.cache_size:
            self.tapes.popitem(last=False)
            self.evictions += 1
            if self.evictions == 1:
                warnings.warn(
                    f"tm.compile({self.__name__}): more than cache_size={self.cache_size} "
                    "signatures recorded, so the least recently used recording was dropped "
                    "and will be recorded again if called again (.evictions counts them). "
                    "Each new value of a Python scalar argument is a new signature: pass a "
                    "number that changes from call to call as an array, or raise cache_size",
                    RuntimeWarning, stacklevel=3)

    def tape(self, *args: Any) -> Tape:
        """The tape recorded for these arguments' signature (recording it if need be)."""
        sig = _signature(args)
        tape = self.tapes.get(sig)
        if tape is None:
            tape, _ = _capture(self.f, args)
            self._keep(sig, tape)
        return tape

    def source(self, *args: Any) -> str:
        """The generated Python replayed for these arguments' signature."""
        return self.tape(*args).source()


def compile(f: Callable, cache_size: int = DEFAULT_CACHE_SIZE) -> Compiled:  # noqa: A001
    """Record ``f``'s tape once per input signature and replay it as a flat program.

    The signature is the tree structure of the arguments, each array's shape and
    dtype, the values of Python scalars and the backend: a change of any of these
    records again. The first call runs ``f`` eagerly (recording as it goes) and
    returns its result; later calls replay. A function whose tape depends on data
    values (``if x.sum() > 0:``) is refused during the recording with a TypeError
    naming the line. On the NumPy backend replays equal eager results bitwise.

    At most ``cache_size`` recordings (default 64) are kept, in a least-recently-used
    cache: the signature used longest ago is dropped when a new one would exceed it,
    so that a Python scalar that changes at every call (a schedule's learning rate)
    records at every call but holds bounded memory. The first drop warns
    (RuntimeWarning); ``compiled.recordings`` and ``compiled.evictions`` count them.
    Pass such a number as a 0-d array of the parameters' dtype (arrays are not weakly
    typed, so a float64 one would promote float32 work) to make it an input of one
    recording instead. While
    ``tm.config.debug_nans`` is on, calls run ``f`` eagerly (checked, not replayed).

    Example::

        step = tm.compile(lambda p, batch: tm.meta.maml(loss_fn, p, batch, 0.01, 1))
        g, info = step(params, batch)      # records
        g, info = step(params, batch2)     # replays
    """
    return Compiled(f, cache_size)
