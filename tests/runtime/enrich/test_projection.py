"""The enricher passes a group that reads lookup fields only the lookup's fields, not a copy of
the whole event (``EnrichShard._projects``): the values are the same either way, and a group
that reads an event field too (from the start, or registered later) gets whole events."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from runtime import Count, CustomSource, FeatureRuntime, FeatureSet, Last, Lookup, Mean, Sum, Where
from runtime._enrich.shard import _reads_lookup_only

ROWS = {f"m{i}": {"risk": float(i), "cat": f"c{i % 3}"} for i in range(6)}
DEFAULT = {"risk": -1.0, "cat": "none"}


class _Source:
    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        await anyio.sleep(0.001)
        return {key: ROWS[key] for key in keys if key in ROWS}


def _events(n: int) -> list[dict[str, Any]]:
    # m6 and m7 are not in the source: the default
    return [
        {"card": f"c{i % 5}", "ts": i, "mid": f"m{(i * 7) % 8}", "amount": i % 10} for i in range(n)
    ]


def _feature_set(*extra: Any) -> FeatureSet:
    return FeatureSet(
        name="tx",
        key="card",
        time="ts",
        sources=[CustomSource(name="merchants", cache_size=3)],
        lookups=[Lookup(name="m", field="mid", source="merchants", default=DEFAULT)],
        features=[
            Count(name="n"),
            Mean(name="risk", field="m.risk"),
            Last(name="cat", field="m.cat"),
            *extra,
        ],
    )


def _row(event: dict[str, Any]) -> dict[str, Any]:
    return ROWS.get(event["mid"], DEFAULT)


async def _run(features: FeatureSet, events: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Every update of every feature, per card, in order."""
    got: dict[str, list[Any]] = {}
    async with FeatureRuntime(
        features, shards=2, batch_size=7, sources={"merchants": _Source()}
    ) as rt:
        updates = rt.updates(buffer=10_000)
        with anyio.fail_after(30):
            for start in range(0, len(events), 13):
                await rt.ingest_many(events[start : start + 13])
                await anyio.sleep(0.0005)
            await rt.flush()
        await updates.aclose()
        async for batch in updates.batches():
            for row in batch.rows:
                for name, value in zip(batch.names, row[2:], strict=True):
                    got.setdefault(f"{row[0]}:{name}", []).append(value)
    return got


def _oracle(events: list[dict[str, Any]], amounts: bool) -> dict[str, list[Any]]:
    want: dict[str, list[Any]] = {}
    risk: dict[str, float] = {}
    count: dict[str, int] = {}
    spent: dict[str, int] = {}
    for event in events:
        card, row = event["card"], _row(event)
        count[card] = count.get(card, 0) + 1
        risk[card] = risk.get(card, 0.0) + row["risk"]
        want.setdefault(f"{card}:n", []).append(count[card])
        want.setdefault(f"{card}:risk", []).append(risk[card] / count[card])
        want.setdefault(f"{card}:cat", []).append(row["cat"])
        if amounts:
            if row["cat"] == "c1":
                spent[card] = spent.get(card, 0) + event["amount"]
            want.setdefault(f"{card}:spent_c1", []).append(spent.get(card, 0))
    return want


async def test_a_group_of_lookup_fields_only_gets_the_values_of_whole_events() -> None:
    events = _events(300)
    assert await _run(_feature_set(), events) == _oracle(events, amounts=False)


async def test_a_group_that_reads_an_event_field_too_gets_whole_events() -> None:
    # the amount is the event's, the condition the lookup's: one group reads both
    spent = Sum(name="spent_c1", field="amount", where=Where(field="m.cat", op="==", value="c1"))
    events = _events(300)
    assert await _run(_feature_set(spent), events) == _oracle(events, amounts=True)


