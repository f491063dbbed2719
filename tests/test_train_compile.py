"""`tinymeta train --compile` replays the recorded meta-gradient step: same parameters."""

from __future__ import annotations

import numpy as np
import pytest

from tinymeta import io
from tinymeta.cli import main
from tinymeta.tree import tree_leaves


@pytest.mark.parametrize("algo", ["maml", "maml-chain", "fomaml", "reptile", "imaml",
                                  "metasgd", "pretrain"])
def test_compiled_training_equals_eager(tmp_path, algo):
    runs = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / f"{algo}{len(flag)}"
        rc = main(["train", "--task", "sinusoid", "--algo", algo, "--iterations", "20",
                   "--meta-batch", "4", "--shots", "5", "--dtype", "float64", "--backend",
                   "numpy", "--no-progress", "--out", str(out)] + flag)
        assert rc == 0
        runs[len(flag)] = io.load(str(out / "params.npz"))
    eager, compiled = tree_leaves(runs[0]), tree_leaves(runs[1])
    assert len(eager) == len(compiled) > 0
    for a, b in zip(eager, compiled):
        np.testing.assert_array_equal(a, b)  # bitwise: the same kernel calls in the same order
