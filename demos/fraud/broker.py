"""The fraud demo on a real broker, with a crash in the middle (``--source``, ``--sink``).

The simulated transactions (and the malformed events the simulator adds) are published as JSON
to a NATS JetStream stream (``--source nats://127.0.0.1:4222/fraud``) or a Redis stream
(``--source redis://127.0.0.1:6379/0?stream=fraud``), under names of this run's own: a tag
``<tag>`` of 8 hex digits, new each run, makes the JetStream stream ``FRAUD_<tag>`` (subject
``fraud.<tag>``) or the Redis stream ``fraud:<tag>``, and the hashes ``fraud:<tag>:<card>``.
Then:

1. a child process consumes them (``rt.consume`` of a ``NatsSource`` or ``RedisStreamSource``),
   writes every feature update to Redis (``--sink redis://...``: a hash per card, through
   ``run_sink``) and checkpoints (at a quarter of the stream, and every ``CHECKPOINT_EVERY``
   seconds); once it has read about half of the stream, with a checkpoint behind it and
   messages read since that no checkpoint covers (nor any acknowledgement), it is killed with
   SIGKILL;
2. a new runtime in this process restores the last checkpoint and consumes from its position
   to the end: the broker gives again what the dead process had read after the checkpoint;
3. every card's features are compared with a run that read the same transactions directly,
   with no crash, and every card's Redis hash with what the runtime shows.

The stream and the hashes are removed at the end, whatever happened. A broker that does not
answer, a URL the demo cannot use, or a consuming process that fails stops the run with one
line naming the problem (``BrokerError``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

import anyio
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from runtime import (
    CheckpointConfig,
    CheckpointError,
    FeatureRuntime,
    FeatureSet,
    FeaturistError,
    NatsSource,
    RedisSink,
    RedisStreamSource,
    SinkError,
    Source,
    run_sink,
)

#: seconds between the periodic checkpoints of the consuming processes (each one writes the
#: whole state: more often, and they take much of the consumer's time)
CHECKPOINT_EVERY = 2.0
#: records a consume call reads at a time (fewer for a short stream: ``plan``)
BATCH = 1024
#: the fewest transactions (``--events``) a run on a broker takes: enough to kill the consumer
#: with a checkpoint behind it and messages read past it, and messages left to read
MIN_EVENTS = 10
#: what a NATS name may hold: it names a stream (upper-cased) and a subject token
NATS_NAME = re.compile(r"[A-Za-z0-9_-]+")
#: the project's root, where the child process starts (``python -m demos.fraud.broker``)
ROOT = Path(__file__).resolve().parents[2]
#: seconds without progress after which a run gives up (a consumer that reads nothing, a child
#: that prints nothing, a child ready to be killed that is not), naming what stalled
STALL_SECONDS = 60.0


class BrokerError(Exception):
    """A broker or a URL the demo cannot use, or a step of the run that failed."""


# -- URLs -----------------------------------------------------------------------------------------


def parse_source(url: str, tag: str) -> dict[str, Any]:
    """``nats://host:port/name`` or ``redis://host:port/db?stream=name``: the broker, its
    address and the names of this run's stream (``tag`` makes them new).

    Raises:
        BrokerError: the URL is not one of those (naming what is wrong).
    """
    parts = urlsplit(url)
    if parts.scheme == "nats":
        address = _address(parts, url, "--source")
        if parts.query:
            raise BrokerError(
                f"--source {url}: a NATS URL takes no parameters (got {parts.query!r}); "
                "the stream's name goes in the path: nats://host:port/name"
            )
        name = parts.path.strip("/") or "fraud"
        if not NATS_NAME.fullmatch(name):
            raise BrokerError(
                f"--source {url}: {name!r} cannot name a JetStream stream and subject; "
                "use letters, digits, '-' and '_' only (no '.', '/', '*', '>' or spaces)"
            )
        return {
            "kind": "nats",
            "url": f"nats://{address}",
            "name": name,
            "stream": f"{name.upper()}_{tag}",
            "subject": f"{name}.{tag}",
        }
    if parts.scheme == "redis":
        address = _address(parts, url, "--source")
        name = _parameters(parts, url, "--source", "stream").get("stream", "fraud")
        return {
            "kind": "redis",
            "url": f"redis://{address}/{_database(parts, url, '--source')}",
            "name": name,
            "stream": f"{name}:{tag}",
        }
    raise BrokerError(
        f"--source: nats://host:port/name or redis://host:port/db?stream=name, got {url!r}"
    )


def parse_sink(url: str, tag: str) -> dict[str, Any]:
    """``redis://host:port/db[?prefix=...]``: where the hashes go (``tag`` in the prefix).

    Raises:
        BrokerError: the URL is not one of those (naming what is wrong).
    """
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise BrokerError(f"--sink: redis://host:port/db[?prefix=fraud:], got {url!r}")
    address = _address(parts, url, "--sink")
    prefix = _parameters(parts, url, "--sink", "prefix").get("prefix", "fraud:")
    return {
        "url": f"redis://{address}/{_database(parts, url, '--sink')}",
        "prefix": f"{prefix}{tag}:",
    }


def _address(parts: SplitResult, url: str, option: str) -> str:
    """``host:port`` of ``url`` (its user and password kept), checked."""
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise BrokerError(f"{option} {url}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise BrokerError(f"{option} {url}: no host (e.g. {parts.scheme}://127.0.0.1)")
    if parts.fragment:
        raise BrokerError(f"{option} {url}: unexpected '#{parts.fragment}'")
    return parts.netloc


def _database(parts: SplitResult, url: str, option: str) -> int:
    """The Redis database of the URL's path (0 when it has none)."""
    path = parts.path.strip("/") or "0"
    if not path.isascii() or not path.isdigit():
        raise BrokerError(
            f"{option} {url}: the path must be a database number (redis://host:port/0), "
            f"got {parts.path!r}"
        )
    return int(path)


