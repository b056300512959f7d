"""The feature service over HTTP: a real uvicorn on 127.0.0.1, driven with httpx."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import msgspec
import pytest

from runtime import (
    Count,
    FeatureSet,
    JsonLinesSource,
    Sink,
    Sliding,
    Sum,
    UpdateBatch,
    create_app,
)

from .server import free_port, serving, wait_ready

T0 = 1_700_000_000_000
SPEC = """
name = "payments"
key = "card"
time = "ts"

[[features]]
type = "count"
name = "n"

[[features]]
type = "sum"
name = "total"
field = "amount"

[[features]]
type = "count"
name = "n_10s"
window = { type = "sliding", size = "10s" }
"""
FEATURES = FeatureSet(
    name="payments",
    key="card",
    time="ts",
    features=[
        Count(name="n"),
        Sum(name="total", field="amount"),
        Count(name="n_10s", window=Sliding(size="10s")),
    ],
)


def test_the_spec_file_and_the_set_agree(tmp_path: Path) -> None:
    path = tmp_path / "features.toml"
    path.write_text(SPEC)
    assert FeatureSet.from_file(path) == FEATURES


def test_events_in_features_out_json_and_msgpack(tmp_path: Path) -> None:
    path = tmp_path / "features.toml"
    path.write_text(SPEC)
    with serving(create_app(path, shards=2)) as url, httpx.Client(base_url=url) as client:
        one = client.post("/events", json={"card": "c1", "ts": T0, "amount": 2.5})
        assert one.status_code == 200 and one.json() == {"accepted": 1}
        many = [{"card": "c1", "ts": T0 + i, "amount": 1.0} for i in range(1, 4)]
        many.append({"card": "c2", "ts": T0, "amount": 7.0})
        packed = client.post(
            "/events",
            content=msgspec.msgpack.encode(many),
            headers={"content-type": "application/msgpack"},
        )
        assert packed.json() == {"accepted": 4}
        vector = client.get("/features/c1").json()
        assert vector["key"] == "c1"
        assert vector["values"] == {"n": 4, "total": 5.5, "n_10s": 4}
        assert vector["last_event_time"] == T0 + 3
        subset = client.get("/features/c1", params={"features": "n,total"}).json()
        assert subset["values"] == {"n": 4, "total": 5.5}
        repeated = client.get("/features/c1?features=n&features=n_10s").json()
        assert repeated["values"] == {"n": 4, "n_10s": 4}
        batch = client.post("/features", json={"keys": ["c2", "c1", "nobody", "c2"]}).json()
        assert [v["key"] for v in batch["vectors"]] == ["c2", "c1", "nobody"]
        assert [v["values"]["n"] for v in batch["vectors"]] == [1, 4, 0]
        assert batch["vectors"][2]["last_event_time"] is None


def test_a_rejected_event_answers_422_with_its_reason_and_field() -> None:
    with serving(create_app(FEATURES, shards=1)) as url, httpx.Client(base_url=url) as client:
        bad = client.post("/events", json={"card": "c1", "amount": 1.0})
        assert bad.status_code == 422
        body = bad.json()
        assert body["error"] == "invalid_event" and body["field"] == "ts"
        assert "ts" in body["detail"] and body["accepted"] == 0
        assert body["rejected"] == [{"index": 0, "field": "ts", "reason": body["detail"]}]
        mixed = [
            {"card": "c1", "ts": T0},
            {"card": ["not", "a", "key"], "ts": T0},
            {"card": "c1", "ts": "yesterday"},
            17,
        ]
        answer = client.post("/events", json=mixed)
        assert answer.status_code == 422
        rejected = answer.json()["rejected"]
        assert [r["index"] for r in rejected] == [1, 2, 3]
        assert [r["field"] for r in rejected] == ["card", "ts", None]
        # the others of the request are ingested, and counted
        assert answer.json()["accepted"] == 1
        assert client.get("/features/c1").json()["values"]["n"] == 1
        undecodable = client.post(
            "/events", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert undecodable.status_code == 400 and undecodable.json()["error"] == "bad_body"
        stream = client.post("/events?stream=nope", json={"card": "c1", "ts": T0})
        assert stream.status_code == 400 and stream.json()["error"] == "unknown_stream"


def test_keys_from_urls_are_typed() -> None:
    events = [
        {"card": 42, "ts": T0},
        {"card": "42x", "ts": T0},
        {"card": "007", "ts": T0},
        {"card": -5, "ts": T0},
    ]
    with serving(create_app(FEATURES, shards=2)) as url, httpx.Client(base_url=url) as client:
        assert client.post("/events", json=events).json() == {"accepted": 4}
        answer = client.get("/features/42").json()
        assert answer["key"] == 42 and answer["values"]["n"] == 1
        assert client.get("/features/42x").json()["values"]["n"] == 1
        # not a canonical int: a str key
        assert client.get("/features/007").json()["key"] == "007"
        assert client.get("/features/-5").json()["key"] == -5
        assert client.get(f"/features/{2**64}").json()["key"] == str(2**64)
        both = client.post("/features", json={"keys": [42, "42"]}).json()["vectors"]
        assert [(v["key"], v["values"]["n"]) for v in both] == [(42, 1), ("42", 0)]
    with serving(create_app(FEATURES, key_type="str")) as url, httpx.Client(base_url=url) as client:
        client.post("/events", json=events)
        assert client.get("/features/42").json() == client.get("/features/42").json()
        assert client.get("/features/42").json()["key"] == "42"
        assert client.get("/features/007").json()["values"]["n"] == 1
    with serving(create_app(FEATURES, key_type="int")) as url, httpx.Client(base_url=url) as client:
        client.post("/events", json=events[:1])
        assert client.get("/features/42").json()["values"]["n"] == 1
        refused = client.get("/features/42x")
        assert refused.status_code == 400 and refused.json()["error"] == "bad_key"


def test_errors_are_mapped() -> None:
    with serving(create_app(FEATURES)) as url, httpx.Client(base_url=url) as client:
        unknown = client.get("/features/c1", params={"features": "n,nope"})
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_feature"
        assert "nope" in unknown.json()["detail"]
        batch = client.post("/features", json={"keys": ["c1"], "features": ["nope"]})
        assert batch.status_code == 404
        assert client.post("/features", json={"key": "c1"}).status_code == 400
        assert client.post("/features", json={"keys": [["a"]]}).status_code == 400
        # Starlette's own answers are JSON too, as every error of the service
        nowhere = client.get("/nowhere")
        assert nowhere.status_code == 404
        assert nowhere.json() == {"error": "not_found", "detail": "Not Found"}
        wrong_method = client.get("/events")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"] == "method_not_allowed"
        assert wrong_method.headers["allow"] == "POST"
    with serving(create_app(FEATURES, max_keys=2)) as url, httpx.Client(base_url=url) as client:
        too_many = client.post("/features", json={"keys": [1, 2, 3]})
        assert too_many.status_code == 413 and too_many.json()["error"] == "too_many_keys"


def test_reads_as_of_a_time() -> None:
    with serving(create_app(FEATURES)) as url, httpx.Client(base_url=url) as client:
        client.post("/events", json=[{"card": "c1", "ts": T0}, {"card": "c1", "ts": T0 + 1000}])
        now = client.get("/features/c1").json()
        assert now["values"]["n_10s"] == 2
        later = client.get("/features/c1", params={"as_of": str(T0 + 10_500)}).json()
        assert later["values"]["n_10s"] == 1 and later["as_of"] == T0 + 10_500
        iso = client.get("/features/c1", params={"as_of": "2023-11-14T22:14:00Z"}).json()
        assert iso["values"]["n_10s"] == 0
        many = client.post("/features", json={"keys": ["c1"], "as_of": T0 + 10_500}).json()
        assert many["vectors"][0]["values"]["n_10s"] == 1
        bad = client.get("/features/c1", params={"as_of": "soon"})
        assert bad.status_code == 400


def test_health_readiness_metrics_openapi(tmp_path: Path) -> None:
    lines = [json.dumps({"card": f"c{i % 7}", "ts": T0 + i, "amount": 1}) for i in range(500)]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    source = JsonLinesSource(tmp_path / "events.jsonl")
    app = create_app(FEATURES, inputs=[source], checkpoints=tmp_path / "ck")
    with serving(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        deadline = time.monotonic() + 10
        while (ready := client.get("/readyz")).status_code != 200:
            assert ready.json()["waiting_for"] == ["events.jsonl"] or ready.json()["waiting_for"]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert ready.json()["ready"] is True and ready.json()["restored_checkpoint"] is None
        total = client.post("/features", json={"keys": [f"c{i}" for i in range(7)]}).json()
        assert sum(v["values"]["n"] for v in total["vectors"]) == 500
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "featurist_events_ingested_total 500.0" in metrics.text
        schema = client.get("/openapi.json").json()
        assert schema["openapi"].startswith("3.")
        assert set(schema["paths"]) >= {"/events", "/features/{key}", "/features", "/metrics"}
        status = client.get("/status").json()
        assert status["events"]["ingested"] == 500 and status["inputs"][0]["caught_up"]


def test_a_failed_input_shows_on_healthz(tmp_path: Path) -> None:
    source = JsonLinesSource(tmp_path / "missing.jsonl")
    with serving(create_app(FEATURES, inputs=[source])) as url, httpx.Client(base_url=url) as c:
        deadline = time.monotonic() + 10
        while (health := c.get("/healthz")).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert health.status_code == 503
        assert "missing.jsonl" in health.json()["inputs"][0]["error"]
        assert re.fullmatch(
            r"input 'jsonl:.*missing.jsonl' failed: FileNotFoundError: .*", health.json()["detail"]
        )
        assert c.get("/readyz").status_code == 503


class _BrokenSink(Sink):
    """A sink whose every write fails."""

    name = "broken"

    async def write(self, batches: Sequence[UpdateBatch]) -> None:
        raise ConnectionError("the store is down")


def test_a_failed_sink_shows_on_healthz_and_the_service_stays_up() -> None:
    app = create_app(FEATURES, sinks=[_BrokenSink()])
    with serving(app) as url, httpx.Client(base_url=url) as c:
        event = {"card": "c1", "ts": 1_700_000_000_000, "amount": 5.0}
        assert c.post("/events", json=event).status_code == 200
        deadline = time.monotonic() + 20  # run_sink's retries, then it gives up
        while (health := c.get("/healthz")).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert health.status_code == 503
        assert "the store is down" in health.json()["sinks"][0]["error"]
        assert health.json()["detail"].startswith("sink 'broken' failed: ")
        # the service goes on: writes and reads are still answered
        assert c.post("/events", json={**event, "ts": event["ts"] + 1}).status_code == 200
        assert c.get("/features/c1").status_code == 200
        assert c.get("/status").json()["sinks"][0]["error"] is not None


def test_a_stopped_runtime_answers_503() -> None:
    app = create_app(FEATURES)
    with serving(app) as url, httpx.Client(base_url=url) as client:
        service = app.state.service
        rt = service.rt
        rt._running = False  # as after a failure past max_restarts: calls raise RuntimeClosed
        try:
            answer = client.get("/features/c1")
            assert answer.status_code == 503 and answer.json()["error"] == "runtime_closed"
            assert client.post("/events", json={"card": "c", "ts": T0}).status_code == 503
            assert client.get("/healthz").status_code == 503
        finally:
            rt._running = True


#: the command line: as a module, and as the ``featurist`` console script installed beside
#: this Python (``[project.scripts]``)
_COMMANDS = {
    "module": [sys.executable, "-m", "runtime"],
    "script": [str(Path(sys.executable).with_name("featurist"))],
}


@pytest.mark.parametrize("how", sorted(_COMMANDS))
def test_the_command_line_serves_a_spec_file_with_workers(tmp_path: Path, how: str) -> None:

    path = tmp_path / "features.toml"
    path.write_text(SPEC)
    port = free_port()
    # with worker processes: they are spawned, and import ``runtime.__main__`` again
    command = [*_COMMANDS[how], "serve", str(path), "--port", str(port)]
    command += ["--shards", "1", "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process)
        httpx.post(f"{url}/events", json={"card": 7, "ts": T0, "amount": 3})
        assert httpx.get(f"{url}/features/7").json()["values"]["total"] == 3
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    # uvicorn shuts down gracefully, then re-raises the signal
    assert process.returncode in (0, -signal.SIGTERM), err.decode()
    assert b"Application shutdown complete" in err


def test_bad_command_lines_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "features.toml"
    path.write_text(SPEC)
    for extra in (["--input", "kafka://x"], ["--sink", "nats://h?nope=1"], ["--input", "a.txt"]):
        done = subprocess.run(
            [sys.executable, "-m", "runtime", "serve", str(path), *extra],
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 2 and b"error:" in done.stderr
