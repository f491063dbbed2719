"""numba kernels (``cache=True``, one thread) of the convolution primitives, each serving the
kernel of the same role in :mod:`tinymeta.kernels.conv_numpy`; the tests compare them with
that reference and with their own ``.py_func``.

Both see the images with their leading axes merged into one and each image row as one
vector, (N, H, W·C), and the patches as (N, H', W', kh·kw·C). For patch (i, j) and window
row a, the taps b that fall inside the image, lo ≤ b < hi, read one contiguous run of
x[n, i·sh + a − pt] (the pixels j·sw − pl + lo … j·sw − pl + hi − 1, all C channels) and
write one contiguous run of the patch row; the taps in the padding are zeros. The zero
padding is fused into the pass (the reference pads a copy of the image first, or cuts the
padding off a padded sum).

Measured (float32, one core, against the reference; see benchmarks/kernels.py): copying
through slices of the rows, whose loop index starts at 0, lets LLVM vectorise the copy; an
index computed as i·sh + a − pt (possibly negative) does not, and per-element 4-D indexing
was 2–3× slower than the reference's strided copy.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True)
def im2col_rows(x, kh, kw, sh, sw, pt, pl, out):
    """out[n, i, j, (a·kw + b)·C + c] = x[n, i·sh + a − pt, (j·sw + b − pl)·C + c], 0 where
    the tap falls in the padding; x is (N, H, W·C), out (N, H', W', kh·kw·C)."""
    N, H, WC = x.shape
    Ho, Wo, K = out.shape[1], out.shape[2], out.shape[3]
    C = K // (kh * kw)
    W = WC // C
    seg = kw * C
    for n in range(N):
        for i in range(Ho):
            for j in range(Wo):
                s0 = j * sw - pl
                lo = max(0, -s0)  # the first tap inside the image
                hi = min(kw, W - s0)  # one past the last
                row = out[n, i, j]
                for a in range(kh):
                    r = i * sh + a - pt
                    dst = row[a * seg:(a + 1) * seg]
                    if r < 0 or r >= H or hi <= lo:
                        for t in range(seg):
                            dst[t] = 0.0
                        continue
                    for t in range(lo * C):
                        dst[t] = 0.0
                    src = x[n, r, (s0 + lo) * C:(s0 + hi) * C]
                    inside = dst[lo * C:hi * C]
                    for t in range(src.shape[0]):
                        inside[t] = src[t]
                    for t in range(hi * C, seg):
                        dst[t] = 0.0


@njit(cache=True)
def col2im_rows(cols, kh, kw, sh, sw, pt, pl, out):
    """out = 0, then out[n, i·sh + a − pt, (j·sw + b − pl)·C + c] += cols[n, i, j, (a·kw + b)·C
    + c] for every tap inside the image (the adjoint of :func:`im2col_rows`); cols is
    (N, H', W', kh·kw·C), out (N, H, W·C)."""
    N, H, WC = out.shape
    Ho, Wo, K = cols.shape[1], cols.shape[2], cols.shape[3]
    C = K // (kh * kw)
    W = WC // C
    seg = kw * C
    out[:] = 0.0
    for n in range(N):
        for i in range(Ho):
            for j in range(Wo):
                s0 = j * sw - pl
                lo = max(0, -s0)
                hi = min(kw, W - s0)
                if hi <= lo:
                    continue
                row = cols[n, i, j]
                for a in range(kh):
                    r = i * sh + a - pt
                    if r < 0 or r >= H:
                        continue
                    src = row[a * seg + lo * C:a * seg + hi * C]
                    dst = out[n, r, (s0 + lo) * C:(s0 + hi) * C]
                    for t in range(src.shape[0]):
                        dst[t] += src[t]
