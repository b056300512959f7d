"""Check that a replay of your history gives the values your online run served.

Replays the events of a JSON-lines file through a fresh FeatureRuntime, with its clock
following the events (idle time and state_ttl act as they did online), and compares the
replay's values with the online ones, feature by feature:

- final vectors: one JSON object per line with "key" and "values" (a FeatureVector as
  msgspec.json.encode writes it); the last line of a key wins;
- or updates: one FeatureUpdate per line, as rt.updates() delivered them.

It prints, per feature, the values compared, those that differ, the largest differences and a
few examples, and the keys (or updates) only one side has. Exit status: 0 when every value
agrees, 1 when some differ, 2 for bad arguments or input.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec

from actors import run

from ._exceptions import FeaturistError
from ._logging import configure_logging
from ._replay.parity import ParityReport, check_parity
from ._results import FeatureUpdate
from ._spec.feature_set import FeatureSet

__all__ = ["main"]

#: bytes read from the events file at once (in a worker thread)
_BLOCK = 1 << 20
_decode = msgspec.json.Decoder()


class InputError(Exception):
    """An argument or an input file the check cannot use: exit status 2."""


def load_feature_set(spec: str, modules: Sequence[str] = ()) -> FeatureSet:
    """A feature set from a spec file (``.toml``, ``.json``, ``.yaml``) or a
    ``module:attribute`` name (a FeatureSet, or a function that returns one). A spec file's
    joins may name functions of ``modules`` only (``FeatureSet.from_file``)."""
    if os.path.exists(spec):
        try:
            return FeatureSet.from_file(spec, modules=modules)
        except (OSError, FeaturistError, ValueError) as exc:
            raise InputError(f"--features: cannot read {spec!r}: {exc}") from exc
    if spec.count(":") != 1:
        raise InputError(f"--features: {spec!r} is neither a file nor a 'module:attribute' name")
    module_name, _, attribute = spec.partition(":")
    sys.path.insert(0, os.getcwd())  # as python -m does: the user's modules, from here
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"--features: cannot import module {module_name!r}: {exc}") from exc
    finally:
        sys.path.pop(0)
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise InputError(f"--features: module {module_name!r} has no {attribute!r}")
        found = getattr(found, part)
    if callable(found) and not isinstance(found, FeatureSet):
        found = found()
    if not isinstance(found, FeatureSet):
        raise InputError(
            f"--features: {spec!r} is a {type(found).__name__}, not a FeatureSet (or a "
            "function that returns one)"
        )
    return found


async def read_lines(path: str) -> AsyncGenerator[bytes, None]:
    """The non-blank lines of a file, read in blocks in a worker thread."""
    async with await anyio.open_file(path, "rb") as file:
        rest = b""
        while True:
            block = await file.read(_BLOCK)
            if not block:
                break
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line.strip():
                    yield line
        if rest.strip():
            yield rest


async def read_online(path: str) -> dict[Any, dict[str, Any]] | list[FeatureUpdate]:
    """The online side: vectors by key, or updates in order (see the module's docstring)."""
    vectors: dict[Any, dict[str, Any]] = {}
    updates: list[FeatureUpdate] = []
    number = 0
    async with aclosing(read_lines(path)) as lines:
        async for line in lines:
            number += 1
            item = _online_item(line, f"--online: {path} line {number}")
            if isinstance(item, FeatureUpdate):
                updates.append(item)
            else:
                vectors[item[0]] = item[1]
            if vectors and updates:
                raise InputError(
                    f"--online: {path} line {number}: vectors and updates mixed; give one kind"
                )
    return updates if updates else vectors


def _online_item(line: bytes, where: str) -> FeatureUpdate | tuple[Any, dict[str, Any]]:
    """One line of the online file: an update, or a vector's key and values."""
    try:
        item = _decode.decode(line)
    except msgspec.DecodeError as exc:
        raise InputError(f"{where}: not JSON: {exc}") from exc
    if not isinstance(item, dict) or "key" not in item or "values" not in item:
        raise InputError(
            f"{where}: expected an object with 'key' and 'values' (a FeatureVector or a "
            "FeatureUpdate)"
        )
    if "event_time" in item:
        try:
            return msgspec.convert(item, FeatureUpdate)
        except msgspec.ValidationError as exc:
            raise InputError(f"{where}: not a FeatureUpdate: {exc}") from exc
    if not isinstance(item["values"], dict):
        raise InputError(f"{where}: 'values' must be an object")
    return item["key"], item["values"]


def _time(text: str) -> float:
    """Seconds since the epoch, from a number or an ISO-8601 time (naive means UTC)."""
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected seconds since the epoch or an ISO-8601 time, got {text!r}"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite time, got {text!r}")
    return value


