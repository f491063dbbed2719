"""tinymeta's own tests use its pytest plugin, tinymeta/pytest_plugin.py: the ``gradcheck``
fixture and the hypothesis profiles tinymeta-dev (quick, random), tinymeta-ci (more
examples, derandomized) and tinymeta-thorough, one of them loaded by pyproject.toml's
``tinymeta_hypothesis_profile = "auto"``: ``HYPOTHESIS_PROFILE`` names one explicitly (e.g.
"thorough"), else tinymeta-ci where ``CI`` is set, else tinymeta-dev.

Where tinymeta is installed the plugin is already loaded by its entry point, under this same
name, and pytest does not load it again; in a bare checkout this line loads it.
"""

pytest_plugins = ("tinymeta.pytest_plugin",)
