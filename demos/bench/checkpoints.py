"""``python -m demos.bench checkpoints``: what a checkpoint costs, and restoring vs replaying.

The workload: ``--events`` (600,000) card transactions over ``--keys`` (20,000) cards (about
three hours of event time), with
the fraud demo's kind of features (keyed counts, sums, means, a distinct count, and sliding
windows of 10 minutes and 1 hour with a percentile). After the stream, one checkpoint is taken
(``rt.checkpoint()``): printed are the time ingest waited (the pause), the whole time with the
file written, and the file's size per key. Then the checkpoint is restored into a new runtime
with ``--restore-shards`` (8): the time until it serves, against the baseline measured in the
same run: rebuilding the same state by replaying the events into an empty runtime, which is
what a restart without checkpoints costs. The restored values are checked against the replay.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from typing import Any

from actors import run
from runtime import (
    CheckpointConfig,
    Count,
    DistinctCount,
    FeatureRuntime,
    FeatureSet,
    Max,
    Mean,
    Percentile,
    Sliding,
    Sum,
)

from ._common import Row, print_table, quiet_logs

FEATURES = FeatureSet(
    name="bench",
    key="card",
    time="ts",
    features=[
        Count(name="n"),
        Sum(name="total", field="amount"),
        Mean(name="avg", field="amount"),
        Max(name="biggest", field="amount"),
        DistinctCount(name="merchants", field="merchant"),
        Count(name="n_10m", window=Sliding(size="10m")),
        Sum(name="sum_1h", field="amount", window=Sliding(size="1h")),
        Percentile(name="p90_1h", field="amount", q=90, window=Sliding(size="1h")),
    ],
)


def make_events(n: int, keys: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    t = 1_700_000_000_000
    events = []
    for _ in range(n):
        t += rng.randint(0, 40)
        events.append(
            {
                "card": f"card-{rng.randrange(keys):06d}",
                "ts": t,
                "amount": round(rng.lognormvariate(3, 1), 2),
                "merchant": f"m{rng.randrange(500)}",
            }
        )
    return events


async def measure(args: argparse.Namespace) -> list[Row]:
    events = make_events(args.events, args.keys, args.seed)
    sample = sorted({e["card"] for e in events[:: max(1, len(events) // 200)]})
    with tempfile.TemporaryDirectory() as directory:
        config = CheckpointConfig(directory=directory, interval=None, on_shutdown=False)
        async with FeatureRuntime(FEATURES, shards=args.shards, checkpoints=config) as rt:
            await rt.ingest_many(events)
            await rt.flush()
            info = await rt.checkpoint()
        started = time.perf_counter()
        async with FeatureRuntime(FEATURES, shards=args.restore_shards, checkpoints=config) as rt:
            restore_s = time.perf_counter() - started
            restored = await rt.get_many(sample)
    started = time.perf_counter()
    async with FeatureRuntime(FEATURES, shards=args.restore_shards) as rt:
        await rt.ingest_many(events)
        await rt.flush()
        replay_s = time.perf_counter() - started
        replayed = await rt.get_many(sample)
    for key in sample:
        assert restored[key].values == replayed[key].values, key
    keys = info.keys
    return [
        Row(
            "replay the events (baseline)",
            {"seconds": f"{replay_s:.2f}", "ratio": "1.00", "keys": f"{keys:,}"},
        ),
        Row(
            f"restore the checkpoint ({info.shards} -> {args.restore_shards} shards)",
            {
                "seconds": f"{restore_s:.2f}",
                "ratio": f"{restore_s / replay_s:.2f}",
                "keys": f"{keys:,}",
            },
        ),
        Row(
            "take the checkpoint: ingest paused",
            {"seconds": f"{info.pause_ms / 1000:.2f}", "keys": f"{keys:,}"},
        ),
        Row(
            "take the checkpoint: with the file written",
            {
                "seconds": f"{info.duration_ms / 1000:.2f}",
                "keys": f"{keys:,}",
                "bytes/key": f"{info.size_bytes / keys:,.0f}",
                "MiB": f"{info.size_bytes / 2**20:,.1f}",
            },
        ),
    ]


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demos.bench checkpoints",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=4, help="shards of the first run (4)")
    parser.add_argument("--restore-shards", type=int, default=8, help="after the restore (8)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    quiet_logs()
    rows = run(lambda: measure(args))
    print_table(
        f"checkpoints: {args.events:,} events over {args.keys:,} keys",
        ["seconds", "ratio", "keys", "bytes/key", "MiB"],
        rows,
    )
