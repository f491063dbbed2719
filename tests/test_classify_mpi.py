"""Omniglot meta-training data-parallel over MPI (``mpiexec -n 2 tinymeta train --task omniglot``).

On the small synthetic Omniglot set that tests/test_classify.py draws (PNG zips in the
standard layout), with a tiny float64 model. The two-rank runs start ``mpiexec -n 2`` in a
subprocess with a hard timeout and are skipped (with the reason) when mpi4py or mpiexec is
missing, as in tests/test_mpi.py.

What is asserted, against a one-process run of the same command (the reference):

- after k iterations the two-rank parameters (``params.npz``, ``best.npz``) equal the
  one-process ones to float64 rounding, the validation accuracies in ``val.jsonl`` are the
  same numbers (5 validation tasks: shares of 2 and 3 tasks), the logged query losses agree
  to rounding, and the same iteration is chosen;
- a meta-batch that does not split over the ranks is one clear error, printed once;
- a two-rank run stopped at a checkpoint and resumed on two ranks ends bit for bit like an
  uninterrupted two-rank run (params, best.npz, checkpoint, logs), and so does one whose
  rank 1 was SIGKILLed mid-run (the job ends within seconds, never hangs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("PIL", reason='Pillow is needed to decode PNGs: pip install -e ".[data]"')
from synthetic_omniglot import write_zip  # noqa: E402
from test_mpi import CLI, TIMEOUT_S, _env, _mpi_cmd, _wait_for_checkpoint, needs_mpi, run_mpi

from tinymeta import distributed, io
from tinymeta.tree import tree_leaves

pytestmark = pytest.mark.mpi

# 3-way 1-shot, 2 query images per class, BN MLP 784-8-8-3, float64
TINY = ["--task", "omniglot", "--ways", "3", "--shots", "1", "--query", "2", "--hidden", "8,8",
        "--inner-steps", "1", "--val-alphabets", "Beta", "--dtype", "float64",
        "--backend", "numpy", "--no-progress"]


@pytest.fixture(scope="module")
def data_zip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_zip(tmp_path_factory.mktemp("omniglot") / "images_background.zip"))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The subprocesses' environment, with the decoded-image cache in a temporary folder."""
    return _env(TINYMETA_CACHE=str(tmp_path_factory.mktemp("cache")))


def train_args(data_zip: str, out: Path, *extra: str) -> list[str]:
    return ["-c", CLI, "train", *TINY, "--data", data_zip, *extra, "--out", str(out)]


