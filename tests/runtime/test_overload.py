"""Overload (issue 7, item 5): a producer much faster than the runtime is held back to the
runtime's pace, loses nothing, and memory stays bounded whatever it offers.

The workload is the overload benchmark's (``demos/bench/overload.py``): a runtime made slow on
purpose (a ``"block"`` subscriber that reads slowly, an enrichment source that sleeps on every
call behind a cache far smaller than its keys, so the stash fills, windows and a join) and
producers offering events as fast as they can, with ``ingest_many`` and with concurrent
``ingest`` calls. No assertion is on speed: every bound asserted follows from the limits
configured, whatever the machine's pace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from demos.bench.overload import TURN, Load, overload
from runtime import Count, FeatureRuntime, FeatureSet
from runtime._enrich.shard import EnrichShard

ROOT = Path(__file__).resolve().parents[2]

#: small limits, so that what can be in flight is small next to what is offered
LOAD = Load(
    shards=2,
    batch_size=32,
    mailbox_capacity=2,
    stash=128,
    buffer=256,
    read_chunk=64,
    read_pause=0.002,
    source_latency=0.005,
    callers=8,
    payload=1_000,
)
#: how long the runtime's capacity is measured for, before it is offered ten times as much
CALIBRATION_SECONDS = 0.3
#: uvloop's timers count whole milliseconds: a sleep may end up to this much early
TIMER_RESOLUTION = 0.001

# Peak RSS, each figure the peak of a child process of its own (`overload_child`), the idle
# runtime (no event) measured first in the same run: about 39 MiB with CPython 3.11 and uvloop.
#: The most 1x may add to the idle runtime: the bounded buffers full (``LOAD.in_flight()``,
#: about 2,100 events of about 1.4 KiB with their 1,000-character payload, held in up to three
#: forms: as ingested, enriched, as updates: some 9 MiB), the subscriptions' 2 x 256 updates, the
#: state of 1,000 cards, a sliding window's 10 s of events, 64 cached rows, the latency samples of
#: 10 shard actors (4,096 each: some 3 MiB), and allocator slack. Measured: 6 to 8 MiB.
BUFFERS_MIB = 24.0
#: The most 10x may add to 1x: structures that fill only in a longer run (the latency samples,
#: the sliding window up to its 10 s) and allocator slack; measured: 2 to 3 MiB. The 45,000 more
#: events of 10x are some 60 MiB: keeping one in eight of them would go past this.
GROWTH_MIB = 8.0
#: An absolute ceiling, with room for another interpreter or platform.
RSS_CEILING_MIB = 128.0


@pytest.fixture
def stash_peaks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The stash of each enricher after each batch it applied: its exact peak, since a stash
    only grows in ``_apply`` (nothing else of the actor runs meanwhile)."""
    peaks: list[int] = []
    apply = EnrichShard._apply

    async def measured(self: EnrichShard, batch: Any) -> None:
        await apply(self, batch)
        peaks.append(len(self.stash))

    monkeypatch.setattr(EnrichShard, "_apply", measured)
    return peaks


