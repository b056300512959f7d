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

__all__ = ["MAX_KEY_LENGTH", "HttpDimensionSource"]

#: the longest key sent, in characters (URL-quoted, for a GET): servers refuse longer URLs
#: (414), and such a key would fail the whole batch
MAX_KEY_LENGTH = 2048
#: the most redirects followed for one request (httpx's default)
_MAX_REDIRECTS = 20


def quote_key(text: str) -> str:
    """A key as one path segment: URL-quoted with no safe characters, and ``.`` and ``..``
    (which URL resolution would remove, with the segment before) written ``%2E``."""
    quoted = urllib.parse.quote(text, safe="")
    return "%2E" * len(quoted) if quoted in (".", "..") else quoted


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


class HttpDimensionSource(Base):
    """Rows from an HTTP API through one httpx client (redirects followed, no retries).

    ``batch=False``: one GET per key at ``url`` with ``{key}`` replaced by the URL-quoted
    ``str(key)`` (``/``, ``?``, ``#``, and the path segments ``.`` and ``..`` too, so a key
    cannot change the path), at most ``max_concurrency`` at once; 404 is missing, any other
    status but 2xx fails the batch. ``batch=True``: one POST of ``{"keys": [...]}`` (strings
    and integers as they are, other keys as ``str(key)``), answered by a JSON object
    ``{"<str(key)>": row}``.
    A row that is not a JSON object (``null`` included) is a `MalformedRow`. ``timeout`` is
    httpx's (connecting, each read and write).

    Redirects are followed (at most 20), but ``headers`` (an API key, a token) are sent only to
    the origin of the request's URL: a redirect to another scheme, host or port drops them.
    A key whose text is longer than `MAX_KEY_LENGTH` characters (URL-quoted for a GET), or not
    valid Unicode, is refused before the call (``refuse_key``).

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
        # Redirects are followed by `_send`, which drops the spec's headers on the way to
        # another origin (httpx drops only Authorization; an API key header would follow).
        self._client = httpx.AsyncClient(
            timeout=self.spec.ms("timeout") / 1000,
            headers=self.spec.headers,
            follow_redirects=False,
        )

    def _key_text(self, key: Hashable) -> str | None:
        return str(key)

    def refuse_key(self, key: Hashable) -> str | None:
        reason = super().refuse_key(key)
        if reason is not None:
            return reason
        text = str(key)
        length = len(text) if self.spec.batch else len(quote_key(text))
        if length > MAX_KEY_LENGTH:
            return f"{length} characters, more than the {MAX_KEY_LENGTH} an HTTP key may have"
        return None

    async def _send(self, client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
        """Send ``request``, following redirects; the spec's headers stay with its origin."""
        origin = _origin(request.url)
        for _ in range(_MAX_REDIRECTS):
            response = await client.send(request)
            following = response.next_request
            if following is None:
                return response
            await response.aclose()
            if _origin(following.url) != origin:
                for name in self.spec.headers:
                    following.headers.pop(name, None)
            request = following
        raise self._too_many_redirects(request)

    def _too_many_redirects(self, request: httpx.Request) -> Exception:
        import httpx

        return httpx.TooManyRedirects(
            f"more than {_MAX_REDIRECTS} redirects from {request.url}", request=request
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
        request = client.build_request(
            "POST",
            self.spec.url,
            content=msgspec.json.encode({"keys": keys}),
            headers={"content-type": "application/json"},
        )
        response = await self._send(client, request)
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
                url = quote_key(text).join(self._url_parts)
                try:
                    response = await self._send(client, client.build_request("GET", url))
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
