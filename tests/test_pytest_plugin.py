"""tinymeta's pytest plugin: the gradcheck fixture, the hypothesis profiles, the entry point.

The fixture is tested here, in this suite (tests/conftest.py loads the plugin); the entry
point, the ini option and a run without hypothesis are tested in pytest subprocesses on a
small project written to a temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinymeta as tm
from tinymeta import pytest_plugin, testing

ROOT = Path(__file__).resolve().parents[1]
X = np.array([0.3, -1.2, 0.7])

exp_scaled = tm.primitive(np.exp, name="exp_scaled_plugin")
tm.defvjp(exp_scaled, lambda g, ans, x: g * ans * 1.01)


def test_the_fixture_checks_with_a_seed_of_this_test(gradcheck: Any,
                                                     request: pytest.FixtureRequest) -> None:
    assert gradcheck.seed == zlib.crc32(request.node.nodeid.encode())
    gradcheck(tm.tanh, (X,), order=2)
    gradcheck.hvp(lambda x: tm.sum(tm.exp(x)), (X,))
    gradcheck.vjp(np.tanh, lambda x: (np.tanh(x), lambda v: (v * (1 - np.tanh(x) ** 2),)), (X,))
    gradcheck.jvp(np.tanh, lambda p, t: (np.tanh(p[0]), t[0] * (1 - np.tanh(p[0]) ** 2)), (X,))
    with pytest.raises(AssertionError, match="^VJP of exp_scaled_plugin: "):
        gradcheck(exp_scaled, (X,), order=1)
    with pytest.raises(AssertionError, match="^VJP of tanh: "):
        gradcheck.vjp(np.tanh, lambda x: (np.tanh(x), lambda v: (v,)), (X,))


def test_the_fixture_passes_its_seed_and_every_keyword(gradcheck: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(testing, "check_grads", lambda *a, **k: calls.append((a, k)))
    gradcheck(tm.tanh, (X,), order=3, modes=("rev",))
    gradcheck(tm.tanh, (X,), seed=5)
    assert calls[0][1] == {"order": 3, "modes": ("rev",), "seed": gradcheck.seed}
    assert calls[1][1] == {"seed": 5}


def test_profile_names() -> None:
    name = pytest_plugin.profile_name
    assert name("auto", {}) == "tinymeta-dev"
    assert name("auto", {"CI": "true"}) == "tinymeta-ci"
    assert name("auto", {"CI": "true", "HYPOTHESIS_PROFILE": "thorough"}) == "tinymeta-thorough"
    assert name("auto", {"HYPOTHESIS_PROFILE": "default"}) == "default"
    assert name("ci", {}) == "tinymeta-ci"
    assert name("tinymeta-ci", {}) == "tinymeta-ci"


def test_this_suite_runs_under_a_tinymeta_profile(request: pytest.FixtureRequest) -> None:
    from hypothesis import settings

    if request.config.getoption("hypothesis_profile", default=None):
        pytest.skip("a profile was named on the command line")
    want = pytest_plugin.profile_name("auto", os.environ)
    assert settings.get_current_profile_name() == want
    if want in pytest_plugin.PROFILES:
        assert settings.default.deadline is None


# ---- in a pytest subprocess --------------------------------------------------------------

USER_TEST = '''
import numpy as np
import tinymeta as tm

def test_user(gradcheck):
    gradcheck(lambda x: tm.tanh(x) * x, (np.array([0.2, -0.4]),), order=2)
'''

HYPOTHESIS_TEST = '''
from hypothesis import given, settings
from tinymeta.testing import float_arrays

@given(float_arrays((2,)))
def test_profile(a):
    assert settings.get_current_profile_name() == "{expected}"
'''


def _project(tmp_path: Path, ini: str = "", conftest: str = "", expected: str = "default",
             entry_point: bool = True) -> Path:
    """A user's project: a test using the fixture, one using hypothesis; optionally a
    distribution on the path that declares the plugin's entry point, as an install does."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "test_user.py").write_text(USER_TEST)
    (proj / "test_hyp.py").write_text(HYPOTHESIS_TEST.format(expected=expected))
    (proj / "pytest.ini").write_text("[pytest]\n" + ini)
    if conftest:
        (proj / "conftest.py").write_text(conftest)
    if entry_point:
        dist = tmp_path / "site" / "tinymeta_plugin_probe-0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinymeta-plugin-probe\n"
                                       "Version: 0\n")
        (dist / "entry_points.txt").write_text(
            "[pytest11]\ntinymeta.pytest_plugin = tinymeta.pytest_plugin\n")
    return proj


