"""``python -m demos.bench overload``: a producer much faster than the runtime is slowed down
to the runtime's pace, loses nothing, and memory stays bounded whatever it offers.

The runtime is slow on purpose, in the ways a service's runtime is:

- a subscriber of ``rt.updates()`` with policy ``"block"`` (``--buffer`` updates) that reads
  ``--read-chunk`` updates, then sleeps ``--read-pause`` seconds;
- an enrichment ``CustomSource`` whose ``get_many`` sleeps ``--source-latency`` seconds per
  call, behind a cache (64 rows) far smaller than the merchants (5,000): most events wait in
  the enricher's stash (``--stash`` events per shard) for a fetch;
- windowed features (tumbling and sliding), an interval join of the transactions with a second
  stream (alerts, one event in five), and a second subscriber, ``"drop_oldest"``, never read.

The events are made on demand over 1,000 cards, each with ``--payload`` (1,000) characters of
text, and each taken gets the next event time (what a producer takes, it routes before it
waits, so none is late). One producer task sends them in chunks of ``--batch-size`` with
``ingest_many``, ``--callers`` (8) tasks one at a time with ``ingest``, all as fast as they can.
The limits are small (``--batch-size`` 32, ``--mailbox-capacity`` 2), so that what may be in
flight is small next to the events offered, and memory that grew with them would show.

Two cases, each in a child process of its own (its peak RSS is its own): ``--events`` (20,000)
and ten times as many. Printed per case: the producer's offered rate (events/s it makes with
no runtime behind it) and the runtime's rate (events/s from the first offered to the last
applied), how long the producer was held, the peak depth of the actors' mailboxes against
their capacity (and the peak of senders waiting for room), the peak stash against its limit,
the peak depth of the subscriptions against their buffer, events lost (accepted, not counted
by the features at the end), and peak RSS.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import anyio

from actors import run
from runtime import (
    Count,
    CustomSource,
    FeatureRuntime,
    FeatureSet,
    Join,
    Lookup,
    Mean,
    Sliding,
    Sum,
    Tumbling,
    UpdateSubscription,
    Where,
)

from ._common import Row, in_child, peak_rss_mib, print_table, quiet_logs, rate

T0 = 1_700_000_000_000
CARDS = 1_000
MERCHANTS = 5_000
CACHE = 64
#: the stream of every fifth event
ALERT_EVERY = 5
#: user messages a shard actor takes per turn (the runtime's ``MailboxConfig``)
TURN = 8


@dataclass(frozen=True, kw_only=True)
class Load:
    """One overload run: the events offered and how slow the runtime is made."""

    events: int = 20_000
    #: stop taking events after this many seconds (None: take all ``events``): a calibration
    #: run, which measures what the runtime does in a given time
    seconds: float | None = None
    shards: int = 2
    batch_size: int = 32
    mailbox_capacity: int = 2
    #: ``enrich_stash``: events waiting for a fetch, per enricher actor
    stash: int = 128
    #: the buffer of each subscription
    buffer: int = 256
    read_chunk: int = 64
    read_pause: float = 0.002
    source_latency: float = 0.005
    #: tasks calling ``ingest`` one event at a time, beside the ``ingest_many`` producer
    callers: int = 8
    #: characters of text each event carries (a description, a user agent): an event kept
    #: too long is then plain to see in RSS
    payload: int = 1_000
    seed: int = 1

    def in_flight(self) -> int:
        """A bound, from the limits alone, on the events accepted whose update from the first
        feature group the slow subscriber has not read yet: per shard, the ingest buffer, the
        batch being sent, the group's mailbox, one waiting sender and the turn the group is
        applying (at most ``TURN`` batches), each batch fewer than ``2 * batch_size`` events
        plus one per waiting ``ingest`` caller; and the subscription's buffer."""
        batch = 2 * self.batch_size + self.callers
        per_shard = (2 + self.mailbox_capacity + 1 + TURN) * batch
        return self.shards * per_shard + self.buffer


