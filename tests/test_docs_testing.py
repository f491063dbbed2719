"""docs/testing.md cannot drift: its quoted messages are the output of
examples/check_gradients.py, and its strategy examples run as tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")


def _block_after(marker: str) -> str:
    """The fenced block that follows ``<!-- marker -->`` in the doc."""
    m = re.search(rf"<!-- {marker} -->\n```\n(.*?)\n```", DOC, re.S)
    assert m, f"docs/testing.md has no block after <!-- {marker} -->"
    return m[1]


def test_the_example_prints_the_messages_the_doc_quotes() -> None:
    env = dict(os.environ, TINYMETA_BACKEND="numpy")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "check_gradients.py")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _block_after("failure-message") in r.stdout
    assert _block_after("rule-message") in r.stdout
    assert "4. logsumexp in NumPy: the hand-written VJP and JVP agree" in r.stdout


def test_the_strategy_examples_run() -> None:
    section = DOC[DOC.index("## The strategies"):]
    code = re.search(r"```python\n(.*?)\n```", section, re.S)[1]
    namespace: dict = {}
    exec(compile("import tinymeta as tm\n" + code, "docs/testing.md", "exec"), namespace)
    tests = [name for name in namespace if name.startswith("test_")]
    assert len(tests) == 3
    for name in tests:
        namespace[name]()
