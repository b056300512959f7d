"""The fraud demo on a broker (``--source``, ``--sink``): what it refuses, how it fails, and that
it leaves nothing behind, at small sizes. The runs read the local NATS and Redis servers (a test
skips without them, fails under FEATURIST_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import pytest

from demos.fraud import broker
from demos.fraud.broker import BrokerError
from tests.conftest import services_required
from tests.runtime.service.server import free_port

from .helpers import ROOT, run_demo

NATS = "nats://127.0.0.1:4222"
REDIS = "redis://127.0.0.1:6379/0"
SMALL = ("--events", "10", "--cards", "20", "--fraud-cards", "1", "--quiet")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def servers() -> None:
    """The local Redis and NATS: the test skips without them (fails when they are required)."""
    missing = [name for name, port in (("Redis", 6379), ("NATS", 4222)) if not _answers(port)]
    if missing:
        if services_required():
            pytest.fail(f"{' and '.join(missing)} required (FEATURIST_REQUIRE_SERVICES)")
        pytest.skip(f"no {' and '.join(missing)} on 127.0.0.1")


def _one_line_error(result: subprocess.CompletedProcess[str], status: int = 1) -> str:
    """The demo's error: status ``status``, one line on stderr (after the usage, for an
    option refused: status 2), no traceback."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    if status == 2:
        assert lines[0].startswith("usage: python -m demos.fraud"), result.stderr
        lines = [line for line in lines if not line.startswith(("usage:", " "))]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _unique(name: str) -> str:
    """``name`` and a uuid: a name of this test's own (another run of the tests may be on the
    same servers)."""
    return f"{name}{uuid.uuid4().hex[:12]}"


def _one_merchant(tmp_path: Path) -> Path:
    """A merchant table of one row (``m-1``) for the runs below."""
    from demos.fraud.merchants import write_merchants
    from demos.fraud.simulator import Merchant

    db = tmp_path / "merchants.db"
    write_merchants(db, [Merchant("m-1", "grocery", "FR", 0.1)])
    return db


def _payloads(count: int) -> list[bytes]:
    """``count`` approved transactions of card c1 at merchant m-1, as JSON."""
    return [
        msgspec.json.encode(
            {"card": "c1", "ts": i, "amount": 1.0, "merchant": "m-1", "status": "approved"}
        )
        for i in range(count)
    ]


def _left_behind(name: str) -> list[str]:
    """The Redis keys and JetStream streams whose names start with ``name`` (a name of the
    test's own: ``_unique``, or a name a summary shows), in any case."""
    import anyio
    import nats
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        keys = [key.decode() for key in client.scan_iter(match=f"{name}*")]
    finally:
        client.close()

    async def streams() -> list[str]:
        nc = await nats.connect(NATS, connect_timeout=2)
        try:
            return [s.config.name for s in await nc.jetstream().streams_info()]
        finally:
            await nc.close()

    # in a thread of its own: the async tests call this from their event loop
    with ThreadPoolExecutor(1) as pool:
        found = pool.submit(anyio.run, streams).result()
    return keys + [s for s in found if s.upper().startswith(name.upper())]


# -- what it refuses ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fraud.tx", "fraud/tx", "my fraud", "fraud>", "a*b"])
def test_a_nats_name_that_cannot_name_a_stream_is_refused(name: str) -> None:
    result = run_demo("demos.fraud", *SMALL, "--source", f"{NATS}/{name}")
    line = _one_line_error(result, status=2)
    assert f"{name!r} cannot name a JetStream stream" in line
    assert "letters, digits, '-' and '_'" in line


