"""The NumPy reference kernels of the convolution primitives ``im2col`` and ``col2im``.

Parameters arrive normalised (:mod:`tinymeta.ops.conv`): ``kernel`` (kh, kw), ``stride``
(sh, sw), ``padding`` ((pt, pb), (pl, pr)), all Python ints. Images are (…, H, W, C),
patches (…, H', W', kh·kw·C) with the columns in (kh, kw, C) order.

- ``im2col``: the padded image seen through a read-only strided view of shape
  (…, H', W', kh, kw, C), whose entry (i, j, a, b, c) sits at (i·sh + a, j·sw + b, c):
  no copy until the final reshape gathers the patches into rows.
- ``col2im``: its adjoint, kh·kw strided adds, one per window offset (a, b): the
  (a, b) column block of every patch goes to the pixels (i·sh + a, j·sw + b); then the
  padding is cut off.

The numba and cupy backends provide the same two functions and are tested against these.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def _padded(x, padding):
    (pt, pb), (pl, pr) = padding
    if pt == pb == pl == pr == 0:
        return x
    return np.pad(x, [(0, 0)] * (x.ndim - 3) + [(pt, pb), (pl, pr), (0, 0)])


def im2col(x, kernel, stride, padding):
    """The patches (…, H', W', kh·kw·C) of the images x (…, H, W, C), zero-padded."""
    (kh, kw), (sh, sw) = kernel, stride
    xp = np.ascontiguousarray(_padded(x, padding))
    *lead, Hp, Wp, C = xp.shape
    Ho, Wo = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    s = xp.strides
    windows = as_strided(xp, shape=(*lead, Ho, Wo, kh, kw, C),
                         strides=(*s[:-3], s[-3] * sh, s[-2] * sw, s[-3], s[-2], s[-1]),
                         writeable=False)
    return windows.reshape(*lead, Ho, Wo, kh * kw * C)


def col2im(cols, x_shape, kernel, stride, padding):
    """The adjoint of :func:`im2col`: the patches added back onto images of ``x_shape``."""
    (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = kernel, stride, padding
    *lead, H, W, C = x_shape
    Ho, Wo = cols.shape[-3], cols.shape[-2]
    out = np.zeros((*lead, H + pt + pb, W + pl + pr, C), dtype=cols.dtype)
    patches = cols.reshape(*lead, Ho, Wo, kh, kw, C)
    for a in range(kh):
        for b in range(kw):
            out[..., a:a + sh * (Ho - 1) + 1:sh, b:b + sw * (Wo - 1) + 1:sw, :] += \
                patches[..., a, b, :]
    if pt == pb == pl == pr == 0:
        return out
    return np.ascontiguousarray(out[..., pt:pt + H, pl:pl + W, :])
