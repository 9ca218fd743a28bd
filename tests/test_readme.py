"""Every ```python block of README.md runs as pasted: each in a fresh namespace, in a temporary folder.

So the README can never drift from the code. Blocks are small on purpose (a few seconds each on
2 cores; the torch force field's first compilation takes longer unless torch's on-disk cache has it).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, source) of every ```python fenced block."""
    blocks = []
    for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.S | re.M):
        blocks.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks_and_keeps_its_first_commands():
    assert len(BLOCKS) >= 4
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[3] == "pip install torch==2.13.0 -e . && boltzgen run alanine-dipeptide"
    assert lines[4] == 'pip install torch==2.13.0 -e ".[test]" && python -m pytest'


def test_block_extraction():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\nz = 3\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (8, "y = 2\nz = 3\n")]


@pytest.mark.parametrize("line, source", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(line, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files (checkpoints)
    code = compile(source, f"README.md:{line}", "exec")
    exec(code, {"__name__": "__readme__"})  # a fresh namespace per block: each must be self-contained
