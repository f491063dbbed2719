"""Data parallelism over MPI: two ranks against one process, lost and hung ranks, resume.

The two-rank tests start ``mpiexec -n 2`` in a subprocess with a hard timeout and are
skipped (with the reason) when mpi4py or mpiexec is missing; install the ``mpi`` extra
(``pip install -e ".[mpi]"``: mpi4py and mpich, whose wheel puts ``mpiexec`` beside the
interpreter) to run them. The single-process checks need neither.

What is asserted:

- the meta-gradient of P = 2 ranks with B/2 tasks each equals the one-process meta-gradient
  with B tasks, for every algorithm, to float64 rounding (‖g₂ − g₁‖ ≤ 1e-12 ‖g₁‖), and the
  gathered per-task losses equal the one-process losses;
- after k training steps both ranks hold bit-identical parameters, equal to the
  one-process run's to rounding; a rank whose parameters differ stops the job with an error
  naming the ranks;
- SIGKILL of one rank mid-run ends the job within seconds (mpiexec's report names the
  signal), never a hang; SIGSTOP of one rank (a hung rank) ends it through the watchdog
  with tinymeta's message; ``--resume`` then finishes bit for bit like an uninterrupted
  two-rank run (same P, so the same order of additions in the Allreduce).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tinymeta import io
from tinymeta.tree import tree_leaves

TIMEOUT_S = 60
SMALL = ["--backend", "numpy", "--shots", "5", "--hidden", "16,16", "--no-progress"]
_LAUNCHER_VARS = ("PMI_", "OMPI_", "PMIX_", "MV2_", "HYDRA_", "MPI_LOCAL")


def _mpiexec() -> str | None:
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _skip_reason() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return 'mpi4py is not installed (pip install -e ".[mpi]")'
    if _mpiexec() is None:
        return 'no mpiexec found (pip install -e ".[mpi]" installs mpich\'s)'
    return None


needs_mpi = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
pytestmark = pytest.mark.mpi

# A launcher for the CLI that first leaves its pid in $TM_PIDDIR/rank<r>.pid, so that a test
# can kill one chosen rank.
CLI = textwrap.dedent("""
    import os, sys
    from tinymeta import distributed
    rank = distributed.launcher_env()[0]
    d = os.environ.get("TM_PIDDIR")
    if d:
        with open(os.path.join(d, f"rank{rank}.pid"), "w") as f:
            f.write(str(os.getpid()))
    from tinymeta.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_VARS)}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", TINYMETA_BACKEND="numpy")
    env.update(extra)
    return env


def _mpi_cmd(n: int, *args: str) -> list[str]:
    return [_mpiexec(), "-n", str(n), sys.executable, *args]


def run_mpi(n: int, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_mpi_cmd(n, *args), capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=env or _env())


def train_cmd(*args: str) -> list[str]:
    return ["-c", CLI, "train", *SMALL, *args]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / max(np.linalg.norm(b), 1e-300))


# ---- (a) the meta-gradient of two ranks is that of one process ----------------------------

ALGOS = ["maml", "maml-chain", "fomaml", "reptile", "imaml", "metasgd", "pretrain"]

GRADIENT_WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from tinymeta import distributed, io, runs
    from tinymeta.tree import tree_map

    out, algos, B = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    w = distributed.init()
    assert w.size == 2, w
    results = {}
    for algo in algos:
        cfg = runs.RunConfig(algo=algo, dtype="float64", shots=5, query=7, hidden=(8, 8),
                             meta_batch=B).resolved()
        setup = runs.TASKS[cfg.task](cfg)
        model = runs.initial_model(cfg, setup)
        batch = w.shard(setup.sample(np.random.default_rng(3), B, cfg.shots, cfg.query))
        assert batch.support_x.shape[0] == B // 2
        g, info = runs.meta_gradient(cfg, setup, None, model, batch)
        g, info = w.allreduce_mean(g, info, 1, (model, None))
        results[algo] = {"g": g, "query_loss": info["query_loss"],
                         "support_loss": info["support_loss"], "loss": info["loss"]}
    io.save(f"{out}/rank{w.rank}.npz", results)

    # a rank whose parameters differ is caught by the hash compare, on every rank alike
    model = {"theta": [np.ones(3)]}
    if w.rank == 1:
        model["theta"][0][1] += 1e-12
    try:
        w.allreduce_mean(model["theta"], {}, 100, (model, [0]))
    except distributed.DistributedError as e:
        with open(f"{out}/mismatch{w.rank}.txt", "w") as f:
            f.write(str(e) + ("  all_ranks" if e.all_ranks else ""))
    w.barrier()
