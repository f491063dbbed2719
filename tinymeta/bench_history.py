"""Benchmark history: what each JSON was measured on, and comparisons between two of them.

Every benchmark script stamps its JSON with :func:`provenance` (the commit and whether the
tree was dirty, the machine, the library versions) through :func:`write_results`. Two
results files are compared timing by timing (``tinymeta bench compare OLD.json NEW.json``):

    ratio = median_new / median_old,   noise = √((IQR_old / median_old)² + (IQR_new / median_new)²)

the noise being the spread of the runs relative to their median, added in quadrature. That
spread is within one run of the suite; a change of load between two runs is not in it, so
each side may be several files (``OLD1.json,OLD2.json``, :func:`pool`): a timing's median is
then the median over the files, and its spread covers the files' disagreement too. A
timing has *regressed beyond* ``median:10%`` when its ratio exceeds 1.10 and its slowdown,
ratio − 1, also exceeds the noise; a slowdown within the noise is printed but not counted.
The timings are read from the layouts of the suites (:func:`timings_of`): a ``timings``
table, the kernel suite's rows (``kernel``, ``size``, one entry per backend), or the
end-to-end suite's rows (``config``, ``impl``, ``median_s``, ``q1_s``, ``q3_s``), so that
files written before this module existed compare too.
"""

from __future__ import annotations

import csv
import datetime
import io as _io
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any, NamedTuple

from .bench import cpu_name
from .io import atomic_write, write_json
from .version import __version__

#: distributions whose versions a results file records, where installed
LIBRARIES = ("numpy", "numba", "llvmlite", "matplotlib", "mpi4py", "cupy-cuda13x", "torch",
             "jax", "jaxlib", "autograd")


# =====================================================================================
# Provenance
# =====================================================================================


def git_state(root: str) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the git checkout holding ``root`` (None, None outside one).

    Dirty means tracked files differ from the commit (untracked files are ignored).
    """
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                               timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict[str, str]:
    """Python's, tinymeta's and each installed distribution of :data:`LIBRARIES`' version."""
    out = {"python": platform.python_version(), "tinymeta": __version__}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance(root: str) -> dict[str, Any]:
    """What a result was measured on: the commit of ``root``'s checkout and whether its tree
    was dirty, the date (UTC), the machine (CPU name, cores, platform), the library versions,
    the BLAS thread setting and the load average."""
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {
        **git_state(root),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_name": cpu_name(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "versions": versions(),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "loadavg": load,
    }


def write_results(path: str, data: Mapping[str, Any], root: str, **json_kwargs: Any) -> None:
    """Write ``data`` as JSON at ``path`` atomically, with ``"provenance"`` of ``root``."""
    write_json(path, {**data, "provenance": provenance(root)}, **json_kwargs)


# =====================================================================================
# Reading timings
# =====================================================================================


class Entry(NamedTuple):
    """One timing of a results file: seconds per call, median and IQR."""

    median: float
    iqr: float


def timings_of(data: Mapping[str, Any]) -> dict[str, Entry]:
    """name -> :class:`Entry` of every timing in a results file (see the module docstring).

    Raises:
        ValueError: the file holds none of the known layouts.
    """
    out: dict[str, Entry] = {}
    for name, t in (data.get("timings") or {}).items():
        out[name] = Entry(float(t["median_s"]), float(t.get("iqr_s", 0.0)))
    for row in data.get("results") or []:
        if not isinstance(row, Mapping):
            continue
        if "kernel" in row and "size" in row:
            for backend, t in row.items():
                if isinstance(t, Mapping) and "median_s" in t:
                    out[f"{row['kernel']} {row['size']} {backend}"] = Entry(
                        float(t["median_s"]), float(t.get("iqr_s", 0.0)))
        elif "config" in row and "impl" in row and "median_s" in row:
            iqr = float(row.get("q3_s", row["median_s"])) - float(row.get("q1_s", row["median_s"]))
            out[f"{row['config']} {row['impl']}"] = Entry(float(row["median_s"]), iqr)
    if not out:
        raise ValueError("no timings found (neither a 'timings' table nor the kernel or "
                         "end-to-end suite's 'results' rows)")
    return out


