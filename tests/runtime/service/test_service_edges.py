"""The service at its edges: not started (mounted without its lifespan), bodies too large, too
deep or cut off, an unexpected error, many refused events, a misspelt field."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from runtime import create_app
from runtime._service import app as service_app

from .server import serving
from .test_service import FEATURES, T0


def _mounted(*, wired: bool) -> Starlette:
    """The service mounted at ``/svc`` in an application of one's own, its lifespan wired into
    the application's (as docs/service.md shows) or not."""
    features = create_app(FEATURES, shards=1)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with features.router.lifespan_context(features):
            yield

    return Starlette(routes=[Mount("/svc", app=features)], lifespan=lifespan if wired else None)


def _eventually(client: httpx.Client, path: str, n: int) -> dict[str, Any]:
    """The vector at ``path`` once it counts ``n`` events (they are applied a moment after
    they are accepted)."""
    deadline = time.monotonic() + 10
    while (vector := client.get(path).json())["values"]["n"] != n:
        assert time.monotonic() < deadline, vector
        time.sleep(0.02)
    result: dict[str, Any] = vector
    return result


def test_a_mounted_app_whose_lifespan_does_not_run_answers_503_to_reads_too() -> None:
    with serving(_mounted(wired=False)) as url, httpx.Client(base_url=url, timeout=5) as client:
        answers = [
            client.get("/svc/features/c1"),  # waited for ever for a round nobody answered
            client.post("/svc/features", json={"keys": ["c1"]}),
            client.post("/svc/events", json={"card": "c1", "ts": T0}),
        ]
        for answer in answers:
            assert answer.status_code == 503
            assert answer.json() == {"error": "not_running", "detail": "the runtime is not running"}


def test_a_mounted_app_with_its_lifespan_wired_serves() -> None:
    with serving(_mounted(wired=True)) as url, httpx.Client(base_url=url, timeout=5) as client:
        assert client.post("/svc/events", json={"card": "c1", "ts": T0}).json() == {"accepted": 1}
        assert _eventually(client, "/svc/features/c1", 1)["key"] == "c1"
        assert client.get("/svc/readyz").status_code == 200


def _answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the HTTP/1.1 answer read from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or b"!"  # an early EOF fails the parse below
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), json.loads(body)


def test_a_chunked_body_over_the_limit_answers_413_before_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = 64 * 1024
    monkeypatch.setattr(service_app, "MAX_BODY_BYTES", limit)
    with serving(create_app(FEATURES, shards=1)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /events HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            chunk = b" " * (16 * 1024)
            for part in [chunk] * (limit // len(chunk)) + [b" "]:  # one byte over; no end
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            # answered now, without the body's end (it was read whole first: a wait for ever,
            # and as much memory as the client sent)
            status, body = _answer(sock)
    assert status == 413
    assert body == {"error": "too_large", "detail": f"the body is more than {limit} bytes"}


async def test_a_client_gone_mid_body_is_no_error_of_the_service(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(FEATURES, shards=1)
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"keys": ["c', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/features",
        "raw_path": b"/features",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    with caplog.at_level(logging.DEBUG):
        await app(scope, receive, send)  # ClientDisconnect went on to the server, a traceback
    assert sent[0]["status"] == 400
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_body_nested_too_deeply_answers_400() -> None:
    deep_json = b"[" * 2000 + b"]" * 2000
    deep_msgpack = b"\x91" * 2000 + b"\xc0"  # 2000 arrays of one, around a nil
    with serving(create_app(FEATURES, shards=1)) as url, httpx.Client(base_url=url) as client:
        for path in ("/events", "/features"):
            for content, kind in ((deep_json, "json"), (deep_msgpack, "msgpack")):
                answer = client.post(
                    path, content=content, headers={"content-type": f"application/{kind}"}
                )
                assert answer.status_code == 400, answer.text
                assert answer.json()["error"] == "bad_body"
                assert answer.json()["detail"].endswith("body: it is nested too deeply")


def test_an_unexpected_error_answers_json_500_and_is_logged_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(FEATURES, shards=1)
    uvicorn_log = logging.getLogger("uvicorn")  # its handlers: it does not propagate
    with serving(app) as url, httpx.Client(base_url=url) as client:

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(app.state.service.rt, "get_many", broken)
        uvicorn_log.addHandler(caplog.handler)
        try:
            with caplog.at_level(logging.ERROR):
                answers = [
                    client.get("/features/c1"),  # the hot route, before Starlette's routing
                    client.post("/features", json={"keys": ["c1"]}),
                ]
        finally:
            uvicorn_log.removeHandler(caplog.handler)
    for answer in answers:
        assert answer.status_code == 500
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == {
            "error": "internal",
            "detail": "an unexpected error (RuntimeError) in the service; its log has the "
            "traceback",
        }
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.name for r in errors] == ["featurist.service"] * 2  # not uvicorn's too
    assert all(r.exc_info and "a bug" in r.getMessage() for r in errors)


def test_a_422_lists_the_first_thousand_refused_events_and_counts_them_all() -> None:
    with serving(create_app(FEATURES, shards=1)) as url, httpx.Client(base_url=url) as client:
        answer = client.post("/events", json=[{}] * 2500 + [{"card": "c1", "ts": T0}])
        assert answer.status_code == 422
        body = answer.json()
        assert body["accepted"] == 1 and body["rejected_count"] == 2500
        assert [r["index"] for r in body["rejected"]] == list(range(1000))
        assert body["field"] == body["rejected"][0]["field"]
        one = client.post(
            "/events",
            content=msgspec.msgpack.encode([{"card": "c1"}]),
            headers={"content-type": "application/msgpack"},
        ).json()
        assert one["rejected_count"] == 1 and len(one["rejected"]) == 1


def test_a_read_of_many_keys_refuses_an_unknown_field() -> None:
    with serving(create_app(FEATURES, shards=1)) as url, httpx.Client(base_url=url) as client:
        client.post("/events", json={"card": "c1", "ts": T0, "amount": 2.0})
        everything = _eventually(client, "/features/c1", 1)["values"]
        for body, name in (
            ({"keys": ["c1"], "asOf": T0 - 1}, "asOf"),  # read now, and answered 200
            ({"keys": ["c1"], "feature": ["n"]}, "feature"),  # every feature, answered 200
            ({"key": "c1"}, "key"),
        ):
            answer = client.post("/features", json=body)
            assert answer.status_code == 400
            assert answer.json() == {
                "error": "bad_body",
                "detail": f"unknown field {name!r} in the body (accepted: keys, features, as_of)",
                "field": name,
            }
        # "features": [] is the empty ?features= of GET /features/{key}: every feature
        empty = client.post("/features", json={"keys": ["c1"], "features": []})
        assert empty.json()["vectors"][0]["values"] == everything
        assert client.get("/features/c1?features=").json()["values"] == everything
