"""The documentation site builds without a warning, and the API reference covers the packages.

``mkdocs build --strict`` fails on a broken link or anchor between pages, a page missing from
the nav's files, and a docstring that Griffe cannot read (a parameter documented that the
signature lacks, a malformed ``Raises:`` entry). The reference pages (``docs/reference/*.md``)
must hold a ``::: runtime.<name>`` or ``::: actors.<name>`` directive for every name of each
package's ``__all__``, so a new public name cannot go undocumented.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import actors
import runtime

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
BUILD_TIMEOUT = 150.0

# A mkdocstrings directive at the start of a line: "::: runtime.FeatureRuntime".
_DIRECTIVE = re.compile(r"^:::\s+(?P<path>[\w.]+)\s*$", re.MULTILINE)


def _documented() -> dict[str, list[str]]:
    """Each object path of a directive in the reference pages -> the pages that hold it."""
    found: dict[str, list[str]] = {}
    for page in sorted(REFERENCE.glob("*.md")):
        for match in _DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            found.setdefault(match["path"], []).append(page.name)
    return found


def _public() -> list[str]:
    return [f"runtime.{name}" for name in runtime.__all__] + [
        f"actors.{name}" for name in actors.__all__
    ]


@pytest.mark.timeout(BUILD_TIMEOUT + 30)
def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"mkdocs build did not finish within {BUILD_TIMEOUT:g} s", pytrace=False)
    problems = [line for line in done.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert done.returncode == 0 and not problems, (
        f"mkdocs build --strict exited with status {done.returncode}:\n"
        + ("\n".join(problems) or done.stderr[-4000:])
    )
    assert (tmp_path / "reference" / "runtime" / "index.html").is_file()


def test_every_public_name_has_a_reference_entry() -> None:
    documented = _documented()
    missing = [path for path in _public() if path not in documented]
    assert not missing, (
        "public names with no '::: <package>.<name>' directive in docs/reference/*.md: "
        + ", ".join(missing)
    )


def test_reference_entries_name_public_objects_once() -> None:
    public = set(_public())
    documented = _documented()
    unknown = sorted(path for path in documented if path not in public)
    assert not unknown, (
        f"docs/reference/*.md documents names that are not in __all__: {', '.join(unknown)}"
    )
    twice = {path: pages for path, pages in documented.items() if len(pages) > 1}
    assert not twice, f"documented more than once: {twice}"


def _build_helpers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_docs_build", REFERENCE / "_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_helpers_translate_source_conventions_to_markdown() -> None:
    pytest.importorskip("griffe")
    helpers = _build_helpers()
    # A "python no-run" fence (shown, not run by test_docs.py) renders as a Python block.
    page = "Text\n\n```python no-run\nawait rt.get(key)\n```\n\n````python no-run\n````\n"
    assert helpers.on_page_markdown(page) == (
        "Text\n\n```python\nawait rt.get(key)\n```\n\n````python\n````\n"
    )
    # Sphinx roles become code; "paragraph::" becomes "paragraph:"; "Example::" stays no
    # Google section title.
    assert helpers.markdown_docstring(
        "See :class:`FeatureSet` and :meth:`~FeatureRuntime.get`.\n\nThe hierarchy::\n\n"
        "    A\n\nExample::\n\n    run()"
    ) == (
        "See `FeatureSet` and `FeatureRuntime.get`.\n\nThe hierarchy:\n\n    A\n\n"
        "**Example:**\n\n    run()"
    )
    # The "#:" comment lines right above a field are its docstring.
    lines = ["class R:", "    #: the key", "    #: (a str)", "    key: str", "    other: int"]
    assert helpers.field_comment(lines, 4) == "the key\n(a str)"
    assert helpers.field_comment(lines, 5) is None
