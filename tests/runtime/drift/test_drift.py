"""Drift monitors: each detector against a direct or textbook computation, on synthetic
streams with a known change point and on stationary ones; the monitors through the runtime
(alerts as events, segments, actions, status, shutdown)."""

from __future__ import annotations

import itertools
import math
import random
from bisect import bisect_left
from typing import Any

import anyio
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import runtime._drift.monitor as drift_module
from actors import DeadLetterReason
from runtime import (
    ADWIN,
    KS,
    PSI,
    DriftAlert,
    DriftMonitor,
    FeatureRuntime,
    FeatureSet,
    Last,
    Mean,
    PageHinkley,
    Reference,
    RuntimeClosed,
    Sliding,
    SpecError,
    Tumbling,
    UnknownFeature,
    Where,
)
from runtime._drift.detectors import AdwinDetector, PageHinkleyDetector
from runtime._drift.monitor import build_detector
from runtime._drift.two_sample import (
    KSDetector,
    PSIDetector,
    _ks_exact,
    kolmogorov_sf,
    ks_critical,
    ks_pvalue,
    ks_statistic,
    psi,
    quantile_edges,
)

T0 = 1_700_000_000_000
values_st = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
# few distinct values as well: ties within and across samples
samples = st.lists(st.one_of(values_st, st.sampled_from([0.0, 1.0, 2.5])), min_size=1, max_size=40)


def gauss(seed: int, n: int, *, mean: float = 0.0, sd: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(n)]


def step(seed: int, n: int, change: int, shift: float) -> list[float]:
    """N(0, 1) values, shifted by ``shift`` from index ``change`` on."""
    rng = random.Random(seed)
    return [rng.gauss(shift if i >= change else 0.0, 1.0) for i in range(n)]


def first_alarm(detector: Any, values: list[float]) -> int | None:
    for index, value in enumerate(values):
        if detector.update(value, index):
            return index
    return None


# -- Page-Hinkley ----------------------------------------------------------------------------------


def page_hinkley_by_definition(values: list[float], delta: float, direction: str) -> float:
    """m_T = sum_{t<=T} (x_t - mean_t - delta), PH = m_T - min_{t<=T} m_t, recomputed from
    scratch (and mirrored for decreases)."""
    ups, downs = [], []
    for t in range(1, len(values) + 1):
        means = [sum(values[:s]) / s for s in range(1, t + 1)]
        ups.append(sum(values[s] - means[s] - delta for s in range(t)))
        downs.append(sum(means[s] - values[s] - delta for s in range(t)))
    up, down = ups[-1] - min(ups), downs[-1] - min(downs)
    return {"up": up, "down": down, "both": max(up, down)}[direction]


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(values_st, min_size=1, max_size=25),
    delta=st.sampled_from([0.0, 0.005, 0.5]),
    direction=st.sampled_from(["up", "down", "both"]),
)
def test_page_hinkley_statistic_is_its_definition(
    values: list[float], delta: float, direction: str
) -> None:
    detector = PageHinkleyDetector(
        PageHinkley(delta=delta, threshold=10.0, min_instances=5, direction=direction)
    )
    for n, value in enumerate(values, 1):
        drifting = detector.update(value)
        expected = page_hinkley_by_definition(values[:n], delta, direction)
        assert detector.score == pytest.approx(expected, rel=1e-9, abs=1e-6)
        assert drifting == (n >= 5 and detector.score > 10.0)


def test_page_hinkley_finds_a_step_up_and_down_and_stays_quiet_when_stationary() -> None:
    # delta = half the shift to find; the chance that a stationary N(0, 1) stream's statistic
    # climbs to h is about exp(-2 * delta * h) = exp(-25) per excursion: no false alarm
    spec = PageHinkley(delta=0.5, threshold=25, min_instances=30, direction="both")
    for seed in range(20):
        up = first_alarm(build_detector(spec), step(seed, 3000, 1000, 1.0))
        down = first_alarm(build_detector(spec), step(seed, 3000, 1000, -1.0))
        assert up is not None and 1000 <= up < 1150
        assert down is not None and 1000 <= down < 1150
    assert all(first_alarm(build_detector(spec), gauss(s, 5000)) is None for s in range(50))


def test_page_hinkley_watches_one_direction_only_when_told() -> None:
    spec = PageHinkley(delta=0.5, threshold=25, direction="up")
    assert first_alarm(build_detector(spec), step(1, 3000, 1000, -2.0)) is None
    assert first_alarm(build_detector(spec), step(1, 3000, 1000, 2.0)) is not None


# -- ADWIN ----------------------------------------------------------------------------------------