def _parameters(parts: SplitResult, url: str, option: str, allowed: str) -> dict[str, str]:
    """The URL's query parameters: ``allowed`` only, each once, none empty."""
    found: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != allowed:
            raise BrokerError(
                f"{option} {url}: unknown parameter {name!r}; the only one is {allowed}="
            )
        if name in found:
            raise BrokerError(f"{option} {url}: {allowed}= is given twice")
        if not value.strip():
            raise BrokerError(f"{option} {url}: {allowed}= is empty; give a name or leave it out")
        found[name] = value
    return found


def names(spec: dict[str, Any], sink: dict[str, Any]) -> dict[str, str]:
    """The names of this run's stream (and subject) and hashes, for the summary."""
    shown = {"stream": spec["stream"], "hashes": f"{sink['prefix']}<card>"}
    if spec["kind"] == "nats":
        shown["subject"] = spec["subject"]
    return shown


# -- failures -------------------------------------------------------------------------------------

#: failures of a server, a connection or the runtime's connectors, shown as one line; anything
#: else is a bug, shown with its traceback
_EXPECTED: tuple[type[BaseException], ...] = (OSError, FeaturistError)


def _expected() -> tuple[type[BaseException], ...]:
    import nats.errors
    import redis.exceptions

    return (*_EXPECTED, nats.errors.Error, redis.exceptions.RedisError)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions of ``exc``, exception groups opened."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The leaves of ``exc`` and what caused each, outermost first."""
    for leaf in _leaves(exc):
        seen: set[int] = set()
        current: BaseException | None = leaf
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            yield current
            current = current.__cause__ or current.__context__


def _broker_error(exc: BaseException) -> str | None:
    """The message of a ``BrokerError`` in ``exc`` (groups opened), or None."""
    return next((str(leaf) for leaf in _leaves(exc) if isinstance(leaf, BrokerError)), None)


def is_failure(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception of its group) is a server's, a connection's or a
    connector's failure, not a bug."""
    expected = _expected()
    return any(isinstance(leaf, expected) for leaf in _leaves(exc))


def explain(exc: BaseException) -> str:
    """One line for a failure: the exception that says the most (a ``SinkError`` first, else
    the first one of a group), with a word on the errors that do not say what they mean."""
    import nats.errors
    import redis.exceptions

    expected = _expected()
    leaf = next(
        (c for c in _causes(exc) if isinstance(c, SinkError)),
        next((c for c in _leaves(exc) if isinstance(c, expected)), exc),
    )
    text = str(leaf).strip() or type(leaf).__name__
    if isinstance(leaf, nats.errors.NoServersError):
        return "no NATS server answers there"
    if isinstance(leaf, (nats.errors.TimeoutError, TimeoutError)):
        return f"no answer in time ({type(leaf).__name__}{': ' + str(leaf) if str(leaf) else ''})"
    if isinstance(leaf, redis.exceptions.InvalidResponse):
        return f"{text} (is it a Redis server?)"
    if isinstance(leaf, (nats.errors.Error, redis.exceptions.RedisError)):
        return f"{type(leaf).__name__}: {text}"
    return text


