"""The feature service's ASGI application (Starlette): routes, error mapping, lifespan.

The lifespan owns one :class:`~runtime.FeatureRuntime`: it starts it (a checkpoint is
restored then), the sinks (``run_sink``) and a task per input (``rt.consume``), and stops them
in the reverse order. Bodies are JSON or MessagePack by ``Content-Type``; answers are JSON,
encoded with msgspec.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from importlib import resources
from typing import Any, Literal, get_args
from urllib.parse import parse_qs

import anyio
import anyio.abc
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from actors import get_logger

from .._connectors.sinks import Sink, run_sink
from .._connectors.source import Source
from .._exceptions import ConfigError, RuntimeClosed, SinkError, UnknownFeature
from .._ingest.events import EventReader
from .._runtime import FeatureRuntime
from .._spec.drift import DriftMonitor
from .._spec.feature_set import FeatureSet
from .openapi import openapi_schema
from .reads import ReadBatcher, ReadsStopped
from .status import StatusBoard

__all__ = ["KeyType", "build_app"]

_log = get_logger("featurist.service")

KeyType = Literal["auto", "str", "int"]
KEY_TYPES: tuple[str, ...] = get_args(KeyType)

#: the content types read as MessagePack; anything else is read as JSON
MSGPACK_TYPES = frozenset(
    {"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"}
)
#: records an input's consume call reads (one batch of ``rt.consume``) before it returns and
#: is called again: the status page's count of an input's records moves by rounds of this
INPUT_ROUND = 1024
#: the largest request body read (bytes)
MAX_BODY_BYTES = 16 * 1024 * 1024
#: the most refused events a 422 lists (``rejected_count`` counts them all): the answer to a
#: request of many bad events stays small
MAX_REJECTIONS_LISTED = 1000
#: the fields a ``POST /features`` body may have
READ_FIELDS = ("keys", "features", "as_of")

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()
_msgpack_decoder = msgspec.msgpack.Decoder()
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class _Problem(Exception):
    """An answer other than 200, with its JSON body."""

    def __init__(self, status: int, error: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.body = {"error": error, "detail": detail, **extra}


def _json(body: Any, status: int = 200) -> Response:
    return Response(_json_encoder.encode(body), status, media_type="application/json")


def _problem_response(problem: _Problem) -> Response:
    return _json(problem.body, problem.status)


#: the ``error`` of an answer Starlette gives itself (no such route, a method it does not take)
_HTTP_ERRORS = {404: "not_found", 405: "method_not_allowed"}


def _internal(exc: BaseException) -> _Problem:
    """The answer to an error the service does not expect (a bug): JSON, as every other."""
    return _Problem(
        500,
        "internal",
        f"an unexpected error ({type(exc).__name__}) in the service; its log has the traceback",
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    """The last resort, for an error raised outside the routes' own handling: a JSON 500.
    Not logged here: Starlette raises the error on to the server, which logs it."""
    return _problem_response(_internal(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (a path no route has, a method the route does not take) as JSON
    with ``error`` and ``detail``, as every other error of the service."""
    assert isinstance(exc, HTTPException)
    response = _json(
        {"error": _HTTP_ERRORS.get(exc.status_code, "http_error"), "detail": exc.detail},
        exc.status_code,
    )
    if exc.headers:
        response.headers.update(exc.headers)  # a 405's Allow
    return response


class _Input:
    """One input of the service: a source and how far its consume loop got."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.name = str(getattr(source, "name", None) or type(source).__name__)
        self.caught_up = False
        self.records = 0
        self.error: str | None = None

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "caught_up": self.caught_up,
            "records": self.records,
            "error": self.error,
        }


class _Output:
    """One sink of the service, written by a task of its own: a sink that fails is detached
    (``run_sink`` raises ``SinkError`` in that task), the service stays up and says so."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.name = str(getattr(sink, "name", None) or type(sink).__name__)
        self.running: Any = None
        self.error: str | None = None

    def status(self) -> dict[str, Any]:
        stats = {} if self.running is None else dataclasses.asdict(self.running.statistics())
        return {"name": self.name, **stats, "error": self.error}