def check_histogram(detector: AdwinDetector, raw: list[float]) -> None:
    """The buckets cover the last ``width`` values in order, each holding its values' total and
    squared deviations; sizes are powers of two, never growing towards the newest, at most
    ``max_buckets`` of each; the window's total and variance are its values'."""
    window = raw[len(raw) - detector.width :]
    position = 0
    sizes = []
    for size, total, variance in detector.buckets():
        part = window[position : position + size]
        mean = sum(part) / size
        assert total == pytest.approx(sum(part), rel=1e-9, abs=1e-6)
        assert variance == pytest.approx(sum((x - mean) ** 2 for x in part), rel=1e-6, abs=1e-5)
        sizes.append(size)
        position += size
    assert position == len(window)
    assert sizes == sorted(sizes, reverse=True)
    assert all(size & (size - 1) == 0 for size in sizes)
    assert max(sizes.count(size) for size in set(sizes)) <= detector.max_buckets
    mean = sum(window) / len(window)
    assert detector.total == pytest.approx(sum(window), rel=1e-9, abs=1e-6)
    assert detector.variance == pytest.approx(
        sum((x - mean) ** 2 for x in window), rel=1e-6, abs=1e-4
    )


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(min_value=-10, max_value=10), min_size=1, max_size=400),
    shift=st.sampled_from([0.0, 5.0]),
    clock=st.sampled_from([1, 8, 32]),
)
def test_adwin_histogram_summarises_exactly_the_last_width_values(
    values: list[float], shift: float, clock: int
) -> None:
    raw = [v + (shift if i > len(values) // 2 else 0.0) for i, v in enumerate(values)]
    detector = AdwinDetector(ADWIN(clock=clock, max_buckets=2, min_window=2, grace_period=4))
    for index, value in enumerate(raw):
        detector.update(value)
        check_histogram(detector, raw[: index + 1])


def test_adwin_cut_is_the_bound_of_the_paper() -> None:
    # two buckets of 4 and one of 2 after 10 values of 0 then 1: the cut at 8 | 2 gives
    # gap 1, with eps_cut = sqrt(2/m var ln(2/d)) + 2/(3m) ln(2/d), d = delta / ln(10)
    detector = AdwinDetector(ADWIN(delta=0.002, clock=1, max_buckets=2, min_window=2))
    detector.rows.clear()
    detector.rows.extend([__import__("collections").deque() for _ in range(3)])
    detector.rows[2].extend([(0.0, 0.0)])
    detector.rows[1].extend([(0.0, 0.0), (0.0, 0.0), (2.0, 0.0)])
    detector.width, detector.total = 10, 2.0
    detector.variance = 2 - 2.0**2 / 10
    n0, n1 = 8, 2
    ln_term = math.log(2 * math.log(10) / 0.002)
    inverse_m = 1 / n0 + 1 / n1
    eps = (
        math.sqrt(2 * inverse_m * (detector.variance / 10) * ln_term) + 2 / 3 * inverse_m * ln_term
    )
    assert detector._cut() is (1.0 > eps)
    assert detector.score == pytest.approx(1.0)
    assert detector.threshold == pytest.approx(eps)


def test_adwin_finds_a_step_soon_after_it_and_rarely_fires_when_stationary() -> None:
    delays = []
    for seed in range(20):
        alarm = first_alarm(build_detector(ADWIN()), step(seed, 4000, 2000, 1.0))
        assert alarm is not None and alarm >= 2000
        delays.append(alarm - 2000)
    assert max(delays) < 300
    # delta = 0.002 bounds the false-alarm rate per check; measured: none in 50 streams
    false_alarms = sum(
        first_alarm(build_detector(ADWIN()), gauss(seed, 5000)) is not None for seed in range(50)
    )
    assert false_alarms <= 1


def test_adwin_drops_the_part_before_the_change() -> None:
    detector = build_detector(ADWIN())
    values = step(3, 3000, 2000, 3.0)
    for value in values:
        detector.update(value)
    assert isinstance(detector, AdwinDetector) and detector.detections >= 1
    assert detector.width < 1100  # about the values since the change
    assert detector.total / detector.width == pytest.approx(3.0, abs=0.2)


# -- PSI -------------------------------------------------------------------------------------------


def psi_by_hand(reference: list[float], live: list[float], bins: int, epsilon: float) -> float:
    """The formula, with the bins found by comparisons rather than searches."""
    ordered = sorted(reference)
    m = len(ordered)
    inner = {ordered[max(math.ceil(k * m / bins) - 1, 0)] for k in range(1, bins)}
    if ordered[0] in inner:  # a point mass at the least value: a bin for what is below it
        inner.add(math.nextafter(ordered[0], -math.inf))
    edges = sorted(inner)

    def shares(sample: list[float]) -> list[float]:
        counts = [0] * (len(edges) + 1)
        for x in sample:
            counts[sum(1 for edge in edges if x > edge)] += 1
        scale = 1 + len(counts) * epsilon
        return [(c / len(sample) + epsilon) / scale for c in counts]

    ref, now = shares(reference), shares(live)
    return sum((a - e) * math.log(a / e) for a, e in zip(now, ref, strict=True))


@settings(max_examples=150, deadline=None)
@given(reference=samples, live=samples, bins=st.integers(2, 12))
def test_psi_is_the_formula_over_quantile_bins(
    reference: list[float], live: list[float], bins: int
) -> None:
    expected = psi_by_hand(reference, live, bins, 1e-4)
    assert psi(reference, live, bins=bins) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert psi(reference, reference, bins=bins) == pytest.approx(0.0, abs=1e-12)
    assert expected >= -1e-12


@settings(max_examples=80, deadline=None)
@given(
    reference=samples,
    stream=st.lists(values_st, min_size=1, max_size=120),
    window=st.integers(1, 30),
)
def test_psi_detector_scores_its_window_against_its_reference(
    reference: list[float], stream: list[float], window: int
) -> None:
    spec = PSI(reference=Reference(values=reference), window=window, min_window=1, every=1, bins=5)
    detector = PSIDetector(spec)
    for n, value in enumerate(stream, 1):
        detector.update(value, n)
        live = stream[max(0, n - window) : n]
        assert detector.window_size == len(live)
        assert detector.score == pytest.approx(psi(reference, live, bins=5), rel=1e-9, abs=1e-12)
        assert detector.drifting == (detector.score > 0.25)


def test_psi_quantile_bins_hold_equal_shares_of_a_continuous_reference() -> None:
    reference = sorted(gauss(0, 1000))
    edges = quantile_edges(reference, 10)
    counts = [0] * 11
    for x in reference:
        counts[bisect_left(edges, x)] += 1
    assert len(edges) == 9 and counts[:10] == [100] * 10 and counts[10] == 0


def test_psi_sees_a_shift_below_a_constant_reference_as_one_above() -> None:
    # the bottom bin held the whole reference: a fall to 4.0 scored 0, a rise to 6.0 18.4
    assert psi([5.0] * 100, [4.0] * 100) == pytest.approx(psi([5.0] * 100, [6.0] * 100))
    assert psi([5.0] * 100, [4.0] * 100) > 10
    assert psi([5.0] * 100, [5.0] * 100) == 0.0
    # a count often 0: a fall below it is as new as a rise above its greatest value
    counts = [0.0] * 50 + [1.0] * 30 + [2.0] * 20
    assert psi(counts, [-1.0] * 10 + counts[:90]) > 0.25


def test_psi_finds_a_shift_and_stays_below_its_threshold_when_stationary() -> None:
    spec = PSI(reference=Reference(values=gauss(99, 2000)), window=500, every=25)
    for seed in range(10):
        alarm = first_alarm(build_detector(spec), step(seed, 4000, 2000, 1.0))
        assert alarm is not None and 2000 <= alarm < 2400
    # two samples of one distribution score about (bins - 1)(1/n + 1/m) = 0.02 by chance
    for seed in range(10):
        detector = build_detector(spec)
        assert first_alarm(detector, gauss(seed, 4000)) is None
        assert detector.score is not None and detector.score < 0.1


# -- KS --------------------------------------------------------------------------------------------


def ks_by_definition(a: list[float], b: list[float]) -> float:
    """sup |F_a - F_b| over every value of both samples (the functions are right-continuous
    steps, so the supremum is reached at one of them)."""
    return max(
        abs(sum(v <= x for v in a) / len(a) - sum(v <= x for v in b) / len(b)) for x in a + b
    )


@settings(max_examples=300, deadline=None)
@given(a=samples, b=samples)
def test_ks_statistic_is_the_largest_gap_between_the_two_distribution_functions(
    a: list[float], b: list[float]
) -> None:
    assert ks_statistic(a, b) == pytest.approx(ks_by_definition(a, b), abs=1e-12)
    assert ks_statistic(a, b) == ks_statistic(b, a)


@settings(max_examples=80, deadline=None)
@given(
    reference=samples,
    stream=st.lists(values_st, min_size=1, max_size=80),
    window=st.integers(1, 20),
)
def test_ks_detector_tests_its_window_against_its_reference(
    reference: list[float], stream: list[float], window: int
) -> None:
    detector = KSDetector(
        KS(reference=Reference(values=reference), window=window, min_window=1, every=1)
    )
    for n, value in enumerate(stream, 1):
        detector.update(value, n)
        live = stream[max(0, n - window) : n]
        assert detector.score == pytest.approx(ks_by_definition(live, reference), abs=1e-12)
        gap = round(detector.score * len(live) * len(reference))
        assert detector.p_value == ks_pvalue(len(live), len(reference), gap)
        assert detector.drifting == (detector.p_value < 1e-4)


def ks_p_by_enumeration(n: int, m: int, gap: int) -> float:
    """P(D * n * m >= gap): the share of the C(n + m, n) orderings of the two samples whose
    statistic reaches it."""
    reached = total = 0
    for places in itertools.combinations(range(n + m), n):
        chosen = set(places)
        i = j = best = 0
        for t in range(n + m):
            if t in chosen:
                i += 1
            else:
                j += 1
            best = max(best, abs(i * m - j * n))
        reached += best >= gap
        total += 1
    return reached / total


@pytest.mark.parametrize(("n", "m"), [(1, 1), (2, 3), (4, 4), (3, 7), (5, 6)])
def test_exact_ks_pvalue_is_the_share_of_orderings_that_reach_the_statistic(n: int, m: int) -> None:
    for gap in range(1, n * m + 1):
        assert _ks_exact(n, m, gap) == pytest.approx(ks_p_by_enumeration(n, m, gap), abs=1e-12)


def test_ks_pvalues_match_the_tables() -> None:
    # n = m = 10: P(D >= 0.6) = 0.0524 and P(D >= 0.7) = 0.0123 (exact tables)
    assert ks_pvalue(10, 10, 60) == pytest.approx(0.05245, abs=1e-4)
    assert ks_pvalue(10, 10, 70) == pytest.approx(0.01234, abs=1e-4)
    # the Kolmogorov distribution's upper quantiles: 1.2238 (10%), 1.3581 (5%), 1.6276 (1%)
    assert kolmogorov_sf(1.2238) == pytest.approx(0.10, abs=1e-4)
    assert kolmogorov_sf(1.3581) == pytest.approx(0.05, abs=1e-5)
    assert kolmogorov_sf(1.6276) == pytest.approx(0.01, abs=1e-5)
    assert kolmogorov_sf(0) == 1.0 and kolmogorov_sf(10) < 1e-80
    # its two series meet where one hands over to the other
    assert kolmogorov_sf(1.18 - 1e-12) == pytest.approx(kolmogorov_sf(1.18), abs=1e-10)
    xs = [i / 100 for i in range(1, 400)]
    assert all(kolmogorov_sf(a) >= kolmogorov_sf(b) for a, b in itertools.pairwise(xs))


def test_asymptotic_ks_pvalue_is_close_to_the_exact_one_for_large_samples() -> None:
    for n, m in ((100, 100), (80, 120)):
        step_ = math.gcd(n, m)
        for gap in range(step_, n * m, step_):
            exact = ks_pvalue(n, m, gap)
            if 0.001 < exact < 0.5:
                assert ks_pvalue(n, m, gap, exact_below=0) == pytest.approx(exact, abs=0.04)


def test_ks_critical_value_is_the_first_statistic_below_alpha() -> None:
    critical = ks_critical(10, 10, 0.05)
    assert critical == 0.7
    assert ks_pvalue(10, 10, 70) < 0.05 <= ks_pvalue(10, 10, 60)
    assert ks_critical(2, 2, 0.01) is None  # two values each can never be that sure
    big = ks_critical(500, 1000, 0.01, exact_below=0)
    assert big is not None
    n_eff = 500 * 1000 / 1500
    lam = (math.sqrt(n_eff) + 0.12 + 0.11 / math.sqrt(n_eff)) * big
    assert kolmogorov_sf(lam) == pytest.approx(0.01, rel=1e-6)


def test_ks_finds_a_shift_and_rarely_fires_when_stationary() -> None:
    spec = KS(reference=Reference(values=gauss(99, 1000)), window=200)
    for seed in range(10):
        alarm = first_alarm(build_detector(spec), step(seed, 4000, 2000, 1.0))
        assert alarm is not None and 2000 <= alarm < 2200
    # alpha = 1e-4 per test, a test every 25 values: measured, no alarm in 20 streams
    false_alarms = sum(
        first_alarm(build_detector(spec), gauss(seed, 4000)) is not None for seed in range(20)
    )
    assert false_alarms <= 1


# -- references and actions ------------------------------------------------------------------------


def test_reference_of_the_first_values_or_span_or_range_is_captured_then_frozen() -> None:
    by_count = build_detector(KS(reference=Reference(count=3), window=5, min_window=1))
    for t, x in enumerate([5.0, 1.0, 3.0, 9.0]):
        by_count.update(x, t)
    assert isinstance(by_count, KSDetector)
    assert by_count.reference == [1.0, 3.0, 5.0] and by_count.window_size == 1

    by_span = build_detector(KS(reference=Reference(first="10s"), window=5, min_window=1))
    for t, x in [(T0, 1.0), (T0 + 9_999, 2.0), (T0 + 10_000, 3.0), (T0 + 5, 4.0)]:
        by_span.update(x, t)
    assert isinstance(by_span, KSDetector)
    assert by_span.reference == [1.0, 2.0] and by_span.window_size == 2

    by_range = build_detector(KS(reference=Reference(start=10, end=20), window=5, min_window=1))
    assert by_range.phase == "reference"
    for t, x in [(5, 0.0), (10, 1.0), (19, 2.0), (20, 3.0), (12, 4.0)]:
        by_range.update(x, t)
    assert isinstance(by_range, KSDetector)
    assert by_range.reference == [1.0, 2.0]  # before the range: ignored; after: live
    assert by_range.window_size == 2 and by_range.phase == "live"

    missed = build_detector(PSI(reference=Reference(start=10, end=20), window=5, min_window=1))
    for t in (30, 31, 32):
        assert missed.update(1.0, t) is False
    assert missed.phase == "no_reference" and missed.window_size == 0


def test_a_captured_reference_is_a_bounded_sample_the_same_for_the_same_stream() -> None:
    spec = PSI(reference=Reference(first="1h", max_size=100), window=50, min_window=10)
    detectors = [build_detector(spec), build_detector(spec)]
    for detector in detectors:
        for t, x in enumerate(gauss(4, 1000)):
            detector.update(x, t)
    first, second = detectors
    assert isinstance(first, PSIDetector) and isinstance(second, PSIDetector)
    assert first.reference_size == 100 and first.reference == second.reference
    assert set(first.reference) <= set(gauss(4, 1000))


def test_training_values_beyond_max_size_are_thinned_to_order_statistics() -> None:
    detector = build_detector(KS(reference=Reference(values=list(range(1001)), max_size=11)))
    assert isinstance(detector, KSDetector)
    assert detector.reference == [float(x) for x in range(0, 1001, 100)]


def test_reset_empties_the_live_window_and_adopt_makes_it_the_reference() -> None:
    spec = PSI(reference=Reference(values=gauss(1, 1000)), window=300, min_window=100, every=1)
    detector = build_detector(spec)
    for t, x in enumerate(gauss(2, 300, mean=3.0)):
        detector.update(x, t)
    assert detector.drifting and detector.window_size == 300
    detector.reset()
    assert (detector.window_size, detector.reference_size, detector.drifting) == (0, 1000, False)
    assert first_alarm(detector, gauss(3, 99, mean=3.0)) is None  # below min_window
    assert detector.update(3.0, 99)
    # the next window of values becomes the reference: not the one at the alert, which may
    # still hold values from before the change
    detector.adopt_reference()
    assert (detector.window_size, detector.reference_size, detector.drifting) == (0, 0, False)
    assert detector.phase == "reference"
    after = gauss(5, 1500, mean=3.0)
    assert first_alarm(detector, after) is None
    assert isinstance(detector, PSIDetector) and detector.reference == sorted(after[:300])
    assert detector.phase == "live" and detector.window_size == 300


def test_detector_specs_name_the_field_they_reject() -> None:
    ref = Reference(values=[1.0])
    cases = [
        (lambda: PSI(reference=ref, bins=1), r"PSI\.bins: must be between 2 and 100"),
        (lambda: PSI(reference=ref, window=10, min_window=20), r"PSI\.min_window"),
        (lambda: KS(reference=ref, alpha=1.5), r"KS\.alpha: must be > 0 and < 1"),
        (lambda: KS(reference=ref, span="soon"), r"KS\.span: not a duration"),
        (lambda: PageHinkley(threshold=0), r"PageHinkley\.threshold: must be > 0"),
        (lambda: PageHinkley(direction="sideways"), r"PageHinkley\.direction"),  # type: ignore[arg-type]
        (lambda: ADWIN(delta=0), r"ADWIN\.delta: must be > 0"),
        (lambda: Reference(), r"Reference\.values: give exactly one of"),
        (lambda: Reference(values=[1.0], count=3), r"exactly one of .* \(got values, count\)"),
        (lambda: Reference(values=[1.0, math.nan]), r"Reference\.values\[1\]: expected a finite"),
        (lambda: Reference(start=5), r"Reference\.end: start and end go together"),
        (lambda: Reference(start=5, end=5), r"Reference\.end: must be after start"),
        (lambda: Reference(count=20, max_size=10), r"Reference\.count: must be between 1 and 10"),
        (
            lambda: DriftMonitor(name="m", feature="x", detector=ADWIN(), action="panic"),  # type: ignore[arg-type]
            r"DriftMonitor\.action: unknown action 'panic' \(known: notify, reset, adopt_ref",
        ),
        (
            lambda: DriftMonitor(name="m", feature="x", detector="adwin"),  # type: ignore[arg-type]
            r"DriftMonitor\.detector: expected PageHinkley, ADWIN, PSI or KS, got str",
        ),
        (
            lambda: DriftMonitor(name="m", feature="x", detector=ADWIN(), segment="x"),
            r"DriftMonitor\.segment: cannot be the watched feature",
        ),
    ]
    for make, message in cases:
        with pytest.raises(SpecError, match=message):
            make()


# -- monitors in the runtime -----------------------------------------------------------------------

SENSORS = FeatureSet(
    name="sensors",
    key="sensor",
    time="ts",
    features=[
        Last(name="reading", field="value"),
        Last(name="site", field="site"),
        Last(name="label", field="label"),
        Last(name="hot", field="value", where=Where(field="value", op=">", value=100)),
        Mean(name="mean_1m", field="value", window=Tumbling(size="1m")),
        Mean(name="mean_5m", field="value", window=Sliding(size="5m")),
    ],
)


def sensor_events(
    shifts: dict[str, float], n: int, change: int, *, seed: int = 0, period_ms: int = 1000
) -> list[dict[str, Any]]:
    """``n`` readings of each sensor, a second apart; a sensor's readings move by its shift
    from reading ``change`` on."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        for sensor, shift in shifts.items():
            value = rng.gauss(shift if i >= change else 0.0, 1.0)
            events.append({"sensor": sensor, "ts": T0 + i * period_ms, "value": value, "site": "a"})
    return events


PH = PageHinkley(delta=0.5, threshold=25)


async def test_metrics_hold_the_drift_monitors_in_process_and_with_workers() -> None:
    """With workers the monitors run in the application's process: metrics() (and so the
    Prometheus endpoint) must show them beside the workers' merged metrics."""
    events = sensor_events({"s1": 2.0, "s2": 0.0}, 600, 300)
    seen = []
    for options in ({}, {"workers": 1}):
        async with FeatureRuntime(SENSORS, **options) as rt:
            await rt.monitor_drift(
                DriftMonitor(name="ph", feature="reading", detector=PH, segment="key")
            )
            await rt.ingest_many(events)
            await rt.flush()
            metrics = await rt.metrics()
            status = (await rt.drift_status())["ph"]
        assert metrics.drift["ph"].alerts == status.alerts >= 1, options
        assert [a.kind for a in metrics.actors].count("drift") == 1, options
        seen.append(metrics.drift["ph"].values)
    assert seen == [1200, 1200]


async def test_an_int_too_large_for_a_float_is_skipped_not_a_detector_failure() -> None:
    events = [
        {"sensor": "s1", "ts": T0 + i, "value": 10**400 if i == 5 else 1.0} for i in range(20)
    ]
    async with FeatureRuntime(SENSORS) as rt:
        await rt.monitor_drift(DriftMonitor(name="ph", feature="reading", detector=PH))
        await rt.ingest_many(events)
        await rt.flush()
        status = (await rt.drift_status())["ph"]
        assert rt.dead_letters.count() == 0
    assert (status.values, status.skipped) == (19, 1)


async def test_an_empty_reference_is_said_once_per_monitor_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = [{"sensor": f"s{i % 4}", "ts": T0 + 60_000 + i, "value": 1.0} for i in range(40)]
    ks = KS(reference=Reference(start=T0 - 10_000, end=T0 - 5_000), window=5, min_window=1)
    with caplog.at_level("WARNING"):
        async with FeatureRuntime(SENSORS) as rt:
            await rt.monitor_drift(
                DriftMonitor(name="ks", feature="reading", detector=ks, segment="key")
            )
            await rt.ingest_many(events)
            await rt.flush()
            status = (await rt.drift_status())["ks"]
    said = [r.getMessage() for r in caplog.records if "drift_reference_empty" in r.getMessage()]
    assert len(said) == 1 and "monitor='ks'" in said[0] and "feature='reading'" in said[0], said
    assert [s.phase for s in status.segments] == ["no_reference"] * 4


def test_a_ks_reference_too_small_ever_to_alert_is_known() -> None:
    # the least p-value of a full window against m values is 2 / C(n + m, m) (every value on
    # one side): 2 / 21 against one value and a window of 20, 2 / 231 against two: above 1e-4
    # both; against 2 values a window of 500 reaches it (2 / 125,751)
    for values, window, small in (([1.0], 20, 1), ([1.0, 2.0], 20, 2), ([1.0, 2.0], 500, None)):
        ks = KS(reference=Reference(values=values), window=window, min_window=1)
        assert build_detector(ks).too_small == small, (values, window)
    assert build_detector(KS(reference=Reference(values=gauss(3, 200)))).too_small is None
    # a full window of 4,000 against 3 values is tested asymptotically, which cannot reach
    # 1e-4; but the window passes 3,333 values, tested exactly, on its way, and that can
    three = KS(reference=Reference(values=[1.0, 2.0, 3.0]), window=4000, min_window=50)
    assert build_detector(three).too_small is None
    psi = PSI(reference=Reference(values=[1.0]), window=20, min_window=1)
    assert build_detector(psi).too_small is None


async def test_a_reference_too_small_to_alert_is_said_once_per_monitor_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = [{"sensor": f"s{i % 4}", "ts": T0 + i, "value": float(i % 7)} for i in range(80)]
    small = KS(reference=Reference(count=2), window=20, min_window=1)
    given = KS(reference=Reference(values=[5.0]), window=20, min_window=1)
    enough = KS(reference=Reference(count=10), window=20, min_window=1, alpha=0.05)
    with caplog.at_level("WARNING"):
        async with FeatureRuntime(SENSORS) as rt:
            for name, ks in (("small", small), ("given", given), ("enough", enough)):
                await rt.monitor_drift(
                    DriftMonitor(name=name, feature="reading", detector=ks, segment="key")
                )
            await rt.ingest_many(events)
            await rt.flush()
    said = [r.getMessage() for r in caplog.records if "drift_reference_too_small" in r.getMessage()]
    assert len(said) == 2, said  # once per monitor, not once per segment
    assert any("monitor='small'" in m and "reference_values=2" in m for m in said), said
    assert any("monitor='given'" in m and "reference_values=1" in m for m in said), said
    assert not any("monitor='enough'" in m for m in said), said


async def test_alerts_come_as_events_for_the_drifting_segments_only() -> None:
    events = sensor_events({"s1": 2.0, "s2": 0.0, "s3": -2.0}, 1000, 500)
    async with FeatureRuntime(SENSORS, shards=2) as rt:
        alerts = rt.drift_alerts()
        await rt.monitor_drift(
            DriftMonitor(name="ph", feature="reading", detector=PH, segment="key")
        )
        await rt.ingest_many(events)
        await rt.flush()
        status = (await rt.drift_status())["ph"]
        got = []
        with anyio.fail_after(5):
            while len(got) < status.alerts:
                got.append(await alerts.__anext__())
    assert sorted(alert.segment for alert in got) == ["s1", "s3"]
    for alert in got:
        assert isinstance(alert, DriftAlert)
        assert (alert.monitor, alert.feature, alert.detector) == ("ph", "reading", "page_hinkley")
        assert alert.key == alert.segment and alert.action == "notify" and alert.count == 1
        assert T0 + 500_000 <= alert.event_time < T0 + 600_000
        assert alert.score > alert.threshold == 25
    assert status.values == 3000 and status.skipped == status.dropped == 0
    assert status.segment("s2").alerts == 0 and status.segment("s2").phase == "live"
    assert status.segment("s1").last_alert_time == next(
        a.event_time for a in got if a.segment == "s1"
    )


def alert_oracle(spec: DriftMonitor, events: list[dict[str, Any]]) -> list[tuple[Any, int, int]]:
    """The alerts of a per-key monitor, from the detector run over each key's values in order
    (the monitor's rule: an alert where the detector turns to drift; its action after it)."""
    detectors: dict[Any, Any] = {}
    drifting: dict[Any, bool] = {}
    counts: dict[Any, int] = {}
    alerts = []
    for event in events:
        key = event["sensor"]
        detector = detectors.setdefault(key, build_detector(spec.detector))
        now = detector.update(float(event["value"]), event["ts"])
        if now and not drifting.get(key, False):
            counts[key] = counts.get(key, 0) + 1
            alerts.append((key, event["ts"], counts[key]))
            if spec.action == "reset":
                detector.reset()
                now = False
            elif spec.action == "adopt_reference":
                detector.adopt_reference()
                now = False
        drifting[key] = now
    return sorted(alerts)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    shards=st.sampled_from([1, 3]),
    batch_size=st.sampled_from([7, 512]),
    action=st.sampled_from(["notify", "reset", "adopt_reference"]),
)
async def test_per_key_alerts_are_the_detectors_over_each_keys_values_whatever_the_shards(
    seed: int, shards: int, batch_size: int, action: str
) -> None:
    events = sensor_events({"a": 3.0, "b": 0.0, "c": -1.5, "d": 1.0}, 400, 200, seed=seed)
    monitors = [
        DriftMonitor(name="ph", feature="reading", detector=PH, segment="key", action=action),  # type: ignore[arg-type]
        DriftMonitor(
            name="adwin", feature="reading", detector=ADWIN(), segment="key", action=action
        ),  # type: ignore[arg-type]
        DriftMonitor(
            name="ks",
            feature="reading",
            detector=KS(reference=Reference(count=100), window=60, min_window=30, every=5),
            segment="key",
            action=action,  # type: ignore[arg-type]
        ),
    ]
    async with FeatureRuntime(SENSORS, shards=shards, batch_size=batch_size) as rt:
        subscription = rt.drift_alerts()
        await rt.monitor_drift(*monitors)
        await rt.ingest_many(events)
    got: dict[str, list[tuple[Any, int, int]]] = {m.name: [] for m in monitors}
    async for alert in subscription:
        got[alert.monitor].append((alert.segment, alert.event_time, alert.count))
    for monitor in monitors:
        assert sorted(got[monitor.name]) == alert_oracle(monitor, events), monitor.name


