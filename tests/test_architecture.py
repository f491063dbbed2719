"""The package's imports flow one way (docs/architecture.md).

Every module of tinymeta is read with ``ast``: its imports at module level and inside
functions, relative ones resolved, each to the tinymeta module it loads. On that graph:

1. no cycle;
2. each module imports only modules of its own layer or a lower one (``LAYERS``);
3. ``import tinymeta`` never reaches a module while it is partially initialised, other
   than a package that contains the importer (checked in a fresh interpreter).

The checker is tested too: planted imports must fail it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tinymeta"

# Lowest first: a module may import its own layer and the layers before it. A name is a
# module or a package (with everything in it); names of modules not written yet are fine.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("kernels", ("tinymeta.kernels", "tinymeta.kernels.conv_numpy",
                 "tinymeta.kernels.conv_numba", "tinymeta.kernels._numba_conv")),
    ("base", ("tinymeta.config", "tinymeta.tree", "tinymeta.version")),
    ("tensor", ("tinymeta.tensor",)),
    ("tape", ("tinymeta.tape",)),
    ("ops", ("tinymeta.ops", "tinymeta.ops.conv")),
    ("transforms", ("tinymeta.transforms",)),
    ("programs", ("tinymeta.compile", "tinymeta.testing", "tinymeta.finite_differences",
                  "tinymeta.strategies")),
    ("library", ("tinymeta.nn", "tinymeta.nn.conv", "tinymeta.nn.conv4", "tinymeta.optim",
                 "tinymeta.io", "tinymeta.bench", "tinymeta.tasks", "tinymeta.pytest_plugin",
                 "tinymeta.bench_history")),
    ("meta", ("tinymeta.meta",)),
    ("distributed", ("tinymeta.distributed",)),
    # the run layer, lowest first: the task setups and their registry; the configuration,
    # the run folder and the algorithm dispatch; evaluation; what runs a command; the
    # package's namespace (tinymeta.runs)
    ("run setups", ("tinymeta.runs.setup", "tinymeta.runs.sinusoid", "tinymeta.runs.omniglot",
                    "tinymeta.runs.registry")),
    ("run settings", ("tinymeta.runs.config", "tinymeta.runs.schema", "tinymeta.runs.folder",
                      "tinymeta.runs.algorithms")),
    ("run evaluation", ("tinymeta.runs.evaluation",)),
    ("run commands", ("tinymeta.runs.loop", "tinymeta.runs.official",
                      "tinymeta.runs.figures")),
    ("runs", ("tinymeta.runs",)),
    ("cli", ("tinymeta.cli",)),
    ("namespace", ("tinymeta",)),  # the package's __init__: tm.*
]


# ---- reading the package -------------------------------------------------------------

def read_package(root: Path = ROOT / PACKAGE) -> dict[str, tuple[str, bool]]:
    """module name -> (source, is a package) for every .py file under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts.pop()
        out[".".join(parts)] = (path.read_text(encoding="utf-8"), is_pkg)
    return out


def _targets(node: ast.AST, module: str, is_pkg: bool, known: set[str]) -> set[str]:
    """The tinymeta modules one import statement loads (a name imported from a package
    that is not a submodule counts as an import of the package)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    base = node.module or ""
    if node.level:
        pkg = module.split(".") if is_pkg else module.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    found = set()
    for a in node.names:
        sub = f"{base}.{a.name}"
        if sub in known:
            found.add(sub)
        elif base in known:
            found.add(base)
    return found


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """module -> the tinymeta modules it imports, anywhere in its body."""
    known = set(sources)
    graph = {}
    for module, (src, is_pkg) in sources.items():
        deps = set()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _targets(node, module, is_pkg, known)
        deps.discard(module)
        graph[module] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the longest name that is ``module`` or contains it."""
    best, best_len = None, -1
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best_len:
                best, best_len = i, len(n)
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            lm, ld = layer_of(m), layer_of(d)
            if ld > lm:
                bad.append(f"{m} ({LAYERS[lm][0]}) imports {d} ({LAYERS[ld][0]})")
    return bad