BLOCK_HYPOTHESIS = """
import sys

class NoHypothesis:
    def find_spec(self, name, path=None, target=None):
        if name == "hypothesis" or name.startswith("hypothesis."):
            raise ImportError("no hypothesis here")

sys.meta_path.insert(0, NoHypothesis())
"""


def _pytest(tmp_path: Path, proj: Path, pre: str = "",
            args: tuple = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), str(ROOT)])
    env["TINYMETA_BACKEND"] = "numpy"
    argv = ["-q", "-p", "no:cacheprovider", *args, str(proj)]
    code = pre + f"\nimport sys, pytest\nsys.exit(pytest.main({argv!r}))\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=proj, timeout=300)


def test_the_entry_point_gives_the_fixture_and_the_ini_option_a_profile(tmp_path: Path) -> None:
    proj = _project(tmp_path, ini="tinymeta_hypothesis_profile = auto\n",
                    expected="tinymeta-dev")
    r = _pytest(tmp_path, proj)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout


def test_without_the_ini_option_no_profile_is_loaded(tmp_path: Path) -> None:
    r = _pytest(tmp_path, _project(tmp_path, expected="default"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_conftest_naming_the_plugin_beside_the_entry_point_loads_it_once(
        tmp_path: Path) -> None:
    proj = _project(tmp_path, ini="tinymeta_hypothesis_profile = ci\n",
                    conftest='pytest_plugins = ("tinymeta.pytest_plugin",)\n',
                    expected="tinymeta-ci")
    r = _pytest(tmp_path, proj)
    assert r.returncode == 0, r.stdout + r.stderr
    # and without the entry point, the conftest line alone loads it
    other = tmp_path / "bare"
    other.mkdir()
    proj2 = _project(other, ini="tinymeta_hypothesis_profile = ci\n",
                     conftest='pytest_plugins = ("tinymeta.pytest_plugin",)\n',
                     expected="tinymeta-ci", entry_point=False)
    r = _pytest(other, proj2)
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_unknown_profile_is_a_usage_error(tmp_path: Path) -> None:
    proj = _project(tmp_path, ini="tinymeta_hypothesis_profile = nope\n")
    r = _pytest(tmp_path, proj)
    assert r.returncode != 0
    assert "tinymeta_hypothesis_profile = 'nope': no hypothesis profile 'nope'" in r.stderr


def test_the_plugin_works_without_hypothesis(tmp_path: Path) -> None:
    proj = _project(tmp_path, ini="tinymeta_hypothesis_profile = auto\n")
    (proj / "test_hyp.py").unlink()
    r = _pytest(tmp_path, proj, BLOCK_HYPOTHESIS, ("-p", "no:hypothesispytest"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout
    # the block holds: the hypothesis test cannot even be imported
    (proj / "test_hyp.py").write_text(HYPOTHESIS_TEST.format(expected="default"))
    r = _pytest(tmp_path, proj, BLOCK_HYPOTHESIS, ("-p", "no:hypothesispytest"))
    assert r.returncode != 0 and "no hypothesis here" in r.stdout


def test_the_entry_point_is_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert textwrap.dedent('''
        [project.entry-points.pytest11]
        "tinymeta.pytest_plugin" = "tinymeta.pytest_plugin"
        ''') in text
