"""``SideBuffer`` against a plain list of every event, for random streams of operations."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import given, settings

from runtime._joins.buffer import SideBuffer

operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 60)),
        st.tuples(st.just("between"), st.tuples(st.integers(-5, 65), st.integers(0, 30))),
        st.tuples(st.just("expire"), st.integers(-5, 65)),
        st.tuples(st.just("evict"), st.none()),
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(ops=operations)
def test_side_buffer_agrees_with_a_brute_force_list(ops: list[tuple[str, Any]]) -> None:
    buffer = SideBuffer()
    model: list[tuple[int, int]] = []  # (t, serial) of live events, in arrival order
    serial = 0
    for op, arg in ops:
        if op == "add":
            index = buffer.add(arg, {"serial": serial})
            assert buffer.times[index] == arg and buffer.events[index]["serial"] == serial
            assert buffer.matches[index] == 0
            model.append((arg, serial))
            serial += 1
        elif op == "between":
            low, width = arg
            high = low + width
            got = [(e[0], e[1]["serial"]) for e in buffer.between(low, high)]
            # time order, arrival order among equal times: a stable sort of the arrivals
            want = sorted(((t, s) for t, s in model if low <= t <= high), key=lambda x: x[0])
            assert got == want
        elif op == "expire":
            gone = [(e[0], e[1]["serial"]) for e in buffer.expire(arg)]
            want = sorted(((t, s) for t, s in model if t < arg), key=lambda x: x[0])
            assert gone == want
            model = [(t, s) for t, s in model if t >= arg]
        else:
            entry = buffer.evict_oldest()
            if not model:
                assert entry is None
            else:
                oldest = sorted(model, key=lambda x: x[0])[0]
                assert entry is not None and (entry[0], entry[1]["serial"]) == oldest
                model.remove(oldest)
        ordered = sorted(model, key=lambda x: x[0])
        assert len(buffer) == len(model)
        assert [(e[0], e[1]["serial"]) for e in buffer] == ordered
        assert buffer.oldest == (ordered[0][0] if ordered else None)
        assert buffer.newest == (ordered[-1][0] if ordered else None)
        assert buffer.nbytes() > 0


def test_match_counts_live_beside_the_events() -> None:
    buffer = SideBuffer()
    first = buffer.add(10, {"a": 1})
    buffer.add(20, {"a": 2})
    start, end = buffer.span(5, 15)
    for i in range(start, end):
        buffer.matches[i] += 1
    assert buffer.matches[first] == 1
    assert [e[2] for e in buffer.expire(100)] == [1, 0]
    assert len(buffer) == 0


def test_expired_events_are_let_go_before_compaction() -> None:
    buffer = SideBuffer()
    for t in range(10):
        buffer.add(t, {"t": t})
    buffer.expire(2)  # a small dead prefix: kept in the lists until compaction
    assert buffer.head == 2 and buffer.events[:2] == [None, None]
    assert [e[0] for e in buffer] == list(range(2, 10))