# ---- the checks ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def sources() -> dict[str, tuple[str, bool]]:
    return read_package()


def test_the_reader_sees_the_known_imports(sources):
    """A broken reader would pass everything: a few edges and non-edges, hard-coded."""
    g = import_graph(sources)
    assert "tinymeta.tensor" in g["tinymeta.tape"]  # from .tensor import Tensor
    assert "tinymeta.kernels" in g["tinymeta.tape"]  # from . import kernels
    assert "tinymeta.ops.numpy_ops" in g["tinymeta.ops.fused"]  # from .numpy_ops import ...
    assert "tinymeta.transforms.reverse" in g["tinymeta.transforms.forward"]
    assert "tinymeta.ops" in g["tinymeta.transforms.reverse"]  # from .. import kernels, ops
    assert "tinymeta.tape" not in g["tinymeta.tensor"]
    assert "tinymeta.ops.numpy_ops" in g["tinymeta.ops.conv"]  # from .numpy_ops import shape
    assert "tinymeta.kernels.conv_numpy" in g["tinymeta.kernels.numpy_backend"]


def test_every_module_has_a_layer(sources):
    missing = [m for m in sources if layer_of(m) is None]
    assert not missing, f"add these modules to LAYERS (and docs/architecture.md): {missing}"


def test_no_import_cycle(sources):
    cycles = find_cycles(import_graph(sources))
    assert not cycles, f"import cycles (function-level imports included): {cycles}"


def test_imports_point_down(sources):
    bad = upward_imports(import_graph(sources))
    assert not bad, "imports pointing up a layer:\n" + "\n".join(bad)


_WATCH = textwrap.dedent("""
    import builtins, importlib.util, sys
    real_import = builtins.__import__
    seen = []

    def initialising(name):
        m = sys.modules.get(name)
        return m is not None and getattr(getattr(m, "__spec__", None), "_initializing", False)

    def watch(name, globals=None, locals=None, fromlist=(), level=0):
        importer = (globals or {}).get("__name__", "")
        full = name
        if level:
            full = importlib.util.resolve_name("." * level + name, globals["__package__"])
        parts = full.split(".")
        wanted = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        wanted += [f"{full}.{f}" for f in fromlist or () if f != "*"]
        for w in wanted:
            mine = importer == w or importer.startswith(w + ".")  # a package holding the importer
            if w.split(".")[0] == "tinymeta" and not mine and initialising(w):
                seen.append(f"{importer} imports {w} while it is partially initialised")
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = watch
    import tinymeta  # noqa
    builtins.__import__ = real_import
    assert not initialising("tinymeta.tape") and tinymeta.tape.__spec__._initializing is False
    print("\\n".join(seen))
""")


def test_import_tinymeta_meets_no_partially_initialised_module():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", _WATCH], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", r.stdout


# ---- the checker is tested ----------------------------------------------------------

def test_a_planted_function_level_upward_import_fails(sources):
    planted = dict(sources)
    src, is_pkg = planted["tinymeta.tape"]
    planted["tinymeta.tape"] = (src + "\n\ndef _planted():\n    from .transforms import vjp\n"
                                "    return vjp\n", is_pkg)
    g = import_graph(planted)
    assert "tinymeta.tape (tape) imports tinymeta.transforms (transforms)" in upward_imports(g)
    assert any("tinymeta.tape" in c and "tinymeta.transforms" in c for c in find_cycles(g))


def test_a_planted_import_of_the_namespace_fails(sources):
    planted = dict(sources)
    src, is_pkg = planted["tinymeta.ops.fused"]
    planted["tinymeta.ops.fused"] = (src + "\nfrom .. import grad\n", is_pkg)  # tm.grad
    assert any(b.startswith("tinymeta.ops.fused (ops) imports tinymeta (namespace)")
               for b in upward_imports(import_graph(planted)))
