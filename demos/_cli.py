"""What the demos' command lines share (``python -m demos.fraud``, ``demos.ads``,
``demos.sensors``, ``demos.tune``).

A demo builds its options with ``argument_parser``, ``runtime_options``, ``add_seed``,
``add_output_switches`` and ``count`` (for its sizes; ``count_list`` for a list of them), and
hands the rest to ``run_command``: the library's logging, the progress display on stderr only on
a terminal, Ctrl-C, and the summary printed as JSON or as tables. ``frozen_heap`` keeps the
garbage collector off the simulated input while the runtime works. What the displays share
(progress columns, tables, formats) is in ``demos._render``.
"""

from __future__ import annotations

import argparse
import gc
import json
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from rich.console import Console
from rich.progress import Progress

import runtime
from actors import run

from ._render import summary_console

__all__ = [
    "add_output_switches",
    "add_seed",
    "argument_parser",
    "count",
    "count_list",
    "frozen_heap",
    "run_command",
    "runtime_options",
]

# -- options --------------------------------------------------------------------------------------


def argument_parser(prog: str, description: str | None, example: str) -> argparse.ArgumentParser:
    """A demo's parser: ``description`` (its module's docstring) shown as written, and an epilog
    that says the defaults stand in parentheses and shows ``prog example``."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Defaults in parentheses. Example: {prog} {example}",
    )


def runtime_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the group "runtime", with --shards (4) and --batch-size (512) for the FeatureRuntime;
    return it, for the demo's own options."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--shards", type=count(1), default=4, metavar="N", help="shard actors (4)")
    group.add_argument(
        "--batch-size", type=count(1), default=512, metavar="N", help="events per batch (512)"
    )
    return group


def add_output_switches(group: argparse._ArgumentGroup, display: str) -> None:
    """Add --quiet and --json to ``group``; ``display`` (``progress bars``) names in the help
    what --quiet turns off."""
    group.add_argument(
        "--quiet", action="store_true", help=f"no {display} (shown only on a terminal)"
    )
    group.add_argument(
        "--json", action="store_true", help="print the summary as JSON on stdout, no tables"
    )


def add_seed(group: argparse._ArgumentGroup, stream: str) -> None:
    """Add --seed (7) to ``group``; ``stream`` (``stream``, ``traffic``) names in the help what
    the same seed gives again."""
    group.add_argument(
        "--seed",
        type=int,
        default=7,
        metavar="N",
        help=f"random seed: same seed, same {stream} (7)",
    )


def count(low: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``low``, digits grouped or not
    (``500000``, ``500_000``, ``500,000``)."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", "").replace(",", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def count_list(low: int, high: int | None = None) -> Callable[[str], list[int]]:
    """An argparse ``type``: whole numbers from ``low`` to ``high`` (no limit if None),
    separated by commas, each at most once, digits grouped with ``_`` (``1,2,4``,
    ``256,1_024``); returned in ascending order. An item with a leading zero is refused: in
    ``1,024`` the comma was meant to group digits."""

    def parse(text: str) -> list[int]:
        values = []
        for item in text.split(","):
            item = item.strip()
            digits = item.replace("_", "")
            if not (digits.isascii() and digits.isdigit()):
                raise argparse.ArgumentTypeError(
                    f"expected whole numbers separated by commas, got {text!r}"
                )
            if len(digits) > 1 and digits.startswith("0"):
                raise argparse.ArgumentTypeError(
                    f"{item!r} in {text!r} has a leading zero: commas separate the values, "
                    "group digits with _ (1_024)"
                )
            value = int(digits)
            if value < low or (high is not None and value > high):
                limits = f">= {low}" if high is None else f"from {low} to {high}"
                raise argparse.ArgumentTypeError(f"each value must be {limits}, got {value}")
            if value in values:
                raise argparse.ArgumentTypeError(f"{value} is given twice in {text!r}")
            values.append(value)
        return sorted(values)

    return parse


# -- running --------------------------------------------------------------------------------------


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the garbage collector from walking the objects alive on entry until the block ends.

    For the simulated input, the demo's own baggage (a service never holds its whole input):
    collected again and again during the measured run, it would slow the runtime down.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


P = TypeVar("P", bound=Progress)
P_co = TypeVar("P_co", bound=Progress, covariant=True)


class ProgressFactory(Protocol[P_co]):
    """Makes a demo's progress display on ``console``; ``disable``: show nothing."""

    def __call__(self, console: Console, *, disable: bool) -> P_co: ...


def run_command(
    args: argparse.Namespace,
    progress: ProgressFactory[P],
    demo: Callable[[argparse.Namespace, P], Awaitable[dict[str, Any]]],
    render: Callable[[Mapping[str, Any], Console], None],
) -> int:
    """Run ``demo(args, display)`` and print its summary; return the exit status.

    The library logs warnings and errors only. The progress display goes to stderr, and only on
    a terminal (in logs and pipes it would only add noise) unless ``args.quiet``. Ctrl-C stops
    the demo with status 130. The summary goes to stdout: as JSON with ``args.json``, else
    through ``render`` on ``summary_console()``.
    """
    runtime.configure_logging(level="warning")
    stderr = Console(stderr=True)
    display = progress(stderr, disable=args.quiet or not stderr.is_terminal)
    try:
        with display:
            summary = run(lambda: demo(args, display))
    except KeyboardInterrupt:
        stderr.print("interrupted")
        return 130
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        render(summary, summary_console())
    return 0
