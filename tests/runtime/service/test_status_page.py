"""The live status page in a real headless Chromium (Debian's package, driven through the
DevTools protocol): it loads, shows the numbers ``/status`` gives, and updates after more events.

Skips without Chromium, and fails under FEATURIST_REQUIRE_SERVICES=1 (CI installs it). With
FEATURIST_SCREENSHOT=PATH the screenshot is also written to PATH (``docs/images/``)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime import (
    CheckpointConfig,
    Count,
    DriftMonitor,
    FeatureSet,
    Lookup,
    Mean,
    PageHinkley,
    Sliding,
    SqliteSource,
    Sum,
    create_app,
)
from tests.conftest import services_required

from .browser import CHROMIUM, Browser
from .server import serving

T0 = 1_700_000_000_000


def _features(db: Path) -> FeatureSet:
    return FeatureSet(
        name="payments",
        key="card",
        time="ts",
        sources=[SqliteSource(name="merchants", path=str(db), table="merchants", key="id")],
        lookups=[Lookup(name="merchant", field="merchant", source="merchants")],
        features=[
            Count(name="n"),
            Sum(name="total", field="amount"),
            Count(name="n_1m", window=Sliding(size="1m")),
            Mean(name="risk", field="merchant.risk"),
        ],
    )


def _events(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "card": f"card-{i % 50}",
            "ts": T0 + i * 10,
            "amount": 5.0 + (i % 17) + (40.0 if i > 3000 else 0.0),
            "merchant": f"m{i % 20}",
        }
        for i in range(start, start + count)
    ]


@pytest.fixture
def browser(tmp_path: Path) -> Any:
    if not os.path.exists(CHROMIUM):
        if services_required():
            pytest.fail(f"Chromium is missing ({CHROMIUM}): apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    page = Browser(tmp_path / "profile")
    try:
        yield page
    finally:
        page.close()


def _settled(client: httpx.Client, processed: int) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        status = client.get("/status").json()
        if status["events"]["processed"] >= processed:
            return status
        assert time.monotonic() < deadline, status["events"]
        time.sleep(0.05)


def test_the_status_page_shows_the_status_and_updates(tmp_path: Path, browser: Browser) -> None:
    db = tmp_path / "merchants.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE merchants (id TEXT PRIMARY KEY, risk REAL)")
        conn.executemany(
            "INSERT INTO merchants VALUES (?, ?)", [(f"m{i}", i / 20) for i in range(15)]
        )
    monitor = DriftMonitor(name="spend", feature="total", detector=PageHinkley(threshold=20.0))
    checkpoints = CheckpointConfig(directory=str(tmp_path / "checkpoints"), interval=1.0)
    app = create_app(_features(db), shards=2, drift=[monitor], checkpoints=checkpoints)
    with serving(app) as url, httpx.Client(base_url=url) as client:
        for start in range(0, 2000, 500):
            assert client.post("/events", json=_events(start, 500)).status_code == 200
        status = _settled(client, 2000)
        browser.goto(f"{url}/")
        browser.wait_for("!!document.body && Number(document.body.dataset.updates || 0) >= 1")
        # the numbers that do not move while nothing comes in are those of /status
        shown = browser.evaluate(
            "({processed: document.getElementById('processed').textContent,"
            " rejected: document.getElementById('rejected').textContent,"
            " state: document.getElementById('state').textContent,"
            " title: document.getElementById('feature-set').textContent,"
            " actors: document.querySelectorAll('#mailboxes tr').length - 1,"
            " sources: document.getElementById('enrichment').textContent,"
            " drift: document.getElementById('drift').textContent,"
            " p50: document.getElementById('p50').textContent})"
        )
        status = client.get("/status").json()
        assert shown["processed"] == f"{status['events']['processed']:,}"
        assert shown["rejected"] == "0" and shown["state"] == "ready"
        assert shown["title"] == "payments"
        assert shown["actors"] == len(status["mailboxes"])
        assert "merchants" in shown["sources"] and "closed" in shown["sources"]
        assert "spend" in shown["drift"]
        assert shown["p50"] == f"{status['latency_ms']['p50']:.2f}"
        # more events: the page follows without a reload
        for start in range(2000, 4000, 500):
            client.post("/events", json=_events(start, 500))
        status = _settled(client, 4000)
        expected = f"{status['events']['processed']:,}"
        browser.wait_for(f"document.getElementById('processed').textContent === '{expected}'")
        browser.wait_for("document.getElementById('throughput').textContent !== '-'")
        client.post("/events", json=_events(4000, 1000))
        _settled(client, 5000)
        browser.wait_for("document.getElementById('processed').textContent === '5,000'")
        browser.wait_for("document.getElementById('checkpoint-age').textContent !== 'none'")
        assert browser.evaluate("document.getElementById('drift-alerts').textContent") == str(
            sum(d["alerts"] for d in client.get("/status").json()["drift"].values())
        )
        # traffic while the picture is taken, so that it shows a rate
        for start in range(5000, 8000, 300):
            client.post("/events", json=_events(start, 300))
            time.sleep(0.1)
        browser.wait_for("document.getElementById('throughput').textContent !== '0'")
        shot = tmp_path / "status.png"
        browser.screenshot(shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        target = os.environ.get("FEATURIST_SCREENSHOT")
        if target:
            Path(target).write_bytes(shot.read_bytes())