def run_one(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """The same command on one process (no launcher in the environment)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=env)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_trees_close(a, b, rtol: float) -> None:
    la, lb = tree_leaves(a), tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-14)


def assert_trees_equal(a, b) -> None:
    la, lb = tree_leaves(a), tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def test_task_range_splits_in_order_with_shares_one_apart():
    for n in (0, 1, 4, 5, 200):
        for P in (1, 2, 3, 7):
            shares = [distributed.World.task_range(SimpleNamespace(rank=r, size=P), n)
                      for r in range(P)]
            assert shares[0][0] == 0 and shares[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
            sizes = [hi - lo for lo, hi in shares]
            assert max(sizes) - min(sizes) <= 1, (n, P, shares)


def test_one_process_gather_is_the_identity():
    w = distributed.World()
    acc = np.array([0.5, 1.0, 0.25])
    assert w.task_range(3) == (0, 3)
    assert w.allgather_tasks(acc, 3) is acc


GATHER = """
import numpy as np
from tinymeta import distributed
w = distributed.init(force=True)
for n in (1, 2, 5, 7):
    lo, hi = w.task_range(n)
    got = w.allgather_tasks(1.5 * np.arange(lo, hi) - 0.25, n)
    assert got.tolist() == (1.5 * np.arange(n) - 0.25).tolist(), (w.rank, n, got)
print("gathered", w.rank)
"""


@needs_mpi
def test_two_rank_gather_puts_every_value_at_its_task(env):
    p = run_mpi(2, "-c", GATHER, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("gathered") == 2, p.stdout  # both ranks got there


@needs_mpi
def test_two_ranks_stop_early_together_with_an_empty_share(data_zip, env, tmp_path):
    """One validation task on two ranks (rank 0's share is empty), early stopping on."""
    common = ["--meta-batch", "4", "--iterations", "40", "--eval-every", "1", "--val-tasks",
              "1", "--patience", "2", "--log-every", "1", "--inner-lr", "0.01"]
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = run_one(train_args(data_zip, one, *common), env)
    assert p1.returncode == 0, p1.stderr
    p2 = run_mpi(2, *train_args(data_zip, two, *common), env=env)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    r1 = json.loads((one / "result.json").read_text())
    r2 = json.loads((two / "result.json").read_text())
    assert r1["stopped_early"] and r1["iteration"] < 40, r1  # the test exercises the stop
    for k in ("stopped_early", "iteration", "best_iteration", "best_val_accuracy"):
        assert r2[k] == r1[k], (k, r1, r2)
    assert [r["accuracy"] for r in jsonl(two / "val.jsonl")] == \
        [r["accuracy"] for r in jsonl(one / "val.jsonl")]
    assert_trees_close(io.load(two / "params.npz"), io.load(one / "params.npz"), rtol=1e-10)


@needs_mpi
@pytest.mark.parametrize("algo, extra", [("maml", []), ("reptile", ["--compile"]),
                                         ("maml", ["--augment"])],
                         ids=["maml", "reptile-compiled", "maml-augment"])
def test_two_ranks_train_the_one_process_model(data_zip, env, tmp_path, algo, extra):
    common = ["--algo", algo, "--meta-batch", "4", "--iterations", "6", "--eval-every", "2",
              "--val-tasks", "5", "--log-every", "2", "--checkpoint-every", "3",
              "--patience", "0", "--mpi-check-every", "1", *extra]
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = run_one(train_args(data_zip, one, *common), env)
    assert p1.returncode == 0, p1.stderr
    p2 = run_mpi(2, *train_args(data_zip, two, *common), env=env)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    assert p2.stdout.count("trained") == 1, p2.stdout  # the result line, printed by rank 0
    for name in ("params.npz", "best.npz"):
        assert_trees_close(io.load(two / name), io.load(one / name), rtol=1e-10)
    assert_trees_close(io.load(two / "checkpoint.npz")["opt_state"],
                       io.load(one / "checkpoint.npz")["opt_state"], rtol=1e-10)
    v1, v2 = jsonl(one / "val.jsonl"), jsonl(two / "val.jsonl")
    assert [r["iteration"] for r in v2] == [2, 4, 6]
    assert [r["accuracy"] for r in v2] == [r["accuracy"] for r in v1]
    t1, t2 = jsonl(one / "train.jsonl"), jsonl(two / "train.jsonl")
    assert [r["iteration"] for r in t2] == [r["iteration"] for r in t1] == [2, 4, 6]
    for a, b in zip(t2, t1):  # the log holds the losses of all B tasks, as on one process
        assert a["query_loss"] == pytest.approx(b["query_loss"], rel=1e-12)
        assert a["support_loss"] == pytest.approx(b["support_loss"], rel=1e-12)
    r1 = json.loads((one / "result.json").read_text())
    r2 = json.loads((two / "result.json").read_text())
    assert r2["best_iteration"] == r1["best_iteration"]
    assert r2["best_val_accuracy"] == r1["best_val_accuracy"]
    assert json.loads((two / "config.json").read_text()) == \
        json.loads((one / "config.json").read_text())
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


@needs_mpi
def test_a_meta_batch_that_does_not_split_is_one_clear_error(data_zip, env, tmp_path):
    out = tmp_path / "run"
    p = run_mpi(2, *train_args(data_zip, out, "--meta-batch", "3", "--iterations", "2"),
                env=env)
    assert p.returncode == 1
    assert p.stderr.count("--meta-batch 3 does not split evenly over 2 MPI ranks") == 1, \
        p.stderr
    assert "Abort" not in p.stderr  # every rank fails alike: printed once, no abort
    assert not (out / "checkpoint.npz").exists()


# rank 1 alone cannot read the data (as when the path is missing on one host); rank 0
# reads it SLOW seconds long (a cold cache), longer than --mpi-timeout
ONE_RANK_FAILS = """
import os, sys, time
from tinymeta import distributed
from tinymeta.cli import main
from tinymeta.runs import omniglot
real = omniglot.load_splits
def load_splits(opts):
    if distributed.launcher_env()[0] == 1:
        raise FileNotFoundError("images_background.zip is not on this host (rank 1 only)")
    time.sleep(float(os.environ.get("SLOW", "0")))
    return real(opts)
omniglot.load_splits = load_splits
sys.exit(main(sys.argv[1:]))
"""


@needs_mpi
@pytest.mark.parametrize("slow", [0.0, 3.0], ids=["others-on-time", "others-slower"])
def test_an_error_on_one_rank_only_is_printed_and_ends_the_job(data_zip, env, tmp_path, slow):
    out = tmp_path / "run"
    args = train_args(data_zip, out, "--meta-batch", "4", "--iterations", "2",
                      "--mpi-timeout", "1")
    args[1] = ONE_RANK_FAILS
    t0 = time.perf_counter()
    p = run_mpi(2, *args, env={**env, "SLOW": str(slow)})
    took = time.perf_counter() - t0
    assert p.returncode != 0
    assert took < 15 + slow, f"the job took {took:.1f} s to stop"  # not the 120 s start-up
    assert "images_background.zip is not on this host (rank 1 only)" in p.stderr, p.stderr
    assert "[rank 1 of 2; aborting the job]" in p.stderr, p.stderr
    assert "lost or hung" not in p.stderr, p.stderr  # the set-up check waits for slow ranks
    assert not (out / "checkpoint.npz").exists()


NESTED = """
import sys
from tinymeta import distributed
w = distributed.init(force=True)
try:
    with distributed.same_on_all_ranks("the outer block"):
        with distributed.same_on_all_ranks("the inner block"):
            if w.rank == 1:
                raise OSError("only rank 1 fails, in the inner block")
except Exception as e:
    distributed.report_error(f"error: {e}", e)
    sys.exit(1)
"""


@needs_mpi
def test_a_one_rank_error_in_nested_blocks_stays_that_ranks(env):
    p = run_mpi(2, "-c", NESTED, env=env)
    assert p.returncode != 0
    assert "error: only rank 1 fails, in the inner block [rank 1 of 2; aborting the job]" in \
        p.stderr, p.stderr


@needs_mpi
def test_two_rank_resume_is_bit_for_bit(data_zip, env, tmp_path):
    common = ["--meta-batch", "4", "--iterations", "8", "--eval-every", "2", "--val-tasks", "5",
              "--log-every", "1", "--checkpoint-every", "3", "--patience", "0", "--augment"]
    full, part = tmp_path / "full", tmp_path / "part"
    p = run_mpi(2, *train_args(data_zip, full, *common), env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    p = run_mpi(2, *train_args(data_zip, part, *common, "--stop-after", "5"), env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "continue with --resume" in p.stdout
    assert int(io.load(part / "checkpoint.npz")["iteration"]) == 5
    assert not (part / "params.npz").exists()
    p = run_mpi(2, "-c", CLI, "train", "--resume", "--no-progress", "--out", str(part), env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    for name in ("params.npz", "best.npz"):
        assert_trees_equal(io.load(part / name), io.load(full / name))
    ck_full, ck_part = io.load(full / "checkpoint.npz"), io.load(part / "checkpoint.npz")
    assert ck_full["iteration"] == ck_part["iteration"] == 8
    assert_trees_equal(ck_part["model"], ck_full["model"])
    assert_trees_equal(ck_part["opt_state"], ck_full["opt_state"])
    assert [r["accuracy"] for r in jsonl(part / "val.jsonl")] == \
        [r["accuracy"] for r in jsonl(full / "val.jsonl")]

    def losses(run: Path) -> list:
        return [(r["iteration"], r["query_loss"], r["support_loss"])
                for r in jsonl(run / "train.jsonl")]

    assert losses(part) == losses(full)


@needs_mpi
def test_kill_one_rank_then_resume_bit_for_bit(data_zip, env, tmp_path):
    common = ["--meta-batch", "4", "--iterations", "300", "--eval-every", "25",
              "--val-tasks", "5", "--checkpoint-every", "10", "--patience", "0", "--augment"]
    full, part = tmp_path / "full", tmp_path / "part"
    p = run_mpi(2, *train_args(data_zip, full, *common), env=env)
    assert p.returncode == 0, p.stdout + p.stderr

    piddir = tmp_path / "pids"
    piddir.mkdir()
    proc = subprocess.Popen(_mpi_cmd(2, *train_args(data_zip, part, *common)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, "TM_PIDDIR": str(piddir)})
    try:
        _wait_for_checkpoint(part, 40, proc)
        os.kill(int((piddir / "rank1.pid").read_text()), signal.SIGKILL)
        t0 = time.monotonic()
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        took = time.monotonic() - t0
        text = stdout + stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert took < 10, f"the job took {took:.1f} s to stop after a rank was killed"
    # mpiexec names the lost rank, or the survivor's Allreduce fails first and aborts
    assert "signal 9" in text or "killed" in text.lower() or "Abort" in text, text
    stopped_at = int(io.load(part / "checkpoint.npz")["iteration"])
    assert 40 <= stopped_at < 300, "the rank was not killed mid-run"
    assert not (part / "params.npz").exists()

    p = run_mpi(2, "-c", CLI, "train", "--resume", "--no-progress", "--out", str(part), env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    for name in ("params.npz", "best.npz"):
        assert_trees_equal(io.load(part / name), io.load(full / name))
    assert_trees_equal(io.load(part / "checkpoint.npz")["opt_state"],
                       io.load(full / "checkpoint.npz")["opt_state"])
    v_full, v_part = jsonl(full / "val.jsonl"), jsonl(part / "val.jsonl")
    assert [r["iteration"] for r in v_part] == list(range(25, 301, 25))
    assert [r["accuracy"] for r in v_part] == [r["accuracy"] for r in v_full]