class Service:
    """What the routes share: the runtime (while the lifespan runs), its inputs and sinks."""

    def __init__(
        self,
        feature_set: FeatureSet,
        *,
        key_type: KeyType,
        inputs: Sequence[Source],
        sinks: Sequence[Sink],
        drift: Sequence[DriftMonitor],
        max_keys: int,
        runtime_options: Mapping[str, Any],
    ) -> None:
        self.drift = tuple(drift)
        self.feature_set = feature_set
        self.key_type = key_type
        self.inputs = [_Input(source) for source in inputs]
        self.sinks = [_Output(sink) for sink in sinks]
        self.max_keys = max_keys
        self.runtime_options = dict(runtime_options)
        self.rt: FeatureRuntime | None = None
        self.board = StatusBoard()
        self.reads = ReadBatcher(self.get_many)
        probe = EventReader.of(feature_set)
        self._int_low, self._int_high = probe.int_low, probe.int_high

    # -- lifecycle ---------------------------------------------------------------------------
    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            rt = await stack.enter_async_context(
                FeatureRuntime(self.feature_set, **self.runtime_options)
            )
            self.rt = rt
            stack.callback(setattr, self, "rt", None)
            if self.drift:
                await rt.monitor_drift(*self.drift)
            for output in self.sinks:
                await stack.enter_async_context(output.sink)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            for output in self.sinks:
                await tg.start(self._write, rt, output, name=f"featurist-sink-{output.name}")
            # started before the server takes requests: a read never waits for a round that
            # no task answers (and reads fail fast once this task ends)
            await tg.start(self.reads.run, name="featurist-service-reads")
            for item in self.inputs:
                tg.start_soon(self._consume, rt, item, name=f"featurist-input-{item.name}")
            _log.info(
                "service_started",
                feature_set=self.feature_set.name,
                inputs=[item.name for item in self.inputs],
                sinks=[type(output.sink).__name__ for output in self.sinks],
            )
            yield

    async def _write(
        self,
        rt: FeatureRuntime,
        output: _Output,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write every update to one sink until the service stops (``run_sink`` drains it
        then), or the sink fails: then it is detached and the service stays up and says so."""
        try:
            async with run_sink(rt, output.sink) as running:
                output.running = running
                task_status.started()
                await anyio.sleep_forever()
        except SinkError as exc:
            output.error = f"{type(exc).__name__}: {exc}"
            _log.error("service_sink_failed", sink=output.name, error=output.error)

    async def _consume(self, rt: FeatureRuntime, item: _Input) -> None:
        """Read one input: until it has nothing more for now (caught up), then on."""
        try:
            async with item.source:
                result = await rt.consume(item.source, until="idle")
                item.records += result.records
                item.caught_up = True
                while not result.ended:
                    # a live source: read on, a round of records at a time (a call waits for
                    # records, so nothing polls), counting them for the status page
                    result = await rt.consume(item.source, until=INPUT_ROUND)
                    item.records += result.records
        except Exception as exc:  # the service stays up and says so on /healthz
            item.error = f"{type(exc).__name__}: {exc}"
            _log.error("service_input_failed", input=item.name, error=item.error)

    async def get_many(
        self, keys: list[Any], features: list[str] | None, as_of: Any
    ) -> dict[Any, Any]:
        return await self.running().get_many(keys, features, as_of=as_of)

    def running(self) -> FeatureRuntime:
        rt = self.rt
        if rt is None:
            raise _Problem(503, "not_running", "the runtime is not running")
        return rt

    # -- decoding ------------------------------------------------------------------------------
    async def body(self, request: Request) -> Any:
        """The request's body, decoded (JSON, or MessagePack by ``Content-Type``).

        Read as a stream and refused as soon as it passes :data:`MAX_BODY_BYTES`, so that a
        chunked body (no ``Content-Length``) is not held whole in memory first.
        """
        limit = MAX_BODY_BYTES
        too_large = _Problem(413, "too_large", f"the body is more than {limit} bytes")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
        except ClientDisconnect:
            # the client went away mid-body: nobody reads the answer, and it is no error of
            # the service's (no traceback in its log)
            _log.debug("service_client_disconnected", path=request.scope.get("path"))
            raise _Problem(
                400, "bad_body", "the client disconnected before the body ended"
            ) from None
        data = b"".join(chunks)
        content_type = request.headers.get("content-type", "application/json")
        msgpack = content_type.split(";", 1)[0].strip().lower() in MSGPACK_TYPES
        kind = "MessagePack" if msgpack else "JSON"
        try:
            return _msgpack_decoder.decode(data) if msgpack else _json_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise _Problem(400, "bad_body", f"cannot decode the {kind} body: {exc}") from None
        except RecursionError:
            # arrays or objects nested deeper than the decoder goes (``[[[[...``)
            raise _Problem(
                400, "bad_body", f"cannot decode the {kind} body: it is nested too deeply"
            ) from None

    def url_key(self, text: str) -> Any:
        """A key read from a URL, typed by ``key_type``."""
        if self.key_type == "str":
            return text
        digits = text[1:] if text[:1] == "-" else text
        canonical = digits.isdigit() and digits.isascii() and (digits == "0" or digits[0] != "0")
        if canonical and len(digits) <= 20:
            value = int(text)
            if self._int_low <= value <= self._int_high:
                return value
        if self.key_type == "int":
            raise _Problem(
                400,
                "bad_key",
                "the key must be an int of at most 64 bits in canonical decimal (42, -5; not "
                f"007 nor +5), got {text!r}",
            )
        return text

    def as_of(self, value: Any) -> Any:
        """``as_of`` of a query string: a number, ``now``, ``last_event`` or an ISO time."""
        if value is None:
            return None
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return value
            if math.isfinite(number):
                return int(number) if number.is_integer() and "." not in value else number
        return value


def _features_of(request: Request) -> list[str] | None:
    names = [n for raw in request.query_params.getlist("features") for n in raw.split(",") if n]
    return names or None


def _mapped(exc: Exception) -> _Problem:
    """The answer to an error of a read."""
    if isinstance(exc, _Problem):
        return exc
    if isinstance(exc, ReadsStopped):
        return _Problem(503, "not_running", "the runtime is not running")
    if isinstance(exc, UnknownFeature):
        return _Problem(404, "unknown_feature", str(exc))
    if isinstance(exc, RuntimeClosed):
        return _Problem(503, "runtime_closed", str(exc))
    if isinstance(exc, ConfigError):
        return _Problem(501, "not_available", str(exc))
    if isinstance(exc, TypeError | ValueError):
        return _Problem(400, "bad_request", str(exc))
    raise exc


async def _read(
    service: Service, keys: list[Any], features: list[str] | None, as_of: Any
) -> dict[Any, Any]:
    try:
        return await service.get_many(keys, features, as_of)
    except Exception as exc:
        raise _mapped(exc) from None


class _ServiceApp(Starlette):
    """Starlette, with ``GET /features/{key}`` (the hot route) answered before its middleware
    and routing: the same answers, in less time per request."""

    def __init__(self, service: Service, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._service = service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and path.startswith("/features/")
            and len(path) > 10
            and not scope.get("root_path")  # mounted: the routing strips the mount's path
        ):
            await self._read(scope, path[10:], send)
            return
        await super().__call__(scope, receive, send)

    async def _read(self, scope: Any, key_text: str, send: Any) -> None:
        service = self._service
        status = 200
        try:
            features: list[str] | None = None
            as_of = None
            query = scope.get("query_string", b"")
            if query:
                params = parse_qs(query.decode("latin-1"))
                names = [n for raw in params.get("features", ()) for n in raw.split(",") if n]
                features = names or None
                given = params.get("as_of")
                as_of = service.as_of(given[-1] if given else None)
            key = service.url_key(key_text)
            body = _json_encoder.encode(await service.reads.get(key, features, as_of))
        except Exception as exc:
            try:
                problem = _mapped(exc)
            except Exception:
                problem = _unexpected(exc, scope)
            status, body = problem.status, _json_encoder.encode(problem.body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _unexpected(exc: Exception, scope: Any) -> _Problem:
    """An error no route expects (a bug), logged once with its traceback, answered as a
    JSON 500."""
    _log.error(
        "service_request_failed",
        method=scope.get("method"),
        path=scope.get("path"),
        error=f"{type(exc).__name__}: {exc}",
        exc_info=exc,
    )
    return _internal(exc)


def build_app(
    feature_set: FeatureSet | str | os.PathLike[str],
    *,
    key_type: KeyType = "auto",
    inputs: Sequence[Source] = (),
    sinks: Sequence[Sink] = (),
    drift: Sequence[DriftMonitor] = (),
    max_keys: int = 10_000,
    runtime_options: Mapping[str, Any] | None = None,
) -> Starlette:
    """See :func:`runtime.create_app`."""
    if not isinstance(feature_set, FeatureSet):
        feature_set = FeatureSet.from_file(feature_set)
    if key_type not in KEY_TYPES:
        raise ValueError(f"key_type must be one of {', '.join(KEY_TYPES)}, got {key_type!r}")
    if not isinstance(max_keys, int) or isinstance(max_keys, bool) or max_keys < 1:
        raise ValueError(f"max_keys must be an int >= 1, got {max_keys!r}")
    # the runtime's options are checked now (making a runtime starts nothing: no task, no
    # process, no file), so that a bad one fails here, naming it, rather than in the lifespan
    # once the server is starting, as a traceback in its log
    FeatureRuntime(feature_set, **(runtime_options or {}))
    service = Service(
        feature_set,
        key_type=key_type,
        inputs=inputs,
        sinks=sinks,
        drift=drift,
        max_keys=max_keys,
        runtime_options=runtime_options or {},
    )
    streams = list(feature_set.stream_names)
    schema = _json_encoder.encode(openapi_schema(feature_set))
    page = resources.files(__package__).joinpath("status.html").read_bytes()

    async def post_events(request: Request) -> Response:
        rt = service.running()
        stream = request.query_params.get("stream")
        if stream is not None and stream not in streams:
            raise _Problem(
                400, "unknown_stream", f"unknown stream {stream!r} (known: {', '.join(streams)})"
            )
        body = await service.body(request)
        events = body if isinstance(body, list) else [body]
        try:
            # explain: the reason and field of each event ingest refuses (the others go in)
            result = await rt.ingest_many(events, stream=stream, explain=True)
        except RuntimeClosed as exc:
            raise _Problem(503, "runtime_closed", str(exc)) from None
        except ConfigError as exc:
            raise _Problem(501, "not_available", str(exc)) from None
        if result.rejections:
            first = result.rejections[0]
            listed = result.rejections[:MAX_REJECTIONS_LISTED]
            raise _Problem(
                422,
                "invalid_event",
                first.reason,
                field=first.field,
                rejected=[msgspec.structs.asdict(r) for r in listed],
                rejected_count=len(result.rejections),
                accepted=result.accepted,
            )
        return _json({"accepted": result.accepted})

    async def get_features(request: Request) -> Response:
        key = service.url_key(request.path_params["key"])
        as_of = service.as_of(request.query_params.get("as_of"))
        try:
            vector = await service.reads.get(key, _features_of(request), as_of)
        except Exception as exc:
            raise _mapped(exc) from None
        return _json(vector)

    async def post_features(request: Request) -> Response:
        body = await service.body(request)
        if isinstance(body, dict):
            # a misspelt field ("asOf", "feature") would otherwise be a read of the current
            # values of every feature, answered 200 as if it were what was asked
            unknown = [name for name in body if name not in READ_FIELDS]
            if unknown:
                raise _Problem(
                    400,
                    "bad_body",
                    f"unknown field {unknown[0]!r} in the body "
                    f"(accepted: {', '.join(READ_FIELDS)})",
                    field=unknown[0],
                )
        if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
            raise _Problem(400, "bad_body", 'the body must be an object with a list "keys"')
        keys = body["keys"]
        if len(keys) > service.max_keys:
            raise _Problem(
                413, "too_many_keys", f"{len(keys)} keys, more than max_keys ({service.max_keys})"
            )
        features = body.get("features")
        if features is not None and (
            not isinstance(features, list) or not all(isinstance(f, str) for f in features)
        ):
            raise _Problem(400, "bad_body", '"features" must be a list of names')
        # [] reads every feature, as the empty ?features= of GET /features/{key} does
        features = features or None
        as_of = service.as_of(body.get("as_of"))
        found = await _read(service, keys, features, as_of)
        return _json({"vectors": [found[key] for key in dict.fromkeys(keys)]})

    async def healthz(request: Request) -> Response:
        rt = service.rt
        failed = [item.status() for item in service.inputs if item.error is not None]
        failed_sinks = [output.status() for output in service.sinks if output.error is not None]
        problem = None
        if rt is None:
            problem = "the runtime is not running"
        else:
            try:
                await rt.statistics()
            except RuntimeClosed as exc:
                problem = str(exc)
            except ConfigError:
                pass  # statistics are not served with workers: running is what counts
        if problem is None and failed:
            problem = f"input {failed[0]['name']!r} failed: {failed[0]['error']}"
        if problem is None and failed_sinks:
            problem = f"sink {failed_sinks[0]['name']!r} failed: {failed_sinks[0]['error']}"
        if problem is not None or failed or failed_sinks:
            return _json(
                {"status": "failing", "detail": problem, "inputs": failed, "sinks": failed_sinks},
                503,
            )
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        waiting = [item.name for item in service.inputs if not item.caught_up]
        ready = service.rt is not None and not waiting
        body = {"ready": ready, "waiting_for": waiting}
        if service.rt is not None:
            restored = service.rt.restored
            body["restored_checkpoint"] = None if restored is None else restored.sequence
        return _json(body, 200 if ready else 503)

    async def metrics(request: Request) -> Response:
        rt = service.running()
        from .._observe.prometheus import render

        try:
            # the collector rt.prometheus_collector() gives, with a snapshot taken now
            collector = await rt.prometheus_collector()
            await collector.refresh()
        except RuntimeClosed as exc:
            raise _Problem(503, "runtime_closed", str(exc)) from None
        except ConfigError as exc:
            raise _Problem(501, "not_available", str(exc)) from None
        try:
            content_type, text = await anyio.to_thread.run_sync(
                render, collector, request.headers.get("accept", "")
            )
        except ImportError as exc:
            raise _Problem(501, "not_available", str(exc)) from None
        return Response(text, media_type=content_type)

    async def status(request: Request) -> Response:
        rt = service.running()
        try:
            snapshot = await rt.metrics()
        except RuntimeClosed as exc:
            raise _Problem(503, "runtime_closed", str(exc)) from None
        except ConfigError as exc:
            raise _Problem(501, "not_available", str(exc)) from None
        body = service.board.status(
            snapshot,
            time.time(),
            ready=service.rt is not None and all(item.caught_up for item in service.inputs),
            inputs=[item.status() for item in service.inputs],
            sinks=[output.status() for output in service.sinks],
            feature_set=service.feature_set.name,
        )
        return _json(body)

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    async def openapi(request: Request) -> Response:
        return Response(schema, media_type="application/json")

    def wrap(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except _Problem as problem:
                return _problem_response(problem)
            except Exception as exc:
                return _problem_response(_unexpected(exc, request.scope))
            return response

        endpoint.__name__ = handler.__name__
        return endpoint

    routes = [
        Route("/", wrap(index), methods=["GET"]),
        Route("/events", wrap(post_events), methods=["POST"]),
        Route("/features/{key:path}", wrap(get_features), methods=["GET"]),
        Route("/features", wrap(post_features), methods=["POST"]),
        Route("/healthz", wrap(healthz), methods=["GET"]),
        Route("/readyz", wrap(readyz), methods=["GET"]),
        Route("/metrics", wrap(metrics), methods=["GET"]),
        Route("/status", wrap(status), methods=["GET"]),
        Route("/openapi.json", wrap(openapi), methods=["GET"]),
    ]
    app = _ServiceApp(
        service,
        routes=routes,
        lifespan=service.lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.service = service
    return app
