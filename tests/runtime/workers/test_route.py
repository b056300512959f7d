"""The front's fast path for bytes (``WorkerFront._route_bytes``: keys hashed by their CRC,
checks on the decoded key and time fields alone) routes and refuses exactly as the general
path (``_route_each``): the same buffers, in the same order, the same dead letters with the
same reasons, the same counts, whatever the mix of good and bad events in a batch."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import FeatureRuntime, FeatureSet, Sum

FEATURE_SET = FeatureSet(
    name="r", key="user", time="ts", features=[Sum(name="total", field="amount")]
)
BASE = 1_700_000_000_000


def _event(kind: str, n: int) -> Any:
    encode = msgspec.json.encode
    if kind == "good":
        return encode({"user": f"u{n}", "ts": BASE + n, "amount": 1.0})
    if kind == "malformed":
        return b"{not json"
    if kind == "int key":
        return encode({"user": n, "ts": BASE + n})
    if kind == "non-ascii key":
        return encode({"user": f"é{n}", "ts": BASE + n})
    if kind == "lone surrogate":
        return b'{"user": "\\ud800", "ts": 1700000000000}'
    if kind == "long key":
        return encode({"user": "k" * 5000, "ts": BASE})
    if kind == "far future":
        return encode({"user": "x", "ts": 10**16})
    if kind == "float time":
        return encode({"user": "x", "ts": BASE + n + 0.5})
    if kind == "no key":
        return encode({"ts": BASE})
    if kind == "array":
        return b"[1, 2]"
    if kind == "too big":
        return encode({"user": "x", "ts": BASE, "pad": "p" * 2_000_000})
    return {"user": f"d{n}", "ts": BASE + n, "amount": 2.0}  # a dict: the general path


KINDS = [
    "good",
    "malformed",
    "int key",
    "non-ascii key",
    "lone surrogate",
    "long key",
    "far future",
    "float time",
    "no key",
    "array",
    "too big",
    "dict",
]


def _routed(events: list[Any], fast: bool) -> tuple[Any, ...]:
    rt = FeatureRuntime(FEATURE_SET, workers=3)  # not entered: the front's routing alone
    front = rt._front
    assert front is not None
    accepted = front.route(list(events)) if fast else front._route_each(list(events))
    letters = [(letter.message, letter.detail) for letter in rt.dead_letters.letters()]
    return accepted, front.buffers, letters, front.ingested, front.events_read, front.rejected


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*KINDS, "good", "good", "good"]),  # good ones, mostly
            st.integers(0, 40),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_fast_path_routes_and_refuses_as_the_general_one(kinds: list[tuple[str, int]]) -> None:
    events = [_event(kind, n) for kind, n in kinds]
    assert _routed(events, fast=True) == _routed(events, fast=False)


def test_fast_path_routes_a_batch_of_good_bytes_by_the_routers_hash() -> None:
    events = [_event("good", n) for n in range(200)]
    rt = FeatureRuntime(FEATURE_SET, workers=3)
    front = rt._front
    assert front is not None
    assert front._route_bytes(events) == 200
    for index, buffer in enumerate(front.buffers):
        for payload in buffer:
            assert front._router.shard_of(msgspec.json.decode(payload)["user"]) == index


def test_a_worker_of_one_shard_is_pinned_to_it() -> None:
    """With one shard a worker, each worker's runtime (shards x workers shards over the same
    key groups) holds the worker's key groups in one shard: its own index. With more, none."""
    for workers in (1, 2, 3, 5):
        rt = FeatureRuntime(FEATURE_SET, shards=1, workers=workers)
        assert rt._front is not None
        assert rt._front._pinned == list(range(workers))
        worker_runtime = rt._front._make_runtime()
        groups = rt._front._worker_of_group
        for group, worker in enumerate(groups):
            assert worker_runtime._router.shard_of_group(group) == worker
    rt = FeatureRuntime(FEATURE_SET, shards=2, workers=2)
    assert rt._front is not None and rt._front._pinned == [None, None]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([*KINDS, "good", "good", "good"]), st.integers(0, 40)),
        min_size=1,
        max_size=25,
    ),
    st.integers(0, 2),
)
def test_a_pinned_router_checks_and_refuses_as_one_shard_does(
    kinds: list[tuple[str, int]], shard: int
) -> None:
    """Pinned to a shard, a worker's runtime sends every event there and accepts, refuses
    and counts exactly as a runtime of one shard."""
    events = [_event(kind, n) for kind, n in kinds]
    one = FeatureRuntime(FEATURE_SET, shards=1)
    pinned = FeatureRuntime(FEATURE_SET, shards=3)
    pinned._ingest.pin(shard)
    assert one._ingest.route(list(events)) == pinned._ingest.route(list(events))
    assert pinned._ingest.buffers[shard] == one._ingest.buffers[0]
    assert all(not b for i, b in enumerate(pinned._ingest.buffers) if i != shard)
    letters = [(x.message, x.detail) for x in one.dead_letters.letters()]
    assert [(x.message, x.detail) for x in pinned.dead_letters.letters()] == letters
    assert (pinned._ingest.ingested, pinned._ingest.rejected) == (
        one._ingest.ingested,
        one._ingest.rejected,
    )
