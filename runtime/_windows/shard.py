"""The actor that computes a group's windowed features for the keys of one shard.

It is fed the same batches as the keyed group's actors and shares their bookkeeping
(:class:`GroupShard`: counters, latency samples, errors, publishing); what differs is the state
(a :class:`KeyWindows` per key, applied by the group's :class:`WindowEngine`) and time: with
``idle_timeout`` or ``state_ttl`` set, a periodic :class:`Tick` advances the clocks of quiet keys,
closes their windows and expires their state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from actors import get_logger

from .._batches import LateEventBatch, UpdateBatch
from .._exceptions import CheckpointError
from .._messages import Batch, GetStates, GetWindowStats, IdleTick, Ping, Tick, set_aside
from .._results import FeatureUpdate, LateEvent
from .._shard import GroupShard
from .._stats.idle import IdleKeys
from .._updates import UpdateHub
from .engine import KeyWindows, WindowCounters, WindowEngine, WindowOutput

__all__ = ["WindowShard", "WindowStats"]

_log = get_logger("featurist.windows")
_time_of = itemgetter(1)


@dataclass(frozen=True)
class WindowStats:
    """A window shard's counters, beside its :class:`ShardStats`."""

    counters: WindowCounters
    held_events: int


class WindowShard(GroupShard):
    """Computes one group's windowed features for one shard's keys. Internal."""

    def __init__(
        self,
        engine: WindowEngine,
        group_name: str,
        shard: int,
        hub: UpdateHub[FeatureUpdate],
        late_hub: UpdateHub[LateEvent],
        sample_every: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(engine, group_name, shard, hub, sample_every)  # type: ignore[arg-type]
        self.seen = None  # the engine tracks quiet keys itself
        self.engine = engine
        self.late_hub = late_hub
        self.clock = clock
        self.states: dict[Any, KeyWindows] = {}
        self.counters = WindowCounters()
        self.idle: IdleKeys | None = IdleKeys() if engine.tracks_idle else None

    async def on_start(self) -> None:
        engine = self.engine
        if engine.tracks_idle:
            quiet = min(x for x in (engine.idle_timeout, engine.state_ttl) if x is not None)
            period = min(max(quiet / 4, 0.01), 1.0)
            self.context.start_periodic_timer("tick", Tick(), period)

    async def _apply(self, batch: Batch) -> None:
        events = batch.events
        n = len(events)
        if not n:
            return
        engine = self.engine
        now = self.clock()
        errors: list[Any] = []
        out = WindowOutput(engine.names) if self.hub.active else None
        late: list[Any] | None = [] if self.late_hub.active else None
        poison: list[Any] = []
        start = time.perf_counter_ns()
        engine.apply(events, self.states, errors, now, out, late, self.counters, self.idle, poison)
        elapsed = time.perf_counter_ns() - start
        self.compute_ns += elapsed
        # The features of a window group share buffers and one pass per event, so their time
        # is not measured apart: each is charged an equal share of the group's.
        features = len(engine.names)
        share = elapsed // features
        per_event_ms = self.compute_ns / (self.events + n) / 1e6 / features
        self.feature_latency_ms = dict.fromkeys(engine.names, per_event_ms)
        feature_ns = self.feature_ns
        for i in range(features):
            feature_ns[i] += share
        self.sampled_events += n
        if self.batches % self.sample_every == 0:
            self.feature_samples.append((n, [share] * features))
        if poison:  # from here on, the events applied
            events = set_aside(self, poison, events, group=self.group_name, shard=self.shard)
            n = len(events)
        latency = time.perf_counter() - batch.created
        self.latencies.append((latency, n))
        self.latency_counts.add(latency, n)
        self.events += n
        self.batches += 1
        wall = time.time()
        if self.first_event_at is None:
            self.first_event_at = wall
        self.last_event_at = wall
        high = max(map(_time_of, events), default=None)
        if high is not None and (self.max_time is None or high > self.max_time):
            self.max_time = high
        if errors:
            self._record_errors(errors, emit=False)
        if late:
            await self.late_hub.publish(LateEventBatch(self.group_name, late))
        if out:
            await self._publish_windows(out, wall)

    async def _publish_windows(self, out: WindowOutput, wall: float) -> None:
        """One :class:`UpdateBatch` of the engine's outputs: its rows as they are, and for
        the rows of other kinds than ``"update"`` (a close, a match) their full update."""
        latency = self.feature_latency_ms
        group = self.group_name
        extras: dict[int, FeatureUpdate] | None = None
        if out.extras:
            rows = out.rows
            extras = {
                i: FeatureUpdate(
                    rows[i][0],
                    rows[i][1],
                    values,
                    errors,
                    latency,
                    wall,
                    group,
                    kind,
                    window,
                    parts,
                )
                for i, (kind, values, window, errors, parts) in out.extras.items()
            }
        await self.hub.publish(
            UpdateBatch(group, out.names, out.rows, out.failures, latency, wall, extras)
        )

    async def _tick(self) -> None:
        if self.idle is None:
            return
        out = WindowOutput(self.engine.names) if self.hub.active else None
        self.engine.tick(self.states, self.idle, self.clock(), out, self.counters)
        if out:
            await self._publish_windows(out, time.time())

    async def receive(self, message: Any) -> Any:
        if isinstance(message, GetStates):
            if self.engine.quiet is not None:
                # a quiet key's clock follows the wall clock, whether a tick ran or not
                out = WindowOutput(self.engine.names) if self.hub.active else None
                self.engine.catch_up(message.keys, self.states, self.clock(), out, self.counters)
                if out:
                    await self._publish_windows(out, time.time())
            replies: list[tuple[Any, ...]] = []
            engine = self.engine
            values, ooo, at = engine.values, engine.ooo, message.as_of
            for key in message.keys:
                st = self.states.get(key)
                if st is None:
                    replies.append((None, None, None, None, None, at))
                else:
                    replies.append(
                        (
                            values(st, at),
                            st.latest,
                            self.last_event_at,
                            None,
                            st.clock - ooo,
                            None if at is None else engine.as_of(st, at),
                        )
                    )
            return replies
        if isinstance(message, IdleTick | Tick):  # the timer's Tick comes here, one at a time
            await self._tick()
            return None
        if isinstance(message, Ping):
            return None
        if isinstance(message, GetWindowStats):
            return WindowStats(
                WindowCounters(**vars(self.counters)), self.engine.held_events(self.states)
            )
        return await super().receive(message)

    def _state_bytes(self, sample: int = 200) -> int:
        return self.engine.state_bytes(self.states)

    # -- checkpoints: a key's entry is its KeyWindows (its wall-clock ``seen`` inside) --------
    def snapshot_entry(self, key: Any, state: Any) -> Any:
        return state

    def restore_entry(self, key: Any, entry: Any) -> float | None:
        self.engine.attach(entry)  # custom features' states, loaded by check_entry
        self.states[key] = entry
        return entry.seen  # type: ignore[no-any-return]

    def snapshot_extra(self) -> dict[str, Any]:
        extra = super().snapshot_extra()
        extra["counters"] = dict(vars(self.counters))
        return extra

    def restore_extra(self, extra: dict[str, Any]) -> None:
        super().restore_extra(extra)
        counters = self.counters
        for name, n in extra["counters"].items():
            setattr(counters, name, getattr(counters, name) + n)

    @staticmethod
    def check_entry(group: Any, entry: Any) -> str | None:
        """Why ``entry``, decoded from a checkpoint, is not a key's windows of the window
        engine ``group``, or None (its classes and their layouts the codec has checked: here
        the clocks and the number of buffers and patterns)."""
        if type(entry) is not KeyWindows:
            return f"an entry is a {type(entry).__name__}, not a key's windows"
        engine: WindowEngine = group
        for name in ("clock", "latest", "next_close"):
            if type(getattr(entry, name, None)) is not int:
                return f"a key's {name} is not an int"
        if type(getattr(entry, "seen", None)) not in (int, float):
            return "a key's last-seen time is not a number"
        buffers = getattr(entry, "buffers", None)
        if type(buffers) is not list or len(buffers) != len(engine.buffers):
            return f"a key does not have the {len(engine.buffers)} buffers of the group"
        patterns = getattr(entry, "patterns", None)
        if patterns is not None and (
            type(patterns) is not list or len(patterns) != len(engine.sequences)
        ):
            return f"a key does not have the {len(engine.sequences)} patterns of the group"
        finals = getattr(entry, "finals", None)
        if finals is not None and type(finals) is not dict:
            return "a key's closed windows are not a map"
        try:
            engine.attach(entry)  # load the custom features' states: an error refuses them
        except CheckpointError as exc:
            return str(exc)
        except Exception as exc:  # a state of another kind where a custom feature's should be
            return f"a custom feature's window state cannot be read: {type(exc).__name__}"
        return None

    @staticmethod
    def check_extra(extra: Any) -> str | None:
        problem = GroupShard.check_extra(extra)
        if problem is not None:
            return problem
        counters = extra.get("counters")
        known = vars(WindowCounters())
        if type(counters) is not dict or any(
            name not in known or type(n) is not int for name, n in counters.items()
        ):
            return "a window actor's counters are not its counters"
        return None

    def restored(self, seen: list[tuple[float, Any]]) -> None:
        if self.idle is not None:
            seen.sort(key=itemgetter(0))
            for _, key in seen:
                self.idle.touch(key)
