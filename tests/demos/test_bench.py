"""The honest benches (``python -m demos.bench``): at a tiny size, each runs, both sides' checksums
agree, and a wrong output on one side fails the bench loudly."""

from __future__ import annotations

import pytest

from demos.bench import aggregates
from demos.bench._common import Checksum
from tests.conftest import services_required

from .helpers import run_demo

SMALL = {
    "aggregates": ("--events", "3000", "--keys", "200", "--repeat", "1", "--shards", "1,2"),
    "windows": ("--events", "3000", "--p95-events", "2000", "--keys", "200", "--repeat", "1"),
    "joins": ("--impressions", "3000", "--clicks", "300", "--ads", "100", "--repeat", "1"),
    "enrichment": ("--events", "2000", "--merchants", "500", "--repeat", "1", "--no-real"),
    "workers": ("--events", "3000", "--keys", "200", "--repeat", "1"),
}


@pytest.mark.parametrize("bench", sorted(SMALL))
def test_bench_checksums_agree_at_a_small_size(bench: str) -> None:
    result = run_demo("demos.bench", bench, *SMALL[bench])
    assert result.returncode == 0, result.stderr
    assert "checksums agree" in result.stdout


def test_connectors_bench_reads_both_brokers_and_checks_every_key() -> None:
    result = run_demo("demos.bench", "connectors", "--events", "3000", "--keys", "200")
    assert result.returncode == 0, result.stderr
    if "skipped" in result.stdout and not services_required():
        pytest.skip("NATS or Redis is not running")
    assert "every key's last update read equals a plain loop's" in result.stdout
    for case in ("NATS JetStream: FeatureRuntime", "Redis Streams: FeatureRuntime"):
        assert case in result.stdout


def test_latency_bench_reports_each_paced_rate() -> None:
    result = run_demo("demos.bench", "latency", "--events", "3000", "--seconds", "0.3")
    assert result.returncode == 0, result.stderr
    for fraction in ("10%", "50%", "90%"):
        assert f"{fraction} of the maximum" in result.stdout


def test_checksum_is_order_independent_and_catches_a_wrong_value() -> None:
    outputs = [(1, 10, 3, 0.1 + 0.2), (2, 11, 1, 5.5), (1, 12, 4, 2.0)]
    forward, backward, wrong = Checksum(), Checksum(), Checksum()
    for kh, t, a, b in outputs:
        forward.fold(kh, t, a, b)
    for kh, t, a, b in reversed(outputs):
        backward.fold(kh, t, a, b)
    for kh, t, a, b in outputs[:-1]:
        wrong.fold(kh, t, a, b)
    wrong.fold(1, 12, 4, 2.5)
    assert forward.value() == backward.value()
    assert wrong.value() != forward.value()


def test_a_wrong_baseline_output_fails_the_bench(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = aggregates.plain_basic

    def off_by_one(events: list[dict[str, object]], kh: dict[str, int], checksum: Checksum) -> None:
        plain(events[:-1], kh, checksum)
        checksum.fold(kh[events[-1]["card"]], events[-1]["ts"], 1, 2.0, 3.0, 4.0)  # type: ignore[index]

    monkeypatch.setattr(aggregates, "plain_basic", off_by_one)
    with pytest.raises(SystemExit) as exit_info:
        aggregates.cli(["--events", "2000", "--keys", "50", "--repeat", "1"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "MISMATCH" in err and "only in the baseline" in err