def feature_set(load: Load) -> FeatureSet:
    return FeatureSet(
        name="overload",
        key="card",
        time="ts",
        max_out_of_orderness="100ms",
        streams=["tx", "alerts"],
        sources=[
            CustomSource(
                name="merchants", cache_size=CACHE, ttl="1h", max_batch_size=256, max_in_flight=2
            )
        ],
        lookups=[
            Lookup(name="merchant", field="merchant", source="merchants", default={"risk": 0.5})
        ],
        joins=[Join(name="flagged", left="tx", right="alerts", before="1s", after="1s")],
        enrich_stash=load.stash,
        features=[
            Count(name="n"),
            # reads a lookup field: counts every event once it is enriched
            Count(name="n_enriched", where=Where(field="merchant.risk", op=">=", value=0)),
            Sum(name="spend_1m", field="amount", window=Tumbling(size="1m")),
            Mean(name="avg_10s", field="amount", window=Sliding(size="10s")),
            Count(name="alerts", stream="alerts"),
            Count(name="pairs", stream="flagged"),
        ],
    )


class SlowSource:
    """Merchant rows after ``latency`` seconds per call, whatever the batch."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.calls = 0

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        self.calls += 1
        await anyio.sleep(self.latency)
        return {key: {"risk": int(str(key)[1:]) / MERCHANTS} for key in keys}


class Offer:
    """The events, made on demand: the i-th taken has time ``T0 + i``, so the order in which
    they are taken is their time order. Each carries ``payload`` characters of its own."""

    def __init__(self, total: int, seed: int, payload: int) -> None:
        self.total = total
        self.taken = 0
        self.payload = payload
        #: ``time.perf_counter()`` after which no more is taken
        self.deadline = math.inf
        self._rng = random.Random(seed)

    def take(self) -> tuple[str, dict[str, Any]] | None:
        i = self.taken
        if i >= self.total or time.perf_counter() >= self.deadline:
            return None
        self.taken = i + 1
        card = f"c{self._rng.randrange(CARDS)}"
        note = f"{i:>{self.payload}}"
        if i % ALERT_EVERY == ALERT_EVERY - 1:
            return "alerts", {"card": card, "ts": T0 + i, "level": i % 3, "note": note}
        merchant = f"m{self._rng.randrange(MERCHANTS)}"
        amount = i % 100 + 0.5
        return "tx", {
            "card": card,
            "ts": T0 + i,
            "merchant": merchant,
            "amount": amount,
            "note": note,
        }


def offered_rate(load: Load) -> float:
    """Events per second the producer makes with no runtime behind it (over at most 50,000)."""
    offer = Offer(min(load.events, 50_000), load.seed, load.payload)
    start = time.perf_counter()
    while offer.take() is not None:
        pass
    return offer.total / max(time.perf_counter() - start, 1e-9)


@dataclass
class Peaks:
    """The largest values seen by the sampler."""

    #: by actor kind (``features``, ``join``, ``enricher``): the deepest mailbox
    depth: dict[str, int]
    senders_waiting: int = 0
    #: shard actors waiting for room in the slow subscription
    publishers_waiting: int = 0
    stash: int = 0
    subscription: int = 0
    dropping: int = 0
    samples: int = 0


def _sample(
    rt: FeatureRuntime,
    slow: UpdateSubscription[Any],
    dropping: UpdateSubscription[Any],
    peaks: Peaks,
) -> None:
    peaks.samples += 1
    for box in rt.mailboxes():  # counters, read without asking the actors
        peaks.depth[box.kind] = max(peaks.depth.get(box.kind, 0), box.depth)
        peaks.senders_waiting = max(peaks.senders_waiting, box.senders_waiting)
    held = slow.statistics()
    peaks.subscription = max(peaks.subscription, held.depth)
    peaks.publishers_waiting = max(peaks.publishers_waiting, held.publishers_waiting)
    peaks.dropping = max(peaks.dropping, dropping.statistics().depth)


class Reader:
    """The slow subscriber's progress."""

    def __init__(self) -> None:
        self.read = 0
        #: updates of the first group (``n``): one per transaction
        self.first_group = 0


