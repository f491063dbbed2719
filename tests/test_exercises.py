"""The exercises of docs/autodiff.md run as a reader runs them, and their checks hold.

Each script under examples/exercises/ states an exercise in its docstring and solves it,
asserting its answer against an independent reference (central differences, a closed
form, a product of explicit matrices); a failed assertion is a non-zero exit here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "examples" / "exercises"

# what each script must print on success (its last line, or the verdicts)
EXPECTED = {
    "maml_by_hand.py": ["the hand-derived chain equals hvp_chain, unrolled and central "
                        "differences"],
    "wrong_rule.py": ["VJP of softplus", "order 1 passes; order 2:", "VJP of VJP of softplus",
                      "3. the right rule, order 3: passes"],
    "custom_primitive.py": ["check_grads(logcosh, order=2, modes=('rev', 'fwd')) passes",
                            "log cosh 800: naive inf, the primitive 799.306853"],
}


def run_script(path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)


def test_every_exercise_is_listed() -> None:
    assert sorted(p.name for p in EXERCISES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exercise_runs_and_its_checks_hold(name: str) -> None:
    done = run_script(EXERCISES / name)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    for text in EXPECTED[name]:
        assert text in done.stdout, f"{name} did not print {text!r}:\n{done.stdout}"


def test_docs_link_every_exercise() -> None:
    page = (ROOT / "docs" / "autodiff.md").read_text(encoding="utf-8")
    for name in EXPECTED:
        assert f"(../examples/exercises/{name})" in page
