"""Data-parallel scaling of a meta-step over MPI ranks: measured at P = 1, 2; modelled beyond.

Run from a checkout with the ``mpi`` extra (``pip install -e ".[mpi]"``)::

    python benchmarks/scaling.py [--quick] [--json benchmarks/out/scaling.json]

The driver starts ``mpiexec -n P`` on this script for each P in ``--ranks`` (default 1, 2;
P = 1 is the single-process path: no Allreduce at all). Each rank runs the meta-steps of
``tinymeta train`` by hand, timing apart

- ``sample``: drawing the full meta-batch of B tasks (every rank draws all B, as in
  training, and keeps its B/P; so this part does not shrink with P),
- ``grad``: this rank's meta-gradient on its b = B/P tasks,
- ``comm``: the one ``Allreduce`` of the step (``World.allreduce_mean``: packing, the call,
  unpacking; it includes waiting for the slower rank),
- ``update``: the Adam step;

median over the timed steps. Configurations (second-order MAML, 1 inner step, float32,
the default backend):

- ``sinusoid``: the MLP 1-40-40-1 (1,761 parameters), K = 10 support and 10 query points;
  strong scaling with B = 24 tasks in all, weak scaling with b = 12 tasks per rank;
- ``omniglot-mlp``: the MLP 784-256-128-64-64-20 (247,572 parameters) on random 20-way
  1-shot inputs (20 support and 100 query points per task, cross-entropy), the inputs
  drawn per task as the real sampler would gather images; strong B = 16, weak b = 8.

Then, on P ≥ 2, an Allreduce microbenchmark (float64 buffers of 10 … 10⁶ values, minimum
over trials of the mean over repeats) to which the ring-Allreduce model

    T_comm(P, n) = 2(P−1)/P · 8n/β + 2(P−1)·α

is fitted (α the latency of one message, β the bandwidth; MPI libraries switch to
Rabenseifner's reduce-scatter + allgather, latency 2⌈log₂P⌉·α, for large P, shown beside
it), and the step model

    T_step(P) = t_sample(B) + t_grad(B/P) + t_update + T_comm(P, n)

(t_sample and t_grad linear in their task counts, fitted to the measured steps) is
evaluated at P = 8, 64, 512: weak scaling with the measured b per rank, strong scaling with
B = 512 tasks in all. Beyond P = 2 these are a model, not a measurement: the fitted α and β
are those of shared memory on this machine; the tables also show an assumed cluster
network (α = 5 µs, β = 10 GB/s) for comparison.

Threads: OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS and NUMBA_NUM_THREADS default
to 1 (one core per rank). Each P runs ``--repeats`` times (interleaved) and each row keeps
its fastest run, since on a machine with as many cores as ranks any other process slows
one rank and, through the Allreduce, both. The JSON is written atomically.
"""

from __future__ import annotations

import os

for _key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_key, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

MODEL_RANKS = (1, 2, 8, 64, 512)
STRONG_MODEL_B = 512
ASSUMED_NETWORK = {"alpha_s": 5e-6, "beta_Bps": 10e9}  # ~100 Gb/s InfiniBand-class
SIZES = (10, 100, 1_000, 10_000, 100_000, 1_000_000)

CONFIGS: dict[str, dict] = {
    "sinusoid": {"strong_B": 24, "weak_b": 12},
    "omniglot-mlp": {"strong_B": 16, "weak_b": 8},
}


# ---- the worker (one rank) -----------------------------------------------------------------


