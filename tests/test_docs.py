"""The documentation cannot drift from the code.

docs/autodiff.md prints what it shows (its code blocks run, tests/docpage.py); every decimal
number of its prose is one its code writes or prints; its links to the engine name functions
that exist. Across README.md, docs/ and benchmarks/RESULTS.md, relative links and the
repository paths named in backticks exist, and nothing points outside the repository. The
page runner is tested on planted pages.
"""

from __future__ import annotations

import re
from pathlib import Path

import docpage
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "autodiff.md"
READER_PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md",
                *sorted((ROOT / "docs").glob("*.md"))]
UPDATE = "python tests/docpage.py docs/autodiff.md --update rewrites the outputs; read the diff"


def test_autodiff_page_prints_what_it_shows() -> None:
    problems = docpage.mismatches(PAGE)
    assert not problems, "\n\n".join(problems) + f"\n({UPDATE})"


def test_autodiff_prose_numbers_come_from_its_code() -> None:
    assert not docpage.unbacked_numbers(PAGE)


def test_autodiff_shows_the_seed_matmul_nt_and_matmul_tn() -> None:
    shown = "".join(c.shown.body for c in docpage.cells(PAGE.read_text().splitlines(True))
                    if c.shown is not None)
    for line in ["f:f64[] = seed e", "l:f64[4, 3] = matmul_nt k b",
                 "m:f64[3, 2] = matmul_tn a k", "digraph tape {"]:
        assert line in shown


ENGINE_LINK = re.compile(r"\[`([\w.]+)`\]\((\.\./tinymeta/[\w/]+\.py)\)")


def test_autodiff_links_name_functions_that_exist() -> None:
    links = ENGINE_LINK.findall(PAGE.read_text(encoding="utf-8"))
    assert len(links) >= 8
    for name, target in links:
        source = (PAGE.parent / target).read_text(encoding="utf-8")
        *owners, last = name.split(".")
        for owner in owners:
            assert re.search(rf"^class {owner}\b", source, re.M), f"{target} has no {owner}"
        assert re.search(rf"^\s*(def|class) {last}\b", source, re.M), f"{target} has no {name}"


LINK = re.compile(r"\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"`((?:tinymeta|benchmarks|docs|examples|tests)/[\w/.\-]*)`")


@pytest.mark.parametrize("page", READER_PAGES, ids=lambda p: p.name)
def test_links_and_paths_a_reader_follows_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        assert (page.parent / target.split("#")[0]).exists(), f"{page.name}: link {target}"
    for path in REPO_PATH.findall(text):
        assert (ROOT / path).exists(), f"{page.name}: {path} is not in the repository"
    for outside in ["DESIGN.md", "shared/seed", "speed issue"]:
        assert outside not in text, f"{page.name} cites {outside!r}, which a reader cannot follow"


# ---- the runner, on planted pages ------------------------------------------------------------

def _page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """The answer is 0.5 (in the code) and 0.250000 (printed).

```python
a = 0.5
print(f"{a * a:.6f}")
```

```text
0.250000
```
"""


def test_runner_passes_a_right_page(tmp_path: Path) -> None:
    page = _page(tmp_path, GOOD)
    assert docpage.mismatches(page) == [] and docpage.unbacked_numbers(page) == []


@pytest.mark.parametrize("wrong", [
    GOOD.replace("0.250000\n```", "0.260000\n```"),            # a wrong output
    GOOD.replace("```text\n0.250000\n```\n", ""),               # output not shown
    GOOD.replace('print(f"{a * a:.6f}")', "b = a * a"),        # shown, not printed
])
def test_runner_catches_a_page_that_shows_other_output(tmp_path: Path, wrong: str) -> None:
    assert docpage.mismatches(_page(tmp_path, wrong))


def test_runner_catches_a_prose_number_no_code_produced(tmp_path: Path) -> None:
    page = _page(tmp_path, GOOD.replace("0.250000 (printed)", "0.25 (rounded by hand)"))
    assert [m.split(": ")[-1] for m in docpage.unbacked_numbers(page)] == ["0.25"]


def test_update_rewrites_the_outputs(tmp_path: Path) -> None:
    page = _page(tmp_path, GOOD.replace("0.250000\n```", "0.260000\n```") +
                 '\n```python\nprint("new")\n```\n')
    assert docpage.update(page) == 2
    assert docpage.mismatches(page) == []
    assert page.read_text(encoding="utf-8").endswith('print("new")\n```\n\n```text\nnew\n```\n')
