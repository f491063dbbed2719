"""Convolution, pooling and Conv4 against independent references.

The derivatives of every conv primitive and layer, to order 2 and 3, are checked against
finite differences by the spec table of ``test_primitives.py``. Here the values: a direct
loop over every output entry written in this file (for conv2d, max_pool2d and avg_pool2d),
the adjoint identity ⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩, hard-coded numbers (TensorFlow's
"same" padding, ties of max-pooling), and, where PyTorch is installed, its
``conv2d`` / ``max_pool2d``. Then Conv4: shapes, the flattened head, per-task statistics,
second-order gradients against finite differences, its ANIL mask, and MAML's two
second-order methods agreeing on it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinymeta as tm
import tinymeta.meta  # noqa: F401
from tinymeta.ops.conv import conv_padding
from tinymeta.testing import check_grads


def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's SAME along one axis, written out: ⌈n/s⌉ outputs, the odd pad after."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def loop_conv2d(x, W, b, stride, pads):
    """Σ_{a,b,c} x̃[t, m, i·sh + a, j·sw + b, c] W[(t,) a, b, c, o] + b[(t,) o], one output
    entry at a time; W and b with or without the task axis."""
    (sh, sw), ((pt, pb), (pl, pr)) = stride, pads
    B, M, H, Wd, _ = x.shape
    kh, kw, _, C_out = W.shape[-4:]
    Ho, Wo = (H + pt + pb - kh) // sh + 1, (Wd + pl + pr - kw) // sw + 1
    xp = np.pad(x, [(0, 0), (0, 0), (pt, pb), (pl, pr), (0, 0)])
    out = np.zeros((B, M, Ho, Wo, C_out))
    for t in range(B):
        Wt = W[t] if W.ndim == 5 else W
        bt = 0.0 if b is None else (b[t] if b.ndim == 2 else b)
        for m in range(M):
            for i in range(Ho):
                for j in range(Wo):
                    patch = xp[t, m, i * sh:i * sh + kh, j * sw:j * sw + kw, :]
                    for o in range(C_out):
                        out[t, m, i, j, o] = np.sum(patch * Wt[..., o])
                    out[t, m, i, j] += bt
    return out


def loop_pool(x, size, stride, reduce):
    *lead, H, W, C = x.shape
    Ho, Wo = (H - size) // stride + 1, (W - size) // stride + 1
    out = np.zeros((*lead, Ho, Wo, C))
    for i in range(Ho):
        for j in range(Wo):
            window = x[..., i * stride:i * stride + size, j * stride:j * stride + size, :]
            out[..., i, j, :] = reduce(window, axis=(-3, -2))
    return out


@st.composite
def conv_cases(draw):
    B, M = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(max(1, kh - 1), 6)), draw(st.integers(max(1, kw - 1), 6))
    c_in, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["same", "valid", 1, ((0, 2), (1, 0))]))
    if padding == "valid":
        H, W = max(H, kh), max(W, kw)
    per_task = draw(st.booleans())
    bias = draw(st.sampled_from([None, "shared", "task"]))
    return B, M, H, W, c_in, c_out, (kh, kw), stride, padding, per_task, bias


@given(case=conv_cases(), seed=st.integers(0, 2**32 - 1))
def test_conv2d_equals_the_direct_loop(case, seed):
    B, M, H, W, c_in, c_out, kernel, stride, padding, per_task, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, M, H, W, c_in))
    Wf = rng.standard_normal(((B,) if per_task else ()) + kernel + (c_in, c_out))
    b = None if bias is None else rng.standard_normal((c_out,) if bias == "shared"
                                                      else (B, c_out))
    if padding == "same":
        pads = (same_pads(H, kernel[0], stride[0]), same_pads(W, kernel[1], stride[1]))
    elif padding == "valid":
        pads = ((0, 0), (0, 0))
    elif padding == 1:
        pads = ((1, 1), (1, 1))
    else:
        pads = padding
    assert conv_padding((H, W), kernel, stride, padding) == pads
    got = tm.nn.conv2d(x, Wf, b, stride, padding)
    np.testing.assert_allclose(got, loop_conv2d(x, Wf, b, stride, pads), rtol=1e-12,
                               atol=1e-12)
    if padding == "same":
        assert got.shape[2:4] == (math.ceil(H / stride[0]), math.ceil(W / stride[1]))


@given(shape=st.tuples(st.integers(1, 2), st.integers(2, 7), st.integers(2, 7),
                       st.integers(1, 3)),
       size=st.integers(1, 3), stride=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_pooling_equals_the_direct_loop(shape, size, stride, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    if min(shape[1:3]) < size:
        return
    np.testing.assert_array_equal(tm.nn.max_pool2d(x, size, stride),
                                  loop_pool(x, size, stride, np.max))
    np.testing.assert_allclose(tm.nn.avg_pool2d(x, size, stride),
                               loop_pool(x, size, stride, np.mean), rtol=1e-13)
    np.testing.assert_allclose(tm.nn.global_avg_pool2d(x), x.mean(axis=(-3, -2)), rtol=1e-13)


@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 6), st.integers(1, 6),
                       st.integers(1, 3)),
       kernel=st.integers(1, 3), stride=st.integers(1, 3),
       padding=st.sampled_from(["same", 2, ((1, 0), (0, 3))]), seed=st.integers(0, 2**32 - 1))
def test_col2im_is_the_adjoint_of_im2col(shape, kernel, stride, padding, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    cols = tm.im2col(x, kernel, stride, padding)
    c = rng.standard_normal(cols.shape)
    lhs = np.vdot(cols, c)
    rhs = np.vdot(x, tm.col2im(c, shape, kernel, stride, padding))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def test_conv2d_hard_coded_same_padding_at_stride_2():
    """4 × 4 image 0 … 15, a 3 × 3 filter of ones, stride 2, "same" (TensorFlow): the one row
    and column of padding go after, so the outputs sum the windows at rows/cols {0, 2}."""
    x = np.arange(16.0).reshape(1, 1, 4, 4, 1)
    out = tm.nn.conv2d(x, np.ones((3, 3, 1, 1)), np.array([0.5]), stride=2)
    np.testing.assert_array_equal(out[0, 0, :, :, 0], [[45.5, 39.5], [66.5, 50.5]])


def test_max_pool_ties_split_the_cotangent_equally():
    x = np.array([[1.0, 1.0], [0.0, 1.0]]).reshape(1, 1, 2, 2, 1)
    g = tm.grad(lambda x: tm.sum(tm.nn.max_pool2d(x, 2) * 3.0))(x)
    np.testing.assert_allclose(g.reshape(2, 2), [[1.0, 1.0], [0.0, 1.0]], rtol=1e-15)
    x = np.array([[5.0, 2.0, 5.0], [1.0, 0.0, 4.0]]).reshape(1, 2, 3, 1)  # overlapping windows
    g = tm.grad(lambda x: tm.sum(tm.nn.max_pool2d(x, 2, 1)))(x)
    np.testing.assert_allclose(g.reshape(2, 3), [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], rtol=1e-15)


def test_torch_conv2d_and_max_pool2d_agree():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (the bench extra)")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 8, 4))
    W = rng.standard_normal((3, 3, 4, 5))
    b = rng.standard_normal(5)
    ours = tm.nn.conv2d(x, W, b, stride=2, padding=((1, 1), (1, 1)))
    tx = torch.from_numpy(x.reshape(6, 9, 8, 4).transpose(0, 3, 1, 2).copy())
    tw = torch.from_numpy(W.transpose(3, 2, 0, 1).copy())
    theirs = torch.nn.functional.conv2d(tx, tw, torch.from_numpy(b), stride=2, padding=1)
    np.testing.assert_allclose(ours.reshape(6, 5, 4, 5), theirs.numpy().transpose(0, 2, 3, 1),
                               rtol=1e-12, atol=1e-12)
    pooled = torch.nn.functional.max_pool2d(tx, 2, 2).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(tm.nn.max_pool2d(x, 2).reshape(pooled.shape), pooled)


@pytest.mark.parametrize("call, match", [
    (lambda x, W: tm.nn.conv2d(x, W, dilation=2), "dilation 2 is not supported"),
    (lambda x, W: tm.nn.conv2d(x, W, groups=2), "groups=2 is not supported"),
    (lambda x, W: tm.im2col(x, 3, dilation=(1, 2)), "dilation"),
    (lambda x, W: tm.nn.conv2d(x, W, padding="full"), "padding 'full' is neither"),
    (lambda x, W: tm.nn.conv2d(x, W, padding=-1), "padding must be >= 0"),
    (lambda x, W: tm.nn.conv2d(x, W, padding=((1, 1),)), "two \\(before, after\\) pairs"),
    (lambda x, W: tm.nn.conv2d(x, W, stride=0), "stride must be an int >= 1"),
    (lambda x, W: tm.nn.conv2d(x, np.ones((3, 3, 2, 4))), "do not have the filters' 2 input"),
    (lambda x, W: tm.nn.conv2d(x, np.ones((3, 3, 3, 1, 4))), "per-task filters"),
    (lambda x, W: tm.nn.conv2d(x, W, np.ones(5)), "bias of shape \\(5,\\)"),
    (lambda x, W: tm.nn.conv2d(x[:, :, :2, :2], W, padding="valid"), "does not fit an image"),
    (lambda x, W: tm.im2col(x[0, 0, 0], 3), "needs images"),
    (lambda x, W: tm.col2im(np.ones((2, 2, 2, 2, 9)), x.shape, 3), "do not come from images"),
    (lambda x, W: tm.nn.max_pool2d(x, 6), "does not fit an image"),
])
def test_bad_arguments_are_refused_with_the_operation_named(call, match):
    x, W = np.ones((2, 2, 5, 5, 1)), np.ones((3, 3, 1, 4))
    with pytest.raises((ValueError, TypeError), match=match):
        call(x, W)


# ---- Conv4 ---------------------------------------------------------------------------------


def test_conv4_shapes_and_the_flattened_head():
    p = tm.nn.conv4_init(5)
    assert [a.shape for a in p] == [(3, 3, 1, 64), (64,), (3, 3, 64, 64), (64,),
                                    (3, 3, 64, 64), (64,), (3, 3, 64, 64), (64,), (256, 5),
                                    (5,)]
    assert all(a.dtype == np.float32 for a in p)
    x = np.random.default_rng(0).standard_normal((2, 3, 28, 28, 1)).astype(np.float32)
    logits = tm.nn.conv4(p, x)
    assert logits.shape == (2, 3, 5) and logits.dtype == np.float32
    mini = tm.nn.conv4_init(5, channels=3, hidden=32, image=84, pool=True)
    assert mini[-2].shape == (800, 5)  # 5 · 5 · 32
    assert tm.nn.conv4(mini, np.zeros((1, 2, 84, 84, 3), np.float32), pool=True).shape == \
        (1, 2, 5)
    with pytest.raises(ValueError, match="pool=False"):
        tm.nn.conv4(p, np.zeros((1, 2, 84, 84, 1), np.float32))
    with pytest.raises(ValueError, match="needs images"):
        tm.nn.conv4(p, np.zeros((2, 784), np.float32))


def test_conv4_equals_its_blocks_written_out():
    """Block by block from the direct loop and NumPy batch norm over (M, H, W) per task."""
    rng = np.random.default_rng(1)
    p = tm.nn.conv4_init(3, hidden=4, image=8, seed=2, dtype=np.float64)
    p[1] = rng.standard_normal(4)  # a non-zero shift
    x = rng.standard_normal((2, 3, 8, 8, 1))
    h = x
    for i in range(4):
        H = h.shape[2]
        pads = (same_pads(H, 3, 2), same_pads(H, 3, 2))
        z = loop_conv2d(h, p[2 * i], None, (2, 2), pads)
        mu = z.mean(axis=(1, 2, 3), keepdims=True)
        var = ((z - mu) ** 2).mean(axis=(1, 2, 3), keepdims=True)
        h = np.maximum((z - mu) / np.sqrt(var + 1e-3) + p[2 * i + 1], 0.0)
    want = h.reshape(2, 3, -1) @ p[-2] + p[-1]
    np.testing.assert_allclose(tm.nn.conv4(p, x), want, rtol=1e-10, atol=1e-12)


def test_conv4_statistics_are_per_task():
    """A task's logits do not depend on the images of another task in the batch."""
    p = tm.nn.conv4_init(4, hidden=8, image=12, dtype=np.float64)
    x = np.random.default_rng(3).standard_normal((2, 4, 12, 12, 1))
    y = x.copy()
    y[1] *= 7.0
    np.testing.assert_allclose(tm.nn.conv4(p, x)[0], tm.nn.conv4(p, y)[0], rtol=1e-12)


