"""Helpers shared by the benchmarks: timing, peak memory and a plain table printer."""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from queue import Empty
from typing import Any

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
