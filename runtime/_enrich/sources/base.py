"""What every built-in source shares: opening and closing, the check that it is open, and the
answer by the keys as asked (`group_keys` then `spread`)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from types import TracebackType
from typing import Any, Self

import msgspec

from ..._exceptions import MalformedRow
from ..rows import Row, Value

__all__ = ["SKIP", "Base", "group_keys", "json_row", "missing_extra", "spread"]


class Base:
    """Opening and closing as an async context manager, and the check that a source is open."""

    kind = "dimension"
    #: the source's name (its spec's)
    name = ""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def refuse_key(self, key: Hashable) -> str | None:
        """Why the source cannot send ``key`` to its server, or None: the fetcher asks before
        each call, so such a key fails alone instead of failing its whole batch. Text that is
        not valid Unicode (a lone surrogate, as ``"\\ud800"`` in JSON decodes to) cannot be
        encoded for any server."""
        text = self._key_text(key)
        if text is None or text.isascii():
            return None
        try:
            text.encode()
        except UnicodeEncodeError:
            return "it holds a lone surrogate, which no server can be sent"
        return None

    def _key_text(self, key: Hashable) -> str | None:
        """The key as the text the source sends, if it sends text (None: it does not)."""
        return key if isinstance(key, str) else None

    def _named(self, exc: BaseException) -> BaseException:
        """``exc`` with the source named in its message (a start-up error of a server says
        nothing of which source it was): the same type where that type takes a message, else
        ``exc`` itself with a note."""
        prefix = f"{self.kind} source {self.name!r}"
        try:
            named = type(exc)(f"{prefix}: {exc}")
        except Exception:
            named = None
        if named is None or prefix not in str(named):
            exc.add_note(f"(in {prefix})")
            return exc
        return named

    def _not_open(self) -> RuntimeError:
        return RuntimeError(f"the {self.kind} source {self.name!r} is not open")

    def _already_open(self) -> RuntimeError:
        return RuntimeError(f"the {self.kind} source {self.name!r} is already open")


def missing_extra(module: str, extra: str) -> ImportError:
    return ImportError(f"a {extra} source needs {module}: pip install 'featurist[{extra}]'")


#: what a key coercion gives for a key that cannot be of the key column's type
SKIP = object()


def group_keys(
    keys: Iterable[Hashable], coerce: Callable[[Hashable], Any]
) -> dict[Any, list[Hashable]]:
    """The keys by their value as the key column types it (keys that cannot be left out)."""
    groups: dict[Any, list[Hashable]] = {}
    for key in keys:
        value = coerce(key)
        if value is not SKIP:
            groups.setdefault(value, []).append(key)
    return groups


def spread(found: dict[Any, Value], groups: dict[Any, list[Hashable]]) -> dict[Hashable, Value]:
    """The answer by the keys as asked: keys asked in two spellings (42 and "42") get their own
    copy of the row, never one object that a caller could change for both."""
    answer: dict[Hashable, Value] = {}
    for value, row in found.items():
        for index, key in enumerate(groups[value]):
            answer[key] = row.copy() if index and isinstance(row, dict | list) else row
    return answer


def json_row(data: bytes | str, where: str) -> Row | MalformedRow:
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        return MalformedRow(f"{where}: not JSON: {exc}")
    if not isinstance(value, dict):
        return MalformedRow(f"{where}: a JSON {type(value).__name__}, not an object")
    return value
