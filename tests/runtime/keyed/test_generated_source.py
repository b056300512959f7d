"""The compiled group's source is registered in ``linecache``: a traceback through the generated
code shows its lines, as a traceback through any module does."""

from __future__ import annotations

import gc
import linecache
import traceback
from typing import Any

import pytest

from runtime import Count, Sum
from runtime._keyed.kernel import CompiledGroup, compile_group


def _formatted(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def _filename(group: CompiledGroup) -> str:
    return str(group.apply.__code__.co_filename)


def test_a_traceback_through_the_generated_apply_shows_its_line() -> None:
    group = compile_group([Count(name="n"), Sum(name="total", field="amount")])
    # an event that is not a mapping fails where the group reads its first field
    with pytest.raises(AttributeError) as caught:
        group.apply([("k", 1, None)], {}, [], 0.0)
    text = _formatted(caught.value)
    assert f'File "{_filename(group)}", line ' in text
    assert "v0 = ev.get('amount')" in text


def test_a_traceback_through_the_generated_values_shows_its_line() -> None:
    group = compile_group([Count(name="n")])
    with pytest.raises(AttributeError) as caught:
        group.values(object())  # a state of another class: it has no slot f0_n
    text = _formatted(caught.value)
    assert f'File "{_filename(group)}", line ' in text
    assert "    x0 = S.f0_n\n" in group.source
    assert "x0 = S.f0_n" in text


def test_each_compiled_group_has_a_file_name_of_its_own() -> None:
    first = compile_group([Count(name="n")], group="g0")
    second = compile_group([Sum(name="n", field="x")], group="g0")
    assert _filename(first) != _filename(second)
    assert _filename(first).startswith("<featurist group g0 #")
    assert linecache.getline(_filename(second), 1) == second.source.splitlines(keepends=True)[0]


def test_checkcache_keeps_the_generated_source() -> None:
    group = compile_group([Count(name="n")])
    linecache.checkcache()
    assert "".join(linecache.getlines(_filename(group))) == group.source


def test_the_source_is_forgotten_with_its_group() -> None:
    group: Any = compile_group([Count(name="n")])
    filename = _filename(group)
    assert filename in linecache.cache
    del group
    gc.collect()
    assert filename not in linecache.cache
