"""Run-time switches.

``debug_nans``: when true (or ``TINYMETA_DEBUG_NANS=1`` in the environment), the
first primitive whose output holds a NaN or an Inf raises ``FloatingPointError``
naming that primitive and its input shapes. Off by default: the check costs a
pass over every output.
"""

from __future__ import annotations

import os


class Config:
    def __init__(self) -> None:
        self.debug_nans: bool = os.environ.get("TINYMETA_DEBUG_NANS", "") not in ("", "0")


config = Config()
