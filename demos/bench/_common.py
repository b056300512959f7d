"""Helpers shared by the benchmarks: timing, peak memory, a plain table printer, child
processes per case, and the checksum both sides of a bench fold their outputs into."""

from __future__ import annotations

import gc
import math
import multiprocessing
import resource
import sys
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from queue import Empty
from typing import Any

import anyio

from runtime import configure_logging


@dataclass
class Row:
    name: str
    values: dict[str, str] = field(default_factory=dict)


def quiet_logs() -> None:
    """Show only warnings and errors from the library."""
    configure_logging(level="warning")


def peak_rss_mib() -> float:
    """The process's peak resident set size so far, in MiB.

    On Linux it is ``VmHWM`` of ``/proc/self/status``: the peak of this process's own memory.
    ``ru_maxrss`` is not, there: it keeps the parent's peak at ``fork`` across ``exec``, so a
    child started by a big process (a test run) reports at least the parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class Timer:
    """``with Timer() as t: ...``; then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def print_table(title: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
    """Print rows as an aligned text table (plain text, so it reads the same in CI logs)."""
    header = ["case", *columns]
    body = [[row.name, *(row.values.get(c, "") for c in columns)] for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    print(f"\n{title}")
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    print("  ".join("-" * w for w in widths))
    for r in body:
        print(
            "  ".join(
                str(v).ljust(w) if i == 0 else str(v).rjust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "inf"


def in_child(target: Callable[[dict[str, Any], Any], None], spec: dict[str, Any]) -> Any:
    """Run ``target(spec, queue)`` in a forked child process and return what it put on the
    queue: each case has a process of its own, so its peak RSS is its own."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=target, args=(spec, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(
                    f"the benchmark's child process ended (exit code {process.exitcode}) "
                    "without a result: see its traceback above"
                ) from None
    process.join()
    return result


# -- checksums of per-event outputs ---------------------------------------------------------
#
# Both sides of a bench fold each output into one checksum with the same function, so they
# pay the same for it, and the bench fails when the sums differ. The fold is a sum modulo
# 2**64 of a hash of (key hash, event time, values): a sum, so that the order of outputs
# across keys (which differs with the shard count) does not matter, and a hash of the whole
# tuple, so that a wrong value, a wrong time or an output on the wrong key changes it.
#
# Floats are folded rounded to 40 significant bits (about 12 significant digits, by
# Veltkamp's split: three float operations, no call), not as their exact bits: a sum computed
# in another order differs in its last bits while being as right. The baselines copy the
# order of additions of the runtime where it matters (the sums of a sliding window), so the
# bits agree too and no value sits across a rounding boundary; the rounding is there so that
# a harmless change of order in either does not read as a wrong result.
#
# The tuple's hash is the builtin ``hash``: of ints and floats only (keys enter as crc32 of
# their text), and the hash of a number is its value modulo 2**61 - 1, not salted per process
# as that of a str is, so both children of a run, or two runs, agree on it.

_MASK = (1 << 64) - 1
#: 2**13 + 1: v * _SPLIT - (v * _SPLIT - v) is v rounded to 53 - 13 = 40 significant bits
_SPLIT = 8193.0


def sig(v: Any) -> Any:
    """``v`` rounded as the checksum rounds it: a number to 40 significant bits (a float)."""
    if v is None:
        return None
    c = v * _SPLIT
    return c - (c - v)


class Checksum:
    """An order-independent checksum of outputs and their count: ``fold(kh, t, a, b, c, d)``
    per output (``kh``: the key's hash from :func:`key_hashes`, ``t``: the event time, ``a``
    to ``d``: numbers, missing ones 0)."""

    __slots__ = ("count", "sink", "total")

    def __init__(self, sink: list[tuple[Any, ...]] | None = None) -> None:
        self.total = 0
        self.count = 0
        #: when a list: every output is also kept there (for diagnosis, on small runs)
        self.sink = sink

    def fold(self, kh: int, t: int, a: Any, b: Any = 0, c: Any = 0, d: Any = 0) -> None:
        ca, cb, cc, cd = a * _SPLIT, b * _SPLIT, c * _SPLIT, d * _SPLIT
        self.total += hash((kh, t, ca - (ca - a), cb - (cb - b), cc - (cc - c), cd - (cd - d)))
        self.count += 1
        if self.sink is not None:
            self.sink.append((kh, t, a, b, c, d))

    def value(self) -> tuple[int, int]:
        return self.total & _MASK, self.count


def key_hashes(keys: Iterable[Any]) -> dict[Any, int]:
    """crc32 of each key's ``str``: computed with the input, so neither side pays for it."""
    return {key: zlib.crc32(str(key).encode()) for key in keys}


def fold_seconds(outputs: int, values: int = 4) -> float:
    """What folding ``outputs`` outputs costs on this machine: the fastest of five rounds of
    100,000 folds (the fastest, so that a burst of other load does not inflate it). Both sides
    pay it, so the bench shows the ratio with and without it."""
    checksum = Checksum()
    fold = checksum.fold
    sample = 100_000
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        if values == 1:
            for i in range(sample):
                fold(i, i, 1.5 * i)
        else:
            for i in range(sample):
                fold(i, i, i, 1.5 * i, 0.5 * i, 2.5 * i)
        best = min(best, time.perf_counter() - start)
    return best / sample * outputs


def net_ratio(base: float, seconds: float, fold: float) -> str:
    """The ratio of two sides' times with the checksum's cost, paid by both, taken off; "-"
    where the checksum is most of the baseline's time (over three quarters), as the
    difference of two near numbers would say more of the noise than of the runtime."""
    if base <= fold or seconds <= fold or fold > 0.75 * base:
        return "-"
    return f"{(base - fold) / (seconds - fold):.2f}"


def check_agreement(
    title: str,
    expected: tuple[int, int],
    got: tuple[int, int],
    diagnose: Callable[[], list[str]] | None = None,
) -> None:
    """Exit non-zero, loudly, when two checksums differ; ``diagnose`` finds differing outputs
    (by re-running both sides small) and returns lines to print."""
    if expected == got:
        return
    print(f"\nMISMATCH in {title}:", file=sys.stderr)
    print(f"  baseline: checksum {expected[0]:#018x}, {expected[1]:,} outputs", file=sys.stderr)
    print(f"  runtime:  checksum {got[0]:#018x}, {got[1]:,} outputs", file=sys.stderr)
    if diagnose is not None:
        for line in diagnose():
            print(f"  {line}", file=sys.stderr)
    raise SystemExit(1)


def diff_outputs(
    baseline: list[tuple[Any, ...]], runtime: list[tuple[Any, ...]], limit: int = 10
) -> list[str]:
    """The first outputs that one side has and the other has not (as multisets, order aside)."""
    left = Counter((o[0], o[1], *(sig(v) for v in o[2:])) for o in baseline)
    right = Counter((o[0], o[1], *(sig(v) for v in o[2:])) for o in runtime)
    exact = {(o[0], o[1], *(sig(v) for v in o[2:])): o for o in [*baseline, *runtime]}
    only_left = list((left - right).elements())
    only_right = list((right - left).elements())
    if not only_left and not only_right:
        return [
            f"the first {len(baseline):,} events give the same outputs on both sides: "
            "the difference is further on (run with more --events to find it)"
        ]
    lines = [
        f"on the first events: {len(only_left):,} outputs only in the baseline, "
        f"{len(only_right):,} only in the runtime; (key hash, time, values):"
    ]
    by_time = sorted(
        [("baseline", o) for o in only_left] + [("runtime ", o) for o in only_right],
        key=lambda item: (item[1][1], item[1][0]),
    )
    for side, o in by_time[:limit]:
        lines.append(f"{side} {exact[o]!r}")
    return lines


def cases_in_children(
    target: Callable[[dict[str, Any]], Any], spec: dict[str, Any], repeat: int
) -> list[Any]:
    """Run ``target(spec)`` ``repeat`` times, each in a forked child process (which inherits
    the input the parent made and froze), and return the results. A case's peak RSS is its
    own: :func:`peak_rss_mib` read in the child."""
    return rounds_in_children(target, [spec], repeat)[0]


def rounds_in_children(
    target: Callable[[dict[str, Any]], Any], specs: Sequence[dict[str, Any]], repeat: int
) -> list[list[Any]]:
    """Run ``target(spec)`` for each spec in turn, ``repeat`` rounds, each run in a forked
    child (which inherits the input the parent made and froze; a case's peak RSS is its own);
    the results of each spec, by round. Interleaved, the
    cases of one round meet the same machine: a machine shared with other work drifts by tens
    of percent over a minute, and cases run one after the other would compare two moods of
    it (the ratios of a round's pair show how far it moved)."""

    def child(spec: dict[str, Any], queue: Any) -> None:
        queue.put(target(spec))

    results: list[list[Any]] = [[] for _ in specs]
    for _ in range(max(1, repeat)):
        for index, spec in enumerate(specs):
            results[index].append(in_child(child, spec))
    return results


def round_ratios(base: list[Any], other: list[Any]) -> str:
    """The range of the rounds' ratios ``base seconds / other seconds``, as ``low-high``."""
    ratios = [b["seconds"] / o["seconds"] for b, o in zip(base, other, strict=True)]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def fastest(results: list[Any]) -> Any:
    """The result with the least ``seconds``: the run least disturbed by the machine."""
    return min(results, key=lambda r: r["seconds"])


def freeze_input() -> None:
    """Move what exists now (the generated input) out of the collector's sight, for both
    sides alike, so full collections do not rescan millions of dicts (``gc.freeze``).

    The hand-written loops run with Python's own collector (first threshold 700), which suits
    them: the runtime's threshold (10,000, ``FeatureRuntime(gc_threshold=)``) gave them
    nothing, interleaved A/B of five or six runs each: the aggregates plain loop, 2M events,
    best 2.42 s of CPU at 700 against 2.68 s at 10,000; the enrichment DataLoader loop best
    1.19 s against 1.16 s. (The connectors bench, whose bare reads do gain from it, sets
    ``--gc-threshold`` for both sides.)"""
    gc.collect()
    gc.freeze()


async def run_with_consumer(
    runtime: Any,
    subscribe: Callable[[Any], Any],
    consume: Callable[[Any, Checksum], Awaitable[None]],
    feed: Callable[[Any], Awaitable[None]],
    sink: list[tuple[Any, ...]] | None = None,
) -> dict[str, Any]:
    """The runtime side of a bench: in ``async with runtime as rt``, a consumer task reads
    every output of ``subscribe(rt)`` and folds it (``consume(subscription, checksum)``)
    beside the producer (``feed(rt)``: ingest, then the bench flushes and closes the
    subscription, which ends the consumer once it has read what is buffered).

    Timed: from the first ingest to the consumer having read the last output. Returns the
    seconds, the checksum, the runtime's statistics and the peak RSS."""
    checksum = Checksum(sink)
    ended = 0.0
    async with runtime as rt:
        subscription = subscribe(rt)

        async def consumer() -> None:
            nonlocal ended
            await consume(subscription, checksum)
            ended = time.perf_counter()

        gc.collect()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(consumer)
            started = time.perf_counter()
            await feed(rt)
            await rt.flush()
            await subscription.aclose()
        stats = await rt.statistics()
    return {
        "seconds": ended - started,
        "checksum": checksum.value(),
        "stats": stats,
        "rss": peak_rss_mib(),
    }
