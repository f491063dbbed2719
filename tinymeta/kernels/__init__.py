"""Array backends behind one seam.

A backend is a module that provides the same kernel functions under the same
names: the forward of every built-in primitive (``exp``, ``matmul``, ``sum`` …)
plus the array helpers the engine needs (``asarray``, ``zeros``, ``ones`` …).
The rules in :mod:`tinymeta.ops` never know which backend ran: each primitive
looks its kernel up here when the backend is switched.

Backends:

- ``numpy``: the reference, always there.
- ``numba``: CPU kernels (fused epilogues around BLAS), used where numba is
  installed; the default then.
- ``cupy``: GPU kernels, only when asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from types import ModuleType

_BACKENDS = {
    "numpy": "tinymeta.kernels.numpy_backend",
    "numba": "tinymeta.kernels.numba_backend",
    "cupy": "tinymeta.kernels.cupy_backend",
}

_listeners: list = []  # callables run with the new backend module after a switch


class _State:
    name: str = "numpy"
    module: ModuleType | None = None


_state = _State()


def _load(name: str) -> ModuleType:
    if name not in _BACKENDS:
        raise ValueError(
            f"set_backend: unknown backend {name!r}; choose one of {sorted(_BACKENDS)}"
        )
    return importlib.import_module(_BACKENDS[name])


def get_backend() -> ModuleType:
    """The active backend module."""
    if _state.module is None:
        set_backend(default_backend())
    return _state.module  # type: ignore[return-value]


def backend_name() -> str:
    """The name of the active backend ("numpy", "numba" or "cupy")."""
    get_backend()
    return _state.name


def default_backend() -> str:
    """``$TINYMETA_BACKEND`` if set, else numba where installed, else numpy."""
    env = os.environ.get("TINYMETA_BACKEND")
    if env:
        return env
    try:
        import numba  # noqa: F401
    except ImportError:
        return "numpy"
    return "numba"


class _BackendSwitch(contextlib.AbstractContextManager):
    """Returned by :func:`set_backend`; ``with`` gives the backend module and restores the
    previous backend on exit."""

    def __init__(self, previous: str, module: ModuleType) -> None:
        self.previous, self.module = previous, module

    def __enter__(self) -> ModuleType:
        return self.module

    def __exit__(self, *exc: object) -> None:
        set_backend(self.previous)


def set_backend(name: str) -> _BackendSwitch:
    """Select the array backend: ``"numpy"``, ``"numba"`` or ``"cupy"``.

    Works as a plain call and as a context manager::

        tm.set_backend("numpy")
        with tm.set_backend("numba") as backend:
            ...          # numba here (backend: its module), the previous one afterwards
    """
    previous = _state.name
    module = _load(name)
    _state.name, _state.module = name, module
    for fn in _listeners:
        fn(module)
    return _BackendSwitch(previous, module)


def on_switch(fn) -> None:
    """Register ``fn(module)`` to run after every backend switch (and now)."""
    _listeners.append(fn)
    if _state.module is not None:
        fn(_state.module)
