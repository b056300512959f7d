"""Small helpers shared by the demo tests: a demo run as a command, as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_demo(
    module: str, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -W error -m <module> <args>`` in the project's root; its output as text.
    ``env``: variables set for it, on top of this process's environment (given whole, so it
    holds what ``os.environ`` holds and nothing else)."""
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


def json_summary(module: str, *args: str) -> dict[str, Any]:
    """The summary that ``module`` prints with ``args --quiet --json``; the run must succeed
    and write nothing to stderr."""
    result = run_demo(module, *args, "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary
