"""The end-to-end benchmark suite (benchmarks/e2e.py) and its peers (benchmarks/peers.py).

- The suite's tinymeta part runs in ``--quick`` mode: every config is timed for every
  tinymeta variant on the installed backends, the JSON is written and the table printed,
  and every timed result equals the float64 one to float32 rounding.
- The hand-written NumPy floor equals tinymeta's first-order MAML in float64.
- Each peer that is importable (PyTorch eager, torch.func, JAX, HIPS autograd) gives the
  same meta-gradient as tinymeta in float64, to 1e-9 relative, on a small instance: a
  second implementation, written apart, as an outside check of the engine. A peer whose
  library is absent is skipped with the reason (CI installs none of them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import e2e  # noqa: E402
import peers  # noqa: E402

RTOL = 1e-9

# torch.func's import goes through torch.jit.script, deprecated in torch 2.13: not ours
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


@pytest.fixture(scope="module")
def small64() -> e2e.Workload:
    """3 tasks of 5 support and 5 query points, the suite's MLP, float64."""
    return e2e.workload(np.float64, num_tasks=3, k=5, seed=7)


def test_quick_suite_tinymeta_part(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    data = e2e.main(["--quick", "--peers", "none", "--json", str(out),
                     "--plot", str(tmp_path / "e2e.png")])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["table"] == data["table"]
    assert not list(tmp_path.glob(".e2e-*")), "the temporary file of the atomic write is left"
    for key in e2e.TABLE_CONFIGS:
        assert e2e.CONFIGS[key].title in printed
    assert "OPENBLAS_NUM_THREADS" in saved["meta"]["threading"]
    rows = {(r["config"], r["impl"]): r for r in saved["results"]}
    assert not [r for r in saved["results"] if "error" in r]
    for key, cfg in e2e.CONFIGS.items():
        for mode in ("eager", "compiled"):
            r = rows[(key, f"tinymeta.{mode}.numpy")]
            if mode == "compiled" and cfg.kind == "imaml" and "skipped" in r:
                continue  # tm.compile refuses iMAML's data-dependent CG loop (reported)
            assert r["median_s"] > 0 and r["first_call_s"] > 0
            # iMAML's 5 CG steps amplify float32 rounding (in every library alike)
            assert r["err_vs_f64"] < (5e-2 if cfg.kind == "imaml" else 1e-5), r
    assert rows[("maml2_T1", "tinymeta.eager.numpy")]["engine_count"] > 0
    assert rows[("maml2_T1", "tinymeta.eager.numpy.hvp_chain")]["engine_count"] > 0
    assert rows[("fomaml_T1", "numpy_floor")]["median_s"] > 0
    floor = [c for c in saved["checks"] if c["peer"] == "numpy_floor"]
    assert floor and floor[0]["ok"]
    if (tmp_path / "e2e.png").exists():
        assert (tmp_path / "e2e.png").stat().st_size > 0
    else:
        assert "plot skipped" in printed


def test_numpy_floor_equals_tinymeta_fomaml(small64):
    cfg = e2e.CONFIGS["fomaml_T1"]
    ref = e2e.tinymeta_reference(cfg, small64)
    got = e2e.numpy_fomaml_floor(small64.params, small64.batch, e2e.ALPHA)
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert all(g.dtype == np.float64 for g in got)
    assert e2e.rel_error(got, ref) <= RTOL


@pytest.fixture(scope="module", params=peers.PEERS)
def peer(request):
    try:
        return peers.load(request.param)
    except peers.Unavailable as e:
        pytest.skip(f"{request.param}: {e}")


@pytest.mark.parametrize("case", ["maml2_T1", "maml2_T2", "imaml", "fomaml_T1", "hvp25"])
def test_peer_equals_tinymeta_float64(peer, case, small64):
    cfg = e2e.CONFIGS[case]
    ref = e2e.tinymeta_reference(cfg, small64)
    got = peer.numpy(peer.block(e2e.peer_function(peer, cfg, small64)()))
    assert [np.shape(g) for g in got] == [r.shape for r in ref]
    assert all(np.asarray(g).dtype == np.float64 for g in got), [g.dtype for g in got]
    assert e2e.rel_error(got, ref) <= RTOL, (peer.name, case, e2e.rel_error(got, ref))
    scale = max(float(np.max(np.abs(r))) for r in ref)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=RTOL, atol=RTOL * scale)
