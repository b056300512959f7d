"""The metrics endpoint is bounded (issue 15, item 9).

It used to be a thread-per-connection WSGI server with no cap and no timeout: 400 idle
connections held 400 threads, which outlived the runtime. It is now served on the runtime's
event loop, in the runtime's tasks: a cap on open connections (a new one pushes out the oldest
idle one), a deadline for the request, and nothing left once the runtime has exited.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.abc
import httpx
import psutil
import pytest

from runtime import Count, FeatureRuntime, FeatureSet
from runtime._observe import prometheus
from runtime._observe.prometheus import MetricsServer

FEATURES = FeatureSet(name="p", key="k", time="ts", features=[Count(name="n")])


def _server_sockets(port: int) -> list[Any]:
    """The process's sockets on the server's side of ``port`` (the listener included)."""
    return [c for c in psutil.Process().net_connections("tcp") if c.laddr and c.laddr.port == port]


def _threads() -> set[str]:
    """The threads but the event loop's shared pools: anyio's workers (a scrape renders in
    one) and asyncio's default executor (``connect_tcp`` resolves the host in it)."""
    shared = ("AnyIO worker", "asyncio_")
    return {t.name for t in threading.enumerate() if not t.name.startswith(shared)}


async def _idle(host: str, port: int, n: int) -> list[anyio.abc.SocketStream]:
    return [await anyio.connect_tcp(host, port) for _ in range(n)]


async def _closed_by_server(stream: anyio.abc.SocketStream) -> bool:
    try:
        with anyio.fail_after(5):
            await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
        return True
    return False


async def test_idle_connections_are_capped_timed_out_and_gone_after_the_runtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(prometheus, "TIMEOUT", 1.0)
    threads_before = _threads()
    async with FeatureRuntime(FEATURES, metrics_port=0, metrics_interval=0.05) as rt:
        assert rt.metrics_address is not None
        host, port = rt.metrics_address
        idle = await _idle(host, port, 400)
        await anyio.sleep(0.3)  # let the server accept them all
        # before the fix: 400 threads, one per connection
        assert _threads() - threads_before == set()
        assert len(_server_sockets(port)) <= prometheus.MAX_CONNECTIONS + 1  # + the listener
        async with httpx.AsyncClient() as client:  # a scrape still works meanwhile
            response = await client.get(f"http://{host}:{port}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "featurist_events_ingested_total 0.0" in response.text
        # the idle ones are closed, at the cap at once, the others after the timeout
        with anyio.fail_after(10):
            while len(_server_sockets(port)) > 1:
                await anyio.sleep(0.05)
        assert all([await _closed_by_server(stream) for stream in idle[:50]])
        for stream in idle:
            await stream.aclose()
    assert _server_sockets(port) == []
    assert _threads() - threads_before == set()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://{host}:{port}/metrics")


async def _served(server: MetricsServer, body: Any) -> None:
    async with anyio.create_task_group() as tg:
        await server.start(tg)
        try:
            await body(server)
        finally:
            await server.stop()


async def test_a_new_connection_pushes_out_the_oldest_idle_one() -> None:
    async def body(server: MetricsServer) -> None:
        first, *others = await _idle("127.0.0.1", server.port, 4)
        await anyio.sleep(0.1)
        newest = await anyio.connect_tcp("127.0.0.1", server.port)
        assert await _closed_by_server(first)
        assert server.evicted == 1 and server.connections <= 4
        await newest.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        try:
            while True:
                response += await newest.receive()
        except anyio.EndOfStream:
            pass
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Connection: close" in response
        for stream in [*others, newest, first]:
            await stream.aclose()

    await _served(MetricsServer("127.0.0.1", 0, max_connections=4, timeout=5), body)


async def test_a_request_that_does_not_come_in_time_is_dropped() -> None:
    async def body(server: MetricsServer) -> None:
        slow = await anyio.connect_tcp("127.0.0.1", server.port)
        await slow.send(b"GET /metrics HTTP/1.1\r\n")  # and never the end of the head
        assert await _closed_by_server(slow)
        assert server.timed_out == 1 and server.connections == 0
        await slow.aclose()

    await _served(MetricsServer("127.0.0.1", 0, timeout=0.3), body)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nX: " + b"x" * 10_000 + b"\r\n\r\n", b"431"),
        (b"nonsense\r\n\r\n", b"400"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"OPTIONS /metrics HTTP/1.1\r\n\r\n", b"200"),
    ],
)
async def test_bad_requests_are_answered_and_closed(request_bytes: bytes, status: bytes) -> None:
    async def body(server: MetricsServer) -> None:
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        await stream.send(request_bytes)
        response = b""
        with anyio.fail_after(5):
            try:
                while True:
                    response += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                pass
        assert response.startswith(b"HTTP/1.1 " + status), response[:100]
        await stream.aclose()

    await _served(MetricsServer("127.0.0.1", 0), body)


async def test_the_endpoint_speaks_openmetrics_and_gzip_when_asked() -> None:
    async with FeatureRuntime(FEATURES, metrics_port=0) as rt:
        assert rt.metrics_address is not None
        host, port = rt.metrics_address
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"http://{host}:{port}/metrics",
                headers={"Accept": "application/openmetrics-text", "Accept-Encoding": "gzip"},
            )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.headers["content-encoding"] == "gzip"
    assert "featurist_events_ingested_total 0.0" in response.text
    assert response.text.endswith("# EOF\n")