""")


@needs_mpi
def test_two_ranks_give_the_one_process_meta_gradient_and_catch_a_mismatch(tmp_path):
    import tinymeta as tm
    from tinymeta import runs

    B = 6
    worker = tmp_path / "worker.py"
    worker.write_text(GRADIENT_WORKER)
    p = run_mpi(2, str(worker), str(tmp_path), ",".join(ALGOS), str(B))
    assert p.returncode == 0, p.stdout + p.stderr
    ranks = [io.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    with tm.set_backend("numpy"):
        for algo in ALGOS:
            cfg = runs.RunConfig(algo=algo, dtype="float64", shots=5, query=7,
                                 hidden=(8, 8), meta_batch=B).resolved()
            setup = runs.TASKS[cfg.task](cfg)
            model = runs.initial_model(cfg, setup)
            batch = setup.sample(np.random.default_rng(3), B, cfg.shots, cfg.query)
            g1, info1 = runs.meta_gradient(cfg, setup, None, model, batch)
            for leaf0, leaf1, ref in zip(tree_leaves(ranks[0][algo]["g"]),
                                         tree_leaves(ranks[1][algo]["g"]), tree_leaves(g1)):
                np.testing.assert_array_equal(leaf0, leaf1)  # the same mean on both ranks
                assert _rel(leaf0, ref) <= 1e-12, (algo, _rel(leaf0, ref))
            for key in ("query_loss", "support_loss"):
                assert ranks[0][algo][key].shape == (B,)
                assert _rel(ranks[0][algo][key], np.asarray(info1[key])) <= 1e-12, (algo, key)
            assert _rel(ranks[0][algo]["loss"], np.asarray(info1["loss"])) <= 1e-12, algo
    for r in (0, 1):
        text = (tmp_path / f"mismatch{r}.txt").read_text()
        assert "differ across the MPI ranks at iteration 100" in text
        assert "rank 0: hash" in text and "rank 1: hash" in text and "all_ranks" in text


# ---- (b) identical parameters on every rank, equal to one process's -----------------------

TRAIN_WORKER = textwrap.dedent("""
    import sys
    from tinymeta import distributed, io, runs
    from tinymeta.runs.loop import Run
    out, algo = sys.argv[1], sys.argv[2]
    w = distributed.init(check_every=1)  # compare the ranks' state hashes at every step
    cfg = runs.RunConfig(algo=algo, dtype="float64", shots=5, hidden=(16, 16), meta_batch=4,
                         iterations=25, log_every=5, checkpoint_every=10, backend="numpy")
    final = {}
    real_finish = Run.finish
    def finish(run):  # each rank's own final model (only rank 0 writes params.npz)
        final["model"] = run.model
        return real_finish(run)
    Run.finish = finish
    runs.train(cfg, out, progress=False)
    io.save(f"{out}/final_rank{w.rank}.npz", final["model"])
    print("allreduce calls", w.allreduce_calls)
