"""An ad-impression and click simulator with known click-through rates (standard library only).

The traffic covers ``span_ms`` of event time (two hours by default) and is returned in arrival
order as ``(arrival_ms, stream, event)``, ``stream`` being ``"impressions"`` or ``"clicks"``.
Events are plain dicts; an impression::

    {"ad_id": "ad-00042", "campaign": "spring-sale", "imp_id": 1234, "ts": 1709283612345}

A click has the same fields, ``imp_id`` being that of the impression it came from (as the click
URL of an ad server carries it) and ``ts`` its own time.

How the traffic is built, all from one ``random.Random(seed)`` so the same config gives the
same traffic:

- **Campaigns** (:data:`CAMPAIGNS`) each have a true click-through rate (the chance that an
  impression is ever clicked) and a share of the ads. Every ad belongs to one campaign.
- **Ads** have Zipf-like popularity: the ad of rank ``r`` is shown with weight
  ``1 / (r + 10) ** skew``, ranks shuffled over the ad ids, so a few ads take many of the
  impressions and most are shown now and then.
- **Impressions** are spread evenly over the span (one uniform draw in each ``1/n`` slice).
- **Clicks**: each impression is clicked with its campaign's rate, after a delay drawn from
  :class:`ClickDelay`: mostly seconds to a few minutes, with a long tail; a few percent come
  later than ten minutes.
- **Arrival**: most events arrive as they happen; ``late_share`` of them arrive up to
  ``jitter_ms`` later, so the stream is mostly in order with some jitter (a consumer with a
  ``max_out_of_orderness`` of at least ``jitter_ms`` sees none of them as late).

Use :func:`simulate` for the traffic and :class:`Truth` for what the simulator knows.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CAMPAIGNS",
    "Ad",
    "Campaign",
    "ClickDelay",
    "SimConfig",
    "Simulation",
    "Truth",
    "simulate",
]

#: 2024-03-01T09:00:00Z, the start of the simulated traffic, in milliseconds.
DEFAULT_START_MS = 1_709_283_600_000
_HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Campaign:
    """An advertising campaign: its true click-through rate and its share of the ads."""

    name: str
    #: the chance that an impression of the campaign is clicked (at any delay)
    ctr: float
    #: the share of the ads that belong to the campaign
    share: float


#: The default campaigns, from the most clicked to the least.
CAMPAIGNS: tuple[Campaign, ...] = (
    Campaign("retargeting", 0.060, 0.10),
    Campaign("spring-sale", 0.035, 0.25),
    Campaign("running-shoes", 0.022, 0.25),
    Campaign("travel-deals", 0.012, 0.20),
    Campaign("brand-awareness", 0.005, 0.20),
)


@dataclass(frozen=True, kw_only=True)
class ClickDelay:
    """The time from an impression to its click: a mixture of two log-normals.

    Most clicks (``1 - tail``) come ``quick_median_ms`` or so after the impression; the others
    (``tail``) are people who come back to the page later, ``tail_median_ms`` or so.
    """

    quick_median_ms: float = 25_000
    quick_sigma: float = 1.0
    tail: float = 0.12
    tail_median_ms: float = 240_000
    tail_sigma: float = 1.0

    def draw(self, rng: random.Random) -> int:
        """One delay in milliseconds."""
        if rng.random() < self.tail:
            return int(rng.lognormvariate(math.log(self.tail_median_ms), self.tail_sigma))
        return int(rng.lognormvariate(math.log(self.quick_median_ms), self.quick_sigma))

    def cdf(self, ms: float) -> float:
        """The chance that a click comes at most ``ms`` after its impression."""
        if ms <= 0:
            return 0.0

        def lognormal(median: float, sigma: float) -> float:
            return 0.5 * (1 + math.erf(math.log(ms / median) / (sigma * math.sqrt(2))))

        quick = lognormal(self.quick_median_ms, self.quick_sigma)
        late = lognormal(self.tail_median_ms, self.tail_sigma)
        return (1 - self.tail) * quick + self.tail * late


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """What to simulate. Every field has a default; ``seed`` fixes the whole traffic."""

    impressions: int = 200_000
    ads: int = 2_000
    seed: int = 7
    campaigns: tuple[Campaign, ...] = CAMPAIGNS
    delay: ClickDelay = field(default_factory=ClickDelay)
    #: the first impression time (ms since the epoch) and the event time the impressions cover
    start_ms: int = DEFAULT_START_MS
    span_ms: int = 2 * _HOUR_MS
    #: the Zipf exponent of ad popularity (0 is uniform; larger is more skewed)
    skew: float = 1.0
    #: the share of events that arrive late, and by how much at most (ms)
    late_share: float = 0.2
    jitter_ms: int = 3_000

    def __post_init__(self) -> None:
        for name in ("impressions", "ads", "span_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.jitter_ms < 0:
            raise ValueError(f"jitter_ms must be >= 0, got {self.jitter_ms!r}")
        if not 0 <= self.late_share <= 1:
            raise ValueError(f"late_share must be between 0 and 1, got {self.late_share!r}")
        if not self.campaigns:
            raise ValueError("at least one campaign is required")
        if len(self.campaigns) > self.ads:
            raise ValueError(
                f"ads ({self.ads}) must be at least the number of campaigns ({len(self.campaigns)})"
            )
        for campaign in self.campaigns:
            if not 0 <= campaign.ctr <= 1 or campaign.share <= 0:
                raise ValueError(f"campaign {campaign.name!r}: need 0 <= ctr <= 1 and share > 0")


@dataclass(frozen=True)
class Ad:
    id: str
    campaign: str


@dataclass
class Truth:
    """What the simulator knows about the traffic it made, per campaign."""

    #: campaign name -> impressions, and -> clicks
    impressions: dict[str, int]
    clicks: dict[str, int]
    #: campaign name -> the delay of each of its clicks (ms), in impression order
    delays: dict[str, list[int]]
    #: the last event time and the last arrival time (ms)
    last_ts: int
    last_arrival: int

    def clicks_within(self, ms: int) -> dict[str, int]:
        """Per campaign, the clicks that came at most ``ms`` after their impression."""
        return {name: sum(d <= ms for d in delays) for name, delays in self.delays.items()}


@dataclass
class Simulation:
    """The traffic, in arrival order, with the ground truth."""

    config: SimConfig
    ads: list[Ad]
    #: ``(arrival_ms, stream, event)``, in arrival order
    events: list[tuple[int, str, dict[str, Any]]]
    truth: Truth

    @property
    def clicks(self) -> int:
        return sum(self.truth.clicks.values())


def _ads(config: SimConfig, rng: random.Random) -> tuple[list[Ad], list[float]]:
    """The ads (each with its campaign) and the cumulative weights of their popularity."""
    width = max(5, len(str(config.ads - 1)))
    total = sum(c.share for c in config.campaigns)
    # every campaign gets at least one ad; the rest by share, the remainder to the largest
    counts = [max(1, int(config.ads * c.share / total)) for c in config.campaigns]
    counts[max(range(len(counts)), key=lambda i: config.campaigns[i].share)] += config.ads - sum(
        counts
    )
    names = [c.name for c, n in zip(config.campaigns, counts, strict=True) for _ in range(n)]
    rng.shuffle(names)
    ads = [Ad(f"ad-{i:0{width}d}", name) for i, name in enumerate(names)]
    ranks = list(range(config.ads))
    rng.shuffle(ranks)
    weights = [1.0 / (rank + 10) ** config.skew for rank in ranks]
    return ads, list(itertools.accumulate(weights))


def simulate(config: SimConfig | None = None) -> Simulation:
    """Simulate the traffic of ``config`` (the defaults if None)."""
    config = config or SimConfig()
    rng = random.Random(config.seed)
    ads, cum_weights = _ads(config, rng)
    ctr = {c.name: c.ctr for c in config.campaigns}
    impressions = dict.fromkeys(ctr, 0)
    clicks = dict.fromkeys(ctr, 0)
    delays: dict[str, list[int]] = {name: [] for name in ctr}

    random_ = rng.random
    draw = config.delay.draw
    late_share, jitter = config.late_share, config.jitter_ms
    step = config.span_ms / config.impressions
    # (arrival, sequence, stream, event): the sequence keeps ties in the order they were made
    timeline: list[tuple[int, int, str, dict[str, Any]]] = []
    sequence = itertools.count()
    last_ts = config.start_ms
    shown = rng.choices(ads, cum_weights=cum_weights, k=config.impressions)
    for imp_id, ad in enumerate(shown):
        ts = config.start_ms + int((imp_id + random_()) * step)
        campaign = ad.campaign
        impressions[campaign] += 1
        lag = int(random_() * jitter) if random_() < late_share else 0
        event = {"ad_id": ad.id, "campaign": campaign, "imp_id": imp_id, "ts": ts}
        timeline.append((ts + lag, next(sequence), "impressions", event))
        if random_() < ctr[campaign]:
            delay = draw(rng)
            clicks[campaign] += 1
            delays[campaign].append(delay)
            click_ts = ts + delay
            last_ts = max(last_ts, click_ts)
            lag = int(random_() * jitter) if random_() < late_share else 0
            click = {"ad_id": ad.id, "campaign": campaign, "imp_id": imp_id, "ts": click_ts}
            timeline.append((click_ts + lag, next(sequence), "clicks", click))
        last_ts = max(last_ts, ts)
    timeline.sort(key=lambda item: (item[0], item[1]))
    events = [(arrival, stream, event) for arrival, _, stream, event in timeline]
    truth = Truth(impressions, clicks, delays, last_ts, events[-1][0])
    return Simulation(config, ads, events, truth)
