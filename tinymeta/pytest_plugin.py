"""tinymeta's pytest plugin: a ``gradcheck`` fixture and hypothesis profiles for gradient checks.

Installing tinymeta registers it with pytest (the ``pytest11`` entry point
``tinymeta.pytest_plugin``); a checkout's ``tests/conftest.py`` loads it by the same name
(``pytest_plugins = ("tinymeta.pytest_plugin",)``), so it is never loaded twice. It gives:

- the ``gradcheck`` fixture: :func:`~tinymeta.testing.check_grads` (and ``.hvp``, ``.vjp``,
  ``.jvp``) with a seed of its own for each test, taken from the test's id, so a test draws
  the same random directions every run and two tests do not share them::

      def test_my_loss(gradcheck):
          gradcheck(my_loss, (params, x, y), order=2)

- three hypothesis profiles, registered where hypothesis is installed (nothing happens
  without it): ``tinymeta-dev`` (10 examples), ``tinymeta-ci`` (20 examples, derandomized,
  the too-slow health check off) and ``tinymeta-thorough`` (200 examples), all without a
  deadline, since one gradient check of a higher order takes longer than hypothesis's 200 ms.

The profiles are registered, not loaded, so a project that installs tinymeta keeps its own
hypothesis settings. Load one with hypothesis's option ``--hypothesis-profile tinymeta-ci``,
or with the ini option ``tinymeta_hypothesis_profile``: a profile's name, or ``auto`` (what
tinymeta's own tests use): the profile named by the environment variable
``HYPOTHESIS_PROFILE`` (``dev``, ``ci`` and ``thorough`` mean tinymeta's), else
``tinymeta-ci`` where the variable ``CI`` is set, else ``tinymeta-dev``. An explicit
``--hypothesis-profile`` wins over the ini option.

Importing this module imports tinymeta (about 0.3 s), never hypothesis: a test run
without hypothesis gets the fixture and no profiles.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from . import testing

PREFIX = "tinymeta-"
#: name -> hypothesis settings; health checks by name (hypothesis is imported when registering)
PROFILES: dict[str, dict[str, Any]] = {
    "tinymeta-dev": {"max_examples": 10, "deadline": None, "print_blob": True},
    "tinymeta-ci": {"max_examples": 20, "deadline": None, "derandomize": True,
                    "print_blob": True, "suppress_health_check": ["too_slow"]},
    "tinymeta-thorough": {"max_examples": 200, "deadline": None, "print_blob": True},
}
INI = "tinymeta_hypothesis_profile"

_registered = False


def register_profiles() -> bool:
    """Register :data:`PROFILES` with hypothesis, once; False where hypothesis is absent."""
    global _registered
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:
        return False
    if not _registered:
        for name, kwargs in PROFILES.items():
            kwargs = dict(kwargs)
            checks = kwargs.pop("suppress_health_check", [])
            settings.register_profile(name, suppress_health_check=[
                getattr(HealthCheck, c) for c in checks], **kwargs)
        _registered = True
    return True


def profile_name(choice: str, environ: Mapping[str, str]) -> str:
    """The profile the ini option ``choice`` means: ``auto`` reads HYPOTHESIS_PROFILE and CI
    from ``environ``; the short names dev, ci and thorough mean tinymeta's."""
    if choice == "auto":
        choice = environ.get("HYPOTHESIS_PROFILE") or ("ci" if environ.get("CI") else "dev")
    if PREFIX + choice in PROFILES:
        return PREFIX + choice
    return choice


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(INI, "hypothesis profile to load: a name, 'auto' (HYPOTHESIS_PROFILE, else "
                       "tinymeta-ci under CI, else tinymeta-dev), or empty (none; the default)",
                  default="")


def pytest_configure(config: pytest.Config) -> None:
    """Register the profiles; load the one the ini option asks for, unless the command line
    named one (``--hypothesis-profile``)."""
    if not register_profiles():
        return
    choice = str(config.getini(INI) or "").strip()
    if not choice or config.getoption("hypothesis_profile", default=None):
        return
    from hypothesis import settings
    from hypothesis.errors import InvalidArgument

    name = profile_name(choice, os.environ)
    try:
        settings.load_profile(name)
    except InvalidArgument:
        raise pytest.UsageError(
            f"{INI} = {choice!r}: no hypothesis profile {name!r}; tinymeta registers "
            f"{', '.join(PROFILES)} (or 'auto')") from None


class GradCheck:
    """The ``gradcheck`` fixture: tinymeta's checkers with this test's own seed.

    ``gradcheck(f, args, order=2, modes=("rev", "fwd"), ...)`` is
    :func:`~tinymeta.testing.check_grads`; ``.hvp``, ``.vjp`` and ``.jvp`` are
    ``check_hvp``, ``check_vjp`` and ``check_jvp``. Every keyword is passed on; ``seed``
    defaults to :attr:`seed`.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def _run(self, check: Callable, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("seed", self.seed)
        check(*args, **kwargs)

    def __call__(self, f: Callable, args: Any, **kwargs: Any) -> None:
        self._run(testing.check_grads, f, args, **kwargs)

    def hvp(self, f: Callable, args: Any, **kwargs: Any) -> None:
        self._run(testing.check_hvp, f, args, **kwargs)

    def vjp(self, f: Callable, f_vjp: Callable, args: Any, **kwargs: Any) -> None:
        self._run(testing.check_vjp, f, f_vjp, args, **kwargs)

    def jvp(self, f: Callable, f_jvp: Callable, args: Any, **kwargs: Any) -> None:
        self._run(testing.check_jvp, f, f_jvp, args, **kwargs)


@pytest.fixture
def gradcheck(request: pytest.FixtureRequest) -> GradCheck:
    """tinymeta's gradient checkers, seeded from this test's id (see :class:`GradCheck`)."""
    return GradCheck(zlib.crc32(request.node.nodeid.encode()))