@pytest.mark.parametrize(
    ("option", "url", "says"),
    [
        ("--source", f"{REDIS}?steam=orders", "unknown parameter 'steam'; the only one is stream="),
        ("--source", f"{REDIS}?stream=", "stream= is empty"),
        ("--source", f"{REDIS}?stream=a&stream=b", "stream= is given twice"),
        ("--source", f"{NATS}?stream=orders", "a NATS URL takes no parameters"),
        ("--source", "redis://127.0.0.1:6379/zero?stream=a", "the path must be a database number"),
        ("--source", "nats://127.0.0.1:99999/fraud", "the port is not a number"),
        ("--source", "kafka://127.0.0.1:9092/fraud", "nats://host:port/name or redis://"),
        ("--sink", f"{REDIS}?prefx=a:", "unknown parameter 'prefx'; the only one is prefix="),
        ("--sink", f"{REDIS}?prefix=", "prefix= is empty"),
        ("--sink", "nats://127.0.0.1:4222", "--sink: redis://host:port/db"),
    ],
)
def test_a_url_the_demo_cannot_use_is_refused_before_anything_runs(
    option: str, url: str, says: str
) -> None:
    args = ("--source", f"{NATS}/fraud") if option == "--sink" else ()
    result = run_demo("demos.fraud", *SMALL, *args, option, url)
    assert says in _one_line_error(result, status=2)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--rate", "100"), "--rate: not with --source"),
        (("--cold-cache",), "--cold-cache: not with --source"),
        (("--top", "3"), "--top: not with --source"),
        (("--workers", "2"), "--workers: not with --source"),
        (("--events", "9"), "--events: at least 10 with --source"),
    ],
)
def test_options_a_broker_run_cannot_honour_are_refused(args: tuple[str, ...], says: str) -> None:
    result = run_demo("demos.fraud", *SMALL, "--source", f"{NATS}/fraud", *args)
    assert says in _one_line_error(result, status=2)


def test_sink_without_source_is_refused() -> None:
    result = run_demo("demos.fraud", *SMALL, "--sink", REDIS)
    assert "--sink: only with --source" in _one_line_error(result, status=2)


def test_help_names_the_per_run_names_and_their_removal() -> None:
    result = run_demo("demos.fraud", "--help", env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "FRAUD_<tag>" in text and "fraud.<tag>" in text and "fraud:<tag>:<card>" in text
    assert "removed at the end" in text


# -- how it fails ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("servers")
@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("nats://127.0.0.1:{free}/fraud", "no NATS server answers there"),
        ("redis://127.0.0.1:{free}/0?stream=fraud", "Connection refused"),
        ("redis://127.0.0.1:4222/0?stream=fraud", "(is it a Redis server?)"),
        ("redis://127.0.0.1:6379/99?stream=fraud", "DB index is out of range"),
    ],
)
def test_a_source_that_does_not_answer_is_one_line(source: str, says: str) -> None:
    source = source.format(free=free_port())
    started = time.monotonic()
    line = _one_line_error(run_demo("demos.fraud", *SMALL, "--source", source))
    assert line.startswith(f"python -m demos.fraud: --source {source}: cannot publish: ")
    assert says in line
    assert time.monotonic() - started < 15


@pytest.mark.usefixtures("servers")
@pytest.mark.parametrize("source", [f"{NATS}/{{name}}", f"{REDIS}?stream={{name}}"])
def test_a_sink_that_does_not_answer_is_one_line_and_nothing_is_published(source: str) -> None:
    name = _unique("sinkdown")
    source = source.format(name=name)
    sink = f"redis://127.0.0.1:{free_port()}/0"
    line = _one_line_error(run_demo("demos.fraud", *SMALL, "--source", source, "--sink", sink))
    assert line.startswith(f"python -m demos.fraud: --sink {sink}: ")
    assert "Connection refused" in line
    assert _left_behind(name) == []