class _Omniglotish:
    """20-way 1-shot tasks shaped like Omniglot's, gathered from a pool of random images.

    The pool (400 classes × 20 drawers of 28×28 float32 images, random values) stands in
    for the decoded Omniglot arrays; a task picks 20 classes and, per class, 1 support and
    5 query drawers, and gathers their images, as the real sampler does.
    """

    ways, shots, query, classes, drawers = 20, 1, 5, 400, 20

    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self.pool = rng.random((self.classes, self.drawers, 784), dtype=np.float32)

    def sample(self, rng: np.random.Generator, B: int) -> Any:
        from tinymeta.tasks.base import TaskBatch

        N, k = self.ways, self.shots + self.query
        cls = np.argsort(rng.random((B, self.classes)), axis=1)[:, :N]  # N classes per task
        drw = np.argsort(rng.random((B, N, self.drawers)), axis=2)[:, :, :k]
        images = self.pool[cls[:, :, None], drw]  # (B, N, k, 784)
        sx = images[:, :, :self.shots].reshape(B, N * self.shots, 784)
        qx = images[:, :, self.shots:].reshape(B, N * self.query, 784)
        sy = np.tile(np.repeat(np.arange(N), self.shots), (B, 1))
        qy = np.tile(np.repeat(np.arange(N), self.query), (B, 1))
        return TaskBatch(sx, sy, qx, qy, cls)


def _problem(name: str) -> tuple:
    """(params, loss_fn, sample(rng, B), inner_lr)."""
    from tinymeta import nn
    from tinymeta.tasks.sinusoid import Sinusoid

    if name == "sinusoid":
        params = nn.mlp_init((1, 40, 40, 1), seed=0, dtype=np.float32)
        dist = Sinusoid()

        def loss(p: Any, x: Any, y: Any) -> Any:
            return nn.mse(nn.mlp(p, x), y)

        return params, loss, lambda rng, B: dist.sample(B, 10, 10, seed=rng), 0.01
    params = nn.mlp_init((784, 256, 128, 64, 64, 20), seed=0, dtype=np.float32)
    dist = _Omniglotish()

    def loss(p: Any, x: Any, y: Any) -> Any:
        return nn.cross_entropy(nn.mlp(p, x), y)

    return params, loss, dist.sample, 0.1


