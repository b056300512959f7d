"""``python -m demos.bench serve``: the feature service over HTTP on 127.0.0.1, against the
HTTP floor.

Two servers, one after the other, each uvicorn in a process of its own with the same settings
(one worker, uvloop, the HTTP parser uvicorn picks: h11 unless httptools is installed):

1. the floor: a bare ASGI app that answers every request with a constant JSON body the size of
   a feature vector; what uvicorn and the client cost per request, with no framework and no
   runtime behind it;
2. the service: ``runtime.create_app`` on a feature set of three features (a count, a sum and a
   10-minute sliding count) with ``shards=2``.

The client is this process: ``--clients`` keep-alive HTTP/1.1 connections over asyncio streams
(uvloop), each sending its next request when the last answer is read. Each phase is bounded by
``--requests`` and ``--seconds``, whichever comes first:

- floor: ``GET /features/{key}`` on the bare app;
- writes: ``POST /events`` of one JSON event per request (``--keys`` cards, times increasing);
- batch writes: ``POST /events`` of ``--batch`` events per request (events/s shown too);
- reads: ``GET /features/{key}`` of the keys written;
- batch reads: ``POST /features`` of ``--batch`` keys per request.

Printed per phase: requests, requests/s, p50 and p99 latency (send to the answer fully read),
and requests/s as a share of the floor's (the mean of two runs of the floor, one before the
service's phases and one after, as the load of a shared machine moves). The target is reads at
60 % of the floor or more. On a shared machine the figures move from run to run: compare the
rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from ._common import Row, print_table, quiet_logs

T0 = 1_700_000_000_000
#: what the floor answers: a feature vector's JSON of about the service's size
FLOOR_BODY = json.dumps(
    {
        "key": "card-1",
        "values": {"n": 12, "total": 345.5, "n_10m": 3},
        "last_event_time": T0,
        "watermark": T0,
        "updated_at": 1.7e9,
        "lag_ms": 12.5,
        "as_of": None,
    }
).encode()


async def floor_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: a constant JSON answer to every HTTP request."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(FLOOR_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": FLOOR_BODY})


def _service_app() -> Any:
    from runtime import Count, FeatureSet, Sliding, Sum, create_app

    feature_set = FeatureSet(
        name="bench",
        key="card",
        time="ts",
        features=[
            Count(name="n"),
            Sum(name="total", field="amount"),
            Count(name="n_10m", window=Sliding(size="10m")),
        ],
    )
    return create_app(feature_set, shards=2)


def _serve(which: str, sock: socket.socket) -> None:
    """A child process: uvicorn serving ``which`` on the socket given."""
    import uvicorn

    quiet_logs()
    app = floor_app if which == "floor" else _service_app()
    config = uvicorn.Config(app, lifespan="on", log_level="error", access_log=False, loop="uvloop")
    uvicorn.Server(config).run(sockets=[sock])


class Server:
    """A uvicorn child process on a free port of 127.0.0.1."""

    def __init__(self, which: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(target=_serve, args=(which, self.sock), daemon=True)

    def __enter__(self) -> Server:
        self.process.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    probe.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                    if probe.recv(64).startswith(b"HTTP/1.1 200"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline or not self.process.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(20)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.sock.close()


Request = Callable[[int], bytes]


def get(path_of: Callable[[int], str]) -> Request:
    def make(i: int) -> bytes:
        return f"GET {path_of(i)} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode()

    return make


def post(path: str, body_of: Callable[[int], bytes]) -> Request:
    def make(i: int) -> bytes:
        body = body_of(i)
        head = (
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    return make


async def _client(
    port: int,
    make: Request,
    counter: list[int],
    limit: int,
    deadline: float,
    latencies: list[float],
    statuses: dict[int, int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    clock = time.perf_counter
    try:
        while counter[0] < limit and clock() < deadline:
            i = counter[0]
            counter[0] += 1
            started = clock()
            writer.write(make(i))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(clock() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def phase(
    port: int, make: Request, clients: int, requests: int, seconds: float
) -> dict[str, Any]:
    """Drive ``make``'s requests with ``clients`` connections; the timings."""
    counter = [0]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(
            _client(port, make, counter, requests, deadline, latencies, statuses)
            for _ in range(clients)
        )
    )
    elapsed = time.perf_counter() - started
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "rate": len(latencies) / elapsed,
        "p50": quantile(0.5),
        "p99": quantile(0.99),
        "statuses": statuses,
    }