@pytest.mark.usefixtures("servers")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_consumer_that_fails_is_the_failure_and_the_run_stops_there(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A sink that fails in the consuming process (here: down, past the check before the run):
    its line is the error, the run goes no further (no resume in this process), and the
    stream is removed all the same though the hashes' removal fails too."""
    from demos.fraud.__main__ import build_feature_set

    async def resume(*_: Any, **__: Any) -> Any:
        raise AssertionError("the parent resumed after its child failed")

    async def answers(*_: Any) -> None:
        pass

    monkeypatch.setattr(broker, "check_sink", answers)
    monkeypatch.setattr(broker, "consume_part", resume)
    db = _one_merchant(tmp_path)
    events = [
        {"card": f"c{i % 3}", "ts": i, "amount": 1.0, "merchant": "m-1", "status": "approved"}
        for i in range(40)
    ]
    sink = f"redis://127.0.0.1:{free_port()}/0"
    name = _unique("childfails")
    source = f"{REDIS}?stream={name}"
    with pytest.raises(BrokerError) as failure:
        await broker.run_on_broker(build_feature_set(db), db, events, ["c0"], source, sink)
    message = str(failure.value)
    assert message.startswith(f"the consuming process failed: --sink {sink}: sink 'redis'")
    assert "Connection refused" in message and "\n" not in message
    assert _left_behind(name) == []


@pytest.mark.usefixtures("servers")
async def test_clean_up_removes_each_thing_even_when_another_fails() -> None:
    import redis.asyncio

    tag = uuid.uuid4().hex[:12]
    spec = broker.parse_source(f"nats://127.0.0.1:{free_port()}/cleanup", tag)
    sink = broker.parse_sink(f"{REDIS}?prefix=cleanup:", tag)
    client = redis.asyncio.Redis.from_url(REDIS)
    try:
        await client.hset(f"cleanup:{tag}:c1", mapping={"tx_count": "1"})
        left = await broker.clean_up(spec, sink, {"stream", "hashes"})
        assert await client.exists(f"cleanup:{tag}:c1") == 0
    finally:
        await client.delete(f"cleanup:{tag}:c1")
        await client.aclose()
    assert len(left) == 1 and left[0].startswith(f"stream CLEANUP_{tag} on nats://")
    assert "no NATS server answers there" in left[0]


@pytest.mark.usefixtures("servers")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_consumer_that_reads_everything_is_no_crash(tmp_path: Path) -> None:
    """The child that ends the stream before its kill point is reported, never taken for a
    crash."""
    db = _one_merchant(tmp_path)
    name = _unique("nokill")
    spec = broker.parse_source(f"{REDIS}?stream={name}", "t2")
    sink = broker.parse_sink(f"{REDIS}?prefix={name}:", "t2")
    payloads = _payloads(8)
    made: set[str] = set()
    try:
        await broker.publish(spec, payloads, made)
        made.add("hashes")
        config = {
            "merchants_db": str(db),
            "source": spec,
            "sink": sink,
            "source_url": f"{REDIS}?stream={name}",
            "sink_url": REDIS,
            "dir": str(tmp_path / "checkpoints"),
            "total": len(payloads),
            "shards": 1,
            "batch_size": 64,
            **broker.plan(len(payloads)),
            "kill_at": len(payloads) + 1,  # never reached
        }
        with pytest.raises(BrokerError, match="read all 8 records before it could be killed"):
            await broker.crash_child(config)
    finally:
        assert await broker.clean_up(spec, sink, made) == []
    assert _left_behind(name) == []


@pytest.mark.usefixtures("servers")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_consumer_that_gets_nothing_more_stops_naming_the_stream(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A stream that gives nothing more (here: fewer records than expected) is a stall, named
    after a while (``STALL_SECONDS``, shortened), not a wait for ever."""
    from demos.fraud.__main__ import build_feature_set

    monkeypatch.setattr(broker, "STALL_SECONDS", 1.0)
    db = _one_merchant(tmp_path)
    name = _unique("stall")
    spec = broker.parse_source(f"{REDIS}?stream={name}", "t3")
    sink = broker.parse_sink(f"{REDIS}?prefix={name}:", "t3")
    payloads = _payloads(4)
    made: set[str] = set()
    config = {
        "source": spec,
        "sink": sink,
        "dir": str(tmp_path / "checkpoints"),
        "total": 6,  # two more than the stream holds
        "step": 2,
        "shards": 1,
        "batch_size": 64,
    }
    try:
        await broker.publish(spec, payloads, made)
        made.add("hashes")
        started = time.monotonic()
        with pytest.raises(Exception) as stalled:  # the BrokerError, maybe in a group
            await broker.consume_part(build_feature_set(db), config)
        assert time.monotonic() - started < 15
    finally:
        assert await broker.clean_up(spec, sink, made) == []
    assert broker._broker_error(stalled.value) == (
        f"reading stream {name}:t3 stalled: no record for 1 s at 4 of 6"
    )
    assert _left_behind(name) == []


# -- small runs, and Ctrl-C -----------------------------------------------------------------------


@pytest.mark.usefixtures("servers")
@pytest.mark.parametrize(
    ("source", "stream"),
    [(f"{NATS}/{{name}}", "{NAME}_"), (f"{REDIS}?stream={{name}}", "{name}:")],
)
def test_a_few_events_still_crash_mid_stream_under_the_names_shown(
    source: str, stream: str
) -> None:
    name = _unique("orders")
    source = source.format(name=name)
    stream = stream.format(name=name, NAME=name.upper())
    result = run_demo(
        "demos.fraud",
        *SMALL,
        *("--malformed", "2", "--shards", "1", "--batch-size", "3", "--json"),
        *("--source", source, "--sink", f"{REDIS}?prefix={name}:"),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    run, config = summary["broker"], summary["config"]
    assert (config["shards"], config["batch_size"]) == (1, 3)
    assert run["published"] == 10 + 2
    # killed with a checkpoint behind it, records read past it, and records left to read
    assert 0 < run["checkpoint_position"] < run["killed_after"] < run["published"]
    assert run["restored_position"] == run["checkpoint_position"]
    assert run["cards_differing"] == run["redis_hashes_differing"] == 0
    tag = run["stream"].removeprefix(stream)
    assert len(tag) == 8 and run["stream"] == stream + tag
    assert run["hashes"] == f"{name}:{tag}:<card>" and run["removed"] is True
    # the run's own names only: another run may use the servers meanwhile
    assert _left_behind(run["stream"]) == []
    assert _left_behind(run["hashes"].removesuffix("<card>")) == []


@pytest.mark.usefixtures("servers")
def test_ctrl_c_while_the_consumer_runs_stops_quietly_and_removes_everything(
    tmp_path: Path,
) -> None:
    """SIGINT to the process group (Ctrl-C) while the child consumes: status 130, no
    traceback, no checkpoint directory, stream or hash left."""
    # SIGINT as a terminal leaves it (a shell in the background may have it ignored)
    restore = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    name = _unique("ctrlc")
    args = ("--events", "60000", "--cards", "2000", "--quiet", "--source", f"{REDIS}?stream={name}")
    demo = subprocess.Popen(
        [
            sys.executable,
            "-c",
            restore,
            "-m",
            "demos.fraud",
            *args,
            "--sink",
            f"{REDIS}?prefix={name}:",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        start_new_session=True,
    )
    try:
        # the child has taken its first checkpoint: it is consuming
        # the waits, 20 s + 15 s, within pytest-timeout's 60 s
        deadline = time.monotonic() + 20
        while not any(tmp_path.glob("featurist-fraud-broker-*/*")):
            assert demo.poll() is None, demo.communicate()
            assert time.monotonic() < deadline, "the consumer did not start"
            time.sleep(0.02)
        os.killpg(demo.pid, signal.SIGINT)
        out, err = demo.communicate(timeout=15)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert demo.returncode == 130, err
    assert err.strip() == "interrupted" and out == ""
    assert list(tmp_path.glob("featurist-fraud-*")) == []
    assert _left_behind(name) == []
