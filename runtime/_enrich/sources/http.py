"""The HTTP source: rows from an API, one GET per key or one POST per batch (the ``http``
extra)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import anyio
import msgspec

from ..._exceptions import MalformedRow
from ..._spec.enrich import HttpSource
from ..rows import Value
from .base import Base, group_keys, json_row, missing_extra, spread

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpDimensionSource"]


class HttpDimensionSource(Base):
    """Rows from an HTTP API through one httpx client (redirects followed, no retries).

    ``batch=False``: one GET per key at ``url`` with ``{key}`` replaced by the URL-quoted
    ``str(key)``, at most ``max_concurrency`` at once; 404 is missing, any other status but 2xx
    fails the batch. ``batch=True``: one POST of ``{"keys": [...]}`` (strings and integers as
    they are, other keys as ``str(key)``), answered by a JSON object ``{"<str(key)>": row}``.
    A row that is not a JSON object (``null`` included) is a `MalformedRow`. ``timeout`` is
    httpx's (connecting, each read and write).

    Raises (from `get_many`): TimeoutError (no answer within ``timeout``), httpx.HTTPError
    (httpx.ConnectError: the server is down; httpx.HTTPStatusError: an error status),
    ValueError (a batch answer that is not an object).
    """

    kind = "http"

    def __init__(self, spec: HttpSource) -> None:
        self.spec = spec
        self.name = spec.name
        self._client: httpx.AsyncClient | None = None
        self._timeout_error: type[Exception] = TimeoutError
        self._url_parts = spec.url.split("{key}")

    async def open(self) -> None:
        if self._client is not None:
            raise self._already_open()
        try:
            import httpx
        except ImportError as exc:
            raise missing_extra("httpx", "http") from exc
        self._timeout_error = httpx.TimeoutException
        self._client = httpx.AsyncClient(
            timeout=self.spec.ms("timeout") / 1000,
            headers=self.spec.headers,
            follow_redirects=True,
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Value]:
        client = self._client
        if client is None:
            raise self._not_open()
        groups = group_keys(keys, str)
        if not groups:
            return {}
        try:
            if self.spec.batch:
                found = await self._post(client, groups)
            else:
                found = await self._get_each(client, groups)
        except self._timeout_error as exc:  # as the other sources: a builtin TimeoutError
            raise TimeoutError(f"http source {self.name!r}: {exc!r}") from exc
        return spread(found, groups)

    async def _post(
        self, client: httpx.AsyncClient, groups: dict[str, list[Hashable]]
    ) -> dict[str, Value]:
        keys = [
            key if isinstance(key, str) or type(key) is int else text
            for text, (key, *_) in groups.items()
        ]
        response = await client.post(
            self.spec.url,
            content=msgspec.json.encode({"keys": keys}),
            headers={"content-type": "application/json"},
        )
        response.raise_for_status()
        try:
            answer = msgspec.json.decode(response.content)
        except msgspec.DecodeError as exc:
            raise ValueError(f"{self.spec.url}: the batch answer is not JSON: {exc}") from None
        if not isinstance(answer, dict):
            raise ValueError(
                f"{self.spec.url}: the batch answer is a JSON {type(answer).__name__}, "
                "not an object of rows by key"
            )
        found: dict[str, Value] = {}
        for text in groups:
            if text in answer:
                row = answer[text]
                found[text] = (
                    row
                    if isinstance(row, dict)
                    else MalformedRow(f"{text}: a JSON {type(row).__name__}, not an object")
                )
        return found

    async def _get_each(
        self, client: httpx.AsyncClient, groups: dict[str, list[Hashable]]
    ) -> dict[str, Value]:
        found: dict[str, Value] = {}
        failures: list[Exception] = []
        pending = iter(groups)

        async def worker(scope: anyio.CancelScope) -> None:
            for text in pending:  # shared by the workers: each key is taken once
                url = urllib.parse.quote(text, safe="").join(self._url_parts)
                try:
                    response = await client.get(url)
                    if response.status_code == 404:
                        continue
                    response.raise_for_status()
                except Exception as exc:
                    failures.append(exc)
                    scope.cancel()
                    return
                found[text] = json_row(response.content, url)

        # The first failure is raised as it is, not in an ExceptionGroup: the others are cancelled.
        async with anyio.create_task_group() as group:
            for _ in range(min(self.spec.max_concurrency, len(groups))):
                group.start_soon(worker, group.cancel_scope)
        if failures:
            raise failures[0]
        return found
