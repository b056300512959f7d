"""A card-transaction simulator with injected fraud bursts (standard library only).

The stream covers ``span_ms`` of event time (a simulated day by default) and is emitted in
arrival order. Each event is a plain dict::

    {"card": "card-004217", "ts": 1709280012345, "amount": 42.17,
     "merchant": "m-01234", "category": "grocery", "status": "approved"}

How it is built, all from ``random.Random(seed)`` (the merchants' countries and risks from a
second generator seeded from ``seed`` too), so the same config gives the same stream:

- **Cards** have Zipf-like activity: the card of rank ``r`` is picked with weight
  ``1 / (r + 10) ** skew``, so a few cards (fleet or business cards) are very busy and most make
  a handful of transactions. Ranks are shuffled over the card numbers.
- **Merchants** each have a category, a country and a risk score; their popularity is
  Zipf-like too. A card shops mostly at a few favourite merchants and now and then somewhere
  new. The cardholders live in ``HOME_COUNTRY``; most merchants are there too, online shops and
  travel agents more often abroad. A merchant's risk (0 to 1, as an acquirer would score it)
  comes from its category, a little more abroad, with noise; a few merchants (more of them in
  the resellable categories) are high-risk, 0.6 to 0.95. Events carry the merchant's id and
  category only: its country and risk are for a merchant table (the demo's SQLite file).
- **Amounts** are log-normal with a median and spread per category (fuel is narrow, travel and
  jewelry are wide and large). About 2% of ordinary transactions are declined, more for
  large amounts; about 1% of cards are over their limit and see a quarter of their
  transactions declined (honest cards that a decline rule alone would flag).
- **Event time** follows a daily profile (quiet at night, busy at midday and in the
  evening). Events arrive slightly out of order: each one's ``ts`` is up to ``jitter_ms`` older
  than its arrival position says.
- **Fraud bursts**: ``fraud_cards`` ordinary cards are compromised. At a random time each makes
  15 to 40 transactions within a few minutes, nearly every one at a different merchant in a
  resellable category (electronics, jewelry, gift cards, online retail, travel), each category
  in proportion to its merchants and, within one, with a weight of the merchant's risk squared
  (fraudsters go where checks are weak), with amounts a few times the usual and about 35%
  declined. The cards also keep their ordinary activity.
- **Malformed events** (``malformed``, 0 by default) lack their card or time, to exercise a
  consumer's handling of bad input. They are not counted in ``events``.

Use :func:`build_scenario` for the cards, merchants and the ground truth, and
:func:`transactions` for the stream; :func:`simulate` does both.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CATEGORIES",
    "FRAUD_CATEGORIES",
    "HOME_COUNTRY",
    "Burst",
    "Category",
    "Merchant",
    "Scenario",
    "SimConfig",
    "build_scenario",
    "simulate",
    "transactions",
]

#: 2024-03-01T00:00:00Z, the start of the simulated day, in milliseconds.
DEFAULT_START_MS = 1_709_251_200_000
_DAY_MS = 86_400_000

#: Relative transaction volume per hour of the day (local time of the cardholders).
_HOURLY = (
    0.20, 0.12, 0.08, 0.06, 0.06, 0.10, 0.25, 0.50, 0.80, 1.00, 1.10, 1.20,
    1.40, 1.30, 1.10, 1.10, 1.20, 1.40, 1.50, 1.40, 1.20, 0.90, 0.60, 0.35,
)  # fmt: skip


@dataclass(frozen=True)
class Category:
    """A merchant category: its share of merchants and its amount distribution."""

    name: str
    #: share of merchants in this category
    weight: float
    #: median amount, and the sigma of the log-normal around it
    median: float
    sigma: float
    #: the typical risk score of its merchants (0 to 1), and the share of them abroad
    risk: float
    abroad: float


#: The merchant categories, by name.
CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category("grocery", 0.22, 35.0, 0.60, 0.04, 0.02),
        Category("restaurant", 0.18, 28.0, 0.50, 0.05, 0.03),
        Category("fuel", 0.10, 45.0, 0.35, 0.06, 0.02),
        Category("pharmacy", 0.07, 22.0, 0.60, 0.04, 0.02),
        Category("online_retail", 0.14, 45.0, 0.90, 0.18, 0.35),
        Category("apparel", 0.04, 60.0, 0.70, 0.08, 0.10),
        Category("entertainment", 0.08, 30.0, 0.60, 0.10, 0.05),
        Category("electronics", 0.06, 180.0, 0.80, 0.22, 0.15),
        Category("travel", 0.05, 320.0, 0.70, 0.18, 0.40),
        Category("jewelry", 0.03, 250.0, 0.90, 0.25, 0.10),
        Category("gift_cards", 0.03, 60.0, 0.50, 0.30, 0.20),
    )
}

#: Categories that fraudsters favour: goods that are easy to resell.
FRAUD_CATEGORIES = ("electronics", "jewelry", "gift_cards", "online_retail", "travel")

#: The cardholders' country, and the countries of merchants abroad (drawn uniformly).
HOME_COUNTRY = "US"
_ABROAD = ("CA", "MX", "GB", "IE", "DE", "FR", "NL", "ES", "IT", "BR", "IN", "SG", "HK", "JP")
#: The share of high-risk merchants (risk 0.6 to 0.95) in a resellable category, and in others
_HIGH_RISK = (0.10, 0.02)


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """What to simulate. Every field has a default; ``seed`` fixes the whole stream."""

    #: transactions in the stream, fraud included (malformed events come on top)
    events: int = 500_000
    cards: int = 20_000
    merchants: int = 2_000
    #: cards that get a fraud burst (at most ``cards``)
    fraud_cards: int = 25
    seed: int = 7
    #: the first event time (ms since the epoch) and the event time the stream covers
    start_ms: int = DEFAULT_START_MS
    span_ms: int = _DAY_MS
    #: how far (ms) an event's time may lag behind its position in the stream
    jitter_ms: int = 3_000
    #: the Zipf exponent of card activity (0 is uniform; larger is more skewed)
    skew: float = 1.0
    #: decline probability of an ordinary transaction (doubled above $500)
    decline_rate: float = 0.02
    #: malformed events (no card or no time) mixed in, in addition to ``events``
    malformed: int = 0

    def __post_init__(self) -> None:
        for name in ("events", "cards", "merchants", "span_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("fraud_cards", "jitter_ms", "malformed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.fraud_cards > self.cards:
            raise ValueError(f"fraud_cards ({self.fraud_cards}) must be <= cards ({self.cards})")
        if not 0 <= self.decline_rate <= 0.5:
            raise ValueError(f"decline_rate must be between 0 and 0.5, got {self.decline_rate!r}")


@dataclass(frozen=True)
class Merchant:
    id: str
    category: str
    #: an ISO 3166 country code, and a risk score from 0 (safe) to 1
    country: str = HOME_COUNTRY
    risk: float = 0.05


@dataclass(frozen=True)
class Burst:
    """One injected fraud burst: the ground truth for a compromised card."""

    card: str
    #: event time of the burst's first and last transaction (ms)
    start_ms: int
    end_ms: int
    transactions: int


@dataclass
class Scenario:
    """The world a stream is drawn from, and the ground truth about fraud."""

    config: SimConfig
    #: card numbers, busiest first
    cards: list[str]
    merchants: list[Merchant]
    #: the fraud burst of each compromised card
    bursts: dict[str, Burst]
    #: honest cards over their limit, with their decline probability
    overdrawn: dict[str, float]
    _rng: random.Random = field(repr=False)
    _card_cum: list[float] = field(repr=False)
    _merchant_cum: list[float] = field(repr=False)
    _fraud_merchants: list[Merchant] = field(repr=False)
    #: their cumulative weights for a burst (see ``_burst_weights``)
    _fraud_cum: list[float] = field(repr=False)

    @property
    def fraud_cards(self) -> frozenset[str]:
        """The compromised cards."""
        return frozenset(self.bursts)


def _merchant(ident: str, category: Category, rng: random.Random) -> Merchant:
    """A merchant of ``category``, its country and risk drawn from ``rng``."""
    abroad = rng.random() < category.abroad
    country = rng.choice(_ABROAD) if abroad else HOME_COUNTRY
    share = _HIGH_RISK[0] if category.name in FRAUD_CATEGORIES else _HIGH_RISK[1]
    if rng.random() < share:
        risk = rng.uniform(0.6, 0.95)
    else:
        risk = category.risk + (0.08 if abroad else 0.0) + rng.gauss(0.0, 0.03)
    return Merchant(ident, category.name, country, round(min(max(risk, 0.01), 0.99), 2))


def _zipf_cumulative(count: int, exponent: float, offset: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank + offset) ** exponent for rank in range(count)))


def build_scenario(config: SimConfig | None = None) -> Scenario:
    """Draw the cards, merchants and fraud bursts for ``config`` (the defaults if None)."""
    config = config or SimConfig()
    rng = random.Random(config.seed)
    width = max(6, len(str(config.cards)))
    numbers = list(range(config.cards))
    rng.shuffle(numbers)
    cards = [f"card-{n:0{width}d}" for n in numbers]

    categories = list(CATEGORIES.values())
    chosen = rng.choices(categories, weights=[c.weight for c in categories], k=config.merchants)
    profile = random.Random(f"{config.seed}-merchants")  # cards and bursts do not depend on it
    merchants = [_merchant(f"m-{i:05d}", c, profile) for i, c in enumerate(chosen)]
    rng.shuffle(merchants)
    fraud_merchants = [m for m in merchants if m.category in FRAUD_CATEGORIES] or merchants

    # Compromised cards are ordinary ones: never among the busiest 1%.
    candidates = cards[config.cards // 100 :] or cards
    compromised = rng.sample(candidates, min(config.fraud_cards, len(candidates)))
    honest = sorted(set(candidates) - set(compromised))
    overdrawn = dict.fromkeys(rng.sample(honest, len(honest) // 100), 0.25)
    bursts: dict[str, Burst] = {}
    fraud_budget = config.events // 2  # bursts never crowd out the ordinary stream
    for card in compromised:
        size = min(rng.randint(15, 40), fraud_budget)
        if size == 0:
            break
        fraud_budget -= size
        duration = rng.randint(3, 12) * 60_000
        earliest = config.start_ms + config.span_ms // 20
        latest = max(earliest, config.start_ms + config.span_ms - config.span_ms // 20 - duration)
        start = rng.randint(earliest, latest)
        bursts[card] = Burst(card, start, start + duration, size)

    return Scenario(
        config=config,
        cards=cards,
        merchants=merchants,
        bursts=bursts,
        overdrawn=overdrawn,
        _rng=rng,
        _card_cum=_zipf_cumulative(config.cards, config.skew, 10.0),
        _merchant_cum=_zipf_cumulative(config.merchants, 0.8, 5.0),
        _fraud_merchants=fraud_merchants,
        _fraud_cum=_burst_weights(fraud_merchants),
    )


def _burst_weights(merchants: list[Merchant]) -> list[float]:
    """Cumulative weights for a burst's merchants: within a category, risk squared; each
    category as a whole in proportion to its merchants (as if they were picked uniformly)."""
    mass: dict[str, float] = {}
    size: dict[str, int] = {}
    for m in merchants:
        mass[m.category] = mass.get(m.category, 0.0) + m.risk * m.risk
        size[m.category] = size.get(m.category, 0) + 1
    weights = (m.risk * m.risk / mass[m.category] * size[m.category] for m in merchants)
    return list(itertools.accumulate(weights))


def _hour_table(start_ms: int, span_ms: int) -> tuple[list[float], list[tuple[float, float]]]:
    """The daily profile as cumulative weights and, per hour, ``(offset, ms per unit weight)``."""
    hour_ms = span_ms / len(_HOURLY)
    cum = list(itertools.accumulate(_HOURLY))
    lines = []
    for hour, weight in enumerate(_HOURLY):
        below = cum[hour - 1] if hour else 0.0
        lines.append((start_ms + hour * hour_ms - below * hour_ms / weight, hour_ms / weight))
    return cum, lines


def _burst_events(scenario: Scenario, burst: Burst) -> list[tuple[int, dict[str, Any]]]:
    rng = scenario._rng
    span = burst.end_ms - burst.start_ms
    times = sorted(burst.start_ms + rng.randint(0, span) for _ in range(burst.transactions))
    # Merchants by their weights, each once (repeats are drawn again, a bounded number of
    # times) unless the burst outnumbers them.
    merchants, cum = scenario._fraud_merchants, scenario._fraud_cum
    picks: list[Merchant] = []
    seen: set[str] = set()
    for _ in range(20 * burst.transactions):
        if len(picks) == min(burst.transactions, len(merchants)):
            break
        merchant = rng.choices(merchants, cum_weights=cum)[0]
        if merchant.id not in seen:
            seen.add(merchant.id)
            picks.append(merchant)
    picks += rng.choices(merchants, cum_weights=cum, k=burst.transactions - len(picks))
    out: list[tuple[int, dict[str, Any]]] = []
    for ts, merchant in zip(times, picks, strict=True):
        category = CATEGORIES[merchant.category]
        amount = rng.lognormvariate(math.log(category.median * 2.5), category.sigma)
        status = "declined" if rng.random() < 0.35 else "approved"
        event = {
            "card": burst.card,
            "ts": ts - int(rng.random() * scenario.config.jitter_ms),
            "amount": round(amount, 2),
            "merchant": merchant.id,
            "category": merchant.category,
            "status": status,
        }
        out.append((ts, event))
    return out


def transactions(scenario: Scenario) -> Iterator[dict[str, Any]]:
    """Yield the scenario's transactions in arrival order (a fresh dict each).

    Call it once per scenario: it draws from the scenario's random generator, so a second call
    gives a different stream. Build a new scenario from the same config to replay one.
    """
    config = scenario.config
    rng = scenario._rng
    fraud = sorted(
        (item for burst in scenario.bursts.values() for item in _burst_events(scenario, burst)),
        key=lambda item: item[0],
    )
    fraud.append((math.inf, {}))  # a sentinel: no ordinary event comes after it
    ordinary = config.events - (len(fraud) - 1)
    card_picks = rng.choices(scenario.cards, cum_weights=scenario._card_cum, k=ordinary)
    malformed = sorted(rng.sample(range(ordinary), min(config.malformed, ordinary)))
    malformed.append(-1)

    # The hot loop: one merchant tuple per merchant, local names, no helper calls per event.
    shops_of = [
        (m.id, m.category, math.log(CATEGORIES[m.category].median), CATEGORIES[m.category].sigma)
        for m in scenario.merchants
    ]
    merchant_cum = scenario._merchant_cum
    favourites: dict[str, list[tuple[str, str, float, float]]] = {}
    cum, lines = _hour_table(config.start_ms, config.span_ms)
    scale = cum[-1] / ordinary
    random_ = rng.random
    gauss = rng.gauss
    exp = math.exp
    bisect_right = bisect.bisect_right
    jitter = config.jitter_ms
    decline = config.decline_rate
    overdrawn = scenario.overdrawn
    last_hour = len(cum) - 1
    next_fraud = fraud[0]
    next_malformed = malformed[0]
    bad = 0
    f = 0
    for i, card in enumerate(card_picks):
        # Stratified times: one uniform draw in each 1/ordinary slice keeps them increasing.
        u = (i + random_()) * scale
        offset, slope = lines[min(bisect_right(cum, u), last_hour)]
        ts = int(offset + u * slope)
        while next_fraud[0] <= ts:
            yield next_fraud[1]
            f += 1
            next_fraud = fraud[f]
        shops = favourites.get(card)
        if shops is None:
            size = 2 + min(int(rng.expovariate(0.2)), 25)
            shops = favourites[card] = rng.choices(shops_of, cum_weights=merchant_cum, k=size)
        if random_() < 0.9:
            merchant, category, mu, sigma = shops[int(random_() * len(shops))]
        else:
            merchant, category, mu, sigma = rng.choices(shops_of, cum_weights=merchant_cum)[0]
        amount = int(exp(mu + sigma * gauss()) * 100 + 0.5) / 100
        limit = overdrawn.get(card, decline)
        event: dict[str, Any] = {
            "card": card,
            "ts": ts - int(random_() * jitter),
            "amount": amount,
            "merchant": merchant,
            "category": category,
            "status": "declined"
            if random_() < (limit * 2 if amount > 500 else limit)
            else "approved",
        }
        if i == next_malformed:
            # Every other malformed event lacks its card, the others their time.
            missing = "card" if bad % 2 == 0 else "ts"
            yield {k: v for k, v in event.items() if k != missing}
            bad += 1
            next_malformed = malformed[bad]
        yield event
    yield from (item[1] for item in fraud[f:-1])


def simulate(config: SimConfig | None = None) -> tuple[Scenario, Iterator[dict[str, Any]]]:
    """Return the scenario for ``config`` and its stream of transactions."""
    scenario = build_scenario(config)
    return scenario, transactions(scenario)
