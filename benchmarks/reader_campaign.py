"""A campaign of crafted and damaged inputs against every reader, through the command line.

    OPENBLAS_NUM_THREADS=1 python benchmarks/reader_campaign.py [--json out.json]

Each case makes a fresh copy of a real run folder (or data zip, or runs folder), damages
one file or passes one option, and runs the ``tinymeta`` command that reads it
(``eval``, ``train --resume``, ``eval-runs``, ``train --data``) in this process. A case is:

- ``refused``: exit status 1 or 2 with one line on stderr naming the file (or the option);
- ``read``: exit 0 with the clean input's output (a damage that changed nothing read);
- ``accepted-different``: exit 0 with another output (listed, to judge by hand);
- ``unnamed``: an error that does not name the file, or more than one line;
- ``traceback``: an exception escaped the command line;
- ``code-executed``: a pickle payload's marker file appeared.

It prints one row per reader and writes every case with its outcome as JSON. The fast part
of it is kept as tests (tests/test_run_files.py, tests/test_readers_property.py,
tests/test_io.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io as io_module
import json
import os
import pickle
import shutil
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

import tinymeta as tm
from tinymeta import cli, io

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SMALL = ["--meta-batch", "3", "--shots", "3", "--hidden", "4", "--no-progress"]
MARKER = Path(tempfile.gettempdir()) / "tinymeta-campaign-pwned"


class Payload:
    """Unpickled, it would create :data:`MARKER`."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def run_cli(argv: list[str]) -> tuple[int | None, str, str, str | None]:
    """(exit status, stdout, stderr, the escaped exception's type or None)."""
    out, err = io_module.StringIO(), io_module.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # noqa: BLE001 - what the campaign looks for
            code, escaped = None, f"{type(e).__name__}: {e}"
    return code, out.getvalue(), err.getvalue(), escaped


# ---- the clean inputs -----------------------------------------------------------------------


def make_bases(base: Path) -> dict[str, Path]:
    """A sinusoid MAML run and a Meta-SGD run (with eval.json), an Omniglot run with
    validation, a 20-way model with a validation report, the data zip, a runs folder."""
    from test_classify import write_zip
    from test_eval_runs import drawing, make_model, write_val_report

    base.mkdir(parents=True)
    b = {"sin": base / "sin", "msgd": base / "msgd", "om": base / "om", "zip": base / "om.zip"}
    write_zip(b["zip"])
    for key, algo in (("sin", "maml"), ("msgd", "metasgd")):
        assert cli.main(["train", "--algo", algo, *SMALL, "--iterations", "4",
                         "--checkpoint-every", "2", "--log-every", "2",
                         "--out", str(b[key])]) == 0
        assert cli.main(["eval", str(b[key]), "--tasks", "4", "--steps", "0,1"]) == 0
    assert cli.main(["train", "--task", "omniglot", "--data", str(b["zip"]), "--ways", "3",
                     "--hidden", "8", "--val-alphabets", "Beta", "--meta-batch", "2",
                     "--inner-steps", "1", "--iterations", "6", "--eval-every", "2",
                     "--val-tasks", "4", "--checkpoint-every", "3", "--log-every", "2",
                     "--no-progress", "--out", str(b["om"])]) == 0
    b["m20"] = Path(make_model(base / "m20"))
    write_val_report(str(b["m20"]), {1: 60.0, 2: 70.0, 3: 65.0})
    b["runs"] = base / "runs"
    lines = []
    for k in range(1, 21):
        for part, name in (("training", f"class{k:02d}"), ("test", f"item{k:02d}")):
            (b["runs"] / "run01" / part).mkdir(parents=True, exist_ok=True)
            drawing(k, part == "test").save(b["runs"] / "run01" / part / f"{name}.png")
        lines.append(f"run01/test/item{k:02d}.png run01/training/class{k:02d}.png")
    (b["runs"] / "run01" / "class_labels.txt").write_text("\n".join(lines) + "\n")
    return b


# ---- damages --------------------------------------------------------------------------------