def blame(exc: BaseException, source_url: str, sink_url: str) -> str:
    """``explain(exc)``, after the option whose server failed."""
    import nats.errors
    import redis.exceptions

    causes = list(_causes(exc))
    if any(isinstance(c, SinkError) for c in causes):
        return f"--sink {sink_url}: {explain(exc)}"
    if any(isinstance(c, CheckpointError) for c in causes):
        return f"checkpoint: {explain(exc)}"
    if any(isinstance(c, (nats.errors.Error, redis.exceptions.RedisError)) for c in causes):
        return f"--source {source_url}: {explain(exc)}"
    return explain(exc)


async def _quiet(_: Exception) -> None:
    """nats-py's error callback: its errors are raised, not logged as well."""


async def _nats(url: str) -> Any:
    """A NATS connection, or a failure within about 2 s (nats-py would retry for longer)."""
    import nats

    return await nats.connect(
        url,
        connect_timeout=2,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.1,
        error_cb=_quiet,
    )


def _redis(url: str) -> Any:
    import redis.asyncio

    return redis.asyncio.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)


# -- the steps ------------------------------------------------------------------------------------


async def check_sink(sink: dict[str, Any], sink_url: str) -> None:
    """Fail now, with one line, if the sink's Redis does not answer (or is not Redis)."""
    client = _redis(sink["url"])
    try:
        await client.ping()
    except Exception as exc:
        if not is_failure(exc):
            raise
        raise BrokerError(f"--sink {sink_url}: {explain(exc)}") from None
    finally:
        await client.aclose()


async def publish(spec: dict[str, Any], payloads: Sequence[bytes], made: set[str]) -> None:
    """Publish the transactions to the broker, in order; ``"stream"`` goes into ``made`` once
    the stream may exist."""
    if spec["kind"] == "nats":
        nc = await _nats(spec["url"])
        try:
            js = nc.jetstream()
            made.add("stream")
            await js.add_stream(name=spec["stream"], subjects=[spec["subject"]])
            for start in range(0, len(payloads), 10_000):
                for payload in payloads[start : start + 10_000]:
                    await nc.publish(spec["subject"], payload)
                await nc.flush()
            deadline = time.monotonic() + 60
            while (await js.stream_info(spec["stream"])).state.messages < len(payloads):
                if time.monotonic() > deadline:
                    raise BrokerError("JetStream did not store every transaction in 60 s")
                await anyio.sleep(0.05)
        finally:
            await nc.close()
        return
    client = _redis(spec["url"])
    try:
        await client.ping()
        made.add("stream")
        for start in range(0, len(payloads), 10_000):
            async with client.pipeline(transaction=False) as pipe:
                for payload in payloads[start : start + 10_000]:
                    pipe.xadd(spec["stream"], {"data": payload})
                await pipe.execute()
    finally:
        await client.aclose()


async def clean_up(spec: dict[str, Any], sink: dict[str, Any], made: set[str]) -> list[str]:
    """Remove this run's stream and hashes (those ``made``), each even if another cannot be;
    returns what could not be removed, and why."""
    left: list[str] = []
    steps: list[tuple[str, str, Callable[[], Awaitable[None]]]] = []
    if "stream" in made:
        steps.append((f"stream {spec['stream']}", spec["url"], lambda: _delete_stream(spec)))
    if "hashes" in made:
        what = f"hashes {sink['prefix']}*"
        steps.append((what, sink["url"], lambda: _delete_hashes(sink)))
    for what, where, step in steps:
        try:
            await step()
        except Exception as exc:  # whatever it is, the next removal is still tried
            left.append(f"{what} on {where} ({explain(exc)})")
    return left


async def _delete_stream(spec: dict[str, Any]) -> None:
    if spec["kind"] == "nats":
        import nats.js.errors

        nc = await _nats(spec["url"])
        try:
            await nc.jetstream().delete_stream(spec["stream"])
        except nats.js.errors.NotFoundError:
            pass
        finally:
            await nc.close()
        return
    client = _redis(spec["url"])
    try:
        await client.delete(spec["stream"])
    finally:
        await client.aclose()


