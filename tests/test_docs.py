"""Every Python example in ``docs/*.md`` and ``README.md`` runs, so the guides cannot rot.

Each fenced block whose info string begins with the word ``python`` is written to a file of
its own and run with ``sys.executable`` in a subprocess (30 s limit, warnings as errors, the
repository root as the working directory). A block passes when it exits with status 0, so
examples state what they show with ``assert``. The file is padded with blank lines so that the
line numbers in a traceback are the line numbers in the Markdown file.

To show code that must not run (a fragment, or something that needs a server), fence it as
```` ```python no-run ````: the block is collected and reported as skipped. Blocks fenced with
any other language (``bash``, ``text``, a bare fence) are not collected at all.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TIMEOUT = 30.0
NO_RUN = "no-run"

# An opening fence: up to three spaces, three or more backticks or tildes, then the info string.
_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced Python block: where it is, what it holds, whether it is to run."""

    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    run: bool

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The ``python`` blocks of one Markdown file, in order.

    Follows CommonMark fences closely enough for our docs: a block ends at a line holding only
    a fence of the same character at least as long as the opening one, so a longer fence can
    show a ```` ```python ```` block as text without it being collected.
    """
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None or (match["fence"][0] == "`" and "`" in match["info"]):
            index += 1
            continue
        fence, words = match["fence"], match["info"].split()
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines):
            stripped = lines[index].strip()
            if stripped.startswith(fence) and stripped.strip(fence[0]) == "":
                break
            body.append(lines[index])
            index += 1
        index += 1  # past the closing fence (or the end of an unclosed block)
        if words and words[0] == "python":
            code = "\n" * (start + 1) + "\n".join(body) + "\n"
            blocks.append(Block(path, start + 1, code, run=NO_RUN not in words[1:]))
    return blocks


def _params() -> list[object]:
    params: list[object] = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for block in python_blocks(path):
            marks = () if block.run else pytest.mark.skip(reason=f"fenced as python {NO_RUN}")
            params.append(pytest.param(block, id=block.id, marks=marks))
    return params


@pytest.mark.parametrize("block", _params())
def test_python_block_in_docs_runs_to_completion(block: Block, tmp_path: Path) -> None:
    script = tmp_path / f"{block.path.stem}_{block.line}.py"
    script.write_text(block.code, encoding="utf-8")
    where = f"{block.path.relative_to(ROOT)}:{block.line}"
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    try:
        done = subprocess.run(
            [sys.executable, "-W", "error", str(script)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{where}: example did not finish within {TIMEOUT:g} s\n{_output(exc)}", pytrace=False
        )
    if done.returncode != 0:
        pytest.fail(
            f"{where}: example exited with status {done.returncode}\n{_output(done)}", pytrace=False
        )


def _output(run: subprocess.CompletedProcess[str] | subprocess.TimeoutExpired) -> str:
    def text(value: str | bytes | None) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else value or ""

    return f"--- stdout ---\n{text(run.stdout)}--- stderr ---\n{text(run.stderr)}"


def test_only_python_fences_are_collected_and_no_run_ones_are_marked(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n"
        "```python\n"
        "print(1)\n"
        "```\n"
        "```bash\n"
        "echo no\n"
        "```\n"
        "````markdown\n"
        "```python\n"
        "shown as text, not collected\n"
        "```\n"
        "````\n"
        "~~~python no-run\n"
        "import not_installed\n"
        "~~~\n",
        encoding="utf-8",
    )
    blocks = python_blocks(page)
    assert [(b.id, b.run) for b in blocks] == [("page.md:2", True), ("page.md:13", False)]
    # Padded so that line numbers in a traceback are the Markdown file's line numbers.
    assert blocks[0].code.splitlines()[2] == "print(1)"
    assert blocks[1].code.splitlines()[13] == "import not_installed"
