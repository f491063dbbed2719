"""Tape.to_dot: the tape as a Graphviz graph, read back by a small DOT parser.

Every equation is a node with its dtype and shape, the edges are the equations' inputs, the
seed of make_tape(f, backward=True) is labelled, and the cotangent edges are exactly those
from the seed's descendants in the backward section. No Graphviz is needed.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

import tinymeta as tm
from tinymeta.compile import Var

NODE = re.compile(r'^\s*"(\w+)" \[(.*)\];$')
EDGE = re.compile(r'^\s*"(\w+)" -> "(\w+)" \[(.*)\];$')
FRAME = re.compile(r'^\s*(node \[.*\];|subgraph cluster_\w+ \{|label="\w+";|\})$')
CONST = re.compile(r"^k\d+$")  # a constant's node; variables are named by letters only
ATTR = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|(\w+))')


def attrs(text: str) -> dict[str, str]:
    out = {}
    for key, quoted, bare in ATTR.findall(text):
        out[key] = bare or re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1),
                                  quoted)
    return out


def parse(dot: str) -> tuple[dict[str, dict], list[tuple[str, str, dict]]]:
    """(nodes: id -> attributes, edges: (source, target, attributes)); asserts the frame."""
    lines = dot.splitlines()
    assert lines[0] == "digraph tape {" and lines[-1] == "}"
    assert dot.count("{") == dot.count("}")
    nodes, edges = {}, []
    for line in lines[1:-1]:
        if m := EDGE.match(line):
            edges.append((m.group(1), m.group(2), attrs(m.group(3))))
        elif m := NODE.match(line):
            assert m.group(1) not in nodes, f"node {m.group(1)} declared twice"
            nodes[m.group(1)] = attrs(m.group(2))
        else:
            assert FRAME.match(line), line
    for src, dst, _ in edges:
        assert src in nodes and dst in nodes, f"edge {src} -> {dst} to an undeclared node"
    return nodes, edges


def f(x, y):
    return y * tm.tanh(x * y)


X, Y = np.array(0.5), np.array(2.0)


def test_the_doc_example_by_hand() -> None:
    """The tape of docs/autodiff.md, every node and edge written out."""
    nodes, edges = parse(tm.make_tape(f, backward=True, argnums=(0, 1))(X, Y).to_dot())
    assert set(nodes) == set("abcdefghijklmn") | {"k0", "out0", "out1", "out2"}
    plain = {("a", "c"), ("b", "c"), ("c", "d"), ("b", "e"), ("d", "e"), ("e", "f"),
             ("d", "g"), ("b", "h"), ("d", "i"), ("k0", "j"), ("i", "j"), ("j", "k"),
             ("b", "l"), ("a", "m"), ("e", "out0"), ("l", "out1"), ("n", "out2")}
    cotangent = {("f", "g"), ("f", "h"), ("h", "k"), ("k", "l"), ("k", "m"), ("g", "n"),
                 ("m", "n")}
    got = Counter((s, d) for s, d, _ in edges)
    assert got == Counter(plain | cotangent) + Counter({("d", "i"): 1})  # multiply d d
    for s, d, a in edges:
        assert (a.get("color") == "red") == ((s, d) in cotangent), (s, d, a)
        assert a["label"] == (f"{s}: cotangent" if (s, d) in cotangent
                              else "constant" if s == "k0" else s)
    assert nodes["f"]["label"] == "f = seed e\nf64[]\nseed: ∂e/∂e = 1"
    assert nodes["f"].get("style") == "bold"
    assert nodes["j"]["label"] == "j = subtract 1.0 i\nf64[]"
    assert nodes["a"]["label"] == "a:f64[]" and nodes["k0"]["label"] == "1.0"
    assert [nodes[f"out{i}"]["label"] for i in range(3)] == ["returns[0]", "returns[1]",
                                                              "returns[2]"]


def _programs():
    W, xs = np.ones((3, 2)), np.full((4, 3), 0.5)
    layer = lambda W, xs: tm.sum(tm.tanh(xs @ W))  # noqa: E731
    return [
        ("doc example", tm.make_tape(f, backward=True, argnums=(0, 1))(X, Y)),
        ("forward only", tm.make_tape(f)(X, Y)),
        ("matmul layer", tm.make_tape(layer, backward=True, argnums=(0, 1))(W, xs)),
        ("grad of grad", tm.make_tape(tm.grad(f), backward=True)(X, Y)),
        ("float32 layer", tm.make_tape(layer, backward=True)(W.astype(np.float32),
                                                              xs.astype(np.float32))),
    ]


@pytest.mark.parametrize("name,tape", _programs(), ids=[n for n, _ in _programs()])
def test_every_equation_is_a_node_and_the_edges_are_its_inputs(name: str, tape) -> None:
    nodes, edges = parse(tape.to_dot())
    for e in tape.eqns:
        label = nodes[repr(e.out)]["label"].split("\n")
        assert label[0].startswith(f"{e.out!r} = {e.prim.name}")
        dtype = {np.dtype(np.float64): "f64", np.dtype(np.float32): "f32"}[np.dtype(e.out.dtype)]
        assert f"{dtype}{list(e.out.shape)}" in label
    for v in tape.invars:
        assert nodes[repr(v)]["shape"] == "ellipse"
    var_edges = Counter((s, d) for s, d, _ in edges if not CONST.match(s))
    wanted = Counter((repr(a), repr(e.out)) for e in tape.eqns for a in e.ins if type(a) is Var)
    wanted += Counter((repr(o), f"out{i}") for i, o in enumerate(tape.outs) if type(o) is Var)
    assert var_edges == wanted
    consts = [e for e in tape.eqns for a in e.ins if type(a) is not Var]
    consts += [o for o in tape.outs if type(o) is not Var]
    assert sum(1 for s, _, _ in edges if CONST.match(s)) == len(consts)


@pytest.mark.parametrize("name,tape", _programs(), ids=[n for n, _ in _programs()])
def test_cotangent_edges_leave_the_seed_and_its_descendants(name: str, tape) -> None:
    nodes, edges = parse(tape.to_dot())
    seeds = [n for n, a in nodes.items() if "seed:" in a.get("label", "")]
    backward = {repr(e.out) for e in tape.eqns if e.phase == "backward"}
    assert len(seeds) == (0 if name == "forward only" else 1)
    reached = set(seeds)  # the seed's descendants, walked on the drawn graph
    for s, d, _ in edges:  # edges are listed in the tape's order, so one pass suffices
        if s in reached and d in backward:
            reached.add(d)
    for s, d, a in edges:
        red = a.get("color") == "red"
        assert red == (s in reached and d in backward), (s, d, a)
        assert a["label"].endswith(": cotangent") == red


def test_seed_starts_the_backward_section_of_the_printed_tape() -> None:
    text = str(tm.make_tape(f, backward=True)(X, Y))
    lines = text.splitlines()
    assert lines[lines.index("  backward:") + 1] == "    f:f64[] = seed e"
    with pytest.raises(TypeError, match="make_tape.*scalar"):
        tm.make_tape(lambda x: x * 2.0, backward=True)(np.ones(3))


def test_the_seed_replays_and_follows_the_dtype() -> None:
    tape = tm.make_tape(lambda x: tm.sum(x * x), backward=True)(np.ones(3, np.float32))
    seed = next(e for e in tape.eqns if e.prim.name == "seed")
    assert seed.out.shape == () and np.dtype(seed.out.dtype) == np.float32
    value, g = tape.replay(np.array([1.0, -2.0, 3.0], np.float32))
    assert value == np.float32(14.0) and g.dtype == np.float32
    np.testing.assert_array_equal(g, np.array([2.0, -4.0, 6.0], np.float32))


def test_labels_are_escaped() -> None:
    note = 'say "hi" \\ bye'
    tag = tm.primitive(lambda a, note: a * 1.0, name="tag")
    tm.defvjp(tag, lambda g, ans, a, note: g)
    nodes, _ = parse(tm.make_tape(lambda a: tm.sum(tag(a, note=note)))(np.ones(2)).to_dot())
    assert f"note={note!r}" in nodes["b"]["label"].split("\n")