async def test_reset_alerts_again_while_the_drift_lasts_and_adopt_once() -> None:
    events = sensor_events({"s1": 3.0}, 2000, 600)
    detector = PSI(reference=Reference(count=400), window=300, min_window=100, every=10)
    async with FeatureRuntime(SENSORS, shards=1) as rt:
        await rt.monitor_drift(
            *(
                DriftMonitor(name=action, feature="reading", detector=detector, action=action)  # type: ignore[arg-type]
                for action in ("notify", "reset", "adopt_reference")
            )
        )
        await rt.ingest_many(events)
        await rt.flush()
        status = await rt.drift_status()
    notify = status["notify"].segment(None)
    assert notify.alerts == 1 and notify.drifting and notify.reference_size == 400
    # each reset refills the window (100 values) and finds the same shift: about 1400 / 100
    assert status["reset"].alerts >= 10
    adopted = status["adopt_reference"].segment(None)
    assert adopted.alerts == 1 and not adopted.drifting
    assert adopted.reference_size == 300 and adopted.phase == "live"


async def test_segments_follow_another_feature_of_the_group_up_to_max_segments() -> None:
    events = [
        {"sensor": f"s{i % 6}", "ts": T0 + i, "value": float(i % 3), "site": f"site{i % 4}"}
        for i in range(400)
    ]
    async with FeatureRuntime(SENSORS, shards=2) as rt:
        await rt.monitor_drift(
            DriftMonitor(
                name="by_site",
                feature="reading",
                detector=ADWIN(),
                segment="site",
                max_segments=3,
            )
        )
        await rt.ingest_many(events)
        await rt.flush()
        status = (await rt.drift_status())["by_site"]
    assert len(status.segments) == 3 and status.segment_by == "site"
    assert {s.segment for s in status.segments} <= {"site0", "site1", "site2", "site3"}
    assert status.segments_refused == 100 and status.values == 300
    assert sum(s.values for s in status.segments) == 300


