"""What the demos' displays share: the progress display while they run, and the summary after.

A demo lays out its progress display with ``progress_display`` from its own columns, among
them ``label`` (the task's description), ``CountColumn`` and ``RateColumn``. Its summary
(printed on ``summary_console()``) opens with ``headline``; a table of facts (name, value, a
dim remark) comes from ``facts``, with the rows ``add_throughput`` and ``add_latency`` that the
demos share; any other table from ``table``, with the notes under it from ``note``. Times and
sizes are written with ``format_ms`` and ``format_bytes``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, overload

from rich import box
from rich.console import Console
from rich.progress import Progress, ProgressColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

__all__ = [
    "WIDTH",
    "CountColumn",
    "RateColumn",
    "add_latency",
    "add_throughput",
    "facts",
    "format_bytes",
    "format_ms",
    "headline",
    "label",
    "note",
    "progress_display",
    "summary_console",
    "table",
]

#: The width of the summary's console when stdout is not a terminal (and COLUMNS is not set):
#: wide enough for the demos' tables in logs and pipes.
WIDTH = 100

# -- progress -------------------------------------------------------------------------------------

P = TypeVar("P", bound=Progress)


@overload
def progress_display(
    console: Console, *columns: str | ProgressColumn, disable: bool
) -> Progress: ...
@overload
def progress_display(
    console: Console, *columns: str | ProgressColumn, disable: bool, display: type[P]
) -> P: ...
def progress_display(
    console: Console,
    *columns: str | ProgressColumn,
    disable: bool,
    display: type[Progress] = Progress,
) -> Progress:
    """A demo's progress display: ``columns`` on ``console`` (stderr), cleared when it ends;
    ``disable``: show nothing. ``display``: a subclass of ``Progress`` to make, for a demo
    that adds lines of its own."""
    return display(*columns, console=console, transient=True, disable=disable)


def label(width: int) -> TextColumn:
    """The task's description, left-aligned in ``width`` characters."""
    return TextColumn(f"{{task.description:<{width}}}")


class CountColumn(ProgressColumn):
    """Items done of all (``  12,288 / 500,000``), done right-aligned in ``width`` characters;
    blank while the total is unknown."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{task.completed:>{self.width},.0f} / {task.total:,.0f}")


class RateColumn(ProgressColumn):
    """Items per second since the task started, right-aligned in ``width`` characters; the
    task's ``unit`` field names the items (``events`` when it has none)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed
        if not elapsed or not task.completed:
            return Text("", style="progress.data.speed")
        unit = task.fields.get("unit", "events")
        rate = task.completed / elapsed
        return Text(f"{rate:>{self.width},.0f} {unit}/s", style="progress.data.speed")


# -- the summary ----------------------------------------------------------------------------------


def summary_console() -> Console:
    """A console on stdout: as wide as the terminal (or COLUMNS), else ``WIDTH`` columns."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=WIDTH)
    return console


def headline(console: Console, title: str, text: str) -> None:
    """The summary's first line, after a blank one: ``title`` bold, then ``text`` (no
    highlighting; rich markup allowed)."""
    console.print()
    console.print(f"[bold]{title}[/]: {text}", highlight=False)


def table(title: str, **options: Any) -> Table:
    """A table of the summary: its title bold on the left, a rule under the header, no frame;
    ``options`` go to ``rich.table.Table``."""
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE,
        show_edge=False,
        pad_edge=False,
        **options,
    )


def facts(title: str) -> Table:
    """A table of facts without a header: a name in bold, its value right-aligned, a remark
    dim (the demos' "Run" table)."""
    rows = table(title, show_header=False)
    rows.add_column(style="bold")
    rows.add_column(justify="right")
    rows.add_column(style="dim")
    return rows


def add_throughput(
    rows: Table, per_second: float | None, config: Mapping[str, Any], unit: str = "events"
) -> None:
    """The row "throughput" of ``facts``: ``per_second`` in ``unit``/s, with the runtime's
    shards and batch size from ``config``."""
    rows.add_row(
        "throughput",
        "n/a" if per_second is None else f"{per_second:,.0f} {unit}/s",
        _layout(config) + f", batches of {config['batch_size']}",
    )


def _layout(config: Mapping[str, Any]) -> str:
    """Where the shards ran: ``4 shards``, or ``2 workers x 1 shard (Ray actors)``."""
    shards = f"{config['shards']} shard{'s' if config['shards'] != 1 else ''}"
    workers = config.get("workers")
    if not workers:
        return shards
    where = " (Ray actors)" if config.get("backend") == "ray" else " (processes)"
    return f"{workers} worker{'s' if workers != 1 else ''} x {shards}{where}"


def add_latency(rows: Table, summary: Mapping[str, Any]) -> None:
    """The rows of the ingest-to-update latency, p50 and p99, of ``facts``."""
    rows.add_row("ingest→update p50", format_ms(summary["latency_p50_ms"]), "")
    rows.add_row("ingest→update p99", format_ms(summary["latency_p99_ms"]), "")


def note(console: Console, lines: Sequence[str]) -> None:
    """Print ``lines`` dim, as they are (no highlighting): the notes under a table."""
    for line in lines:
        console.print(line, style="dim", highlight=False)


def format_ms(value: float | None) -> str:
    """Milliseconds, to a tenth: ``12.3 ms``, ``1,024.0 ms``; ``n/a`` for None."""
    return "n/a" if value is None else f"{value:,.1f} ms"


def format_bytes(n: float) -> str:
    """A size in decimal units: ``512 B``, ``1.8 KB``, ``3.4 MB``, ``2,048.0 GB``."""
    if n < 1000:
        return f"{n:,.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:,.1f} {unit}"
