"""Seconds per second-order Conv4 MAML meta-step, eager and compiled: what a training costs.

Run from a checkout, on one core:

    OPENBLAS_NUM_THREADS=1 taskset -c 1 python benchmarks/conv4_step.py [--json out.json]
        [--steps 3] [--profile]

The two settings of Finn et al.'s Omniglot tables (second-order MAML, one query image per
class as in their code, float32, the numba backend unless TINYMETA_BACKEND says otherwise):

- 5-way 1-shot, meta-batch 32, one inner step;
- 20-way 1-shot, meta-batch 16, five inner steps;

each ``tm.meta.maml(conv4 loss, θ, batch, α, T, adapt=mask)`` with the run layer's mask
(the batch-norm shifts held out of the inner loop, as Finn et al.), on random images (the
cost does not depend on the pixels). Eager: the meta-gradient as ``tinymeta train`` runs it;
compiled: ``tm.compile`` of it (``--compile``), recorded on the first call and replayed
after. Each is called once to warm up (numba's kernels load, the tape is recorded), then
``--steps`` times; the median and the spread are reported with the machine and its load.
``--profile`` adds the kernel time per primitive of one eager step (the ten largest).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads OpenBLAS

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import numpy as np  # noqa: E402

import tinymeta as tm  # noqa: E402
import tinymeta.meta  # noqa: E402, F401
from tinymeta import io as tm_io  # noqa: E402
from tinymeta import tape  # noqa: E402

SETTINGS = (  # (label, ways, meta-batch, inner steps)
    ("5-way 1-shot, B=32, T=1", 5, 32, 1),
    ("20-way 1-shot, B=16, T=5", 20, 16, 5),
)
INNER_LR = 0.4  # Finn et al.'s Omniglot α


def loss_fn(params, x, y):
    return tm.nn.cross_entropy(tm.nn.conv4(params, x), y)


def make_step(ways: int, B: int, T: int, seed: int = 0):
    """(step, θ_0, batch): step(θ, batch) is the second-order meta-gradient."""
    rng = np.random.default_rng(seed)
    theta = tm.nn.conv4_init(ways, seed=seed)
    backend = tm.get_backend()

    def images():
        return backend.asarray(rng.random((B, ways, 28, 28, 1), dtype=np.float32))

    labels = backend.asarray(np.tile(np.arange(ways), (B, 1)))
    batch = tm.tasks.TaskBatch(images(), labels, images(), labels)
    mask = tm.nn.conv4_adapt_mask(theta)

    def step(theta, batch):
        return tm.meta.maml(loss_fn, theta, batch, INNER_LR, T, adapt=mask)[0]

    return step, [backend.asarray(p) for p in theta], batch


def time_calls(fn, args, n: int) -> dict:
    start = time.perf_counter()
    fn(*args)
    first = time.perf_counter() - start
    runs = []
    for _ in range(n):
        start = time.perf_counter()
        fn(*args)
        runs.append(time.perf_counter() - start)
    return {"first_s": first, "median_s": statistics.median(runs), "min_s": min(runs),
            "max_s": max(runs), "runs_s": runs}


def profile(step, theta, batch) -> list:
    """(primitive, kernel seconds, calls) of one eager step, largest first."""
    seconds: dict = defaultdict(float)
    calls: dict = defaultdict(int)
    run = tape._run

    def timed(prim, vals, params):
        start = time.perf_counter()
        out = run(prim, vals, params)
        seconds[prim.name] += time.perf_counter() - start
        calls[prim.name] += 1
        return out

    tape._run = timed
    try:
        step(theta, batch)
    finally:
        tape._run = run
    return sorted(((k, seconds[k], calls[k]) for k in seconds), key=lambda r: -r[1])


def machine() -> dict:
    import datetime
    import platform

    from tinymeta import bench

    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": bench.cpu_name(), "cpu_count": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "python": platform.python_version(), "numpy": np.__version__,
            "backend": tm.backend_name(),
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
            "loadavg": [round(v, 2) for v in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up (3)")
    p.add_argument("--only", choices=["5", "20"], default=None, help="one setting only")
    p.add_argument("--no-compiled", action="store_true", help="eager only")
    p.add_argument("--profile", action="store_true", help="kernel time per primitive")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON (atomically)")
    args = p.parse_args(argv)
    out = {"machine": machine(), "results": []}
    for label, ways, B, T in SETTINGS:
        if args.only is not None and int(args.only) != ways:
            continue
        step, theta, batch = make_step(ways, B, T)
        row = {"setting": label, "ways": ways, "meta_batch": B, "inner_steps": T,
               "eager": time_calls(step, (theta, batch), args.steps)}
        print(f"{label}: eager {row['eager']['median_s']:.3f} s/step "
              f"(min {row['eager']['min_s']:.3f}, first {row['eager']['first_s']:.2f})",
              flush=True)
        if not args.no_compiled:
            row["compiled"] = time_calls(tm.compile(step), (theta, batch), args.steps)
            print(f"{label}: compiled {row['compiled']['median_s']:.3f} s/step (min "
                  f"{row['compiled']['min_s']:.3f}, recording {row['compiled']['first_s']:.2f})",
                  flush=True)
        if args.profile:
            row["profile"] = profile(step, theta, batch)
            total = sum(s for _, s, _ in row["profile"])
            print(f"  kernel time of one eager step: {total:.3f} s; the largest:")
            for name, s, n in row["profile"][:10]:
                print(f"    {name:<18}{s:8.3f} s {100 * s / total:5.1f}%  {n:4d} calls")
        out["results"].append(row)
    out["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    m = out["machine"]
    print(f"{m['cpu']}, {m['cpu_count']} cores (affinity {m['affinity']}), backend "
          f"{m['backend']}, OPENBLAS_NUM_THREADS={m['OPENBLAS_NUM_THREADS']}, {m['date']}, "
          f"load average {m['loadavg']} -> {out['loadavg_end']}")
    if args.json:
        tm_io.write_json(args.json, out, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
