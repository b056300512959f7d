"""Turning msgspec's validation errors into messages in the terms of a spec file.

msgspec says ``Expected `int`, got `str` - at `$.features[2].exact_limit` ``; a user of a spec
file wants ``features[2].exact_limit: Expected `int`, got `str` ``, the list of known feature
types for a bad ``type``, and the allowed fields for an unknown one. The spec classes are passed
in, so this module depends on nothing but msgspec.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import msgspec

__all__ = ["explain"]

_LOCATION = re.compile(r"(?P<text>.*) - at `\$(?P<where>[^`]*)`", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]*)`")
#: a path in a spec's ``sources``: a source, or its ``type``
_SOURCE = re.compile(r"sources\[\d+\](?:\.type)?")


def explain(
    exc: msgspec.ValidationError,
    raw: object,
    *,
    types: Mapping[str, type[msgspec.Struct]],
    root: type[msgspec.Struct],
    condition: type[msgspec.Struct],
    windows: Mapping[str, type[msgspec.Struct]],
    choices: Mapping[str, Sequence[str]],
    sources: Mapping[str, type[msgspec.Struct]] | None = None,
) -> str:
    """Return msgspec's validation error as ``path: reason``, with the path in spec terms.

    Args:
        exc: the error.
        raw: the document that failed, to look up what stands at the error's path.
        types: feature classes by ``type`` tag.
        root: the class of the whole document; ``condition``: the class of ``where`` clauses;
            ``windows``: the window classes by ``type`` tag.
        choices: the allowed values of enumerated fields (``op``, ``time_unit``), by name.
        sources: the dimension source classes by ``type`` tag (``sources[i].type``).
    """
    known_types = ", ".join(types)
    match = _LOCATION.fullmatch(str(exc))
    text, where = (match["text"], match["where"]) if match else (str(exc), "")
    path = where.removeprefix(".")
    field_error: tuple[str, str] | None = getattr(exc.__cause__, "_spec_field", None)
    if field_error is not None:
        return f"{_join(path, field_error[0])}: {field_error[1]}"
    last = path.rpartition(".")[2]
    in_window = path.endswith(".window.type") or path.endswith(".window")
    in_source = sources is not None and _SOURCE.fullmatch(path) is not None
    if in_source:  # a source's type, or a field of it: the source types, not the features'
        assert sources is not None
        known_types, types = ", ".join(sources), sources
    if text.startswith("Invalid value ") and last == "type":
        value = text.removeprefix("Invalid value ")
        if in_window:
            return f"{path}: unknown window type {value} (known: {', '.join(windows)})"
        noun = "source" if in_source else "feature"
        return f"{path}: unknown {noun} type {value} (known: {known_types})"
    if text.startswith("Invalid enum value ") and last in choices:
        value = text.removeprefix("Invalid enum value ")
        return f"{path}: unknown {last} {value} (known: {', '.join(choices[last])})"
    node = _resolve(raw, path)
    if missing := _MISSING.fullmatch(text):
        field = missing["field"]
        if field == "type":
            choices_of = ", ".join(windows) if path.endswith("window") else known_types
            return f"{_join(path, field)}: missing required field (one of: {choices_of})"
        tag = node.get("type") if isinstance(node, dict) else None
        owner = f" of a {tag!r} feature" if isinstance(tag, str) and tag in types else ""
        return f"{_join(path, field)}: missing required field{owner}"
    if unknown := _UNKNOWN.fullmatch(text):
        fields = _fields_at(
            path, node, windows if path.endswith("window") else types, root, condition
        )
        known = f" (known: {', '.join(fields)})" if fields else ""
        return f"{_join(path, unknown['field'])}: unknown field{known}"
    return f"{path}: {text}" if path else text


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _resolve(raw: object, path: str) -> object:
    """Return the part of the raw document at ``path``, or ``None`` when it is not there."""
    node = raw
    for key, index in _STEP.findall("." + path if path else ""):
        if key and isinstance(node, dict):
            node = node.get(key)
        elif index and isinstance(node, list | tuple) and int(index) < len(node):
            node = node[int(index)]
        else:
            return None
    return node


def _fields_at(
    path: str,
    node: object,
    types: Mapping[str, type[msgspec.Struct]],
    root: type[msgspec.Struct],
    condition: type[msgspec.Struct],
) -> tuple[str, ...]:
    """Return the field names allowed at ``path``, or ``()`` when that is unclear."""
    cls: type[msgspec.Struct] | None = None
    if not path:
        cls = root
    elif path.endswith(".where"):
        cls = condition
    elif isinstance(node, dict) and node.get("type") in types:
        cls = types[node["type"]]
        return ("type", *cls.__struct_fields__)
    return () if cls is None else cls.__struct_fields__
