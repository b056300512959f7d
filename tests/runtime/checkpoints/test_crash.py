"""The crash test: a process is killed with SIGKILL in the middle of a stream, restarts from its
last checkpoint, replays from the recorded offset, and ends with the values of a run that was
never interrupted (with another shard count after the crash, too)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = "tests.runtime.support.crash_child"
ROOT = Path(__file__).resolve().parents[3]


def write_events(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    t = 1_000_000
    with open(path, "w") as file:
        for _ in range(n):
            t += rng.choice([0, 5, 20, 60, 150])
            event = {
                "user": rng.choice([f"u{i}" for i in range(40)] + list(range(10))),
                "ts": t - rng.choice([0, 0, 0, 50, 180, 400]),  # out of order, some late
                "amount": rng.choice([rng.randint(0, 100), rng.uniform(0, 100), None, "n/a"]),
                "shop": rng.choice(["s1", "s2", "s3", "s4"]),
            }
            file.write(json.dumps([rng.choice(["tx", "tx", "clicks"]), event]) + "\n")


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", CHILD, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def run_to_end(*args: str) -> list[str]:
    child = start(*args)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0, out
    return out.splitlines()


def kill_after_checkpoints(child: subprocess.Popen[str], checkpoints: int) -> int:
    """Read the child's lines until it reports ``checkpoints`` checkpoints past its start,
    then SIGKILL it; returns the last checkpoint position it reported."""
    assert child.stdout is not None
    seen: set[int] = set()
    resumed = -1
    deadline = time.monotonic() + 60
    for line in child.stdout:
        if line.startswith("resuming at"):
            resumed = int(line.split()[-1])
        if line.startswith("checkpoint"):
            position = int(line.split()[-1])
            if position > resumed:
                seen.add(position)
        if len(seen) >= checkpoints or time.monotonic() > deadline:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert seen, "the child took no checkpoint before it was killed"
    return max(seen)


def test_a_process_killed_mid_stream_resumes_from_its_checkpoint_with_the_same_values(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events.jsonl"
    n = 6000
    write_events(events, n, seed=7)
    reference = tmp_path / "reference.json"
    run_to_end(str(events), "-", str(reference), "--shards", "4")

    state = tmp_path / "state"
    result = tmp_path / "result.json"
    # killed twice, at different points, each time after at least two new checkpoints
    first = start(str(events), str(state), str(result), "--shards", "4", "--pace", "0.01")
    killed_at = kill_after_checkpoints(first, 2)
    assert 0 < killed_at < n
    second = start(str(events), str(state), str(result), "--shards", "2", "--pace", "0.01")
    killed_again_at = kill_after_checkpoints(second, 2)
    assert killed_at < killed_again_at < n
    assert not result.exists()
    # the last restart (with 7 shards: rescaled again) runs to the end
    lines = run_to_end(str(events), str(state), str(result), "--shards", "7")
    resumed = int(lines[0].split()[-1])
    assert killed_again_at <= resumed < n
    assert json.loads(result.read_text()) == json.loads(reference.read_text())
