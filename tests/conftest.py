"""Hypothesis profiles: "dev" (quick, random) and "ci" (more examples, derandomized).

"ci" is loaded when the environment variable CI is set, "dev" otherwise;
HYPOTHESIS_PROFILE names another profile explicitly (e.g. "thorough").
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=10, deadline=None, print_blob=True)
settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=200, deadline=None, print_blob=True)

settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)