async def test_values_that_cannot_be_watched_are_skipped_and_counted() -> None:
    events = [{"sensor": "s", "ts": T0 + i, "value": 1.0, "label": "x"} for i in range(5)]
    events += [{"sensor": "s", "ts": T0 + 10 + i, "value": 200.0, "label": "y"} for i in range(3)]
    async with FeatureRuntime(SENSORS, shards=1) as rt:
        await rt.monitor_drift(
            DriftMonitor(name="hot", feature="hot", detector=ADWIN()),  # None until > 100
            DriftMonitor(name="label", feature="label", detector=ADWIN()),  # strings
            DriftMonitor(name="by_site", feature="reading", detector=ADWIN(), segment="site"),
        )
        await rt.ingest_many(events)
        await rt.flush()
        status = await rt.drift_status()
    assert (status["hot"].values, status["hot"].skipped) == (3, 5)
    assert (status["label"].values, status["label"].skipped) == (0, 8)
    assert (status["by_site"].values, status["by_site"].skipped) == (0, 8)  # no site field


async def test_a_monitor_can_watch_the_final_values_of_closed_windows() -> None:
    events = sensor_events({"s1": 5.0}, 1800, 900)  # 30 minutes; the shift at 15
    async with FeatureRuntime(SENSORS, shards=1) as rt:
        alerts = rt.drift_alerts()
        await rt.monitor_drift(
            DriftMonitor(
                name="minutes",
                feature="mean_1m",
                detector=PageHinkley(delta=0.5, threshold=5, min_instances=5),
                on="close",
            )
        )
        await rt.ingest_many(events)
        await rt.flush()
        status = (await rt.drift_status())["minutes"]
    # one value per closed minute: T0 is 20 s into a minute, so 31 minutes hold the 30 of
    # the stream, and the last is still open
    assert status.values == 30 and status.alerts == 1
    got = [a async for a in alerts]
    assert len(got) == 1
    # the end of the minute of the change, or of the next one
    assert got[0].event_time in (T0 + 940_000, T0 + 1_000_000)


