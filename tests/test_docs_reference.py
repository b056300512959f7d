"""``docs/features.md`` documents every feature type, and its TOML examples load.

Each type of ``runtime.FEATURE_TYPES`` has a section headed ``## <type>`` (the tag alone, as in
``## distinct_count``), in the order of ``FEATURE_TYPES``. The first ``toml`` block of each
section is a one-line example: one element of a feature set's ``features`` array, of that type.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from runtime import FEATURE_TYPES, FeatureSet

FEATURES_MD = Path(__file__).resolve().parents[1] / "docs" / "features.md"

# A type section: "## " then a lower-case tag and nothing else ("## Conditions: `where`" is not).
_TYPE_HEADING = re.compile(r"^## (?P<tag>[a-z][a-z0-9_]*)\s*$")
_TOML_FENCE = re.compile(r"^```toml\s*$")


def _sections() -> dict[str, list[str]]:
    """The lines of each type section, by tag, in the order they appear."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in FEATURES_MD.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            match = _TYPE_HEADING.match(line)
            current = sections.setdefault(match["tag"], []) if match else None
        elif current is not None:
            current.append(line)
    return sections


def _toml_example(lines: list[str]) -> list[str]:
    """The body of the section's first ``toml`` block, or ``[]`` when it has none."""
    for index, line in enumerate(lines):
        if _TOML_FENCE.match(line):
            end = lines.index("```", index + 1)
            return lines[index + 1 : end]
    return []


def test_every_feature_type_has_a_section_in_features_md_in_order() -> None:
    documented = list(_sections())
    missing = [tag for tag in FEATURE_TYPES if tag not in documented]
    assert not missing, f"docs/features.md has no '## <type>' section for: {', '.join(missing)}"
    unknown = [tag for tag in documented if tag not in FEATURE_TYPES]
    assert not unknown, f"docs/features.md documents unknown types: {', '.join(unknown)}"
    assert documented == list(FEATURE_TYPES), "sections are not in FEATURE_TYPES order"


class _Spread:
    """The aggregate the ``custom`` example names (``myapp.aggregates:Spread``)."""

    def empty(self) -> Any:
        return None

    def update(self, state: Any, value: Any) -> Any:
        return (value, value) if state is None else (min(state[0], value), max(state[1], value))

    def value(self, state: Any) -> Any:
        return None if state is None else state[1] - state[0]


def test_each_type_section_has_a_one_line_toml_example_of_that_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the module the custom example names, as an application would have it
    module = types.ModuleType("myapp.aggregates")
    _Spread.__module__, _Spread.__qualname__ = module.__name__, "Spread"
    module.Spread = _Spread  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "myapp", types.ModuleType("myapp"))
    monkeypatch.setitem(sys.modules, "myapp.aggregates", module)
    examples: dict[str, str] = {}
    for tag, lines in _sections().items():
        body = _toml_example(lines)
        assert len(body) == 1, f"## {tag}: expected a one-line toml example, got {body!r}"
        examples[tag] = body[0].strip()
    # Together the examples form one valid set: names are unique and the ratio's operands exist.
    document = 'name = "reference"\nkey = "card"\ntime = "ts"\nfeatures = [\n'
    document += "".join(f"  {example},\n" for example in examples.values()) + "]\n"
    feature_set = FeatureSet.from_toml(document, source="docs/features.md", modules=["myapp"])
    assert [feature.type_name for feature in feature_set.features] == list(examples)