def _time_steps(world: Any, name: str, B: int, warmup: int, steps: int) -> dict:
    from tinymeta import meta, optim
    from tinymeta.tree import tree_leaves

    params, loss, sample, lr = _problem(name)
    opt = optim.Adam(1e-3)
    state = opt.init(params)
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {k: [] for k in ("sample", "grad", "comm", "update", "total")}
    world.barrier("the start of a benchmark")
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = world.shard(sample(rng, B))
        t1 = time.perf_counter()
        g, info = meta.maml(loss, params, batch, lr, 1)
        t2 = time.perf_counter()
        g, info = world.allreduce_mean(g, info, i + 1, (params, None))
        t3 = time.perf_counter()
        params, state = opt.update(g, state, params)
        t4 = time.perf_counter()
        if i >= warmup:
            for k, v in zip(rows, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                rows[k].append(v)
    n = sum(int(np.size(a)) for a in tree_leaves(params))
    out = {k: statistics.median(v) for k, v in rows.items()}
    out.update(B=B, b=B // world.size, n_params=n, steps=steps)
    return out


def _allreduce_sweep(world: Any, quick: bool) -> list:
    from mpi4py import MPI

    rows = []
    for n in SIZES:
        buf = np.ones(n)
        repeat = max(3, min(2000, int(2e6 // (n + 1000))) // (4 if quick else 1))
        best = float("inf")
        for _ in range(3 if quick else 5):
            world.barrier("the Allreduce sweep")
            t0 = time.perf_counter()
            for _ in range(repeat):
                world.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            t = (time.perf_counter() - t0) / repeat
            best = min(best, float(world.comm.allreduce(t, op=MPI.MAX)))
        rows.append({"n": n, "bytes": 8 * n, "seconds": best, "repeat": repeat})
    return rows


def worker(path: str, quick: bool) -> None:
    from tinymeta import distributed, kernels

    world = distributed.init(force=True, timeout=600)
    warmup, steps = (2, 5) if quick else (5, 50)
    results = []
    for name, c in CONFIGS.items():
        for mode, B in (("strong", c["strong_B"]), ("weak", c["weak_b"] * world.size)):
            r = _time_steps(world, name, B, warmup, steps)
            r.update(config=name, mode=mode, P=world.size)
            results.append(r)
    sweep = _allreduce_sweep(world, quick) if world.size > 1 else []
    if world.is_root:
        data = {"P": world.size, "backend": kernels.backend_name(), "steps": results,
                "allreduce": sweep}
        from tinymeta import io as tm_io

        tm_io.write_json(path, data)


# ---- the driver: run, fit, model ---------------------------------------------------------


def fit_ring(rows: list, P: int) -> dict:
    """Least squares of T = 2(P−1)·α + 2(P−1)/P · bytes/β over the measured sizes.

    Weighted by 1/T (relative error), so that small and large messages count alike.
    """
    A = np.array([[2 * (P - 1), 2 * (P - 1) / P * r["bytes"]] for r in rows])
    t = np.array([r["seconds"] for r in rows])
    w = 1 / t
    (alpha, inv_beta), *_ = np.linalg.lstsq(A * w[:, None], t * w, rcond=None)
    pred = A @ np.array([alpha, inv_beta])
    return {"alpha_s": float(alpha), "beta_Bps": float(1 / inv_beta),
            "max_rel_residual": float(np.max(np.abs(pred - t) / t))}


def t_comm(P: int, n: int, alpha: float, beta: float) -> float:
    """The ring Allreduce of n float64 values over P ranks: 2(P−1)/P·8n/β + 2(P−1)α."""
    if P == 1:
        return 0.0
    return 2 * (P - 1) / P * 8 * n / beta + 2 * (P - 1) * alpha


def t_comm_rabenseifner(P: int, n: int, alpha: float, beta: float) -> float:
    """Reduce-scatter + allgather by recursive halving/doubling (what MPI libraries use for
    large P): the same bandwidth term, latency 2⌈log₂P⌉·α instead of 2(P−1)·α."""
    if P == 1:
        return 0.0
    return 2 * (P - 1) / P * 8 * n / beta + 2 * int(np.ceil(np.log2(P))) * alpha


def _linear(xs: list, ys: list) -> tuple:
    """(intercept ≥ 0, slope): least squares; through 0 if the free fit's intercept is < 0."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if len(set(xs.tolist())) >= 2:
        slope, icept = np.polyfit(xs, ys, 1)
        if icept >= 0:
            return float(icept), float(slope)
    return 0.0, float(xs @ ys / (xs @ xs))


def model(steps: list, net: dict, fit: dict) -> list:
    """The step model at MODEL_RANKS for each configuration, weak and strong.

    comm(P) = T_comm(P, n) with ``net``'s α and β, plus a constant overhead: what the
    measured step at P = 2 spent in ``allreduce_mean`` beyond the fitted ring time
    (packing, unpacking, waiting for the slower rank), held fixed for larger P.
    """
    out = []
    for name, c in CONFIGS.items():
        rows = [r for r in steps if r["config"] == name]
        s0, s1 = _linear([r["B"] for r in rows], [r["sample"] for r in rows])
        g0, g1 = _linear([r["b"] for r in rows], [r["grad"] for r in rows])
        upd = statistics.median(r["update"] for r in rows)
        n_params = rows[0]["n_params"]
        two = [r for r in rows if r["P"] == 2]
        extra = max(0.0, statistics.median(
            r["comm"] - t_comm(2, n_params + 2 * r["B"] + 3, fit["alpha_s"], fit["beta_Bps"])
            for r in two)) if two else 0.0
        for mode in ("weak", "strong"):
            for P in MODEL_RANKS:
                B = c["weak_b"] * P if mode == "weak" else STRONG_MODEL_B
                b = B / P
                n_buf = n_params + 2 * B + 1 + P
                comm = t_comm(P, n_buf, net["alpha_s"], net["beta_Bps"]) + (extra if P > 1
                                                                             else 0.0)
                comp = s0 + s1 * B + g0 + g1 * b + upd
                own = comp - s1 * (B - b)  # had each rank drawn only its own b tasks
                rab = t_comm_rabenseifner(P, n_buf, net["alpha_s"], net["beta_Bps"]) + (
                    extra if P > 1 else 0.0)
                out.append({"config": name, "mode": mode, "P": P, "B": B, "b": b,
                            "compute_s": comp, "comm_s": comm, "step_s": comp + comm,
                            "comm_share": comm / (comp + comm), "sample_s": s0 + s1 * B,
                            "overhead_s": extra, "compute_own_slice_s": own,
                            "comm_share_own_slice": comm / (own + comm),
                            "comm_rabenseifner_s": rab, "comm_share_rabenseifner":
                            rab / (comp + rab)})
    return out


def _fastest(a: dict, b: dict) -> dict:
    """Row by row the faster of two runs (step total; Allreduce sweep: per size)."""
    steps = [x if x["total"] <= y["total"] else y for x, y in zip(a["steps"], b["steps"])]
    sweep = [x if x["seconds"] <= y["seconds"] else y for x, y in zip(a["allreduce"],
                                                                      b["allreduce"])]
    return dict(a, steps=steps, allreduce=sweep)


def machine_info() -> dict:
    from tinymeta import bench

    cpu = bench.cpu_name()
    try:
        from mpi4py import MPI

        mpi = " ".join(MPI.Get_library_version().splitlines()[0].split())
    except ImportError:
        mpi = None
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "mpi": mpi,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "threads": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS",
                                                       "NUMBA_NUM_THREADS")}}


def _ms(x: float) -> str:
    return f"{1e3 * x:8.2f}"


def format_measured(steps: list) -> str:
    head = (f"{'config':<13} {'mode':<6} {'P':>2} {'B':>3} {'b':>3}  {'step ms':>8} "
            f"{'sample':>8} {'grad':>8} {'comm':>8} {'update':>8}  {'comm %':>6}  "
            f"{'speed-up':>8}  {'efficiency':>10}")
    lines = [head]
    for r in steps:
        base = next(x for x in steps if x["config"] == r["config"] and x["mode"] == r["mode"]
                    and x["P"] == 1)
        if r["mode"] == "strong":
            speed = base["total"] / r["total"]
            eff = speed / r["P"]
        else:  # weak: tasks per second against P times one rank's
            speed = (r["B"] / r["total"]) / (base["B"] / base["total"])
            eff = speed / r["P"]
        lines.append(f"{r['config']:<13} {r['mode']:<6} {r['P']:>2} {r['B']:>3} {r['b']:>3}  "
                     f"{_ms(r['total'])} {_ms(r['sample'])} {_ms(r['grad'])} "
                     f"{_ms(r['comm'])} {_ms(r['update'])}  {100 * r['comm'] / r['total']:6.1f}"
                     f"  {speed:8.2f}  {eff:10.2f}")
    return "\n".join(lines)


def format_sweep(rows: list, fit: dict) -> str:
    lines = [f"{'n (float64)':>12} {'bytes':>10} {'measured µs':>12} {'model µs':>9}"]
    for r in rows:
        m = t_comm(2, r["n"], fit["alpha_s"], fit["beta_Bps"])
        lines.append(f"{r['n']:>12} {r['bytes']:>10} {1e6 * r['seconds']:12.2f} "
                     f"{1e6 * m:9.2f}")
    return "\n".join(lines)


def format_model(rows: list) -> str:
    """The modelled steps: ring comm and its share; Rabenseifner's; and the ring share had
    each rank drawn only its own b tasks (compute then without the redundant sampling)."""
    lines = [f"{'config':<13} {'mode':<6} {'P':>4} {'B':>5} {'b':>4} {'sample ms':>9} "
             f"{'compute ms':>10} {'ring ms':>8} {'ring %':>6} {'Rab. ms':>8} {'Rab. %':>6} "
             f"{'own-slice ring %':>16}"]
    for r in rows:
        lines.append(f"{r['config']:<13} {r['mode']:<6} {r['P']:>4} {r['B']:>5} "
                     f"{r['b']:>4.3g} {_ms(r['sample_s']):>9} {_ms(r['compute_s']):>10} "
                     f"{_ms(r['comm_s']):>8} {100 * r['comm_share']:6.1f} "
                     f"{_ms(r['comm_rabenseifner_s']):>8} "
                     f"{100 * r['comm_share_rabenseifner']:6.1f} "
                     f"{100 * r['comm_share_own_slice']:16.1f}")
    return "\n".join(lines)


def _mpiexec() -> str:
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if not found:
        sys.exit('scaling.py needs mpiexec: pip install -e ".[mpi]"')
    return found


def measure(ranks: list, repeats: int, quick: bool) -> tuple:
    """Run the workers: (machine info, step rows, Allreduce sweep of the largest P)."""
    measured: dict[int, dict] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for P in ranks:  # interleaved, so that a busy spell hits every P alike
                path = os.path.join(tmp, f"p{P}.json")
                cmd = [_mpiexec(), "-n", str(P), sys.executable, os.path.abspath(__file__),
                       "--worker", path] + (["--quick"] if quick else [])
                subprocess.run(cmd, check=True, timeout=1800)
                with open(path) as f:
                    run = json.load(f)
                measured[P] = run if rep == 0 else _fastest(measured[P], run)
    steps = [r for P in ranks for r in measured[P]["steps"]]
    steps.sort(key=lambda r: (r["config"], r["mode"], r["P"]))
    info = machine_info()
    info.update(backend=measured[ranks[0]]["backend"], repeats=repeats,
                loadavg_before=load_before, loadavg_after=os.getloadavg())
    return info, steps, measured[max(ranks)]["allreduce"]


def report(info: dict, steps: list, sweep: list) -> dict:
    """Print the tables and return the JSON-able result (measured, fit, model)."""
    print(f"{info['date']}  {info['cpu']} ({info['cores']} cores), {info['mpi']}, "
          f"backend {info['backend']}, one thread per rank")
    print("\nmeasured, median per meta-step (ms):")
    print(format_measured(steps))
    result: dict = {"machine": info, "measured": steps}
    P = max(r["P"] for r in steps)
    if P > 1 and sweep:
        fit = fit_ring(sweep, P)
        print(f"\nAllreduce on P = {P} (shared memory): fitted α = {1e6 * fit['alpha_s']:.2f} µs,"
              f" β = {fit['beta_Bps'] / 1e9:.2f} GB/s (max relative residual "
              f"{100 * fit['max_rel_residual']:.0f}%)")
        print(format_sweep(sweep, fit))
        modelled = model(steps, fit, fit)
        assumed = model(steps, ASSUMED_NETWORK, fit)
        print("\nMODEL (not measured beyond P = 2), α and β as fitted here:")
        print(format_model(modelled))
        print(f"\nMODEL with an assumed network, α = {1e6 * ASSUMED_NETWORK['alpha_s']:g} µs, "
              f"β = {ASSUMED_NETWORK['beta_Bps'] / 1e9:g} GB/s:")
        print(format_model(assumed))
        result.update(allreduce={"P": P, "sweep": sweep, "fit": fit},
                      model={"fitted": modelled, "assumed_network": assumed,
                             "assumed": ASSUMED_NETWORK})
    return result


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", default="1,2", help="the P to measure (1,2)")
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs per P; each row keeps its fastest run (3)")
    ap.add_argument("--json", default=None, help="write the results here (atomically)")
    ap.add_argument("--from-json", default=None,
                    help="no measuring: the tables and model from a saved --json file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.quick)
        return 0
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        info, steps = saved["machine"], saved["measured"]
        sweep = saved.get("allreduce", {}).get("sweep", [])
    else:
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            sys.exit('scaling.py needs mpi4py: pip install -e ".[mpi]"')
        ranks = [int(p) for p in args.ranks.split(",")]
        info, steps, sweep = measure(ranks, args.repeats, args.quick)
    result = report(info, steps, sweep)
    if args.json:
        from tinymeta import bench_history

        # atomically, with the commit, the machine and the library versions
        bench_history.write_results(args.json, result,
                                    os.path.dirname(os.path.abspath(__file__)), indent=1)
        print(f"\n{args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