async def read_slowly(subscription: UpdateSubscription[Any], load: Load, reader: Reader) -> None:
    """Read ``read_chunk`` updates, sleep ``read_pause``; so the reader takes at least
    ``read // read_chunk * read_pause`` seconds to read ``read`` updates."""
    async for update in subscription:
        reader.read += 1
        if "n" in update.values:
            reader.first_group += 1
        if reader.read % load.read_chunk == 0:
            await anyio.sleep(load.read_pause)


async def overload(load: Load) -> dict[str, Any]:
    """Offer ``load.events`` events as fast as the producers can to a runtime made slow; return
    what was offered, accepted and counted, the times, and the peaks seen."""
    source = SlowSource(load.source_latency)
    offer = Offer(load.events, load.seed, load.payload)
    accepted = {"ingest_many": 0, "ingest": 0}
    reader = Reader()
    peaks = Peaks(depth={})

    async def produce_many(rt: FeatureRuntime) -> None:
        # chunks of batch_size: ingest_many routes a whole chunk before it waits
        while True:
            events: list[dict[str, Any]] = []
            streams: list[str] = []
            while len(events) < load.batch_size and (item := offer.take()) is not None:
                streams.append(item[0])
                events.append(item[1])
            if not events:
                return
            took = await rt.ingest_many(events, stream=streams)
            accepted["ingest_many"] += took  # after the await: other producers add meanwhile

    async def produce_one(rt: FeatureRuntime) -> None:
        while (item := offer.take()) is not None:
            took = await rt.ingest(item[1], stream=item[0])
            accepted["ingest"] += took

    async def sample(rt: FeatureRuntime) -> None:
        while True:
            _sample(rt, slow, dropping, peaks)
            await anyio.sleep(0.001)

    async with FeatureRuntime(
        feature_set(load),
        shards=load.shards,
        batch_size=load.batch_size,
        mailbox_capacity=load.mailbox_capacity,
        sources={"merchants": source},
    ) as rt:
        slow = rt.updates(buffer=load.buffer, policy="block")
        dropping = rt.updates(buffer=load.buffer, policy="drop_oldest")
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_slowly, slow, load, reader)
            tg.start_soon(sample, rt)
            start = time.perf_counter()
            if load.seconds is not None:
                offer.deadline = start + load.seconds
            async with anyio.create_task_group() as producers:
                producers.start_soon(produce_many, rt)
                for _ in range(load.callers):
                    producers.start_soon(produce_one, rt)
            produced = time.perf_counter() - start
            read_then, first_then = reader.read, reader.first_group
            await rt.flush()
            applied = time.perf_counter() - start
            vectors = await rt.get_many([f"c{i}" for i in range(CARDS)])
            stats = await rt.statistics()
            _sample(rt, slow, dropping, peaks)
            # the stash's peak is the enricher's own count: sampling it from here would ask
            # the actor, which waits behind the full mailbox being measured
            peaks.stash = stats.enrichment["merchants"].stash_peak
            tg.cancel_scope.cancel()
        await slow.aclose()
        await dropping.aclose()
        dead_letters = rt.dead_letters.count()
    total = sum(accepted.values())
    tx = sum(v["n"] for v in vectors.values())
    return {
        "load": asdict(load),
        "offered": offer.taken,
        "accepted": total,
        "accepted_by": accepted,
        "counted": tx + sum(v["alerts"] for v in vectors.values()),
        "counted_tx": tx,
        "enriched_tx": sum(v["n_enriched"] for v in vectors.values()),
        "pairs": sum(v["pairs"] for v in vectors.values()),
        "ingested": stats.events_ingested,
        "dead_letters": dead_letters,
        "late_dropped": stats.windows.late_dropped if stats.windows is not None else 0,
        "join_late_dropped": sum(j.late_dropped for j in stats.joins.values()),
        "join_evicted": sum(j.evicted for j in stats.joins.values()),
        "stashed_at_end": stats.enrichment["merchants"].stashed,
        "source_calls": source.calls,
        "producer_seconds": produced,
        "applied_seconds": applied,
        "read_at_producer_end": read_then,
        "first_group_read_at_producer_end": first_then,
        "read": reader.read,
        "peak_depth": peaks.depth,
        "peak_senders_waiting": peaks.senders_waiting,
        "peak_publishers_waiting": peaks.publishers_waiting,
        "peak_stash": peaks.stash,
        "peak_subscription": peaks.subscription,
        "peak_dropping": peaks.dropping,
        "samples": peaks.samples,
        "dropped_by_drop_oldest": dropping.dropped,
        "in_flight_bound": load.in_flight(),
    }


