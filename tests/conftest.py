"""tinymeta's own tests use its pytest plugin, tinymeta/pytest_plugin.py: the ``gradcheck``
fixture and the hypothesis profiles tinymeta-dev (quick, random), tinymeta-ci (more
examples, derandomized) and tinymeta-thorough, one of them loaded by pyproject.toml's
``tinymeta_hypothesis_profile = "auto"``: ``HYPOTHESIS_PROFILE`` names one explicitly (e.g.
"thorough"), else tinymeta-ci where ``CI`` is set, else tinymeta-dev.

Where tinymeta is installed the plugin is already loaded by its entry point, under this same
name, and pytest does not load it again; in a bare checkout this line loads it.
"""

pytest_plugins = ("tinymeta.pytest_plugin",)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_zip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The synthetic Omniglot zip of tests/synthetic_omniglot.py, written once a session."""
    pytest.importorskip("PIL", reason='Pillow is needed to write PNGs: pip install -e ".[data]"')
    from synthetic_omniglot import write_zip

    return str(write_zip(tmp_path_factory.mktemp("omniglot") / "images_background.zip"))


@pytest.fixture
def omniglot_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoded-Omniglot cache in the session's temporary folder, not ~/.cache."""
    monkeypatch.setenv("TINYMETA_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(params=["numpy", "numba"])
def backend(request: pytest.FixtureRequest):
    """Each test that asks for it runs once on each backend (``tm.set_backend`` around it)."""
    import tinymeta as tm

    with tm.set_backend(request.param):
        yield request.param
