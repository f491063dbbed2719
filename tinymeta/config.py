"""Run-time switches.

``debug_nans``: when true (or ``TINYMETA_DEBUG_NANS=1`` in the environment), the
first NaN or Inf raises ``FloatingPointError`` naming where it was made: a primitive's
output in the forward pass ("debug_nans: log produced nan ..."), a cotangent a VJP rule
produced in the backward sweep ("debug_nans: the VJP of sqrt produced inf (the
cotangent of its argument 0) in the backward sweep ..."), or a tangent a JVP rule
produced in forward mode ("the JVP of ..."), with the input shapes. A compiled function
(``tm.compile``) runs eagerly while it is on, so that every call is checked. Off by
default: the check costs a pass over every value.
"""

from __future__ import annotations

import os


class Config:
    def __init__(self) -> None:
        self.debug_nans: bool = os.environ.get("TINYMETA_DEBUG_NANS", "") not in ("", "0")


config = Config()