async def test_a_feature_registered_later_that_reads_an_event_field_gets_whole_events() -> None:
    events = _events(200)
    spent: list[tuple[str, int, Any]] = []
    async with FeatureRuntime(
        _feature_set(), shards=1, batch_size=7, sources={"merchants": _Source()}
    ) as rt:
        with anyio.fail_after(30):
            await rt.ingest_many(events[:100])
            await rt.flush()
            await rt.register(
                Sum(
                    name="spent_c1", field="amount", where=Where(field="m.cat", op="==", value="c1")
                )
            )
            updates = rt.updates(buffer=10_000)
            await rt.ingest_many(events[100:])
            await rt.flush()
        await updates.aclose()
        async for batch in updates.batches():
            if "spent_c1" in batch.names:
                spent.extend((row[0], row[1], row[2]) for row in batch.rows)
    want: dict[str, int] = {}
    expected = []
    for event in events[100:]:
        card = event["card"]
        if _row(event)["cat"] == "c1":
            want[card] = want.get(card, 0) + event["amount"]
        expected.append((card, event["ts"], want.get(card, 0)))
    assert sorted(spent, key=lambda item: item[1]) == expected


@dataclass
class _Group:
    features: list[Any]
    compiled: Any = "kernel"
    engine: Any = None
    refs: list[Any] = field(default_factory=list)


def test_only_keyed_groups_of_the_lookups_fields_are_projected() -> None:
    risk, count = Mean(name="risk", field="m.risk"), Count(name="n")
    assert _reads_lookup_only([_Group([risk, count])], "m")
    # an event field, a where on one, another lookup's field
    assert not _reads_lookup_only([_Group([Sum(name="s", field="amount")])], "m")
    on_event = Where(field="status", op="==", value="ok")
    assert not _reads_lookup_only([_Group([Sum(name="s", field="m.risk", where=on_event)])], "m")
    assert not _reads_lookup_only([_Group([Sum(name="s", field="mx.risk")])], "m")
    # a window group, or a join (no compiled kernel)
    assert not _reads_lookup_only([_Group([risk], compiled=None, engine="windows")], "m")
    assert not _reads_lookup_only([_Group([risk], compiled=None)], "m")


class _Unreadable:
    """A row value whose conversion to a number fails as no guard expects: a poison event."""

    def __float__(self) -> float:
        raise RuntimeError("cannot read this value")


async def test_a_poison_event_of_a_projected_group_goes_to_dead_letters_and_the_rest_go_on() -> (
    None
):
    class Source:
        async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
            rows: dict[Hashable, Any] = {"bad": {"risk": _Unreadable(), "cat": "x"}}
            return {
                key: rows.get(key, ROWS.get(key)) for key in keys if key in ROWS or key == "bad"
            }

    events = [
        {"card": "a", "ts": 1, "mid": "m1"},
        {"card": "b", "ts": 2, "mid": "bad"},
        {"card": "a", "ts": 3, "mid": "m2"},
    ]
    async with FeatureRuntime(_feature_set(), shards=1, sources={"merchants": Source()}) as rt:
        with anyio.fail_after(10):
            await rt.ingest_many(events)
            await rt.flush()
        a, b = await rt.get("a"), await rt.get("b")
        letters = rt.dead_letters.letters()
    assert a["risk"] == 1.5 and a["cat"] == "c2" and a["n"] == 2
    assert b["n"] == 1 and b["risk"] is None  # counted by the lookup-free group only
    [letter] = letters
    # the group got the lookup's fields, not the whole event: that is what its letter holds
    assert letter.message["m.cat"] == "x" and "mid" not in letter.message
    assert "key 'b', time 2" in letter.detail


def test_only_the_poison_event_is_left_out_of_events_sharing_a_row() -> None:
    """Events of one row share its fields (one object): setting aside the one that raised
    leaves the others of that object in the batch."""
    from types import SimpleNamespace

    from actors import DeadLetters
    from runtime._messages import set_aside

    shared = {"m.risk": 0.5}
    letters = DeadLetters()
    actor = SimpleNamespace(context=SimpleNamespace(dead_letters=letters, name="g0-shard-0"))
    events = [("a", 1, shared), ("b", 2, shared), ("c", 3, {"m.risk": 0.1}), ("b", 2, shared)]
    error = RuntimeError("raised")
    kept = set_aside(actor, [("b", 2, shared, error)], events, group="g0")  # type: ignore[arg-type]
    assert kept == [("a", 1, shared), ("c", 3, {"m.risk": 0.1}), ("b", 2, shared)]
    assert len(letters.letters()) == 1
