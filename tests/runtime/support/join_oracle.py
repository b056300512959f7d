"""The nested-loop oracles of the join engine and the random streams they are checked on.

``streams()`` draws ``(key, time, side, event)`` tuples: out of order, with duplicate times,
three keys, fields ``c`` and ``v`` for conditions (either may be missing) and a unique ``id``.
``oracle`` pairs every admitted left and right event by brute force, ``asof_oracle`` gives each
left event the latest right event at or before it; both apply the lateness rule per key as the
engine does. ``pairs`` reduces the records either side gives to what they are compared on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import hypothesis.strategies as st

from runtime._joins.engine import JoinConfig


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[Any, int, str, dict[str, Any]]]:
    """Up to 60 ``(key, time, side, event)`` tuples, out of order, with duplicate times."""
    n = draw(st.integers(0, 60))
    t = 1_000
    events = []
    for i in range(n):
        t += draw(st.sampled_from([0, 0, 5, 20, 60]))
        jitter = draw(st.sampled_from([0, 0, 10, 40, 150]))
        side = draw(st.sampled_from(["left", "right"]))
        ev = {
            "id": i,
            "c": draw(st.sampled_from(["x", "y", None])),
            "v": draw(st.one_of(st.integers(0, 20), st.none())),
        }
        events.append((draw(st.sampled_from(["k1", "k2", 3])), t - jitter, side, ev))
    return events


def oracle(config: JoinConfig, events: list[Any]) -> tuple[Counter[Any], int]:
    """Nested loops over the events each key admits (after the lateness rule)."""
    admitted: dict[Any, list[tuple[int, str, dict[str, Any]]]] = {}
    clock: dict[Any, int] = {}
    late = 0
    for key, t, side, ev in events:
        if key in clock and t < clock[key] - config.max_out_of_orderness - config.allowed_lateness:
            late += 1
            continue
        clock[key] = max(clock.get(key, t), t)
        admitted.setdefault(key, []).append((t, side, ev))
    records: Counter[Any] = Counter()
    for key, items in admitted.items():
        lefts = [(t, ev) for t, side, ev in items if side == "left"]
        rights = [(t, ev) for t, side, ev in items if side == "right"]
        matched_l: set[int] = set()
        matched_r: set[int] = set()
        for tl, left in lefts:
            for tr, right in rights:
                if not tl - config.before <= tr <= tl + config.after:
                    continue
                if not _conditions(config, left, right):
                    continue
                matched_l.add(left["id"])
                matched_r.add(right["id"])
                records[(key, tl, tr, left["id"], right["id"])] += 1
        wm = clock[key] - config.max_out_of_orderness - config.allowed_lateness
        if config.how in ("left", "full"):
            for tl, left in lefts:
                if left["id"] not in matched_l and tl < wm - config.after:
                    records[(key, tl, None, left["id"], None)] += 1
        if config.how in ("right", "full"):
            for tr, right in rights:
                if right["id"] not in matched_r and tr < wm - config.before:
                    records[(key, None, tr, None, right["id"])] += 1
    return records, late


def asof_oracle(config: JoinConfig, events: list[Any]) -> tuple[Counter[Any], int]:
    """Each admitted left event the final watermark has passed, with the latest admitted right
    event at or before it (the last to arrive among equal times), within the tolerance."""
    admitted: dict[Any, list[tuple[int, str, dict[str, Any]]]] = {}
    clock: dict[Any, int] = {}
    late = 0
    slack = config.max_out_of_orderness + config.allowed_lateness
    for key, t, side, ev in events:
        if key in clock and t < clock[key] - slack:
            late += 1
            continue
        clock[key] = max(clock.get(key, t), t)
        admitted.setdefault(key, []).append((t, side, ev))
    rows: Counter[Any] = Counter()
    for key, items in admitted.items():
        wm = clock[key] - slack
        for tl, side, left in items:
            if side != "left" or tl >= wm:
                continue
            best = None
            for tr, other, right in items:  # arrival order: a later one wins a tie
                if other == "right" and tr <= tl and (best is None or tr >= best[0]):
                    best = (tr, right)
            if best is not None and (config.tolerance is None or tl - best[0] <= config.tolerance):
                rows[(key, tl, best[0], left["id"], best[1]["id"])] += 1
            else:
                rows[(key, tl, None, left["id"], None)] += 1
    return rows, late


def pairs(records: Iterable[Mapping[str, Any]]) -> Counter[Any]:
    """What the oracles compare: (key, left time, right time, left id, right id)."""
    return Counter(
        (
            r["key"],
            r["left_event_timestamp"],
            r["right_event_timestamp"],
            r.get("left_id"),
            r.get("right_id"),
        )
        for r in records
    )


def _conditions(config: JoinConfig, left: dict[str, Any], right: dict[str, Any]) -> bool:
    # a range condition is always the one the join tests draw: ``v`` within 5 of ``v``
    for name in config.on:
        if left.get(name) is None or left.get(name) != right.get(name):
            return False
    if config.range is not None:
        x, y = left.get("v"), right.get("v")
        if x is None or y is None or not 0 <= abs(x - y) <= 5:
            return False
    if config.predicate is not None:
        return bool(config.predicate(left, right))
    return True
