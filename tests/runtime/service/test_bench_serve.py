"""``python -m demos.bench serve`` at a tiny size: it runs, every request answers 200, and it
prints each phase and the reads' share of the floor."""

from __future__ import annotations

import subprocess
import sys


def test_the_serve_bench_runs_every_phase() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "demos.bench", "serve", "--requests", "300", "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for phase in ("floor:", "writes: POST /events, 1 event", "reads: GET /features/{key}"):
        assert phase in done.stdout
    assert "floor again" in done.stdout and "of the HTTP floor" in done.stdout