def load(path: str) -> dict[str, Any]:
    """A results file, read as JSON (never pickle); errors name the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a results file is a JSON object; got {type(data).__name__}")
    return data


# =====================================================================================
# Comparing two files
# =====================================================================================


class Row(NamedTuple):
    """One timing in both files."""

    name: str
    old: Entry
    new: Entry

    @property
    def ratio(self) -> float:
        return self.new.median / self.old.median

    @property
    def noise(self) -> float:
        """√((IQR_old / median_old)² + (IQR_new / median_new)²)."""
        return math.hypot(self.old.iqr / self.old.median, self.new.iqr / self.new.median)


def parse_fail_if(spec: str) -> float:
    """``median:10%`` -> 0.10, the slowdown of the medians beyond which a timing fails.

    Raises:
        ValueError: naming ``--fail-if`` and the form it takes.
    """
    m = re.fullmatch(r"\s*median\s*:\s*([0-9]*\.?[0-9]+)\s*%\s*", spec or "")
    if not m:
        raise ValueError(f"--fail-if {spec!r}: expected median:N% (e.g. median:10%)")
    return float(m[1]) / 100.0


def verdict(row: Row, threshold: float | None) -> str:
    """"faster", "slower", "same" (within the noise), or "REGRESSION" (slower by more than
    ``threshold`` and by more than the noise)."""
    change = row.ratio - 1.0
    if abs(change) <= row.noise:
        return "same (within noise)"
    if change < 0:
        return "faster"
    if threshold is not None and change > threshold:
        return "REGRESSION"
    return "slower"


def compare(old: Mapping[str, Entry], new: Mapping[str, Entry]) -> tuple[list[Row], list, list]:
    """(rows of the timings in both, names only in old, names only in new)."""
    rows = [Row(name, old[name], new[name]) for name in old if name in new
            and old[name].median > 0 and new[name].median > 0]
    return rows, [n for n in old if n not in new], [n for n in new if n not in old]


def pool(runs: Sequence[Mapping[str, Entry]]) -> dict[str, Entry]:
    """Several files of one side as one: per timing (in every file), the median of the
    files' medians, and as its spread the larger of the median IQR and the range of the
    medians (max − min), so that a change of load between runs counts as noise."""
    out = {}
    for name in runs[0]:
        if all(name in r for r in runs[1:]):
            medians = [r[name].median for r in runs]
            spread = max(statistics.median(r[name].iqr for r in runs), max(medians) - min(medians))
            out[name] = Entry(statistics.median(medians), spread)
    return out


def side(spec: str) -> dict[str, Entry]:
    """The timings of one side of a comparison, ``A.json`` or ``A1.json,A2.json,…`` (pooled,
    :func:`pool`); prints where each file comes from."""
    runs = []
    for path in [p for p in spec.split(",") if p]:
        data = load(path)
        try:
            runs.append(timings_of(data))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        print(describe(path, data))
    if not runs:
        raise ValueError(f"bench compare: no file in {spec!r}")
    return runs[0] if len(runs) == 1 else pool(runs)


def describe(path: str, data: Mapping[str, Any]) -> str:
    """One line: the file, its commit (dirty or clean), machine, date and numpy version."""
    p = data.get("provenance")
    if p is None:
        m = data.get("machine") or data.get("meta") or {}
        return (f"{path}: no provenance recorded (an older file); "
                f"{m.get('cpu', '?')}, {m.get('date', '?')}")
    commit = (p.get("commit") or "?")[:10] + (" (dirty)" if p.get("dirty") else "")
    return (f"{path}: commit {commit}, {p.get('cpu_name')}, {p.get('cores')} cores, "
            f"numpy {p.get('versions', {}).get('numpy', '?')}, {p.get('date')}")


def format_rows(rows: Sequence[Row], threshold: float | None) -> str:
    """The comparison table: both medians ± IQR in µs, the ratio ± noise, the verdict."""
    width = max([len(r.name) for r in rows] + [6])
    lines = [f"{'timing':<{width}}  {'old µs':>18}  {'new µs':>18}  {'new/old':>7}  "
             f"{'± noise':>7}  verdict"]
    for r in rows:
        lines.append(f"{r.name:<{width}}  {_us(r.old):>18}  {_us(r.new):>18}  "
                     f"{r.ratio:7.3f}  {r.noise:7.3f}  {verdict(r, threshold)}")
    return "\n".join(lines)


def _us(e: Entry) -> str:
    return f"{1e6 * e.median:.4g} ± {1e6 * e.iqr:.2g}"


def rows_csv(rows: Sequence[Row], threshold: float | None) -> str:
    """The comparison as CSV (seconds), one line per timing."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["timing", "old_median_s", "old_iqr_s", "new_median_s", "new_iqr_s", "ratio",
                "noise", "verdict"])
    for r in rows:
        w.writerow([r.name, r.old.median, r.old.iqr, r.new.median, r.new.iqr, r.ratio, r.noise,
                    verdict(r, threshold)])
    return buf.getvalue()


