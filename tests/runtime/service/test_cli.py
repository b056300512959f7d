"""``featurist serve``'s options: checked before anything starts, and a deadline for a graceful
shutdown."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime._service.cli import main

from .server import free_port, wait_ready
from .test_service import SPEC, T0


@pytest.fixture
def spec(tmp_path: Path) -> str:
    path = tmp_path / "features.toml"
    path.write_text(SPEC)
    return str(path)


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``uvicorn.run`` replaced: the options ``main`` would serve with, and no server."""
    import uvicorn

    calls: list[dict[str, Any]] = []

    def run(app: Any, **options: Any) -> None:
        calls.append(options)

    monkeypatch.setattr(uvicorn, "run", run)
    return calls


def test_serve_gives_uvicorn_a_deadline_for_a_graceful_shutdown(
    spec: str, runs: list[dict[str, Any]]
) -> None:
    assert main(["serve", spec]) == 0
    assert runs[-1]["timeout_graceful_shutdown"] == 10
    assert main(["serve", spec, "--graceful-timeout", "25", "--port", "0"]) == 0
    assert runs[-1]["timeout_graceful_shutdown"] == 25 and runs[-1]["port"] == 0


_PORT = "argument --port: must be a port number from 0 to 65535,"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--port", "99999"], f"{_PORT} got '99999'"),
        (["--port", "-1"], f"{_PORT} got '-1'"),
        (["--port", "http"], f"{_PORT} got 'http'"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
        (["--shards", "0"], "argument --shards: must be an int >= 1, got '0'"),
        (["--workers", "-1"], "argument --workers: must be an int >= 0, got '-1'"),
        (
            ["--graceful-timeout", "-5"],
            "argument --graceful-timeout: must be a number of seconds >= 0, got '-5'",
        ),
    ],
)
def test_a_bad_option_exits_2_with_one_line(
    spec: str,
    runs: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", spec, *options])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert runs == []  # nothing served


def test_runtime_options_the_runtime_refuses_exit_2_before_serving(
    spec: str, runs: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    # each is in range alone; together, more shards than the key groups (a traceback in the
    # server's log at startup, before)
    assert main(["serve", spec, "--shards", "200", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: shards x workers must be at most key_groups (256)")
    assert err.count("\n") == 1 and runs == []


def test_sigterm_stops_within_the_deadline_while_a_client_trickles_a_body(
    spec: str, tmp_path: Path
) -> None:
    port = free_port()
    checkpoints = tmp_path / "checkpoints"
    command = [sys.executable, "-m", "runtime", "serve", spec, "--port", str(port)]
    command += ["--shards", "1", "--checkpoints", str(checkpoints), "--graceful-timeout", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process)
        assert httpx.post(f"{url}/events", json={"card": "c1", "ts": T0}).status_code == 200
        with socket.create_connection(("127.0.0.1", port)) as trickle:
            trickle.sendall(
                b"POST /events HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
                b'transfer-encoding: chunked\r\n\r\n9\r\n{"card": \r\n'
            )  # and no more: the body never ends
            time.sleep(0.2)
            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            # without a deadline, uvicorn waits for the request for ever
            _, err = process.communicate(timeout=30)
            took = time.monotonic() - stopping
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode in (0, -signal.SIGTERM), err.decode()
    assert took < 15, err.decode()
    assert b"timeout graceful shutdown exceeded" in err
    assert b"Application shutdown complete" in err
    # the runtime stopped as it does: with a last checkpoint
    assert any(checkpoints.iterdir())