def _number(low: float) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and value >= low):
            raise argparse.ArgumentTypeError(f"must be a number >= {low:g}, got {text!r}")
        return value

    return parse


def _count(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    """The command line's options."""
    cli = argparse.ArgumentParser(
        prog="python -m runtime.parity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults in parentheses. Example: python -m runtime.parity --features "
        "mymodule:feature_set --events events.jsonl --online online.jsonl",
    )
    cli.add_argument(
        "--features",
        required=True,
        metavar="SPEC",
        help="the feature set: a spec file (.toml, .json, .yaml) or 'module:attribute' (a "
        "FeatureSet, or a function returning one)",
    )
    cli.add_argument(
        "--spec-module",
        action="append",
        default=[],
        metavar="MODULE",
        dest="spec_modules",
        help="a module whose functions a spec file's joins may name as predicate or merge "
        "(repeat for several; none by default: a spec file reaches no code)",
    )
    cli.add_argument(
        "--events",
        required=True,
        metavar="FILE",
        help="the history: one JSON event per line, in the order they arrived online",
    )
    cli.add_argument(
        "--online",
        required=True,
        metavar="FILE",
        help="what the online run served: one FeatureVector, or one FeatureUpdate, per line",
    )
    replay = cli.add_argument_group("replay")
    which = replay.add_mutually_exclusive_group()
    which.add_argument("--stream", metavar="NAME", help="the events' stream (the first)")
    which.add_argument(
        "--stream-field", metavar="FIELD", help="the field holding each event's stream name"
    )
    replay.add_argument(
        "--arrival-field",
        metavar="FIELD",
        help="the field holding each event's arrival time, in the forms of the event time "
        "(default: the newest event time seen so far)",
    )
    replay.add_argument(
        "--resolution",
        type=_number(0.0),
        metavar="SECONDS",
        help="the replay clock's step (the period of the runtime's idle timer; 0: exact)",
    )
    replay.add_argument(
        "--until",
        type=_time,
        metavar="TIME",
        help="move the clock on to this time at the end: when the online vectors were read "
        "(seconds since the epoch, or ISO-8601)",
    )
    replay.add_argument("--shards", type=_count(1), default=4, metavar="N", help="shards (4)")
    replay.add_argument(
        "--batch-size", type=_count(1), default=512, metavar="N", help="events per batch (512)"
    )
    check = cli.add_argument_group("comparison")
    check.add_argument(
        "--feature",
        action="append",
        metavar="NAME",
        help="compare only this feature (repeatable; default: every feature)",
    )
    check.add_argument(
        "--tolerance",
        type=_number(0.0),
        default=1e-9,
        metavar="X",
        help="numbers closer than this, absolutely or relatively, are equal (1e-9)",
    )
    check.add_argument(
        "--sample",
        action="store_true",
        help="the online file holds some keys only: keys it lacks are not reported",
    )
    check.add_argument(
        "--examples", type=_count(0), default=5, metavar="N", help="examples per feature (5)"
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    return cli


async def check(args: argparse.Namespace) -> ParityReport:
    """Run the check the options describe."""
    feature_set = load_feature_set(args.features, args.spec_modules)
    for path in (args.events, args.online):
        if not await anyio.Path(path).is_file():
            raise InputError(f"no such file: {path!r}")
    online = await read_online(args.online)
    field = args.stream_field

    def stream_of(event: dict[str, Any]) -> str:
        name = event.get(field)
        if not isinstance(name, str):
            raise ValueError(f"field {field!r} holds {name!r}, not a stream name")
        return name

    async with aclosing(read_lines(args.events)) as events:
        return await check_parity(
            feature_set,
            events,
            online,
            stream=stream_of if field else args.stream,
            arrival=args.arrival_field,
            resolution=args.resolution,
            until=args.until,
            features=args.feature,
            tolerance=args.tolerance,
            complete=not args.sample,
            examples=args.examples,
            options={"shards": args.shards, "batch_size": args.batch_size},
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = parser().parse_args(argv)
    configure_logging(level="warning")
    try:
        report = run(lambda: check(args))
    except (InputError, FeaturistError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        summary = {"ok": report.ok, **msgspec.to_builtins(report)}
        sys.stdout.write(msgspec.json.encode(summary).decode() + "\n")
    else:
        print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
