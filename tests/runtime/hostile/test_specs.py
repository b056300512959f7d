"""Hostile spec files (issue 15, item 5) and a new user's spec mistakes (item 10).

A spec file is data: its ``"module:function"`` names reach only what the application allows,
nothing is imported for a spec that is refused, a builtin or the standard library is never
reached, and a YAML alias bomb is refused before it is built. Built in Python, a spec with a
missing or unknown argument raises ``SpecError`` naming it, as the file loaders do.
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import msgspec
import msgspec.yaml
import pytest

from runtime import (
    Count,
    FeatureSet,
    Join,
    Lookup,
    SpecError,
    SqliteSource,
    Sum,
    Tumbling,
    Where,
)
from runtime._spec.files import MAX_YAML_NODES

#: A module whose import is visible: it leaves a mark in a file, as any import side effect
#: (a connection, a thread, a shell command) would act.
_SIDE_EFFECT = """
import os
from pathlib import Path

Path(os.environ["SPEC_TEST_MARK"]).write_text("imported")


def same_region(left, right):
    return left.get("region") == right.get("region")
"""


def _spec(predicate: str, *, valid: bool = True) -> str:
    feature = '{type = "count", name = "pairs", stream = "j"}'
    if not valid:
        feature = '{type = "sum", name = "pairs", stream = "j"}'  # no field
    return textwrap.dedent(
        f"""
        name = "ads"
        key = "ad"
        time = "ts"
        streams = ["l", "r"]
        joins = [{{name = "j", left = "l", right = "r", after = 1, predicate = "{predicate}"}}]
        features = [{feature}]
        """
    )


@pytest.fixture
def side_effect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A fresh importable module with an import side effect: its name and its mark file."""
    name = f"spec_side_effect_{time.monotonic_ns()}"
    (tmp_path / f"{name}.py").write_text(_SIDE_EFFECT)
    mark = tmp_path / "mark"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SPEC_TEST_MARK", str(mark))
    yield name, mark
    sys.modules.pop(name, None)


def test_a_spec_file_imports_no_module_the_application_does_not_allow(
    side_effect: tuple[str, Path],
) -> None:
    name, mark = side_effect
    with pytest.raises(SpecError) as raised:
        FeatureSet.from_toml(_spec(f"{name}:same_region"), source="ads.toml")
    assert str(raised.value).startswith(
        f"ads.toml: joins[0].predicate: '{name}:same_region' is not a function the "
        "application allows a spec file to name (allowed: none)"
    )
    assert name not in sys.modules and not mark.exists()


def test_a_refused_spec_file_imports_nothing_even_from_allowed_modules(
    side_effect: tuple[str, Path],
) -> None:
    name, mark = side_effect
    with pytest.raises(SpecError, match=r"features\[0\]\.field: missing required field"):
        FeatureSet.from_toml(_spec(f"{name}:same_region", valid=False), modules=[name])
    assert name not in sys.modules and not mark.exists()


def test_an_allowed_module_is_imported_once_the_spec_is_valid(
    side_effect: tuple[str, Path],
) -> None:
    name, mark = side_effect
    spec = FeatureSet.from_toml(_spec(f"{name}:same_region"), modules=[name])
    assert mark.read_text() == "imported"
    assert spec.joins[0].predicate_function is sys.modules[name].same_region
    # the set is the one built in Python with the function, and is written back by name
    assert spec.to_dict()["joins"][0]["predicate"] == f"{name}:same_region"


def same_device(left: dict[str, Any], right: dict[str, Any]) -> bool:
    return bool(left.get("device") == right.get("device"))


def test_listed_functions_are_reached_by_their_own_names_only() -> None:
    name = f"{__name__}:same_device"
    spec = FeatureSet.from_toml(_spec(name), functions=[same_device])
    assert spec.joins[0].predicate_function is same_device
    # listing a function allows that function, not the rest of its module
    with pytest.raises(SpecError, match="is not a function the application allows"):
        FeatureSet.from_toml(_spec(f"{__name__}:_spec"), functions=[same_device])
    with pytest.raises(TypeError, match="cannot be found again by its name"):
        FeatureSet.from_toml(_spec(name), functions=[lambda left, right: True])