async def test_a_producer_offering_ten_times_the_runtimes_capacity_is_held_back_and_loses_nothing(
    stash_peaks: list[int],
) -> None:
    calibration = await overload(replace(LOAD, events=10**9, seconds=CALIBRATION_SECONDS))
    capacity = calibration["accepted"] / calibration["applied_seconds"]  # events per second
    # at least ten times what the buffers hold: on a machine so busy that the calibration
    # measured little, the run must still be long enough to show the producers held back
    events = max(round(10 * capacity * CALIBRATION_SECONDS), 10 * LOAD.in_flight())
    load = replace(LOAD, events=events)
    stash_peaks.clear()
    result = await overload(load)

    # nothing lost: every accepted event counted once, every transaction enriched
    assert result["accepted"] == result["offered"] == load.events == result["ingested"]
    assert result["accepted_by"]["ingest_many"] > 0 and result["accepted_by"]["ingest"] > 0
    assert result["counted"] == result["accepted"]
    assert result["enriched_tx"] == result["counted_tx"]
    assert result["dead_letters"] == 0 and result["stashed_at_end"] == 0
    assert result["late_dropped"] == result["join_late_dropped"] == result["join_evicted"] == 0

    # held back: when the producers were done, the slow subscriber had read all but a bounded
    # number of the first group's updates (one per transaction), so they waited for it
    in_flight = load.in_flight()
    assert result["counted_tx"] - result["first_group_read_at_producer_end"] <= in_flight
    floor = (
        (result["counted_tx"] - in_flight) // load.read_chunk * (load.read_pause - TIMER_RESOLUTION)
    )
    assert result["producer_seconds"] >= floor > 0
    assert result["peak_senders_waiting"] >= 1  # ingest waited for room in a mailbox
    assert result["peak_publishers_waiting"] >= 1  # shards waited for the subscriber

    # bounded: mailboxes, subscriptions, stashes
    assert set(result["peak_depth"]) == {"features", "join", "enricher"}
    assert max(result["peak_depth"].values()) <= load.mailbox_capacity
    assert result["peak_subscription"] <= load.buffer
    assert result["peak_dropping"] <= load.buffer and result["dropped_by_drop_oldest"] > 0
    assert stash_peaks and max(stash_peaks) >= load.stash  # the stash did fill
    # A turn's batches (at most TURN, each fewer than 2 x batch_size events plus one per
    # waiting caller) are applied before the enricher waits for room: the stash can pass
    # ``enrich_stash`` by that much, not more.
    assert max(stash_peaks) < load.stash + TURN * (2 * load.batch_size + load.callers)
    # the runtime's own count of the peak (what the bench prints) is the same
    assert result["peak_stash"] == max(stash_peaks)


def _child(load: Load) -> dict[str, Any]:
    command = [sys.executable, "-W", "error", "-m", "tests.runtime.support.overload_child"]
    done = subprocess.run(
        [*command, json.dumps(asdict(load))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_ten_times_the_events_take_no_more_memory_than_once() -> None:
    idle = _child(replace(LOAD, events=0))
    once = _child(replace(LOAD, events=5_000))
    ten = _child(replace(LOAD, events=50_000))
    for result in (once, ten):
        assert result["counted"] == result["accepted"] == result["offered"]
    peaks = {name: r["peak_rss_mib"] for name, r in (("idle", idle), ("1x", once), ("10x", ten))}
    assert once["peak_rss_mib"] - idle["peak_rss_mib"] <= BUFFERS_MIB, peaks
    assert ten["peak_rss_mib"] - once["peak_rss_mib"] <= GROWTH_MIB, peaks
    assert ten["peak_rss_mib"] <= RSS_CEILING_MIB, peaks


async def test_a_subscription_reports_its_depth_and_the_publishers_it_holds() -> None:
    features = FeatureSet(name="s", key="k", time="ts", features=[Count(name="n")])
    async with FeatureRuntime(features, shards=1, batch_size=1) as rt:
        held = rt.updates(buffer=2)
        dropping = rt.updates(buffer=2, policy="drop_oldest")
        await rt.ingest_many({"k": "a", "ts": t} for t in range(3))
        with anyio.fail_after(5):
            while held.statistics().publishers_waiting == 0:
                await anyio.sleep(0.001)
        stats = held.statistics()
        assert (stats.depth, stats.capacity, stats.policy, stats.dropped) == (2, 2, "block", 0)
        assert dropping.statistics().depth == 2
        assert [u.event_time async for u in _take(held, 3)] == [0, 1, 2]
        await rt.flush()
        assert held.statistics().publishers_waiting == 0
        assert dropping.statistics().dropped == 1
        await held.aclose()
        await dropping.aclose()


async def _take(subscription: Any, n: int) -> Any:
    async for update in subscription:
        yield update
        n -= 1
        if not n:
            return


@pytest.mark.parametrize("buffer", [0, 1.5, float("inf"), True, "10"])
async def test_a_subscription_buffer_must_be_an_int_of_at_least_1(buffer: Any) -> None:
    features = FeatureSet(name="s", key="k", time="ts", features=[Count(name="n")])
    async with FeatureRuntime(features, shards=1) as rt:
        with pytest.raises(ValueError, match="buffer must be >= 1 \\(an int\\)"):
            rt.updates(buffer=buffer)
