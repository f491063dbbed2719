"""Data-parallel meta-batches over MPI (mpi4py): one Allreduce per meta-step.

The maths. The meta-objective of a meta-batch of B tasks is the mean of the query losses,

    J(θ) = (1/B) Σ_{e=1}^{B} L_Q^e(θ_T^e(θ)).

Split the B tasks into P equal slices S_0 … S_{P−1} of b = B/P tasks (rank r keeps tasks
r·b … r·b + b − 1 of the batch that every rank draws in full). With J_r = (1/b) Σ_{e∈S_r} L_Q^e,
the mean over rank r's tasks, which is what the algorithms return,

    J = (1/P) Σ_r J_r   and so   ∇J = (1/P) Σ_r ∇J_r:

the meta-gradient of one process with B tasks is the equal-weight mean of the P per-rank
meta-gradients (equal weights because the slices are equal). Each rank ravels its ∇J_r
into one contiguous float64 buffer, the ranks sum the buffers with one ``Allreduce`` and
divide by P. Every rank then holds the same mean and applies the same optimizer step, so
the parameters stay identical; the only difference from one process is the order of the
floating-point additions (float64 rounding; for float32 runs, the mean is formed in
float64 and rounded once to float32, whereas one process sums in float32).

The same buffer carries, at no extra call:

- the per-task losses ``info["support_loss"]`` and ``info["query_loss"]`` (and iMAML's
  ``info["stationarity"]``): rank r writes its
  b values at offset r·b of a zero block of length B, so the sum *is* the gather (x + 0 is
  exact), and every rank logs the losses of all B tasks, as one process would;
- ``info["loss"]`` (the rank's meta-objective), averaged like the gradient;
- every ``check_every`` steps (and on the first), a 52-bit hash of the rank's state (params,
  optimizer state, sampler RNG state) in slot r of a zero block of length P: after the sum
  every rank holds all P hashes, and a disagreement stops every rank with an error naming
  the ranks (52 bits, so a hash is an integer that float64 holds exactly).

Validation (Omniglot). A fixed set of n validation tasks is split into P contiguous
shares (:meth:`World.task_range`, sizes ⌊n/P⌋ or ⌈n/P⌉); each rank computes its tasks'
accuracies and one more ``Allreduce`` of an (n,) zero buffer, each rank's values at their
offsets, gathers them exactly in task order (:meth:`World.allgather_tasks`), so every rank
forms the same mean from the same array as one process would, and takes the same
best-checkpoint and early-stopping decisions.

Launch and failure. Under ``mpiexec`` the ranks are detected from the launcher's
environment (``PMI_RANK``/``PMI_SIZE`` of MPICH's hydra, ``OMPI_COMM_WORLD_*`` of Open MPI,
``PMIX_RANK``, ``MV2_COMM_WORLD_*``); mpi4py is imported only then (or when ``--mpi``
forces it), so the single-process path never needs it. A rank that dies (SIGKILL, OOM)
makes ``mpiexec`` kill the whole job within about a second (MPICH's hydra reports "BAD
TERMINATION"). A rank that *hangs* is caught by a watchdog thread: each collective is
given a deadline (``timeout`` seconds; the first Allreduce, which also waits for the
slowest rank to start, at least ``STARTUP_TIMEOUT_S``), and a rank that waits past it
prints which collective it waited in and calls ``COMM_WORLD.Abort(1)``. An error raised on
one rank only (an unwritable run folder on rank 0) also aborts, so that the others never
wait forever; an error raised identically on every rank (a bad setting, a non-finite
averaged meta-gradient, a hash mismatch) ends every rank normally and is printed once, by
rank 0.

The task sampler and the run folder. Every rank holds the same sampler Generator, seeded
by ``--seed`` and advanced only by drawing the meta-batches, so the batch of iteration i
is a function of (seed, i) alone and is the same on every rank; the checkpoint stores the
Generator's state, so a resumed run draws what the uninterrupted one would (and the
single-process stream is the one it always was). Only rank 0 writes (config, log,
checkpoints, params; atomically); every rank reads the run folder on ``--resume``, so
ranks on several machines need it on a shared filesystem.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import kernels
from .tree import tree_flatten, tree_map, tree_unflatten

INSTALL_HINT = 'pip install -e ".[mpi]"  (or: pip install mpi4py mpich)'
DEFAULT_TIMEOUT_S = 60.0
STARTUP_TIMEOUT_S = 120.0  # the first Allreduce of a run waits at least this long
DEFAULT_CHECK_EVERY = 100
_GRACE_S = 1.0

# (rank variable, size variable) that launchers set in each rank's environment
_LAUNCHER_ENV = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),  # Open MPI
    ("PMI_RANK", "PMI_SIZE"),  # MPICH hydra, Intel MPI, Slurm's PMI-2
    ("PMIX_RANK", None),  # PMIx (Open MPI 5, Slurm --mpi=pmix)
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),  # MVAPICH2
)
_PER_TASK_KEYS = ("support_loss", "query_loss", "stationarity")
_MEAN_KEYS = ("loss",)


class DistributedError(RuntimeError):
    """A distributed run that cannot go on. ``all_ranks``: raised alike on every rank."""

    def __init__(self, message: str, all_ranks: bool = False) -> None:
        super().__init__(message)
        self.all_ranks = all_ranks


def on_all_ranks(exc: BaseException) -> BaseException:
    """Mark ``exc`` as raised identically on every rank (printed once, no abort); return it."""
    with contextlib.suppress(AttributeError):
        exc.all_ranks = True  # type: ignore[attr-defined]
    return exc


@contextlib.contextmanager
def same_on_all_ranks(what: str = "the run's set-up") -> Iterator[None]:
    """Mark an exception raised in the block as one that every rank raises alike, if it is.

    For code whose outcome should depend only on what every rank shares (the settings, the
    run folder's files, the data). On one process the mark is all it does. Under MPI the
    ranks then say with one Allgather whether each raised: an exception that every rank
    raised is marked (printed once, by rank 0, no abort); one that only some ranks raised
    (the data missing on one host) stays the raising rank's own, printed at once with its
    rank before the job aborts, and the ranks that did not raise stop with a
    :class:`DistributedError` that names those that did, instead of waiting for them in
    the next collective.
    """
    w = _WORLD
    many = w is not None and w.size > 1
    check = f"the check of {what}"  # the set-up may be slow (data): the start-up allowance
    try:
        yield
    except Exception as e:
        if getattr(e, "report_now", False) or getattr(e, "wait_for_others", False):
            raise  # an inner block's verdict, which every rank holds one side of
        if not many:
            on_all_ranks(e)
            raise
        w.pending_error = f"{type(e).__name__}: {e}"  # printed if the check times out
        try:
            everywhere = all(w.allgather_int(1, check, STARTUP_TIMEOUT_S))
        finally:
            w.pending_error = None
        if everywhere:
            on_all_ranks(e)
        else:
            e.report_now = True  # type: ignore[attr-defined]
        raise
    if many:
        failed = [r for r, f in enumerate(w.allgather_int(0, check, STARTUP_TIMEOUT_S)) if f]
        if failed:
            err = DistributedError(
                f"{what} failed on rank{'s' if len(failed) > 1 else ''} "
                f"{', '.join(map(str, failed))} only (its own message says why)")
            err.wait_for_others = True  # type: ignore[attr-defined]
            raise err


def launcher_env() -> tuple[int | None, int | None, str | None]:
    """(rank, size, the variable it came from) as an MPI launcher set them, else Nones."""
    for rank_var, size_var in _LAUNCHER_ENV:
        if rank_var in os.environ:
            try:
                rank = int(os.environ[rank_var])
                size = int(os.environ[size_var]) if size_var and size_var in os.environ else None
            except ValueError:
                continue
            return rank, size, rank_var
    return None, None, None


def state_hash(tree: Any, extra: Any = None) -> int:
    """A 52-bit hash of a pytree's leaves (dtype, shape, bytes) and of JSON-able ``extra``.

    52 bits, so that the value is an integer that a float64 holds exactly (< 2**53) and can
    travel in the Allreduce buffer.
    """
    h = hashlib.sha256()
    leaves, _ = tree_flatten(tree)
    to_numpy = kernels.get_backend().to_numpy
    for leaf in leaves:
        a = np.ascontiguousarray(np.asarray(to_numpy(leaf)))
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True, default=_json_default).encode())
    return int.from_bytes(h.digest()[:8], "little") >> 12


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.random.Generator):
        return obj.bit_generator.state
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"state_hash: cannot hash a {type(obj).__name__} in extra")


class _Watchdog:
    """A daemon thread that aborts the job when a collective waits past its deadline."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.deadline: float | None = None
        self.what = ""
        self.waited = world.timeout
        self._thread = threading.Thread(target=self._run, name="tinymeta-mpi-watchdog",
                                        daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def guard(self, what: str, timeout: float) -> Iterator[None]:
        self.what, self.waited = what, timeout
        self.deadline = time.monotonic() + timeout
        try:
            yield
        finally:
            self.deadline = None

    def _run(self) -> None:
        period = min(0.2, max(self.world.timeout / 20, 0.01))
        while True:
            time.sleep(period)
            deadline = self.deadline
            if deadline is not None and time.monotonic() > deadline:
                w = self.world
                if w.pending_error is not None:  # this rank's own error, not yet printed
                    print(f"tinymeta: error: rank {w.rank} of {w.size}: {w.pending_error}",
                          file=sys.stderr, flush=True)
                print(f"tinymeta: error: rank {w.rank} of {w.size} waited more than "
                      f"{self.waited:g} s in {self.what}: another rank is lost or hung; "
                      f"stopping the job (MPI_Abort){w.resume_hint}", file=sys.stderr,
                      flush=True)
                w.abort(1)


class World:
    """One process's view of the job: its rank r, the size P, and the collectives.

    A ``World`` without ``comm`` is the single process (P = 1): every method is then the
    identity, and mpi4py is never imported.

    Args:
        comm: an mpi4py communicator (``MPI.COMM_WORLD``), or None for one process.
        timeout: seconds a rank may wait in one collective before it aborts the job.
        check_every: compare the ranks' state hashes every this many iterations.
    """

    def __init__(self, comm: Any = None, timeout: float = DEFAULT_TIMEOUT_S,
                 check_every: int = DEFAULT_CHECK_EVERY) -> None:
        if timeout <= 0:
            raise ValueError(f"--mpi-timeout must be > 0; got {timeout}")
        if check_every < 1:
            raise ValueError(f"--mpi-check-every must be >= 1; got {check_every}")
        self.comm = comm
        self.rank = 0 if comm is None else int(comm.Get_rank())
        self.size = 1 if comm is None else int(comm.Get_size())
        self.timeout = float(timeout)
        self.check_every = int(check_every)
        self.resume_hint = ""
        self.pending_error: str | None = None  # this rank's error while its ranks compare
        self.allreduce_s = 0.0  # wall time spent inside Allreduce (benchmarks)
        self.allreduce_calls = 0
        self._checked = False
        self._watchdog = _Watchdog(self) if self.size > 1 else None

    @property
    def is_root(self) -> bool:
        """True on rank 0, the one rank that writes checkpoints, logs and results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size})"

    def describe_run(self, out: str) -> None:
        """Name the run folder in the watchdog's message (where ``--resume`` continues)."""
        self.resume_hint = (f"; continue from the last checkpoint with: tinymeta train "
                            f"--resume --out {out}")

    # ---- the meta-batch ---------------------------------------------------------------

    def local_tasks(self, meta_batch: int) -> int:
        """b = B/P, the tasks of each rank; a clear error unless P divides B."""
        if meta_batch % self.size:
            raise DistributedError(
                f"--meta-batch {meta_batch} does not split evenly over {self.size} MPI ranks; "
                f"choose a meta-batch that is a multiple of {self.size} (each rank takes "
                "B/P tasks)", all_ranks=True)
        return meta_batch // self.size

    def shard(self, batch: Any) -> Any:
        """This rank's slice of a meta-batch: tasks r·b … r·b + b − 1, b = B/P.

        Every leaf of ``batch`` (a TaskBatch, task parameters included) whose leading axis
        is the task axis B is sliced; other leaves are kept. P = 1: ``batch`` itself.
        """
        if self.size == 1:
            return batch
        total = int(batch.support_x.shape[0])
        b = self.local_tasks(total)
        lo, hi = self.rank * b, (self.rank + 1) * b

        def cut(a: Any) -> Any:
            shape = getattr(a, "shape", ())
            return a[lo:hi] if len(shape) >= 1 and shape[0] == total else a

        return tree_map(cut, batch)

    # ---- the one collective per step ----------------------------------------------------

    def _check_due(self, iteration: int | None) -> bool:
        return not self._checked or (iteration is not None and
                                     iteration % self.check_every == 0)

    def allreduce_mean(self, grads: Any, info: dict | None = None,
                       iteration: int | None = None,
                       state: tuple | None = None) -> tuple:
        """(mean over ranks of ``grads``, ``info`` with the losses of all B tasks).

        One ``Allreduce(SUM)`` over one float64 buffer laid out as

            [ ravel(grads) (n) | support_loss (B) | query_loss (B) | loss (1) | hashes (P) ]

        then the gradient part and ``loss`` are divided by P (their equal-weight mean), the
        per-task blocks are the gathered losses (each rank wrote only its own b entries), and
        the hash block, filled when a check is due, must hold P equal values.

        Args:
            grads: this rank's meta-gradient pytree (the mean over its b tasks).
            info: the algorithm's info dict; its per-task losses (b,) come back as (B,), its
                "loss" as the mean over ranks; other entries stay this rank's own.
            iteration: the meta-iteration (for the check schedule and messages).
            state: (pytree of arrays, JSON-able extra) to hash when a check is due, e.g.
                ((params, optimizer state), (the sampler's Generator, counters)); a NumPy
                Generator in ``extra`` is hashed by its bit generator's state.

        Raises:
            DistributedError: the ranks' states differ (on every rank alike).
        """
        if self.size == 1:
            return grads, info
        from mpi4py import MPI

        P, r = self.size, self.rank
        backend = kernels.get_backend()
        leaves, treedef = tree_flatten(grads)
        host = [np.asarray(backend.to_numpy(leaf)) for leaf in leaves]
        sizes = [a.size for a in host]
        n = int(sum(sizes))
        info = dict(info or {})
        per_task = [k for k in _PER_TASK_KEYS if k in info and np.ndim(info[k]) == 1]
        b = int(np.shape(info[per_task[0]])[0]) if per_task else 0
        B = b * P
        means = [k for k in _MEAN_KEYS if k in info and np.ndim(info[k]) == 0]
        o_tasks = n
        o_means = o_tasks + len(per_task) * B
        o_hash = o_means + len(means)
        buf = np.zeros(o_hash + P, dtype=np.float64)
        pos = 0
        for a, s in zip(host, sizes):
            buf[pos:pos + s] = a.reshape(-1)
            pos += s
        task_dtypes = {}
        for j, k in enumerate(per_task):
            v = np.asarray(backend.to_numpy(info[k]))
            task_dtypes[k] = v.dtype
            start = o_tasks + j * B + r * b
            buf[start:start + b] = v
        mean_dtypes = {}
        for j, k in enumerate(means):
            v = np.asarray(backend.to_numpy(info[k]))
            mean_dtypes[k] = v.dtype
            buf[o_means + j] = v
        check = self._check_due(iteration) and state is not None
        if check:
            buf[o_hash + r] = float(state_hash(*state))
        where = "the Allreduce" + (f" of iteration {iteration}" if iteration is not None else "")
        t0 = time.perf_counter()
        # the first one also waits for the slowest start (imports, JIT, loading a checkpoint)
        with self._guard(where, STARTUP_TIMEOUT_S if self.allreduce_calls == 0 else None):
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        self.allreduce_s += time.perf_counter() - t0
        self.allreduce_calls += 1
        if check:
            self._checked = True
            self._compare_hashes(buf[o_hash:o_hash + P], iteration)
        mean = buf[:n] / P
        out, pos = [], 0
        for a, s in zip(host, sizes):
            out.append(backend.asarray(mean[pos:pos + s].reshape(a.shape).astype(a.dtype)))
            pos += s
        for j, k in enumerate(per_task):
            block = buf[o_tasks + j * B:o_tasks + (j + 1) * B]
            info[k] = backend.asarray(block.astype(task_dtypes[k]))
        for j, k in enumerate(means):
            info[k] = backend.asarray(np.asarray(buf[o_means + j] / P, dtype=mean_dtypes[k]))
        return tree_unflatten(treedef, out), info

    def _compare_hashes(self, hashes: np.ndarray, iteration: int | None) -> None:
        values = [int(h) for h in hashes]
        if len(set(values)) == 1:
            return
        groups: dict[int, list[int]] = {}
        for rank, h in enumerate(values):
            groups.setdefault(h, []).append(rank)
        where = f" at iteration {iteration}" if iteration is not None else ""
        parts = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))}: "
                          f"hash {h:013x}" for h, rs in groups.items())
        raise DistributedError(
            f"the parameters (with optimizer and sampler state) differ across the MPI "
            f"ranks{where} ({parts}); the ranks no longer train the same model, stopping",
            all_ranks=True)

    def _guard(self, what: str, at_least: float | None = None
               ) -> contextlib.AbstractContextManager:
        if self._watchdog is None:
            return contextlib.nullcontext()
        return self._watchdog.guard(what, max(self.timeout, at_least or 0.0))

    # ---- per-task values of a fixed task set (validation) ------------------------------

    def task_range(self, total: int) -> tuple[int, int]:
        """This rank's contiguous share [lo, hi) of n = ``total`` tasks.

        lo = ⌊r·n/P⌋ and hi = ⌊(r+1)·n/P⌋: the shares cover 0 … n − 1 in rank order and
        differ in size by at most one (a rank gets none when n < P). P = 1: (0, n).
        """
        return (self.rank * total) // self.size, ((self.rank + 1) * total) // self.size

    def allgather_tasks(self, values: np.ndarray, total: int,
                        what: str = "a gather of per-task values") -> np.ndarray:
        """The (n,) float64 values of all ``total`` tasks from each rank's share of them.

        Rank r holds the values of its tasks :meth:`task_range` (``total``); it writes them
        at their offset of a zero buffer of length n and the ranks sum the buffers with one
        guarded ``Allreduce``: each entry is one rank's value plus zeros, so the result is
        exactly the one-process array in task order (x + 0 = x for every finite x; a −0.0
        comes back as +0.0). P = 1: ``values`` itself.

        Raises:
            ValueError: ``values`` is not as long as this rank's share.
        """
        if self.size == 1:
            return values
        from mpi4py import MPI

        lo, hi = self.task_range(total)
        local = np.asarray(values, dtype=np.float64).reshape(-1)
        if local.size != hi - lo:
            raise ValueError(f"allgather_tasks: rank {self.rank} holds {local.size} values; "
                             f"its share of {total} tasks is {hi - lo} (tasks {lo}..{hi - 1})")
        buf = np.zeros(total, dtype=np.float64)
        buf[lo:hi] = local
        with self._guard(what, STARTUP_TIMEOUT_S if self.allreduce_calls == 0 else None):
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return buf

    def allgather_int(self, value: int, what: str = "an Allgather",
                      at_least: float | None = None) -> list[int]:
        """Every rank's ``value`` (a guarded Allgather of one int64), for tests and checks;
        ``at_least``: wait at least this long (s) before the watchdog stops the job."""
        if self.size == 1:
            return [int(value)]
        from mpi4py import MPI

        send = np.array([value], dtype=np.int64)
        recv = np.zeros(self.size, dtype=np.int64)
        with self._guard(what, at_least):
            self.comm.Allgather([send, MPI.INT64_T], [recv, MPI.INT64_T])
        return [int(v) for v in recv]

    def barrier(self, what: str = "a barrier") -> None:
        if self.size > 1:
            with self._guard(what):
                self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (``MPI_Abort``); the single process just exits."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is not None:
            self.comm.Abort(code)
        os._exit(code)


