"""Every ```python block of README.md runs, as written, in a fresh namespace and an empty folder.

There is no skip and no setup hook: a block that cannot run as written fails here, so the
README's examples are kept self-contained and fast (they use tiny budgets in their own text).
``SECATEUR_DATA`` points at the test data, as for the other tests (see ``conftest.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\S*)[ \t]*$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first code line number, code) of each ```python block; an unclosed fence is an error."""
    blocks, lang, start, lines = [], None, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if lang is None and match:
            lang, start, lines = match.group(1), number + 1, []
        elif lang is not None and line.rstrip() == "```":
            if lang == "python":
                blocks.append((start, "\n".join(lines) + "\n"))
            lang = None
        elif lang is not None:
            lines.append(line)
    if lang is not None:
        raise AssertionError(f"README.md: the ``` fence opened before line {start} is never closed")
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3, "README.md lost its Python examples (or the fence parser broke)"


def test_fence_parser_keeps_only_python() -> None:
    text = "x\n```bash\nls\n```\n```python\na = 1\n\nb = 2\n```\n```\nplain\n```\n"
    assert python_blocks(text) == [(6, "a = 1\n\nb = 2\n")]
    with pytest.raises(AssertionError, match="never closed"):
        python_blocks("```python\na = 1\n")


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line: int, code: str, data_root: Path, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECATEUR_DATA", str(data_root))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
