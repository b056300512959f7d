"""A process for the crash test (``test_crash.py``): it runs a stream from a file with periodic
checkpoints, resuming after the restored position, and writes the final feature values.

    python -m tests.runtime.support.crash_child EVENTS DIRECTORY OUTPUT --shards N [--pace SECONDS]

Without DIRECTORY checkpoints (``-``), it is the run that is never interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

from runtime import (
    CheckpointConfig,
    Count,
    DistinctCount,
    FeatureRuntime,
    FeatureSet,
    Hopping,
    Join,
    Last,
    Mean,
    Percentile,
    SequencePattern,
    Session,
    Sliding,
    Step,
    Sum,
    Tumbling,
    Variance,
    Where,
)

FEATURE_SET = FeatureSet(
    name="crash",
    key="user",
    time="ts",
    streams=["tx", "clicks"],
    max_out_of_orderness=200,
    joins=[Join(name="tx_click", left="tx", right="clicks", before=100, after=500, how="left")],
    features=[
        Count(name="n"),
        Sum(name="total", field="amount"),
        Mean(name="avg", field="amount"),
        Variance(name="var", field="amount"),
        Last(name="last_shop", field="shop"),
        DistinctCount(name="shops", field="shop"),
        Count(name="n_1s", window=Sliding(size=1000)),
        Sum(name="sum_1s", field="amount", window=Sliding(size=1000)),
        Percentile(name="p90_1s", field="amount", q=90, window=Sliding(size=1000)),
        Count(name="n_tumbling", window=Tumbling(size=700)),
        Mean(name="avg_hopping", field="amount", window=Hopping(size=900, hop=300)),
        Count(name="n_session", window=Session(gap=400)),
        SequencePattern(
            name="big_then_small",
            within=2000,
            steps=[
                Step(where=Where(field="amount", op=">", value=80)),
                Step(where=Where(field="amount", op="<", value=10)),
            ],
        ),
        Count(name="clicked", stream="tx_click"),
    ],
)


def read_events(path: str) -> list[Any]:
    with open(path) as file:
        return [json.loads(line) for line in file]


def write_values(path: str, values: dict[str, Any]) -> None:
    with open(path, "w") as file:
        json.dump(values, file, sort_keys=True)


async def main(args: argparse.Namespace) -> None:
    events = read_events(args.events)
    checkpoints = (
        None
        if args.directory == "-"
        else CheckpointConfig(directory=args.directory, interval=0.05, keep=2)
    )
    async with FeatureRuntime(
        FEATURE_SET, shards=args.shards, batch_size=32, checkpoints=checkpoints
    ) as rt:
        # where to resume: the offset of the last call the checkpoint covers (which is also
        # the number of events read, as every event here is read by one call with an offset)
        start = rt.offset or 0
        assert start == rt.position, (start, rt.position)
        print(f"resuming at {start}", flush=True)
        for index in range(start, len(events), 50):
            chunk = events[index : index + 50]
            await rt.ingest_many(
                [e for _, e in chunk], stream=[s for s, _ in chunk], offset=index + len(chunk)
            )
            if rt.last_checkpoint is not None:
                print(f"checkpoint {rt.last_checkpoint.position}", flush=True)
            if args.pace:
                await anyio.sleep(args.pace)
        await rt.flush()
        keys = sorted({e["user"] for _, e in events}, key=str)
        vectors = await rt.get_many(keys)
        values = {str(key): vector.values for key, vector in vectors.items()}
    write_values(args.output, values)
    print("done", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("events")
    parser.add_argument("directory")
    parser.add_argument("output")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--pace", type=float, default=0.0)
    anyio.run(main, parser.parse_args(), backend_options={"use_uvloop": True})
    sys.exit(0)