# ---- the process's world -------------------------------------------------------------------

_WORLD: World | None = None


def _import_mpi(reason: str) -> Any:
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError(f"{reason} needs mpi4py, which is not installed: "
                          f"{INSTALL_HINT}") from None
    return MPI


def init(force: bool = False, timeout: float | None = None,
         check_every: int | None = None) -> World:
    """Set up (once) and return this process's :class:`World`.

    Distributed when an MPI launcher's environment says so (``mpiexec -n P``), or when
    ``force`` (``--mpi``); then mpi4py must be installed (else an ImportError with the
    install hint). Otherwise the single process, without importing mpi4py.

    ``timeout`` (default ``$TINYMETA_MPI_TIMEOUT`` or 60 s) and ``check_every`` (default
    ``$TINYMETA_MPI_CHECK_EVERY`` or 100) set the watchdog and the hash-check schedule.
    """
    global _WORLD
    if timeout is None:
        timeout = float(os.environ.get("TINYMETA_MPI_TIMEOUT", DEFAULT_TIMEOUT_S))
    if check_every is None:
        check_every = int(os.environ.get("TINYMETA_MPI_CHECK_EVERY", DEFAULT_CHECK_EVERY))
    if _WORLD is not None and (_WORLD.comm is not None or not force):
        _WORLD.timeout, _WORLD.check_every = float(timeout), int(check_every)
        return _WORLD
    rank, size, var = launcher_env()
    if force:
        MPI = _import_mpi("--mpi")
    elif var is not None and (size is None or size > 1):
        MPI = _import_mpi(f"an MPI launcher started this process ({var}={rank}"
                          + (f" of {size} ranks" if size else "") + "); running over MPI")
    else:
        _WORLD = World(None, timeout, check_every)
        return _WORLD
    comm = MPI.COMM_WORLD
    comm.Set_errhandler(MPI.ERRORS_ARE_FATAL)  # a failed collective aborts, never returns
    _WORLD = World(comm, timeout, check_every)
    if _WORLD.size > 1:
        _install_excepthook(_WORLD)
    return _WORLD