async def test_monitor_drift_checks_the_monitors_before_starting_any() -> None:
    async with FeatureRuntime(SENSORS, shards=1) as rt:
        await rt.monitor_drift(DriftMonitor(name="one", feature="reading", detector=ADWIN()))
        bad = [
            (DriftMonitor(name="one", feature="reading", detector=ADWIN()), SpecError, "running"),
            (
                DriftMonitor(name="x", feature="nope", detector=ADWIN()),
                UnknownFeature,
                r"monitors\[1\]\.feature: .*'nope'",
            ),
            (
                DriftMonitor(name="x", feature="reading", detector=ADWIN(), segment="mean_5m"),
                SpecError,
                "another group",
            ),
            (
                DriftMonitor(name="x", feature="reading", detector=ADWIN(), segment="ghost"),
                UnknownFeature,
                r"monitors\[1\]\.segment: no feature named 'ghost'",
            ),
            (
                DriftMonitor(name="x", feature="mean_5m", detector=ADWIN(), on="close"),
                SpecError,
                "sliding window, which never closes",
            ),
            (
                DriftMonitor(name="x", feature="reading", detector=ADWIN(), on="close"),
                SpecError,
                "has none",
            ),
        ]
        for monitor, error, message in bad:
            good = DriftMonitor(name="two", feature="reading", detector=ADWIN())
            with pytest.raises(error, match=message):
                await rt.monitor_drift(good, monitor)
        with pytest.raises(TypeError, match=r"monitors\[0\]: expected a DriftMonitor"):
            await rt.monitor_drift("ph")
        with pytest.raises(SpecError, match="at least one"):
            await rt.monitor_drift()
        assert list(await rt.drift_status()) == ["one"]
    with pytest.raises(RuntimeClosed):
        rt.drift_alerts()
    with pytest.raises(RuntimeClosed):
        await rt.drift_status()


