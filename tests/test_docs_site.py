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
import yaml

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


def _nav_pages(entries: list[object]) -> list[str]:
    """The pages of the nav of ``mkdocs.yml``, in order, at any depth."""
    pages: list[str] = []
    for entry in entries:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            pages.extend(_nav_pages(value) if isinstance(value, list) else [str(value)])
    return pages


def test_every_guide_page_is_in_the_nav_and_both_maps_in_one_order() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    guide = sorted(page.name for page in (ROOT / "docs").glob("*.md"))
    nav = [page for page in _nav_pages(config["nav"]) if "/" not in page]
    assert sorted(nav) == guide
    # README's list of the pages, "in the site's order"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.findall(r"^- \[docs/([\w-]+\.md)\]", readme, re.MULTILINE) == nav
    # the home page's map of the guide: every other page
    home = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert re.findall(r"^\| \[[^\]]+\]\(([\w-]+\.md)\)", home, re.MULTILINE) == nav[1:]


def test_the_site_styles_exist_and_let_table_cells_wrap() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    styles = [ROOT / "docs" / name for name in config.get("extra_css", [])]
    assert styles and all(path.is_file() for path in styles)
    css = "".join(path.read_text(encoding="utf-8") for path in styles)
    # the readthedocs theme sets white-space: nowrap on these cells
    assert re.search(r"\.wy-table-responsive table td[^{]*\{[^}]*white-space:\s*normal", css)