def world() -> World:
    """The process's :class:`World` (set up by :func:`init` on first use)."""
    return _WORLD if _WORLD is not None else init()


def _install_excepthook(w: World) -> None:
    """An uncaught exception on one rank prints its traceback and aborts the job."""
    previous = sys.excepthook

    def hook(kind: type, value: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            previous(kind, value, tb)
            return
        print(f"tinymeta: rank {w.rank} of {w.size}: uncaught exception; aborting the job",
              file=sys.stderr)
        traceback.print_exception(kind, value, tb)
        w.abort(1)

    sys.excepthook = hook


def report_error(message: str, exc: BaseException | None = None) -> None:
    """Print a one-line error as a distributed run should, and abort the job when needed.

    One process: print it. Several ranks: an error that every rank raises alike
    (``exc.all_ranks``) is printed once, by rank 0, and every rank returns (and exits
    normally); any other error is printed with its rank and then aborts the whole job, so
    that no rank is left waiting in a collective (a rank other than 0 first waits
    ``_GRACE_S``, so that an error that all ranks meet alike is printed once). Before MPI
    is set up (mpi4py missing under mpiexec), only the launcher's rank 0 prints.
    """
    w = _WORLD
    if w is None or w.size == 1:
        rank = launcher_env()[0]
        if rank is None or rank == 0 or w is not None:
            print(message, file=sys.stderr, flush=True)
        return
    if getattr(exc, "all_ranks", False):
        if w.is_root:
            print(message, file=sys.stderr, flush=True)
        return
    if getattr(exc, "wait_for_others", False):
        # another rank met the error itself: let it print its message and abort first
        time.sleep(2 * _GRACE_S)
    elif not w.is_root and not getattr(exc, "report_now", False):
        # an error that every rank meets alike: let rank 0 print it and abort first
        time.sleep(_GRACE_S)
    print(f"{message} [rank {w.rank} of {w.size}; aborting the job]", file=sys.stderr,
          flush=True)
    w.abort(1)