@pytest.mark.parametrize(
    ("predicate", "reason"),
    [
        ("os:system", "is not a function the application allows"),
        ("builtins:exec", "is not a function the application allows"),
        # an allowed module reaches only the functions it defines, not what it imported
        ("{module}:os.system", "is not a Python function (it is a builtin)"),
        ("{module}:Path.write_text", "is pathlib:Path.write_text, defined elsewhere"),
        ("{module}:same_region.__call__", "is not a Python function"),
        ("{module}:same_region()", "not a 'module:function' name"),
        ("../evil:f", "not a 'module:function' name"),
    ],
)
def test_a_spec_file_never_reaches_a_builtin_or_another_modules_function(
    side_effect: tuple[str, Path], predicate: str, reason: str
) -> None:
    name, _ = side_effect
    with pytest.raises(SpecError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        FeatureSet.from_toml(_spec(predicate.format(module=name)), modules=[name])


def test_the_standard_library_cannot_be_allowed_or_named() -> None:
    with pytest.raises(ValueError, match="'os' is of the standard library"):
        FeatureSet.from_toml(_spec("os:system"), modules=["os"])
    with pytest.raises(TypeError, match="not a string"):
        FeatureSet.from_toml(_spec("os:system"), modules="os")
    # built in Python, a name is imported at once, but never from the standard library
    with pytest.raises(SpecError, match="predicate: 'os:system' names a standard-library"):
        Join(name="j", left="l", right="r", after=1, predicate="os:system")


def test_a_spec_decoded_without_a_loader_keeps_its_names_unresolved(
    side_effect: tuple[str, Path],
) -> None:
    name, mark = side_effect
    raw = msgspec.toml.decode(_spec(f"{name}:same_region").encode())
    spec = msgspec.convert(raw, FeatureSet)  # msgspec's own decoding: no allow-list
    assert name not in sys.modules and not mark.exists()
    with pytest.raises(SpecError, match="was never resolved: load spec files with FeatureSet"):
        spec.joins[0].predicate_function  # noqa: B018


def _bomb(levels: int) -> str:
    lines = ["name: f", "key: k", "time: t", "features: [{type: count, name: c}]"]
    lines += ["sources: [{type: custom, name: s}]", "lookups:", "  - {name: l, field: x,"]
    lines.append("     source: s, default: {a0: &a0 [x, x, x, x, x, x, x, x, x],")
    for level in range(1, levels):
        lines.append(f"     a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "],")
    lines.append("     end: 0}}")
    return "\n".join(lines)


def test_a_yaml_alias_bomb_is_refused_before_it_is_built() -> None:
    started = time.perf_counter()
    # 9**10 values (3.5 billion) from a document of 600 bytes
    with pytest.raises(SpecError, match=r"^bomb.yaml: the document expands to more than "):
        FeatureSet.from_yaml(_bomb(10), source="bomb.yaml")
    assert time.perf_counter() - started < 5
    # a few aliases, as people use them, are fine (9**5: 59,049 values)
    spec = FeatureSet.from_yaml(_bomb(5))
    assert len(spec.to_json()) < 10 * 9**5
    assert MAX_YAML_NODES == 1_000_000


def test_a_yaml_alias_that_holds_itself_is_refused() -> None:
    text = "name: f\nkey: k\ntime: t\nfeatures: [{type: count, name: c}]\n"
    text += "sources: [{type: custom, name: s}]\n"
    text += "lookups: [{name: l, field: x, source: s, default: &d {self: *d}}]\n"
    with pytest.raises(SpecError, match="an alias \\(\\*name\\) refers to its own anchor"):
        FeatureSet.from_yaml(text)


@pytest.mark.parametrize(
    "text", ["name: [", "name: *nothing", "a: b\n- c", "a: !!python/name:os.system x"]
)
def test_yaml_errors_read_as_msgspecs(text: str) -> None:
    with pytest.raises(msgspec.DecodeError) as decoding:
        msgspec.yaml.decode(text)
    detail = " ".join(str(decoding.value).split())
    with pytest.raises(SpecError) as raised:
        FeatureSet.from_yaml(text, source="x.yaml")
    assert str(raised.value) == f"x.yaml: not valid YAML: {detail}"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Sum(name="s"), "<python>: Sum(name='s').field: missing required argument"),
        (lambda: Sum(field="x"), "<python>: Sum.name: missing required argument"),
        (
            lambda: Sum(name="s", field="x", windw=Tumbling(size="1m")),
            "<python>: Sum(name='s').windw: unknown argument (known: field, name, where, ",
        ),
        (lambda: Sum("s", "x"), "<python>: Sum: takes keyword arguments only, got 2"),
        (lambda: Where(field="x"), "<python>: Where.value: missing required argument"),
        (lambda: Tumbling(), "<python>: Tumbling.size: missing required argument"),
        (
            lambda: FeatureSet(name="f", key="k", time="t"),
            "<python>: FeatureSet(name='f').features: missing required argument",
        ),
        (
            lambda: Join(name="j", left="l"),
            "<python>: Join(name='j').right: missing required argument",
        ),
        (
            lambda: SqliteSource(name="m"),
            "<python>: SqliteSource(name='m').table: missing required argument",
        ),
        (
            lambda: Lookup(name="m", field="x"),
            "<python>: Lookup(name='m').source: missing required argument",
        ),
    ],
)
def test_a_spec_built_in_python_names_a_missing_or_unknown_argument(
    build: Any, message: str
) -> None:
    with pytest.raises(SpecError) as raised:
        build()
    assert str(raised.value).startswith(message)


