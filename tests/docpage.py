"""Run a Markdown page's Python blocks and compare what they print with what the page shows.

A page is read like a notebook. Its ```python blocks run in order in one namespace; the
```text block that follows a python block (with only blank lines between) is what that
block must print, and a python block with no text block after it must print nothing. A
number with a decimal point in the page's prose (outside fenced blocks) must be one that a
code block writes or a text block shows, so that every number a reader sees is produced by
code that a test runs (``tests/test_docs.py``).

When the engine changes what a page prints, rewrite its text blocks and read the diff:

    python tests/docpage.py docs/autodiff.md --update
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tinymeta.io import atomic_write

FENCE = re.compile(r"^```(\S*)\s*$")
NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d+(?:[eE][-+]?\d+)?(?![\w.]*\d)")


@dataclass
class Block:
    """A fenced block: its info string, its first and last line (0-based, the fences)."""

    lang: str
    start: int
    end: int
    body: str


@dataclass
class Cell:
    """A python block, the text block showing its output (or None), and what it printed."""

    code: Block
    shown: Block | None
    printed: str = ""


def blocks(lines: list[str]) -> list[Block]:
    """The fenced blocks of a page's lines, in order."""
    found, open_at, lang = [], None, ""
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if not m:
            continue
        if open_at is None:
            open_at, lang = i, m.group(1)
        elif m.group(1) == "":
            found.append(Block(lang, open_at, i, "".join(lines[open_at + 1:i])))
            open_at = None
    if open_at is not None:
        raise ValueError(f"line {open_at + 1}: a fenced block is never closed")
    return found


def cells(lines: list[str]) -> list[Cell]:
    """Each python block with the text block right after it, if there is one."""
    bs = blocks(lines)
    out = []
    for k, b in enumerate(bs):
        if b.lang != "python":
            continue
        nxt = bs[k + 1] if k + 1 < len(bs) else None
        between = lines[b.end + 1:nxt.start] if nxt is not None else []
        follows = nxt is not None and nxt.lang == "text" and not "".join(between).strip()
        out.append(Cell(b, nxt if follows else None))
    return out


def run(path: Path) -> tuple[list[str], list[Cell]]:
    """Execute the page's python blocks in order; return its lines and the cells, printed."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    found = cells(lines)
    namespace: dict = {"__name__": "__docpage__"}
    for c in found:
        buffer = io.StringIO()
        code = compile(c.code.body, f"{path}:{c.code.start + 2}", "exec")
        with contextlib.redirect_stdout(buffer):
            exec(code, namespace)  # noqa: S102  (the page's own code, run as a reader would)
        c.printed = buffer.getvalue()
    return lines, found


def mismatches(path: Path) -> list[str]:
    """Where the page shows something other than what its code prints (empty: none)."""
    _, found = run(path)
    problems = []
    for c in found:
        shown = c.shown.body if c.shown is not None else ""
        if c.printed != shown:
            where = f"{path}:{c.code.start + 1}"
            problems.append(f"{where}: the block prints\n{c.printed}but the page shows\n{shown}")
    return problems


def unbacked_numbers(path: Path) -> list[str]:
    """Decimal numbers of the prose that no code block writes and no text block shows."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    inside = set()
    backed = set()
    for b in blocks(lines):
        inside.update(range(b.start, b.end + 1))
        backed.update(NUMBER.findall(b.body))
    missing = []
    for i, line in enumerate(lines):
        if i in inside:
            continue
        for number in NUMBER.findall(line):
            if number not in backed and number.lstrip("-") not in backed:
                missing.append(f"{path}:{i + 1}: {number}")
    return missing


def update(path: Path) -> int:
    """Rewrite the page's text blocks with what its code prints now; return how many changed."""
    lines, found = run(path)
    changed = 0
    for c in reversed(found):  # from the end, so earlier line numbers stay valid
        if c.shown is not None:
            if c.shown.body != c.printed:
                lines[c.shown.start + 1:c.shown.end] = [c.printed] if c.printed else []
                changed += 1
        elif c.printed:
            lines[c.code.end + 1:c.code.end + 1] = ["\n", "```text\n", c.printed, "```\n"]
            changed += 1
    with atomic_write(path, binary=True) as f:
        f.write("".join(lines).encode("utf-8"))
    return changed


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv if not a.startswith("--")]
    if not paths:
        print("usage: python tests/docpage.py PAGE.md [--update]", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        if "--update" in argv:
            print(f"{path}: {update(path)} text blocks rewritten")
        for problem in mismatches(path) + unbacked_numbers(path):
            print(problem, file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
