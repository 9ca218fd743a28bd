"""The README is a short user document whose Python runs as pasted; docs/ Python runs too.

Every ```python block of README.md and docs/*.md runs in a fresh namespace, in a temporary folder,
so the documentation can never drift from the code. Blocks are small on purpose (a few seconds each
on 2 cores; the torch force field's first compilation takes longer unless torch's on-disk cache has
it); the README's quick start passes tiny SampleSettings itself. Figures are not pinned here: they
live in docs/benchmarks.md, generated from recorded runs (tests/test_benchmark_records.py), and
every "a ± b" the README quotes must appear there.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_CHARS = 8000
FIRST_COMMANDS = ["pip install torch==2.13.0 -e . && boltzgen run alanine-dipeptide",
                  'pip install torch==2.13.0 -e ".[test]" && python -m pytest']


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, source) of every ```python fenced block."""
    blocks = []
    for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.S | re.M):
        blocks.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return blocks


def first_code_block(text: str) -> list[str]:
    """The lines of the first fenced block of ``text`` (any language)."""
    m = re.search(r"^```[^\n]*\n(.*?)^```[ \t]*$", text, re.S | re.M)
    return [] if m is None else m.group(1).splitlines()


def plus_minus(text: str) -> list[str]:
    """Every "a ± b" figure in ``text``, with typographic minus signs and thousands commas made plain."""
    text = text.replace("−", "-")
    return [f"{a.replace(',', '')} ± {b.replace(',', '')}"
            for a, b in re.findall(r"(-?\d[\d,]*\.?\d*)\s*±\s*(\d[\d,]*\.?\d*)", text)]


README_TEXT = README.read_text(encoding="utf-8")
BLOCKS = [("README.md", line, source) for line, source in python_blocks(README_TEXT)]
for _doc in DOCS:
    BLOCKS += [(f"docs/{_doc.name}", line, source) for line, source in python_blocks(_doc.read_text(encoding="utf-8"))]


def test_the_readme_starts_with_the_two_commands():
    # before any prose: the title, then a code block whose lines are exactly the two commands
    head = README_TEXT.split("\n## ", 1)[0]
    assert first_code_block(head) == FIRST_COMMANDS
    before = head[: head.index("```")]
    assert before.strip().startswith("# ") and before.strip().count("\n") == 0, "only the title comes before the commands"


def test_the_readme_stays_short():
    size = len(README_TEXT.encode("utf-8"))  # bytes, as `wc -c` counts them: the stricter of the two
    assert size < MAX_README_CHARS, f"README.md has {size} bytes; move detail to docs/"


def test_the_readme_has_a_quick_start_in_python():
    assert any(name == "README.md" for name, _, _ in BLOCKS)


def test_every_figure_the_readme_quotes_is_in_the_generated_benchmarks_page():
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8").replace("−", "-")
    quoted = plus_minus(README_TEXT)
    assert quoted, "the README quotes no a ± b figure"
    missing = [f for f in quoted if f not in page]
    assert not missing, f"README figures not in docs/benchmarks.md (add a record): {missing}"


def test_relative_links_in_readme_and_docs_point_to_files():
    for path in [README, *DOCS, ROOT / "CHANGELOG.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


def test_helpers():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\nz = 3\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (8, "y = 2\nz = 3\n")]
    assert first_code_block(text) == ["x = 1"]
    assert plus_minus("ΔF 3.591 ± 0.068 kT and −18.694 ± 0.049, 1,693 ± 12") == [
        "3.591 ± 0.068", "-18.694 ± 0.049", "1693 ± 12"]


@pytest.mark.parametrize("name, line, source", BLOCKS, ids=[f"{name}:{line}" for name, line, _ in BLOCKS])
def test_python_block_runs(name, line, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files (checkpoints, sample runs)
    code = compile(source, f"{name}:{line}", "exec")
    exec(code, {"__name__": "__readme__"})  # a fresh namespace per block: each must be self-contained