async def test_a_slow_monitor_drops_its_oldest_updates_and_never_holds_the_features() -> None:
    events = sensor_events({"s1": 0.0, "s2": 0.0}, 2000, 2000)
    async with FeatureRuntime(SENSORS, shards=2, batch_size=64) as rt:
        await rt.monitor_drift(
            DriftMonitor(name="tiny", feature="reading", detector=ADWIN(), buffer=4)
        )
        with anyio.fail_after(20):
            await rt.ingest_many(events)
            await rt.flush()
        assert (await rt.get("s1"))["reading"] == events[-2]["value"]
        status = (await rt.drift_status())["tiny"]
    assert status.dropped > 0
    assert status.values < 4000


async def test_shutdown_delivers_the_alerts_of_the_last_values_then_ends_the_subscription() -> None:
    events = sensor_events({"s1": 0.0}, 300, 300)
    events.append({"sensor": "s1", "ts": T0 + 300_000, "value": 1e6, "site": "a"})
    async with FeatureRuntime(SENSORS, shards=1) as rt:
        alerts = rt.drift_alerts()
        await rt.monitor_drift(DriftMonitor(name="ph", feature="reading", detector=PH))
        await rt.ingest_many(events)  # no flush: shutdown applies the last batch
    got = [alert async for alert in alerts]
    assert [(a.monitor, a.event_time) for a in got] == [("ph", T0 + 300_000)]


