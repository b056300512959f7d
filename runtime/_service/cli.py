"""`featurist serve SPEC` (or `python -m runtime serve SPEC`): the feature service from the
command line.

Inputs and sinks are given as URLs (docs/service.md lists them):

- --input events.jsonl / .csv / .parquet (or file://PATH): a file source;
- --input 'nats://HOST:PORT?stream=S&subject=SUBJ&durable=NAME[&start=new]': a JetStream
  source;
- --input 'redis://HOST:PORT/DB?stream=KEY&group=G[&consumer=C&field=data&start=new]': a
  Redis Streams source;
- --sink 'redis://HOST:PORT/DB[?prefix=features:&ttl=1d]',
  --sink 'nats://HOST:PORT[?subject=features&format=msgpack]', --sink parquet://DIRECTORY.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from .._connectors.files import CsvSource, JsonLinesSource, ParquetSource
from .._connectors.sinks import Sink
from .._connectors.source import Source
from .._exceptions import ConfigError

__all__ = ["main", "make_sink", "make_source"]

#: uvicorn's log levels (``--log-level``)
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
#: how long ``serve`` lets open requests finish once told to stop (SIGTERM, Ctrl-C), seconds:
#: then they are cancelled, so that the last checkpoint is taken within a grace period such
#: as Kubernetes' (30 s by default) even while a client trickles a body
GRACEFUL_TIMEOUT = 10

_FILES: dict[str, type[Any]] = {
    ".jsonl": JsonLinesSource,
    ".ndjson": JsonLinesSource,
    ".json": JsonLinesSource,
    ".csv": CsvSource,
    ".parquet": ParquetSource,
}


def _query(url: str) -> tuple[Any, dict[str, str]]:
    parts = urlsplit(url)
    return parts, {name: values[-1] for name, values in parse_qs(parts.query).items()}


def _need(query: dict[str, str], name: str, url: str) -> str:
    if name not in query:
        raise ConfigError(f"{url}: the query needs {name}=...")
    return query.pop(name)


def _no_more(query: dict[str, str], url: str) -> None:
    if query:
        raise ConfigError(f"{url}: unknown parameters {', '.join(sorted(query))}")


def make_source(url: str, time_unit: str = "ms") -> Source:
    """The source an ``--input`` URL names.

    Raises:
        ConfigError: the URL names no known source, or its parameters are wrong.
    """
    parts, query = _query(url)
    if parts.scheme == "nats":
        server = urlunsplit(("nats", parts.netloc, "", "", ""))
        from .._connectors.nats import NatsSource

        source: Source = NatsSource(
            server,
            stream=_need(query, "stream", url),
            subjects=_need(query, "subject", url),
            durable=_need(query, "durable", url),
            start=query.pop("start", "first"),  # type: ignore[arg-type]
        )
        _no_more(query, url)
        return source
    if parts.scheme in ("redis", "rediss"):
        from .._connectors.redis_streams import RedisStreamSource

        server = urlunsplit((parts.scheme, parts.netloc, parts.path or "/0", "", ""))
        source = RedisStreamSource(
            server,
            streams=_need(query, "stream", url),
            group=_need(query, "group", url),
            consumer=query.pop("consumer", "featurist"),
            field=query.pop("field", "data"),
            start=query.pop("start", "first"),  # type: ignore[arg-type]
        )
        _no_more(query, url)
        return source
    path = parts.path if parts.scheme == "file" else url
    if parts.scheme not in ("", "file"):
        raise ConfigError(f"--input {url}: unknown scheme {parts.scheme!r} (file, nats, redis)")
    for suffix, kind in _FILES.items():
        if path.endswith(suffix):
            made: Source = kind(path, time_unit=time_unit)
            return made
    raise ConfigError(f"--input {url}: a file must end in {', '.join(_FILES)}")


def make_sink(url: str) -> Sink:
    """The sink a ``--sink`` URL names.

    Raises:
        ConfigError: the URL names no known sink, or its parameters are wrong.
    """
    parts, query = _query(url)
    if parts.scheme in ("redis", "rediss"):
        from .._connectors.sink_redis import RedisSink

        server = urlunsplit((parts.scheme, parts.netloc, parts.path or "/0", "", ""))
        sink: Sink = RedisSink(
            server, prefix=query.pop("prefix", "features:"), ttl=query.pop("ttl", "1d")
        )
    elif parts.scheme == "nats":
        from .._connectors.sink_nats import NatsSink

        sink = NatsSink(
            urlunsplit(("nats", parts.netloc, "", "", "")),
            subject=query.pop("subject", "features"),
            format=query.pop("format", "json"),  # type: ignore[arg-type]
        )
    elif parts.scheme == "parquet":
        from .._connectors.sink_parquet import ParquetSink

        sink = ParquetSink(parts.netloc + parts.path)
    else:
        raise ConfigError(f"--sink {url}: unknown scheme {parts.scheme!r} (redis, nats, parquet)")
    _no_more(query, url)
    return sink


def _int_in(low: int, high: int | None = None, what: str = "an int") -> Callable[[str], int]:
    """An argparse ``type``: an int from ``low`` to ``high``, refused with a message that
    says the range (argparse names the option and exits with status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {what} {bounds}, got {text!r}")
        return value

    return parse


def _parser(prog: str = "featurist") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="featurist's command line (docs/service.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve a feature set over HTTP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("spec", help="the feature set's spec file (.toml, .yaml, .yml, .json)")
    serve.add_argument("--host", default="127.0.0.1", help="where to listen (127.0.0.1)")
    serve.add_argument(
        "--port",
        type=_int_in(0, 65535, "a port number"),
        default=8080,
        help="the port to listen on, 0 to 65535 (8080)",
    )
    serve.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="URL",
        help="a source read into the runtime while the service runs (repeatable; above)",
    )
    serve.add_argument(
        "--sink",
        action="append",
        default=[],
        metavar="URL",
        help="a sink every update is written to (repeatable; above)",
    )
    serve.add_argument(
        "--key-type",
        choices=("auto", "str", "int"),
        default="auto",
        help="how a key read from a URL path is typed (auto: an int if it reads as one)",
    )
    serve.add_argument(
        "--shards", type=_int_in(1), default=4, help="the runtime's shards, >= 1 (4)"
    )
    serve.add_argument(
        "--workers",
        type=_int_in(0),
        default=0,
        help="worker processes for the shards (0: in the service's process)",
    )
    serve.add_argument(
        "--checkpoints",
        metavar="DIRECTORY",
        help="checkpoint the state there; the newest checkpoint is restored on start",
    )
    serve.add_argument(
        "--graceful-timeout",
        type=_int_in(0, None, "a number of seconds"),
        default=GRACEFUL_TIMEOUT,
        metavar="SECONDS",
        help="once told to stop (SIGTERM, Ctrl-C), how long open requests may take to finish "
        f"before they are cancelled and the runtime stops ({GRACEFUL_TIMEOUT})",
    )
    serve.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="uvicorn's log level (info)"
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "featurist") -> int:
    """Run the command line; returns the exit status."""
    args = _parser(prog).parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print("serve needs uvicorn and starlette: the 'serve' extra", file=sys.stderr)
        return 2
    from .._spec.feature_set import FeatureSet
    from . import create_app

    try:
        feature_set = FeatureSet.from_file(args.spec)
        inputs = [make_source(url, feature_set.time_unit) for url in args.input]
        sinks = [make_sink(url) for url in args.sink]
        options: dict[str, Any] = {"shards": args.shards, "workers": args.workers}
        if args.checkpoints:
            options["checkpoints"] = args.checkpoints
        app = create_app(feature_set, key_type=args.key_type, inputs=inputs, sinks=sinks, **options)
    except (ValueError, OSError) as exc:  # SpecError and ConfigError are ValueErrors
        # create_app checks the runtime's options too (shards x workers within key_groups...)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        lifespan="on",
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0


def script() -> None:
    """The ``featurist`` console script."""
    sys.exit(main())