def _event(i: int, keys: int) -> dict[str, Any]:
    return {"card": f"card-{i % keys}", "ts": T0 + i, "amount": float(i % 100)}


async def _run(args: argparse.Namespace) -> list[tuple[str, dict[str, Any], int]]:
    keys, batch = args.keys, args.batch
    rng = random.Random(7)
    shuffled = [rng.randrange(keys) for _ in range(4096)]
    results: list[tuple[str, dict[str, Any], int]] = []

    with Server("floor") as floor:
        read_path = get(lambda i: f"/features/card-{shuffled[i % 4096]}")
        await phase(floor.port, read_path, args.clients, 500, 2.0)  # warm up
        result = await phase(floor.port, read_path, args.clients, args.requests, args.seconds)
        results.append(("floor: bare ASGI, GET", result, 1))
    with Server("service") as service:
        port = service.port
        single = post("/events", lambda i: json.dumps(_event(i, keys)).encode())
        await phase(port, single, args.clients, 500, 2.0)  # warm up
        result = await phase(port, single, args.clients, args.requests, args.seconds)
        results.append(("writes: POST /events, 1 event", result, 1))
        offset = 10_000_000

        def many(i: int) -> bytes:
            start = offset + i * batch
            return json.dumps([_event(start + j, keys) for j in range(batch)]).encode()

        result = await phase(port, post("/events", many), args.clients, args.requests, args.seconds)
        results.append((f"writes: POST /events, {batch} events", result, batch))
        reads = get(lambda i: f"/features/card-{shuffled[i % 4096]}")
        await phase(port, reads, args.clients, 500, 2.0)  # warm up
        result = await phase(port, reads, args.clients, args.requests, args.seconds)
        results.append(("reads: GET /features/{key}", result, 1))

        def keys_of(i: int) -> bytes:
            wanted = [f"card-{shuffled[(i * batch + j) % 4096]}" for j in range(batch)]
            return json.dumps({"keys": wanted}).encode()

        result = await phase(
            port, post("/features", keys_of), args.clients, args.requests, args.seconds
        )
        results.append((f"reads: POST /features, {batch} keys", result, batch))
    with Server("floor") as floor:
        # the floor again, after the service: the machine's load moves during a run
        await phase(floor.port, read_path, args.clients, 500, 2.0)
        result = await phase(floor.port, read_path, args.clients, args.requests, args.seconds)
        results.append(("floor again: bare ASGI, GET", result, 1))
    return results


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demos.bench serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=20_000, help="per phase, at most")
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase, at most")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    quiet_logs()
    try:
        import uvloop
    except ImportError:
        results = asyncio.run(_run(args))
    else:
        results = uvloop.run(_run(args))
    # the floor: the mean of its two runs, before and after the service's phases
    floor_rate = (results[0][1]["rate"] + results[-1][1]["rate"]) / 2
    rows = []
    failed = False
    for name, result, per_request in results:
        bad = {s: n for s, n in result["statuses"].items() if s != 200}
        failed = failed or bool(bad)
        values = {
            "requests": f"{result['requests']:,}",
            "requests/s": f"{result['rate']:,.0f}",
            "items/s": f"{result['rate'] * per_request:,.0f}",
            "p50 ms": f"{result['p50']:.2f}",
            "p99 ms": f"{result['p99']:.2f}",
            "of floor": f"{result['rate'] / floor_rate:.0%}",
            "not 200": ", ".join(f"{n} x {s}" for s, n in sorted(bad.items())) or "-",
        }
        rows.append(Row(name, values))
    cores = os.cpu_count()
    print_table(
        f"the feature service over HTTP ({args.clients} clients, 127.0.0.1, {cores} cores, "
        "client and server on one machine)",
        ["requests", "requests/s", "items/s", "p50 ms", "p99 ms", "of floor", "not 200"],
        rows,
    )
    reads = next(r for n, r, _ in results if n.startswith("reads: GET"))
    share = reads["rate"] / floor_rate
    print(f"\nreads at {share:.0%} of the HTTP floor (target: 60 % or more)")
    if failed:
        print("some requests failed (see 'not 200')", file=sys.stderr)
        raise SystemExit(1)
