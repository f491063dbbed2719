"""The numba backend's convolution kernels: ``im2col`` and ``col2im`` in one fused pass each.

Same signatures as :mod:`tinymeta.kernels.conv_numpy` (the reference), tested against it.
The leading axes of the images are merged into one and each image row seen as one vector (a
free reshape of a C-contiguous array), and the njit kernels of
:mod:`tinymeta.kernels._numba_conv` run over (N, H, W·C); the padding costs no copy.
Arrays they cannot take (other dtypes, no entries) go to the reference.
"""

from __future__ import annotations

import numpy as np

from . import _numba_conv as nc
from . import conv_numpy

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _takes(a) -> bool:
    return type(a) is np.ndarray and a.dtype in _FLOATS and a.size > 0


def im2col(x, kernel, stride, padding):
    """The patches (…, H', W', kh·kw·C) of the images x (…, H, W, C), padding fused."""
    if not _takes(x):
        return conv_numpy.im2col(x, kernel, stride, padding)
    (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = kernel, stride, padding
    *lead, H, W, C = x.shape
    Ho, Wo = (H + pt + pb - kh) // sh + 1, (W + pl + pr - kw) // sw + 1
    out = np.empty((*lead, Ho, Wo, kh * kw * C), dtype=x.dtype)
    nc.im2col_rows(np.ascontiguousarray(x).reshape(-1, H, W * C), kh, kw, sh, sw, pt, pl,
                   out.reshape(-1, Ho, Wo, kh * kw * C))
    return out


def col2im(cols, x_shape, kernel, stride, padding):
    """The adjoint of :func:`im2col`: the patches added back onto images of ``x_shape``."""
    if not _takes(cols):
        return conv_numpy.col2im(cols, x_shape, kernel, stride, padding)
    (kh, kw), (sh, sw), ((pt, _), (pl, _)) = kernel, stride, padding
    *_, H, W, C = x_shape
    Ho, Wo, K = cols.shape[-3:]
    out = np.empty(tuple(x_shape), dtype=cols.dtype)
    nc.col2im_rows(np.ascontiguousarray(cols).reshape(-1, Ho, Wo, K), kh, kw, sh, sw, pt, pl,
                   out.reshape(-1, H, W * C))
    return out