async def _delete_hashes(sink: dict[str, Any]) -> None:
    client = _redis(sink["url"])
    try:
        async for key in client.scan_iter(match=_glob(sink["prefix"]) + "*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


def _glob(text: str) -> str:
    """``text`` matched literally in a Redis SCAN pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def plan(total: int) -> dict[str, int]:
    """Where the consumer of ``total`` records checkpoints and is killed: records a read
    (``step``: an eighth of the stream at most), the first checkpoint after a quarter, the
    kill after half, so that the kill comes with a checkpoint behind it, records read past
    it, and records left to read, whatever ``total`` (from 4)."""
    step = max(1, min(BATCH, total // 8))
    checkpoint_at = max(1, total // 4)
    return {
        "step": step,
        "checkpoint_at": checkpoint_at,
        "kill_at": max(total // 2, checkpoint_at + 1),
    }


async def consume_part(
    feature_set: FeatureSet,
    config: dict[str, Any],
    report: Callable[[FeatureRuntime], Awaitable[None]] | None = None,
    cards: Sequence[str] = (),
    guard: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Consume the stream with checkpoints in ``config["dir"]`` (restoring the newest), every
    update to the Redis sink, until the runtime has read all ``config["total"]`` records;
    ``report(rt)`` after each read (it may pause, or take a checkpoint); ``guard``: awaited
    by every checkpoint before its file is written. Returns the checkpoint restored, and the
    values of ``cards`` at the end (those the runtime knows)."""
    spec, sink, total, step = config["source"], config["sink"], config["total"], config["step"]
    checkpoints = CheckpointConfig(
        directory=config["dir"], interval=CHECKPOINT_EVERY, on_shutdown=False
    )
    rt = FeatureRuntime(
        feature_set,
        checkpoints=checkpoints,
        payload_format="json",
        shards=config["shards"],
        batch_size=config["batch_size"],
    )
    async with rt, RedisSink(sink["url"], prefix=sink["prefix"], ttl="1h") as redis_sink:
        if guard is not None:
            rt.guard_checkpoints(guard)
        async with run_sink(rt, redis_sink), _source(spec) as source:
            # rt.position: the records read, those restored from a checkpoint included
            while rt.position < total:
                before = rt.position
                # consume(until=...) waits for ever on a source that gives nothing (its stream
                # gone): no record for STALL_SECONDS stops the run
                with anyio.move_on_after(STALL_SECONDS):
                    await rt.consume(source, batch_size=step, until=min(step, total - before))
                if rt.position == before:
                    raise BrokerError(
                        f"reading stream {spec['stream']} stalled: no record for "
                        f"{STALL_SECONDS:.0f} s at {before:,} of {total:,}"
                    )
                if report is not None:
                    await report(rt)
        values: dict[str, dict[str, Any]] = {}
        for start in range(0, len(cards), 1000):
            found = await rt.get_many(list(cards[start : start + 1000]))
            values.update((card, v.values) for card, v in found.items() if v.known)
        return {"restored": rt.restored, "values": values}


def _source(spec: dict[str, Any]) -> Source:
    if spec["kind"] == "nats":
        return NatsSource(
            spec["url"],
            stream=spec["stream"],
            subjects=spec["subject"],
            durable="fraud",
            first_connect_timeout=5,
            connect_options={"error_cb": _quiet},
        )
    return RedisStreamSource(spec["url"], streams=spec["stream"], group="fraud")


# -- the consumer that is killed ------------------------------------------------------------------


def child_main(config: dict[str, Any]) -> int:
    """The consuming process that is killed (``python -m demos.fraud.broker CONFIG``).

    It reads ``step`` records at a time, a little slower than it could (a consumer with other
    work), takes a checkpoint once it has read ``checkpoint_at``, and prints ``read <records>
    <checkpoint position>`` after each read. Once it has read ``kill_at`` with a checkpoint
    behind it and records past it, it stops checkpointing, waits until the checkpoints
    already past its guard are written, prints ``ready <records> <checkpoint position>`` and
    waits for its SIGKILL (``STALL_SECONDS`` at most, then it fails). A failure is one line,
    ``error <what>``, and status 1; Ctrl-C ends it quietly with status 130."""
    from actors import run

    from .__main__ import build_feature_set

    feature_set = build_feature_set(config["merchants_db"])
    total, kill_at, checkpoint_at = config["total"], config["kill_at"], config["checkpoint_at"]
    # set: checkpoints may be written; cleared: they wait (the state stays as it was reported)
    writing = anyio.Event()
    writing.set()
    # checkpoints past the guard: the n-th is numbered n (the directory starts empty)
    passed = 0

    async def guard() -> None:
        nonlocal passed
        while not writing.is_set():  # checked again after each wait: it may be a new event
            await writing.wait()
        passed += 1  # no await since the check: none gets past a guard once it is cleared

    async def report(rt: FeatureRuntime) -> None:
        nonlocal writing
        last = rt.last_checkpoint
        if (last is None or last.position < checkpoint_at) and rt.position >= checkpoint_at:
            await rt.checkpoint()
        if rt.position >= kill_at and rt.position < total:
            writing = anyio.Event()  # no checkpoint from now on...
            # ...and those already past the guard are written: the one reported is the last
            deadline = time.monotonic() + STALL_SECONDS / 2
            while (rt.last_checkpoint.sequence if rt.last_checkpoint else 0) < passed:
                if time.monotonic() > deadline:
                    raise BrokerError(f"a checkpoint was not written in {STALL_SECONDS / 2:.0f} s")
                await anyio.sleep(0.01)
            checkpoint = rt.last_checkpoint
            if checkpoint is not None and 0 < checkpoint.position < rt.position:
                print(f"ready {rt.position} {checkpoint.position}", flush=True)
                # bounded: a parent that died without a word (SIGKILL) leaves no child behind
                await anyio.sleep(STALL_SECONDS)
                raise BrokerError(f"it was not killed {STALL_SECONDS:.0f} s after it was ready")
            writing.set()  # a checkpoint covers every record read: read on
        checkpoint = rt.last_checkpoint
        print(f"read {rt.position} {-1 if checkpoint is None else checkpoint.position}", flush=True)
        await anyio.sleep(0.005)

    try:
        run(lambda: consume_part(feature_set, config, report, guard=guard))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        stalled = _broker_error(exc)
        if stalled is None and not is_failure(exc):
            raise
        what = stalled or blame(exc, config["source_url"], config["sink_url"])
        print(f"error {what}", flush=True)
        return 1
    print("done", flush=True)
    return 0


async def crash_child(config: dict[str, Any]) -> dict[str, int]:
    """Run the child until it is ready to be killed, then SIGKILL it; returns what it had read
    and the position of its last checkpoint.

    Raises:
        BrokerError: the child failed (its own line says why), or ended without being killed.
        KeyboardInterrupt: the child was stopped by Ctrl-C.
    """
    with tempfile.TemporaryFile() as errors:
        child = await anyio.open_process(
            [sys.executable, "-m", "demos.fraud.broker", json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            cwd=ROOT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        read = checkpoint = -1
        ready, silent, failure = False, False, None
        # a little longer than the child's own bounds, so that its line says what stalled
        silence = STALL_SECONDS + 10
        try:
            assert child.stdout is not None
            lines = BufferedByteReceiveStream(child.stdout)
            while True:
                try:
                    with anyio.fail_after(silence):
                        line = (await lines.receive_until(b"\n", 1 << 16)).decode()
                except (anyio.EndOfStream, anyio.IncompleteRead):
                    break
                except TimeoutError:
                    silent = True
                    break
                word, _, rest = line.partition(" ")
                if word in ("read", "ready"):
                    read, checkpoint = (int(n) for n in rest.split())
                    if word == "ready":
                        ready = True
                        break
                elif word == "error":
                    failure = rest.strip()
            if not ready and not silent:  # its output ended: let it end too, not killed
                with anyio.move_on_after(10):
                    await child.wait()
        finally:
            # even when cancelled (Ctrl-C): no child left running, writing to the directory
            with anyio.CancelScope(shield=True):
                if child.returncode is None:
                    try:
                        child.kill()
                    except ProcessLookupError:
                        pass
                await child.wait()
                await child.aclose()
        status = child.returncode
        if silent:
            raise BrokerError(
                f"the consuming process stalled: it printed nothing for {silence:.0f} s "
                f"(last read {read:,} of {config['total']:,})"
            )
        if ready and status == -signal.SIGKILL:
            return {"read": read, "checkpoint": checkpoint}
        if status in (130, -signal.SIGINT):
            raise KeyboardInterrupt
        if failure is None and status == 0:
            failure = (
                f"it read all {config['total']:,} records before it could be killed mid-stream"
            )
        if failure is None:
            errors.seek(0)
            tail = [t for t in errors.read().decode(errors="replace").splitlines() if t.strip()]
            failure = f"it ended with status {status}" + (f": {tail[-1].strip()}" if tail else "")
        raise BrokerError(f"the consuming process failed: {failure}")


# -- the whole run --------------------------------------------------------------------------------


async def run_on_broker(
    feature_set: FeatureSet,
    merchants_db: Path,
    events: list[dict[str, Any]],
    cards: list[str],
    source_url: str,
    sink_url: str,
    *,
    shards: int = 4,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Publish, consume with a crash half-way, resume, and compare (the module's docstring).

    Raises:
        BrokerError: a URL the demo cannot use, a server that does not answer, or a step that
            failed (one line). The stream and hashes are removed all the same; what could not
            be removed is printed to stderr.
    """
    tag = uuid.uuid4().hex[:8]
    spec, sink = parse_source(source_url, tag), parse_sink(sink_url, tag)
    await check_sink(sink, sink_url)
    payloads = [msgspec.json.encode(event) for event in events]
    if len(payloads) < 4:
        raise BrokerError(f"{len(payloads)} records are too few to kill the consumer mid-stream")
    made: set[str] = set()
    failed = True
    try:
        started = time.perf_counter()
        try:
            await publish(spec, payloads, made)
        except Exception as exc:
            if not is_failure(exc):
                raise
            raise BrokerError(f"--source {source_url}: cannot publish: {explain(exc)}") from None
        published_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory(
            prefix="featurist-fraud-broker-", ignore_cleanup_errors=True
        ) as directory:
            config = {
                "merchants_db": str(merchants_db),
                "source": spec,
                "sink": sink,
                "source_url": source_url,
                "sink_url": sink_url,
                "dir": directory,
                "total": len(payloads),
                "shards": shards,
                "batch_size": batch_size,
                **plan(len(payloads)),
            }
            made.add("hashes")
            killed = await crash_child(config)
            started = time.perf_counter()
            try:
                resumed = await consume_part(feature_set, config, cards=cards)
            except Exception as exc:
                stalled = _broker_error(exc)
                if stalled is None and not is_failure(exc):
                    raise
                what = stalled or blame(exc, source_url, sink_url)
                raise BrokerError(f"resuming from the checkpoint failed: {what}") from None
            resumed_s = time.perf_counter() - started
            restored, got = resumed["restored"], resumed["values"]
        # the same transactions, read directly by a runtime that never stopped
        async with FeatureRuntime(
            feature_set, payload_format="json", shards=shards, batch_size=batch_size
        ) as direct:
            await direct.ingest_many(payloads)
            await direct.flush()
            want = {c: v.values for c, v in (await direct.get_many(cards)).items() if v.known}
        differing = sorted(card for card in set(want) | set(got) if want.get(card) != got.get(card))
        try:
            stale = await _redis_disagrees(sink, got)
        except Exception as exc:
            if not is_failure(exc):
                raise
            raise BrokerError(
                f"--sink {sink_url}: cannot read the hashes: {explain(exc)}"
            ) from None
        failed = False
    finally:
        # even when cancelled (Ctrl-C); a failure here never hides the one that came first
        with anyio.CancelScope(shield=True):
            left = await clean_up(spec, sink, made)
        if left and failed:
            print(f"python -m demos.fraud: also left behind: {'; '.join(left)}", file=sys.stderr)
    if left:
        raise BrokerError(f"could not remove {'; '.join(left)}")
    return {
        "broker": spec["kind"],
        **names(spec, sink),
        "removed": True,
        "published": len(payloads),
        "published_seconds": published_s,
        "killed_after": killed["read"],
        "checkpoint_position": killed["checkpoint"],
        "restored_position": None if restored is None else restored.position,
        "resumed_seconds": resumed_s,
        "cards": len(want),
        "cards_differing": len(differing),
        "first_differing": differing[:5],
        "redis_hashes_differing": stale,
    }


async def _redis_disagrees(sink: dict[str, Any], values: dict[str, dict[str, Any]]) -> int:
    """Cards whose Redis hash does not hold the values the runtime shows."""
    client = _redis(sink["url"])
    wrong = 0
    try:
        for card, expected in values.items():
            stored = await client.hgetall(sink["prefix"] + card)
            decoded = {_decoded(k): msgspec.json.decode(v) for k, v in stored.items()}
            decoded.pop("_event_time", None)
            if decoded != expected:
                wrong += 1
    finally:
        await client.aclose()
    return wrong


def _decoded(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


if __name__ == "__main__":
    try:
        sys.exit(child_main(json.loads(sys.argv[1])))
    except KeyboardInterrupt:
        sys.exit(130)
