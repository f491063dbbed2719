"""The sinusoid task distribution of Finn et al. 2017."""

from __future__ import annotations

import numpy as np
import pytest

from tinymeta.tasks.base import TaskBatch
from tinymeta.tasks.sinusoid import Sinusoid


def test_shapes_ranges_and_the_function():
    batch = Sinusoid().sample(200, 5, 7, seed=0)
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (200, 5, 1) and batch.query_y.shape == (200, 7, 1)
    assert batch.support_x.dtype == np.float32
    a, ph = batch.params["amplitude"], batch.params["phase"]
    assert a.min() >= 0.1 and a.max() <= 5.0 and ph.min() >= 0 and ph.max() <= np.pi
    x = np.concatenate([batch.support_x, batch.query_x], 1)
    assert x.min() >= -5 and x.max() <= 5
    np.testing.assert_allclose(batch.support_y[..., 0],
                               a[:, None] * np.sin(batch.support_x[..., 0] - ph[:, None]),
                               rtol=1e-5, atol=1e-5)


def test_seeds_and_generators():
    s = Sinusoid()
    a, b = s.sample(4, 3, seed=11), s.sample(4, 3, seed=11)
    for u, v in zip(a[:4], b[:4]):
        np.testing.assert_array_equal(u, v)
    assert a.query_x.shape == (4, 3, 1)  # query defaults to K
    rng = np.random.default_rng(11)
    first, second = s.sample(4, 3, seed=rng), s.sample(4, 3, seed=rng)
    np.testing.assert_array_equal(first.support_x, a.support_x)
    assert not np.array_equal(first.support_x, second.support_x)


def test_float64_and_bad_arguments():
    batch = Sinusoid().sample(2, 2, seed=0, dtype=np.float64)
    assert batch.support_x.dtype == np.float64
    with pytest.raises(ValueError):
        Sinusoid().sample(0, 2)
    with pytest.raises(ValueError):
        Sinusoid(amplitude=(5.0, 0.1))
