"""``FeatureRuntime(gc_threshold=)``: the collector's first threshold is raised while runtimes
run, to the largest asked for, and put back when the last stops, unless the application set
its own meanwhile."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from actors import ConfigError
from runtime import Count, FeatureRuntime, FeatureSet
from runtime._gc import DEFAULT_GC_THRESHOLD, GcThreshold

FEATURES = FeatureSet(name="tx", key="card", time="ts", features=[Count(name="n")])


@pytest.fixture(autouse=True)
def python_threshold() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, *before[1:])
    yield
    gc.set_threshold(*before)


def first() -> int:
    return gc.get_threshold()[0]


@pytest.mark.anyio
async def test_raised_while_running_and_put_back() -> None:
    rt = FeatureRuntime(FEATURES, shards=1)
    later = gc.get_threshold()[1:]
    assert first() == 700
    async with rt:
        assert first() == DEFAULT_GC_THRESHOLD
        await rt.ingest({"card": "c1", "ts": 1_700_000_000_000})
    assert first() == 700
    assert gc.get_threshold()[1:] == later  # the later generations' thresholds untouched


@pytest.mark.anyio
async def test_none_leaves_the_collector_alone() -> None:
    async with FeatureRuntime(FEATURES, shards=1, gc_threshold=None):
        assert first() == 700
    assert first() == 700


@pytest.mark.anyio
async def test_the_largest_while_several_run_and_put_back_after_the_last() -> None:
    async with FeatureRuntime(FEATURES, shards=1, gc_threshold=5_000):
        assert first() == 5_000
        async with FeatureRuntime(FEATURES, shards=1, gc_threshold=20_000):
            assert first() == 20_000
        assert first() == 5_000  # back to what the one still running asked
    assert first() == 700


@pytest.mark.anyio
async def test_never_lowered_and_the_applications_own_setting_stays() -> None:
    gc.set_threshold(50_000, *gc.get_threshold()[1:])
    async with FeatureRuntime(FEATURES, shards=1, gc_threshold=10_000):
        assert first() == 50_000  # already higher: left as it is
    assert first() == 50_000
    gc.set_threshold(700, *gc.get_threshold()[1:])
    async with FeatureRuntime(FEATURES, shards=1, gc_threshold=10_000):
        assert first() == 10_000
        gc.set_threshold(3_000, *gc.get_threshold()[1:])  # the application's choice
    assert first() == 3_000


def test_a_setting_of_the_application_between_two_runtimes_is_kept() -> None:
    gc.set_threshold(50_000, *gc.get_threshold()[1:])
    first_hold, second_hold = GcThreshold(10_000), GcThreshold(10_000)
    first_hold.raise_()  # 50,000 is higher: nothing set
    gc.set_threshold(700, *gc.get_threshold()[1:])  # the application lowers it
    second_hold.raise_()
    assert first() == 10_000
    second_hold.release()
    first_hold.release()
    assert first() == 700  # the application's last setting, not the one found at first


def test_the_applications_setting_over_the_runtimes_stays_while_others_run() -> None:
    holds = [GcThreshold(10_000), GcThreshold(20_000), GcThreshold(10_000)]
    holds[0].raise_()
    holds[1].raise_()
    assert first() == 20_000
    gc.set_threshold(3_000, *gc.get_threshold()[1:])  # the application's choice
    holds[1].release()
    assert first() == 3_000  # not lowered to the 10,000 still asked for
    holds[2].raise_()
    assert first() == 3_000  # nor raised by a runtime that starts meanwhile
    holds[0].release()
    holds[2].release()
    assert first() == 3_000
    hold = GcThreshold(10_000)  # once all stopped, the next run raises it again
    hold.raise_()
    assert first() == 10_000
    hold.release()
    assert first() == 3_000


def test_zero_turns_collection_off_and_stays_so() -> None:
    gc.set_threshold(0, *gc.get_threshold()[1:])
    hold = GcThreshold(10_000)
    hold.raise_()
    assert first() == 0
    hold.release()
    assert first() == 0


def test_a_release_without_a_raise_does_nothing() -> None:
    GcThreshold(10_000).release()
    hold = GcThreshold(10_000)
    hold.raise_()
    hold.raise_()  # once only
    hold.release()
    hold.release()
    assert first() == 700


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10000"])
def test_a_bad_threshold_is_refused_naming_the_option(bad: object) -> None:
    with pytest.raises(ConfigError, match="gc_threshold"):
        FeatureRuntime(FEATURES, gc_threshold=bad)  # type: ignore[arg-type]