def measure(load: Load) -> dict[str, Any]:
    """One case, run here: the offered rate, then the overload run, then the peak RSS."""
    result = {"offered_per_second": offered_rate(load)}
    result |= run(lambda: overload(load))
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def _case(spec: dict[str, Any], queue: Any) -> None:
    quiet_logs()
    queue.put(measure(Load(**spec)))


def cli(argv: list[str]) -> None:
    defaults = Load()
    parser = argparse.ArgumentParser(prog="python -m demos.bench overload", description=__doc__)
    parser.add_argument("--events", type=int, default=defaults.events)
    parser.add_argument("--shards", type=int, default=defaults.shards)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--mailbox-capacity", type=int, default=defaults.mailbox_capacity)
    parser.add_argument("--stash", type=int, default=defaults.stash)
    parser.add_argument("--buffer", type=int, default=defaults.buffer)
    parser.add_argument("--read-chunk", type=int, default=defaults.read_chunk)
    parser.add_argument("--read-pause", type=float, default=defaults.read_pause, help="seconds")
    parser.add_argument(
        "--source-latency", type=float, default=defaults.source_latency, help="seconds per call"
    )
    parser.add_argument("--callers", type=int, default=defaults.callers)
    parser.add_argument("--payload", type=int, default=defaults.payload, help="characters")
    args = parser.parse_args(argv)
    load = Load(
        events=args.events,
        shards=args.shards,
        batch_size=args.batch_size,
        mailbox_capacity=args.mailbox_capacity,
        stash=args.stash,
        buffer=args.buffer,
        read_chunk=args.read_chunk,
        read_pause=args.read_pause,
        source_latency=args.source_latency,
        callers=args.callers,
        payload=args.payload,
    )
    rows = []
    for factor in (1, 10):
        case = replace(load, events=load.events * factor)
        result = in_child(_case, asdict(case))
        runtime_rate = result["accepted"] / result["applied_seconds"]
        depth = max(result["peak_depth"].values())
        rows.append(
            Row(
                f"{factor}x: {case.events:,} events",
                {
                    "offered/s": f"{result['offered_per_second']:,.0f}",
                    "runtime events/s": rate(result["accepted"], result["applied_seconds"]),
                    "offered / runtime": f"{result['offered_per_second'] / runtime_rate:.0f}x",
                    "producer held s": f"{result['producer_seconds']:.2f}",
                    "mailbox peak/cap": f"{depth}/{case.mailbox_capacity}",
                    "senders waiting": str(result["peak_senders_waiting"]),
                    "stash peak/limit": f"{result['peak_stash']}/{case.stash}",
                    "subscription peak/buffer": f"{result['peak_subscription']}/{case.buffer}",
                    "lost": f"{result['accepted'] - result['counted']:,}",
                    "peak RSS MiB": f"{result['peak_rss_mib']:.1f}",
                },
            )
        )
    print_table(
        f"overload: {load.shards} shards, batches of {load.batch_size}, mailboxes of "
        f"{load.mailbox_capacity}, a reader of {load.read_chunk} updates per "
        f"{load.read_pause * 1000:g} ms, a source of {load.source_latency * 1000:g} ms per call",
        [
            "offered/s",
            "runtime events/s",
            "offered / runtime",
            "producer held s",
            "mailbox peak/cap",
            "senders waiting",
            "stash peak/limit",
            "subscription peak/buffer",
            "lost",
            "peak RSS MiB",
        ],
        rows,
    )