def truncations(raw: bytes, n: int) -> list[bytes]:
    return [raw[:k] for k in sorted({0, 1, len(raw) // 2, len(raw) - 1}
                                    | {len(raw) * i // n for i in range(1, n)})]


def flips(raw: bytes, n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        b = bytearray(raw)
        i = int(rng.integers(len(b)))
        b[i] ^= 1 << int(rng.integers(8))
        out.append(bytes(b))
    return out


def npz_with(path: Path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def tree_file(path: Path, text: str, **arrays) -> None:
    npz_with(path, __tree__=np.array(text), **arrays)


def replace_leaf(path: Path, index: int, value) -> None:
    tree, meta = io.load(path, with_metadata=True)
    leaves, treedef = tm.tree_flatten(tree)
    leaves[index] = value(leaves[index]) if callable(value) else value
    io.save(path, tm.tree_unflatten(treedef, leaves), metadata=meta)


def edit_checkpoint(path: Path, edit: Callable) -> None:
    tree, meta = io.load(path, with_metadata=True)
    edit(tree, meta)
    io.save(path, tree, metadata=meta)


def pickled_npz(path: Path) -> None:
    arr = np.empty(1, dtype=object)
    arr[0] = Payload()
    tree = '{"format": "tinymeta.pytree/1", "tree": {"list": [{"array": 0}]}}'
    with open(path, "wb") as f:
        np.savez(f, allow_pickle=True, leaf_0=arr, __tree__=np.array(tree))


def bomb(path: Path) -> None:
    from test_io import write_bomb

    write_bomb(path, 2 << 30)


def lying_header(path: Path) -> None:
    head = io_module.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12,)})
    tree = '{"format": "tinymeta.pytree/1", "tree": {"list": [{"array": 0}]}}'
    t = io_module.BytesIO()
    np.lib.format.write_array(t, np.array(tree))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__tree__.npy", t.getvalue())
        zf.writestr("leaf_0.npy", head.getvalue() + bytes(16))


# ---- the cases ------------------------------------------------------------------------------

#: (reader, label, base, file damaged (relative to the copy), damage(path), argv(copy))
Case = tuple


def write(data: bytes) -> Callable:
    return lambda p: p.write_bytes(data)


def json_edit(**changes) -> Callable:
    def edit(p):
        d = json.loads(p.read_text())
        for k, v in changes.items():
            if v is ...:
                d.pop(k, None)
            else:
                d[k] = v
        p.write_text(json.dumps(d))
    return edit


def byte_cases(reader, base, rel, raw, argv, n_trunc=6, n_flip=8, seed=0) -> list[Case]:
    cases = [(reader, f"truncated to {len(d)} bytes", base, rel, write(d), argv)
             for d in truncations(raw, n_trunc)]
    cases += [(reader, f"bit flip {i}", base, rel, write(d), argv)
              for i, d in enumerate(flips(raw, n_flip, seed))]
    return cases


def config_cases(b) -> list[Case]:
    argv = lambda d: ["eval", str(d), "--tasks", "4", "--steps", "0,1"]  # noqa: E731
    crafted = {
        "dtype int8": {"dtype": "int8"}, "inner_lr string": {"inner_lr": "0.01"},
        "hidden int": {"hidden": 40}, "task int": {"task": 5}, "algo unknown": {"algo": "x"},
        "seed -1": {"seed": -1}, "seed huge": {"seed": 10 ** 40}, "lam NaN": {"lam": float("nan")},
        "lam inf": {"lam": float("inf")}, "lam 0": {"lam": 0}, "cg_tol -1": {"cg_tol": -1},
        "damping -5": {"damping": -5.0}, "iterations true": {"iterations": True},
        "iterations 0": {"iterations": 0}, "shots 0": {"shots": 0}, "shots 2.5": {"shots": 2.5},
        "hidden wide": {"hidden": [10 ** 6]}, "hidden huge": {"hidden": [30000, 30000]},
        "hidden empty": {"hidden": []}, "hidden strings": {"hidden": ["4"]},
        "meta_batch 1e9": {"meta_batch": 10 ** 9}, "backend torch": {"backend": "torch"},
        "optimizer rmsprop": {"optimizer": "rmsprop"}, "init zeros": {"init": "zeros"},
        "unknown key": {"color": "red"}, "task missing": {"task": ...},
        "algo null": {"algo": None}, "divergence -1": {"divergence_guard": -1.0},
        "divergence missing (old)": {"divergence_guard": ...}, "options list": {"data": [1]},
        "inner_steps -1": {"inner_steps": -1}, "query big": {"query": 10 ** 8},
    }
    cases = [("config.json", k, "sin", "config.json", json_edit(**v), argv)
             for k, v in crafted.items()]
    for label, data in (("a JSON list", b"[1, 2]"), ("null", b"null"), ("binary", b"\xff\xd8"),
                        ("deep nesting", b"[" * 100000), ("17 MB", b" " * (17 << 20))):
        cases.append(("config.json", label, "sin", "config.json", write(data), argv))
    cases.append(("config.json", "symlink to params.npz", "sin", "config.json",
                  lambda p: (p.unlink(), p.symlink_to(p.parent / "params.npz")), argv))
    cases.append(("config.json", "a directory", "sin", "config.json",
                  lambda p: (p.unlink(), p.mkdir()), argv))
    raw = (b["sin"] / "config.json").read_bytes()
    return cases + byte_cases("config.json", "sin", "config.json", raw, argv, 8, 10)


def npz_cases(reader, base, rel, b, argv, like_float=np.float32) -> list[Case]:
    header = '{"format": "tinymeta.pytree/1", "tree": %s}'
    crafted = {
        "empty": write(b""), "text": write(b"hello"), "pickle": write(pickle.dumps([1])),
        "pickle payload": pickled_npz, ".npy": lambda p: np.save(open(p, "wb"), np.ones(3)),
        "foreign npz": lambda p: npz_with(p, x=np.ones(2)),
        "tree is a list": lambda p: tree_file(p, "[1]"),
        "missing leaf": lambda p: tree_file(p, header % '{"array": 7}'),
        "unknown format": lambda p: tree_file(p, '{"format": "x/2", "tree": {"none": null}}'),
        "bad node": lambda p: tree_file(p, header % '{"set": 1}'),
        "tree not JSON": lambda p: tree_file(p, "{oops"),
        "string leaf": lambda p: tree_file(p, header % '{"array": 0}', leaf_0=np.array(["a"])),
        "bomb 2 GiB": bomb, "lying header": lying_header,
        "int64 leaf": lambda p: replace_leaf(p, 0, lambda a: np.asarray(a).astype(np.int64)),
        "complex leaf": lambda p: replace_leaf(p, 0, lambda a: np.asarray(a).astype(complex)),
        "transposed leaf": lambda p: replace_leaf(p, 0, lambda a: np.asarray(a).T.copy()),
        "NaN leaf": lambda p: replace_leaf(p, 0, lambda a: np.full_like(a, np.nan)),
        "other float": lambda p: replace_leaf(p, 0, lambda a: np.asarray(a).astype(
            np.float64 if like_float == np.float32 else np.float32)),
        "scalar leaf": lambda p: replace_leaf(p, 0, 3.0),
    }
    cases = [(reader, k, base, rel, v, argv) for k, v in crafted.items()]
    raw = (b[base] / rel).read_bytes()
    return cases + byte_cases(reader, base, rel, raw, argv, 5, 8, seed=len(rel))


def checkpoint_cases(b) -> list[Case]:
    argv = lambda d: ["train", "--resume", "--iterations", "6", "--no-progress",  # noqa: E731
                      "--out", str(d)]

    def ck(edit):
        return lambda p: edit_checkpoint(p, edit)

    def setter(key, value):
        return ck(lambda t, m: t.__setitem__(key, value))

    def meta(key, value):
        return ck(lambda t, m: m.pop(key) if value is ... else m.__setitem__(key, value))

    crafted = {
        "iteration -5": setter("iteration", -5), "iteration 1e6": setter("iteration", 10 ** 6),
        "iteration 2.5": setter("iteration", 2.5), "skipped 9": setter("skipped", 9),
        "skipped -1": setter("skipped", -1),
        "step 2.5": ck(lambda t, m: t["opt_state"].__setitem__("step", np.asarray(2.5))),
        "step 7": ck(lambda t, m: t["opt_state"].__setitem__("step", np.asarray(7))),
        "moment shape": ck(lambda t, m: t["opt_state"]["m"]["theta"].__setitem__(
            0, np.ones(5, np.float32))),
        "moment NaN": ck(lambda t, m: t["opt_state"]["v"]["theta"].__setitem__(
            0, np.full((1, 4), np.nan, np.float32))),
        "float64 model": ck(lambda t, m: t.__setitem__("model", tm.tree_map(
            lambda a: np.asarray(a, np.float64), t["model"]))),
        "no opt_state": ck(lambda t, m: t.pop("opt_state")), "rng missing": meta("rng", ...),
        "rng garbage": meta("rng", {"bit_generator": "PCG64", "state": 5}),
        "rng MT19937": meta("rng", {"bit_generator": "MT19937"}), "rng list": meta("rng", [1]),
        "elapsed -1": meta("elapsed_s", -1.0), "elapsed missing (old)": meta("elapsed_s", ...),
        "window strings": meta("window", ["x"]), "window long": meta("window", [1.0] * 50),
        "loss_start str": meta("loss_start", "a"), "stopped_early bad": meta("stopped_early", 3),
        "stopped_early unseen": meta("stopped_early", {"patience": 1}),
    }
    cases = [("checkpoint.npz", k, "sin", "checkpoint.npz", v, argv) for k, v in crafted.items()]
    return cases + npz_cases("checkpoint.npz", "sin", "checkpoint.npz", b, argv)[:14]


def log_cases(b) -> list[Case]:
    argv = lambda d: ["train", "--resume", "--iterations", "8", "--no-progress",  # noqa: E731
                      "--out", str(d)]
    lines = (b["om"] / "train.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    variants = {
        "half-written last line": "\n".join(lines) + '\n{"iteration": 7, "que',
        "bad first line": "{oops\n" + "\n".join(lines[1:]) + "\n",
        "iteration string": json.dumps({**first, "iteration": "2"}) + "\n",
        "iteration 0": json.dumps({**first, "iteration": 0}) + "\n",
        "out of order": "\n".join(lines[::-1]) + "\n", "a list": "[1]\n",
        "step_s NaN": json.dumps({**first, "step_s": float("nan")}) + "\n",
        "skipped -1": json.dumps({**first, "skipped": -1}) + "\n",
        "binary": "\x00\x01\x02", "empty": "", "blank lines": "\n\n\n",
    }
    cases = [("train.jsonl", k, "om", "train.jsonl", write(v.encode()), argv)
             for k, v in variants.items()]
    vlines = (b["om"] / "val.jsonl").read_text().splitlines()
    v0 = json.loads(vlines[0])
    vvariants = {
        "accuracy NaN": json.dumps({**v0, "accuracy": float("nan")}),
        "accuracy string": json.dumps({**v0, "accuracy": "90"}), "no accuracy": '{"iteration": 2}',
        "half-written": "\n".join(vlines) + '\n{"iter', "duplicate": "\n".join(vlines + vlines),
    }
    cases += [("val.jsonl", k, "om", "val.jsonl", write(v.encode()), argv)
              for k, v in vvariants.items()]
    raw = (b["om"] / "train.jsonl").read_bytes()
    return cases + byte_cases("train.jsonl", "om", "train.jsonl", raw, argv, 4, 6)


def report_cases(b) -> list[Case]:
    def argv(d):
        return ["eval-runs", "--runs", str(b["runs"]), "--model", str(d), "--steps", "val",
                "--min-val-tasks", "1"]

    def acc(**row):
        def edit(p):
            d = json.loads(p.read_text())
            d["accuracy"]["1"].update(row)
            p.write_text(json.dumps(d))
        return edit

    crafted = {
        "accuracy NaN": acc(mean=float("nan")), "accuracy 140": acc(mean=140.0),
        "accuracy string": acc(mean="70"), "ci95 -1": acc(ci95=-1.0),
        "steps key word": json_edit(accuracy={"five": {"mean": 1.0, "ci95": 0.0}}),
        "no table": json_edit(accuracy=...), "tasks 0": json_edit(tasks=0),
        "shots string": json_edit(shots="1"), "sha short": json_edit(params_sha256="abc"),
        "alphabets int": json_edit(alphabets=5), "algo unknown": json_edit(algo="x"),
        "a list": write(b"[]"), "truncated": write(b'{"accuracy": {"1": {"me'),
    }
    cases = [("eval.json", k, "m20", "eval.json", v, argv) for k, v in crafted.items()]
    raw = (b["m20"] / "eval.json").read_bytes()
    return cases + byte_cases("eval.json", "m20", "eval.json", raw, argv, 4, 6)


def omniglot_argv(data: Path, out: Path) -> list[str]:
    return ["train", "--task", "omniglot", "--data", str(data), "--ways", "3", "--hidden", "8",
            "--val-alphabets", "Beta", "--meta-batch", "2", "--inner-steps", "1",
            "--iterations", "2", "--val-tasks", "2", "--no-progress", "--out", str(out)]


def data_cases(b) -> list[Case]:
    def argv(d):
        return omniglot_argv(d / "om.zip", d / "out")

    def member(name_part: str, data: bytes) -> Callable:
        def edit(p):
            with zipfile.ZipFile(p) as zf:
                items = [(i.filename, zf.read(i)) for i in zf.infolist()]
            with zipfile.ZipFile(p, "w") as zf:
                done = False
                for n, d in items:
                    if not done and name_part in n:
                        d, done = data, True
                    zf.writestr(n, d)
        return edit

    from PIL import Image

    def png(size, mode="1", color=1) -> bytes:
        buf = io_module.BytesIO()
        Image.new(mode, size, color).save(buf, format="PNG")
        return buf.getvalue()

    crafted = {
        "not a PNG": member(".png", b"GIF89a"), "RGB 50x50": member(".png", png((50, 50), "RGB")),
        "9000x9000 PNG": member(".png", png((9000, 9000))),
        "2 MB member": member(".png", b"\x89PNG" + bytes(2 << 20)),
        "blank 105x105 (accepted: a blank drawing)": member(".png", png((105, 105))),
        "no layout": write(zipfile_bytes({"readme.txt": b"hi"})), "empty": write(b""),
        "a folder name": lambda p: (p.unlink(), p.mkdir()),
    }
    cases = [("data zip", k, "zip", "om.zip", v, argv) for k, v in crafted.items()]
    raw = b["zip"].read_bytes()
    return cases + byte_cases("data zip", "zip", "om.zip", raw, argv, 5, 10)


def zipfile_bytes(members: dict[str, bytes]) -> bytes:
    buf = io_module.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    return buf.getvalue()


def runs_cases(b) -> list[Case]:
    from PIL import Image

    def argv(d):
        return ["eval-runs", "--runs", str(d), "--baseline", "mhd"]

    def image(rel, make):
        return ("runs", rel, lambda p: make().save(p) if callable(make) else p.write_bytes(make))

    def labels(text):
        return ("class_labels.txt", "run01/class_labels.txt", write(text.encode()))

    good = (b["runs"] / "run01" / "class_labels.txt").read_text().splitlines()
    crafted = {
        "RGB 64x64 item": image("run01/test/item03.png", lambda: Image.new("RGB", (64, 64))),
        "blank class": image("run01/training/class07.png", lambda: Image.new("1", (105, 105), 1)),
        "not a PNG": image("run01/test/item05.png", b"\x89PNG\r\n"),
        "2 MB image": image("run01/test/item06.png", b"\x89PNG" + bytes(2 << 20)),
        "9000x9000 image": image("run01/test/item02.png", lambda: Image.new("1", (9000, 9000))),
        "19 lines": labels("\n".join(good[:19]) + "\n"),
        "21 lines": labels("\n".join(good + [good[0]]) + "\n"),
        "garbage line": labels("\n".join(good[:5] + ["hello world"] + good[6:])),
        "unknown class": labels("\n".join(good).replace("class03", "class33")),
        "binary": labels("\x00\xff" * 10), "empty labels": labels(""),
        "one column": labels("\n".join(x.split()[0] for x in good)),
    }
    cases = [(reader, k, "runs", rel, v, argv) for k, (reader, rel, v) in crafted.items()]
    return cases


def zipped_runs_cases(b, base: Path) -> list[Case]:
    path = base / "runs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for p in sorted(b["runs"].rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(b["runs"]).as_posix())
    b["runszip"] = path
    argv = lambda d: ["eval-runs", "--runs", str(d / "runs.zip"), "--baseline", "mhd"]  # noqa
    return byte_cases("runs zip", "runszip", "runs.zip", path.read_bytes(), argv, 5, 10)


def cache_cases(b) -> list[Case]:
    """A damaged Omniglot cache: rebuilt with a warning, the run the same."""
    def argv(d):  # the clean zip (the cache key holds its path), the copy's damaged cache
        os.environ["TINYMETA_CACHE"] = str(d / "cache")
        return omniglot_argv(b["zip"], d / "out")

    def damage(how):
        def edit(p):
            (cache,) = p.glob("*.npz")
            how(cache)
        return edit

    hows = {
        "truncated": lambda c: c.write_bytes(c.read_bytes()[: c.stat().st_size // 2]),
        "empty": lambda c: c.write_bytes(b""), "garbage": lambda c: c.write_bytes(b"PK\x03\x04"),
        "bomb": bomb, "pickle payload": pickled_npz,
        "flipped": lambda c: c.write_bytes(flips(c.read_bytes(), 1, 3)[0]),
    }
    return [("omniglot cache", k, "zipcache", "cache", damage(v), argv) for k, v in hows.items()]


def option_cases() -> list[Case]:
    bad = [["--cg-tol", "-1"], ["--cg-tol", "nan"], ["--damping", "-5"], ["--seed", "-1"],
           ["--lam", "inf"], ["--lam", "0"], ["--inner-lr", "-0.1"], ["--outer-lr", "nan"],
           ["--iterations", "0"], ["--hidden", "0"], ["--hidden", "a,b"], ["--shots", "1.5"],
           ["--divergence-guard", "-1"], ["--meta-batch", "-2"], ["--dtype", "int8"]]
    return [("options", " ".join(a), None, a[0], None,
             lambda d, a=a: ["train", *a, "--out", str(d / "x")]) for a in bad]


# ---- running them ---------------------------------------------------------------------------


def run_case(case: Case, b: dict, work: Path, clean: dict) -> dict:
    reader, label, base, rel, damage, argv = case
    d = Path(tempfile.mkdtemp(dir=work))
    os.environ["TINYMETA_CACHE"] = str(d / "fresh-cache")
    if base is not None:
        src = b[base]
        if src.is_dir():
            shutil.copytree(src, d, dirs_exist_ok=True, symlinks=True)
        else:
            shutil.copy(src, d / rel)
    key = (reader, base)
    if key not in clean:
        cd = Path(tempfile.mkdtemp(dir=work))
        os.environ["TINYMETA_CACHE"] = str(cd / "fresh-cache")
        if base is not None:
            src = b[base]
            (shutil.copytree(src, cd, dirs_exist_ok=True) if src.is_dir()
             else shutil.copy(src, cd / rel))
        code, out, _, _ = run_cli(argv(cd))
        clean[key] = (code, out.replace(str(cd), "<D>"))
        os.environ["TINYMETA_CACHE"] = str(d / "fresh-cache")
    target = d / rel if base is not None else None
    if damage is not None:
        damage(target)
    MARKER.unlink(missing_ok=True)
    code, out, err, escaped = run_cli(argv(d))
    name = str(target) if target is not None else rel
    if MARKER.exists():
        outcome = "code-executed"
    elif escaped is not None:
        outcome = "traceback"
    elif code == 0:
        same = (code, out.replace(str(d), "<D>")) == clean[key]
        outcome = "read" if same else "accepted-different"
    elif code in (1, 2) and err.strip().splitlines()[-1].startswith("tinymeta") \
            and name in err.strip().splitlines()[-1]:
        outcome = "refused"  # the error's one line (notices of what was tidied may precede)
    else:
        outcome = "unnamed"
    return {"reader": reader, "case": label, "outcome": outcome, "exit": code,
            "stderr": (escaped or err).strip()[-300:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write every case and its outcome here")
    args = ap.parse_args()
    tm.set_backend("numpy")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["TINYMETA_CACHE"] = str(work / "cache")
        with contextlib.redirect_stdout(io_module.StringIO()):
            b = make_bases(work / "bases")
            b["zipcache"] = work / "bases" / "zipcache"
            os.environ["TINYMETA_CACHE"] = str(b["zipcache"] / "cache")
            assert cli.main(omniglot_argv(b["zip"], work / "zc")) == 0
        cases = (config_cases(b) + npz_cases("params.npz", "sin", "params.npz", b, lambda d: [
            "eval", str(d), "--tasks", "4", "--steps", "0,1"])
            + npz_cases("lrs.npz", "msgd", "lrs.npz", b, lambda d: [
                "eval", str(d), "--tasks", "4", "--steps", "0,1"])[:16]
            + checkpoint_cases(b) + log_cases(b) + report_cases(b) + data_cases(b)
            + runs_cases(b) + zipped_runs_cases(b, work / "bases") + cache_cases(b)
            + option_cases())
        clean: dict = {}
        results = [run_case(c, b, work, clean) for c in cases]
    table = Counter((r["reader"], r["outcome"]) for r in results)
    readers = list(dict.fromkeys(r["reader"] for r in results))
    kinds = ["refused", "read", "accepted-different", "unnamed", "traceback", "code-executed"]
    print(f"{'reader':<16}{'tried':>6}" + "".join(f"{k:>20}" for k in kinds))
    for reader in readers:
        n = sum(table[(reader, k)] for k in kinds)
        print(f"{reader:<16}{n:>6}" + "".join(f"{table[(reader, k)]:>20}" for k in kinds))
    print(f"{'total':<16}{len(results):>6}" + "".join(
        f"{sum(table[(r, k)] for r in readers):>20}" for k in kinds))
    for r in results:
        if r["outcome"] not in ("refused", "read"):
            print(f"  {r['reader']} / {r['case']}: {r['outcome']} (exit {r['exit']}) "
                  f"{r['stderr'][:200]!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