def test_conv4_second_order_gradients_against_finite_differences():
    p = tm.nn.conv4_init(3, hidden=3, image=6, seed=1, dtype=np.float64)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 6, 1))
    y = np.array([[0, 1, 2], [2, 0, 1]])
    p[1] = rng.standard_normal(3)

    def loss(*params):
        return tm.sum(tm.nn.cross_entropy(tm.nn.conv4(list(params), x), y))

    check_grads(loss, tuple(p), order=2, modes=("rev",), rtol=1e-4, atol=1e-6)


def test_anil_mask_adapts_the_head_only():
    p = tm.nn.conv4_init(3, hidden=4, image=8, dtype=np.float64)
    mask = tm.nn.conv4_adapt_mask(p, head_only=True)
    assert mask == [False] * 8 + [True, True]
    assert tm.nn.conv4_adapt_mask(p) == [True, False] * 4 + [True, True]  # Finn: β held out
    assert tm.nn.conv4_adapt_mask(p, adapt_bn=True) == [True] * 10
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((2, 3, 8, 8, 1)), np.array([[0, 1, 2], [1, 2, 0]])

    def loss_fn(params, x, y):
        return tm.nn.cross_entropy(tm.nn.conv4(params, x), y)

    adapted = tm.meta.adapt(loss_fn, p, x, y, 0.5, 2, mask)
    for i in range(8):  # the body: θ_0 itself, for every task
        np.testing.assert_array_equal(adapted[i], np.broadcast_to(p[i], (2,) + p[i].shape))
    assert adapted[-2].shape == (2,) + p[-2].shape
    assert not np.allclose(adapted[-2][0], p[-2])


@pytest.mark.parametrize("head_only", [False, True])
def test_maml_unrolled_and_hvp_chain_agree_on_conv4(head_only):
    p = tm.nn.conv4_init(3, hidden=3, image=8, seed=3, dtype=np.float64)
    rng = np.random.default_rng(6)
    batch = tm.tasks.TaskBatch(rng.standard_normal((2, 3, 8, 8, 1)),
                               np.array([[0, 1, 2], [2, 1, 0]]),
                               rng.standard_normal((2, 3, 8, 8, 1)),
                               np.array([[1, 0, 2], [0, 2, 1]]))

    def loss_fn(params, x, y):
        return tm.nn.cross_entropy(tm.nn.conv4(params, x), y)

    mask = tm.nn.conv4_adapt_mask(p, head_only=head_only)
    g1, _ = tm.meta.maml(loss_fn, p, batch, 0.3, 2, method="unrolled", adapt=mask)
    g2, _ = tm.meta.maml(loss_fn, p, batch, 0.3, 2, method="hvp_chain", adapt=mask)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