async def test_a_failing_monitor_goes_to_dead_letters_and_the_runtime_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = drift_module.build_detector

    class Broken(PageHinkleyDetector):
        def update(self, value: float, time: int = 0) -> bool:
            if value > 1000:
                raise RuntimeError("detector bug")
            return super().update(value, time)

    def build(spec: Any) -> Any:
        return Broken(spec) if isinstance(spec, PageHinkley) else real(spec)

    monkeypatch.setattr(drift_module, "build_detector", build)
    async with FeatureRuntime(SENSORS, shards=1) as rt:
        await rt.monitor_drift(DriftMonitor(name="ph", feature="reading", detector=PH))
        await rt.ingest_many([{"sensor": "s", "ts": T0, "value": 5000.0}])
        with anyio.fail_after(5):
            while not rt.dead_letters.count(DeadLetterReason.FAILED):
                await anyio.sleep(0.01)
        await rt.ingest_many([{"sensor": "s", "ts": T0 + 1, "value": 1.0}])
        await rt.flush()
        status = (await rt.drift_status())["ph"]
        assert (await rt.get("s"))["reading"] == 1.0
    assert status.values >= 1
    letter = rt.dead_letters.letters(DeadLetterReason.FAILED)[0]
    assert "detector bug" in repr(letter.error)