def test_decoding_errors_are_msgspecs_as_before() -> None:
    with pytest.raises(SpecError, match=r"^<dict>: features\[0\]\.field: missing required field"):
        FeatureSet.from_dict(
            {"name": "f", "key": "k", "time": "t", "features": [{"type": "sum", "name": "s"}]}
        )
    with pytest.raises(msgspec.ValidationError, match=r"Object missing required field `field`"):
        msgspec.convert({"name": "s"}, Sum)
    assert Count(name="c") == msgspec.convert({"name": "c"}, Count)


def _nested(depth: int) -> list[Any]:
    top: list[Any] = []
    inner = top
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return top


@pytest.mark.parametrize("depth", [900, 5_000, 100_000])
def test_a_spec_nested_too_deeply_is_a_spec_error(depth: int) -> None:
    value = "[" * depth + "]" * depth
    head = {"name": "f", "key": "k", "time": "t"}
    where = f'{{field = "x", op = "in", value = {value}}}'
    text = "\n".join(f'{k} = "{v}"' for k, v in head.items())
    text += f'\nfeatures = [{{type = "count", name = "c", where = {where}}}]\n'
    with pytest.raises(SpecError, match=r"^deep.toml: "):
        FeatureSet.from_toml(text, source="deep.toml")
    text = '{"name": "f", "key": "k", "time": "t", "features": [{"type": "count", "name": "c", '
    text += f'"where": {{"field": "x", "op": "in", "value": {value}}}}}]}}'
    with pytest.raises(SpecError, match=r"^deep.json: "):
        FeatureSet.from_json(text, source="deep.json")
    feature = {"type": "count", "name": "c", "where": {"field": "x", "op": "in"}}
    feature["where"]["value"] = _nested(depth)
    with pytest.raises(SpecError, match=r"^<dict>: "):
        FeatureSet.from_dict({**head, "features": [feature]})