""")


@needs_mpi
@pytest.mark.parametrize("algo", ["maml", "metasgd"])
def test_ranks_hold_identical_params_equal_to_one_process(tmp_path, algo):
    import tinymeta as tm
    from tinymeta.runs import RunConfig, train

    worker = tmp_path / "worker.py"
    worker.write_text(TRAIN_WORKER)
    out = tmp_path / "mpi"
    p = run_mpi(2, str(worker), str(out), algo)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "allreduce calls 25" in p.stdout  # one collective per step (hashes ride along)
    m0, m1 = io.load(out / "final_rank0.npz"), io.load(out / "final_rank1.npz")
    for a, b in zip(tree_leaves(m0), tree_leaves(m1)):
        np.testing.assert_array_equal(a, b)
    with tm.set_backend("numpy"):
        cfg = RunConfig(algo=algo, dtype="float64", shots=5, hidden=(16, 16), meta_batch=4,
                        iterations=25, log_every=5, checkpoint_every=10, backend="numpy")
        train(cfg, str(tmp_path / "one"), progress=False)
        single = {"theta": io.load(tmp_path / "one" / "params.npz")}
        if algo == "metasgd":
            single["lrs"] = io.load(tmp_path / "one" / "lrs.npz")
    for a, b in zip(tree_leaves(m0), tree_leaves(single)):
        assert _rel(a, np.asarray(b)) <= 1e-11, _rel(a, np.asarray(b))
    # only rank 0 wrote the run folder, and its log holds the losses of all B tasks
    expected = {"checkpoint.npz", "config.json", "final_rank0.npz", "final_rank1.npz",
                "params.npz", "result.json", "train.jsonl"}
    expected |= {"lrs.npz"} if algo == "metasgd" else set()
    assert set(os.listdir(out)) == expected
    mpi_log = [json.loads(x) for x in open(out / "train.jsonl")]
    one_log = [json.loads(x) for x in open(tmp_path / "one" / "train.jsonl")]
    assert [r["iteration"] for r in mpi_log] == [5, 10, 15, 20, 25]
    for a, b in zip(mpi_log, one_log):
        assert abs(a["query_loss"] - b["query_loss"]) <= 1e-12 * abs(b["query_loss"])


@needs_mpi
def test_a_meta_batch_that_does_not_split_is_one_clear_error(tmp_path):
    p = run_mpi(2, *train_cmd("--meta-batch", "5", "--iterations", "2", "--out",
                              str(tmp_path / "run")))
    assert p.returncode == 1
    assert p.stderr.count("does not split evenly over 2 MPI ranks") == 1, p.stderr
    assert "Abort" not in p.stderr  # every rank fails alike: printed once, no abort


# ---- (c) a lost rank, a hung rank, and resume ------------------------------------------------


def _wait_for_checkpoint(out: Path, at_least: int, proc: subprocess.Popen) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < TIMEOUT_S:
        if proc.poll() is not None:
            raise AssertionError("the run ended before it could be interrupted:\n"
                                 + proc.communicate()[1])
        try:
            it = int(io.load(out / "checkpoint.npz")["iteration"])
            if it >= at_least:
                return it
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def _interrupt(tmp_path: Path, sig: int, args: list[str], at_least: int) -> tuple:
    """Start a two-rank run, send ``sig`` to rank 1 once a checkpoint ≥ at_least exists.

    Returns (seconds from the signal to the end of mpiexec, returncode, stdout + stderr).
    """
    piddir = tmp_path / f"pids{sig}"
    piddir.mkdir()
    out = Path(args[args.index("--out") + 1])
    proc = subprocess.Popen(_mpi_cmd(2, *train_cmd(*args)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(TM_PIDDIR=str(piddir)))
    pid = None
    try:
        _wait_for_checkpoint(out, at_least, proc)
        pid = int((piddir / "rank1.pid").read_text())
        os.kill(pid, sig)
        t0 = time.monotonic()
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        return time.monotonic() - t0, proc.returncode, stdout + stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if pid is not None:
            for s in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, s)
                except ProcessLookupError:
                    break


@needs_mpi
def test_kill_one_rank_then_resume_bit_for_bit(tmp_path):
    N = 1200
    common = ["--meta-batch", "4", "--iterations", str(N), "--checkpoint-every", "50",
              "--log-every", "50"]
    full, part = tmp_path / "full", tmp_path / "part"
    p = run_mpi(2, *train_cmd(*common, "--out", str(full)))
    assert p.returncode == 0, p.stderr

    took, code, text = _interrupt(tmp_path, signal.SIGKILL, [*common, "--out", str(part)], 100)
    assert code != 0
    assert took < 10, f"the job took {took:.1f} s to stop after a rank was killed"
    assert "signal 9" in text or "killed" in text.lower(), text  # mpiexec names the loss
    stopped_at = int(io.load(part / "checkpoint.npz")["iteration"])
    assert 100 <= stopped_at < N, "the rank was not killed mid-run"
    assert not (part / "params.npz").exists()

    p = run_mpi(2, *train_cmd("--resume", "--out", str(part)))
    assert p.returncode == 0, p.stderr
    for a, b in zip(io.load(full / "params.npz"), io.load(part / "params.npz")):
        np.testing.assert_array_equal(a, b)
    ck_full, ck_part = io.load(full / "checkpoint.npz"), io.load(part / "checkpoint.npz")
    assert ck_full["iteration"] == ck_part["iteration"] == N
    for a, b in zip(tree_leaves(ck_full["opt_state"]), tree_leaves(ck_part["opt_state"])):
        np.testing.assert_array_equal(a, b)

    def losses(run: Path) -> list:
        return [(r["iteration"], r["query_loss"], r["support_loss"])
                for r in map(json.loads, open(run / "train.jsonl"))]

    assert losses(full) == losses(part)


@needs_mpi
def test_a_hung_rank_stops_the_job_through_the_watchdog(tmp_path):
    out = tmp_path / "hung"
    args = ["--meta-batch", "4", "--iterations", "100000", "--checkpoint-every", "20",
            "--mpi-timeout", "2", "--out", str(out)]
    took, code, text = _interrupt(tmp_path, signal.SIGSTOP, args, 20)
    assert code != 0
    assert took < 10, f"the job took {took:.1f} s to stop after a rank hung"
    assert "rank 0 of 2 waited more than 2 s in the Allreduce of iteration" in text, text
    assert f"tinymeta train --resume --out {out}" in text


# ---- the single-process path --------------------------------------------------------------


def test_one_process_never_imports_mpi4py(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from tinymeta.cli import main
        assert main(["train", *{SMALL!r}, "--meta-batch", "3", "--iterations", "2",
                     "--out", {str(tmp_path / "run")!r}]) == 0
        assert "mpi4py" not in sys.modules
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=TIMEOUT_S, env=_env())
    assert p.returncode == 0, p.stderr


def test_mpi_flag_without_mpi4py_is_one_line_with_the_install_hint(tmp_path):
    fake = tmp_path / "fake" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('mpi4py is not installed here')\n")
    cmd = [sys.executable, "-c", CLI, "train", *SMALL, "--iterations", "2", "--out",
           str(tmp_path / "run")]
    for extra, env in (([" --mpi"], {}), ([], {"PMI_RANK": "0", "PMI_SIZE": "2"})):
        p = subprocess.run(cmd + [e.strip() for e in extra], capture_output=True, text=True,
                           timeout=TIMEOUT_S,
                           env=_env(PYTHONPATH=str(tmp_path / "fake"), **env))
        assert p.returncode == 1
        assert p.stderr.count("\n") == 1, p.stderr
        assert 'needs mpi4py, which is not installed: pip install -e ".[mpi]"' in p.stderr
        assert not (tmp_path / "run" / "checkpoint.npz").exists()
