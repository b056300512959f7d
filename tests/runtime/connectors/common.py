"""What the connector tests share: a feature set, events, the files that hold them, and the
values a runtime reaches when the same events are ingested directly."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from runtime import (
    CheckpointConfig,
    Count,
    DistinctCount,
    FeatureRuntime,
    FeatureSet,
    Last,
    Max,
    Mean,
    Sum,
    Where,
)

#: event times in 2023: in the past, so never refused as too far ahead of the wall clock
BASE = 1_700_000_000_000
KEYS = ("c1", "c2", "c3", "c4")

FEATURE_SET = FeatureSet(
    name="tx",
    key="card",
    time="ts",
    max_out_of_orderness="1s",
    features=[
        Count(name="n"),
        Sum(name="total", field="amount"),
        Mean(name="avg", field="amount"),
        Max(name="hi", field="amount"),
        Last(name="last_merchant", field="merchant"),
        DistinctCount(name="merchants", field="merchant", exact_limit=100),
        Count(name="approved", where=Where(field="ok", op="==", value=True)),
    ],
)

#: what a CSV of :func:`events` needs to give the same events back
SCHEMA: dict[str, Any] = {"ts": "int", "amount": "float", "ok": "bool"}
COLUMNS = ("card", "ts", "amount", "merchant", "ok")


def events(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` events over :data:`KEYS`, times mostly increasing with some jitter back."""
    out = []
    for i in range(n):
        mix = (i * 7919 + seed * 104729) % 1000
        out.append(
            {
                "card": KEYS[mix % len(KEYS)],
                "ts": BASE + i * 100 - (mix % 3) * 150,
                "amount": round(mix / 7, 3),
                "merchant": f"m{mix % 5}",
                "ok": mix % 4 != 0,
            }
        )
    return out


def write(kind: str, path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """``rows`` as a file of ``kind`` (``jsonl``, ``csv``, ``parquet``); returns the path."""
    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif kind == "csv":
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(COLUMNS)
            for row in rows:
                cells = [row[c] for c in COLUMNS]
                writer.writerow([repr(c) if isinstance(c, float) else str(c) for c in cells])
    else:
        table = pa.Table.from_pylist(list(rows)) if rows else pa.table({c: [] for c in COLUMNS})
        pq.write_table(table, path, row_group_size=7)
    return path


def write_split(
    kind: str, directory: Path, rows: Sequence[dict[str, Any]], parts: int
) -> list[Path]:
    """``rows`` over ``parts`` files of ``kind``, in order."""
    size = -(-len(rows) // parts) if rows else 0
    return [
        write(kind, directory / f"part{i}.{kind}", rows[i * size : (i + 1) * size])
        for i in range(parts)
    ]


def runtime(checkpoints: Path | None = None, **options: Any) -> FeatureRuntime:
    config = None
    if checkpoints is not None:
        config = CheckpointConfig(directory=str(checkpoints), interval=None, on_shutdown=False)
    return FeatureRuntime(FEATURE_SET, shards=2, checkpoints=config, **options)


async def values_of(rt: FeatureRuntime) -> dict[str, dict[str, Any]]:
    found = await rt.get_many(KEYS)
    return {key: vector.values for key, vector in found.items()}


async def direct(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The values of a runtime the events were ingested into directly."""
    async with runtime() as rt:
        await rt.ingest_many([dict(row) for row in rows])
        return await values_of(rt)
