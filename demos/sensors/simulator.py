"""Industrial sensors whose readings drift, at known times (standard library only).

Each sensor measures one quantity (a :class:`Kind`: temperature, vibration or pressure) around
a level of its own, with Gaussian noise, every ``period_s`` seconds of event time (with a
little jitter). Each event is a plain dict::

    {"sensor": "temp-03", "kind": "temperature", "ts": 1709251205000, "value": 21.43}

A sensor's :class:`Drift` is the ground truth a monitor is scored against:

- ``"none"``: stable for the whole stream;
- ``"sudden"``: its level jumps by ``shift`` noise standard deviations at ``change_ms`` (a
  recalibration, a loose mount);
- ``"gradual"``: its level climbs linearly from ``change_ms``, by the same ``shift`` over
  ``ramp`` of the stream (fouling, wear);
- ``"spread"``: its level stays, its noise grows ``spread`` times at ``change_ms`` (a failing
  bearing, a cracked seal): a change that only a test of the whole distribution sees.

Sensor ``i`` has the kind ``i mod 3`` and the drift ``i mod 4`` (sudden, gradual, spread,
none), so twelve sensors hold every pair once. Change times fall between ``change_from``
and ``change_to`` of the stream, at random; everything comes from ``random.Random(seed)``,
so the same config gives the same stream. The events come in time order.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DRIFTS", "KINDS", "Kind", "Scenario", "Sensor", "SimConfig", "build", "readings"]

#: 2024-03-01T00:00:00Z, the start of the stream, in milliseconds.
DEFAULT_START_MS = 1_709_251_200_000


@dataclass(frozen=True)
class Kind:
    """What a sensor measures: the range of its levels, its unit and its noise."""

    name: str
    prefix: str
    unit: str
    low: float
    high: float
    #: standard deviation of a reading around the level
    noise: float


#: The kinds of sensor, by name.
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("temperature", "temp", "°C", 18.0, 26.0, 0.4),
        Kind("vibration", "vib", "mm/s", 1.5, 3.0, 0.15),
        Kind("pressure", "pres", "kPa", 99.0, 103.0, 0.25),
    )
}
#: The drifts, in the order sensors get them.
DRIFTS = ("sudden", "gradual", "spread", "none")


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """What to simulate. Raises ``ValueError`` for impossible settings."""

    sensors: int = 12
    hours: float = 6.0
    period_s: float = 5.0
    #: the change, in noise standard deviations, of sudden and gradual drifts
    shift: float = 3.0
    #: the factor by which a ``"spread"`` drift multiplies the noise
    spread: float = 2.5
    #: the part of the stream over which a gradual drift climbs
    ramp: float = 0.2
    #: changes happen between these parts of the stream
    change_from: float = 0.4
    change_to: float = 0.65
    seed: int = 7
    start_ms: int = DEFAULT_START_MS

    def __post_init__(self) -> None:
        if self.sensors < 1:
            raise ValueError(f"sensors must be >= 1, got {self.sensors}")
        if not self.hours > 0:
            raise ValueError(f"hours must be > 0, got {self.hours}")
        if not 0 < self.period_s <= 3600:
            raise ValueError(f"period_s must be in (0, 3600], got {self.period_s}")
        if not 0 <= self.change_from <= self.change_to <= 1:
            raise ValueError(
                f"need 0 <= change_from <= change_to <= 1, got {self.change_from}, {self.change_to}"
            )

    @property
    def span_ms(self) -> int:
        return round(self.hours * 3_600_000)

    @property
    def period_ms(self) -> int:
        return max(1, round(self.period_s * 1000))


@dataclass(frozen=True)
class Sensor:
    """One sensor and its ground truth."""

    id: str
    kind: Kind
    level: float
    drift: str
    #: when its drift starts (ms), None for a stable sensor
    change_ms: int | None
    #: for ``"gradual"``: when the climb ends
    ramp_end_ms: int | None = None

    def level_at(self, t: int, shift: float) -> float:
        """The sensor's true level at event time ``t`` (``shift`` in units of noise)."""
        if self.change_ms is None or t < self.change_ms or self.drift == "spread":
            return self.level
        step = shift * self.kind.noise
        if self.drift == "gradual":
            assert self.ramp_end_ms is not None
            done = min(1.0, (t - self.change_ms) / (self.ramp_end_ms - self.change_ms))
            return self.level + step * done
        return self.level + step

    def noise_at(self, t: int, spread: float) -> float:
        if self.drift == "spread" and self.change_ms is not None and t >= self.change_ms:
            return self.kind.noise * spread
        return self.kind.noise


@dataclass(frozen=True)
class Scenario:
    config: SimConfig
    sensors: list[Sensor] = field(default_factory=list)

    @property
    def events(self) -> int:
        """How many readings the stream holds."""
        return len(self.sensors) * (self.config.span_ms // self.config.period_ms)


def build(config: SimConfig) -> Scenario:
    """The sensors of ``config``, with their levels, drifts and change times."""
    rng = random.Random(config.seed)
    kinds = list(KINDS.values())
    counts: dict[str, int] = {}
    sensors = []
    span = config.span_ms
    for i in range(config.sensors):
        kind = kinds[i % len(kinds)]
        counts[kind.name] = counts.get(kind.name, 0) + 1
        drift = DRIFTS[i % len(DRIFTS)]
        level = round(rng.uniform(kind.low, kind.high), 2)
        change = round(config.start_ms + span * rng.uniform(config.change_from, config.change_to))
        sensors.append(
            Sensor(
                id=f"{kind.prefix}-{counts[kind.name]:02d}",
                kind=kind,
                level=level,
                drift=drift,
                change_ms=None if drift == "none" else change,
                ramp_end_ms=change + round(span * config.ramp) if drift == "gradual" else None,
            )
        )
    return Scenario(config, sensors)


def readings(scenario: Scenario) -> Iterator[dict[str, Any]]:
    """The stream of readings, in event-time order."""
    config = scenario.config
    rng = random.Random(config.seed + 1)
    period = config.period_ms
    end = config.start_ms + config.span_ms
    # each sensor's next reading time, jittered by up to a fifth of the period
    heap = [
        (config.start_ms + rng.randrange(period), index) for index in range(len(scenario.sensors))
    ]
    heapq.heapify(heap)
    slot = [0] * len(scenario.sensors)
    while heap:
        t, index = heapq.heappop(heap)
        sensor = scenario.sensors[index]
        value = rng.gauss(sensor.level_at(t, config.shift), sensor.noise_at(t, config.spread))
        yield {"sensor": sensor.id, "kind": sensor.kind.name, "ts": t, "value": round(value, 3)}
        slot[index] += 1
        nominal = config.start_ms + slot[index] * period
        jitter = rng.randint(-period // 5, period // 5)
        following = max(t + 1, nominal + jitter)
        if slot[index] < config.span_ms // period and following < end + period:
            heapq.heappush(heap, (following, index))