def _write_text(path: str, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def timings_csv(timings: Mapping[str, Entry]) -> str:
    """One file's timings as CSV (seconds): timing, median_s, iqr_s, rel_iqr."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["timing", "median_s", "iqr_s", "rel_iqr"])
    for name, e in timings.items():
        w.writerow([name, e.median, e.iqr, e.iqr / e.median if e.median > 0 else ""])
    return buf.getvalue()


def compare_command(paths: Sequence[str], fail_if: str | None = None,
                    csv_path: str | None = None) -> int:
    """``tinymeta bench compare OLD.json NEW.json [--fail-if median:10%] [--csv PATH]``.

    Each side is a file or several, comma-separated (repeated runs, pooled). Prints where
    each file comes from, the table, and a summary; with one side, exports its timings
    (``--csv``). Returns 1 when a timing regressed beyond ``fail_if``, else 0.

    Raises:
        ValueError: a wrong number of files, an unreadable one, a bad ``--fail-if``.
    """
    if len(paths) not in (1, 2) or (len(paths) == 1 and not csv_path):
        raise ValueError("bench compare: give OLD.json NEW.json (or one file with --csv)")
    threshold = parse_fail_if(fail_if) if fail_if else None
    timings = [side(spec) for spec in paths]
    if len(paths) == 1:
        _write_text(csv_path, timings_csv(timings[0]))
        print(f"wrote {csv_path} ({len(timings[0])} timings)")
        return 0
    rows, only_old, only_new = compare(*timings)
    if not rows:
        raise ValueError(f"bench compare: {paths[0]} and {paths[1]} share no timing")
    print(format_rows(rows, threshold))
    for label, names in (("only in OLD", only_old), ("only in NEW", only_new)):
        if names:
            print(f"{label}: {', '.join(names)}")
    bad = [r for r in rows if verdict(r, threshold) == "REGRESSION"]
    ratios = [r.ratio for r in rows]
    print(f"{len(rows)} timings: new/old median ratio {min(ratios):.3f} … {max(ratios):.3f} "
          f"(geometric mean {math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f})"
          + (f"; {len(bad)} beyond {fail_if} and the noise" if threshold is not None else ""))
    if csv_path:
        _write_text(csv_path, rows_csv(rows, threshold))
        print(f"wrote {csv_path}")
    if bad:
        print(f"tinymeta bench compare: {len(bad)} timing{'s' * (len(bad) > 1)} regressed "
              f"beyond {fail_if}: {', '.join(r.name for r in bad)}", file=sys.stderr)
    return 1 if bad else 0
