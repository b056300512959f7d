"""The inputs a runtime consumes itself: ``FeatureRuntime(feature_set, inputs=[...])``.

Each input is a source read by :func:`consume` in a task the runtime owns, from the moment the
runtime runs (after a checkpoint's restore, so each source starts from the position the
checkpoint holds for it) until the source ends or the runtime stops. The runtime closes the
sources when it stops, after their tasks ended.

An input that fails (its source raises, or the runtime refuses its offsets) stops alone: the
error is logged (``input_failed``), the other inputs and the runtime go on, and
:meth:`Inputs.wait` raises it, as does leaving the runtime's ``async with`` block when nothing
else was raised there. Nothing fails silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from .._exceptions import ConfigError, RuntimeClosed
from .._spec.feature_set import FeatureSet
from .consume import ConsumeHost, ConsumeResult, consume
from .source import Source

__all__ = ["Input", "Inputs"]

_log = structlog.get_logger("featurist.inputs")


@dataclass(frozen=True, slots=True)
class Input:
    """A source the runtime consumes itself, with how: an item of ``FeatureRuntime(inputs=)``
    (a bare source there stands for ``Input(source)``).

    Args:
        source: the source (a :class:`Source`): the runtime reads it and closes it when it
            stops.
        stream: the stream its events feed; None (the default): the feature set's first.
        batch_size: records per read (1024), as ``consume``'s.
    """

    source: Source
    stream: str | None = None
    batch_size: int = 1024


class Inputs:
    """The inputs of one runtime: checked when the runtime is made, consumed while it runs.

    Raises (when made):
        TypeError: an item is neither a source nor an :class:`Input`.
        ValueError: a ``batch_size`` is not an int >= 1, or a ``stream`` is not a stream of
            the feature set.
        ConfigError: two inputs share a name, a source has no name, or a source cannot feed
            the feature set (its ``check`` says why).
    """

    def __init__(self, items: Iterable[Source | Input] | None, feature_set: FeatureSet) -> None:
        if isinstance(items, Source | Input):
            raise TypeError("inputs must be a list of sources, got one source: put it in a list")
        self.items: tuple[Input, ...] = tuple(_input(item, feature_set) for item in items or ())
        names = [item.source.name for item in self.items]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ConfigError(
                f"inputs: two sources are named {twice[0]!r}: a checkpoint keeps each source's "
                "position under its name, so the names of one runtime's inputs must differ "
                "(give one a name=)"
            )
        #: each input's result once its source ended, by index
        self._results: list[ConsumeResult | None] = [None] * len(self.items)
        self._error: BaseException | None = None
        self._scopes: list[anyio.CancelScope] = []
        #: set when every input ended, or one failed; made when the runtime starts (an event
        #: needs the event loop)
        self._news: anyio.Event | None = None
        self._stopping = False
        #: set when every input ended
        self._ended: anyio.Event | None = None
        self._running = 0
        #: True once ``wait`` raised the first failure
        self._told = False

    def __bool__(self) -> bool:
        return bool(self.items)

    async def start(self, rt: ConsumeHost, stack: AsyncExitStack) -> None:
        """Consume every input into ``rt`` (running) in tasks of their own, until each ends
        or :meth:`stop`; the sources close when ``stack`` unwinds, after the tasks ended."""
        if not self.items:
            return
        self._news, self._ended = anyio.Event(), anyio.Event()
        for item in self.items:
            await stack.enter_async_context(item.source)
        tasks = await stack.enter_async_context(anyio.create_task_group())
        self._running = len(self.items)
        for index, item in enumerate(self.items):
            tasks.start_soon(self._consume, rt, index, item, name=f"featurist-input-{index}")

    async def _consume(self, rt: ConsumeHost, index: int, item: Input) -> None:
        # each task in a scope of its own, which stop() cancels: not the task group's, whose
        # cancellation would reach the runtime's host task too
        try:
            with anyio.CancelScope() as scope:
                self._scopes.append(scope)
                if self._stopping:
                    return
                self._results[index] = await consume(
                    rt, item.source, stream=item.stream, batch_size=item.batch_size
                )
        except Exception as exc:  # the input stops; wait() and the runtime's exit raise it
            if self._stopping and isinstance(exc, RuntimeClosed):
                return  # the runtime stops: so does the input
            _log.error(
                "input_failed",
                source=item.source.name,
                error=f"{type(exc).__name__}: {exc}",
            )
            if self._error is None:
                self._error = exc
                assert self._news is not None
                self._news.set()
        finally:
            self._running -= 1
            if self._running == 0:
                assert self._ended is not None and self._news is not None
                self._ended.set()
                self._news.set()

    async def stop(self) -> None:
        """Stop the inputs still reading (a batch read is first ingested whole, with its
        position) and wait for their tasks to end."""
        self._stopping = True
        for scope in self._scopes:
            scope.cancel()
        if self._running and self._ended is not None:
            await self._ended.wait()

    async def wait(self) -> list[ConsumeResult]:
        """Wait until every input ended (each a finite source read to its end), and return
        what each consumed, in the order given; or until one fails, and raise its error (the
        others go on).

        Raises:
            the error of the input that failed first.
            RuntimeError: the runtime has no inputs, or they were stopped before their end.
        """
        if not self.items:
            raise RuntimeError("the runtime has no inputs (FeatureRuntime(inputs=[...]))")
        if self._news is None:
            raise RuntimeError("the inputs are read while the runtime runs ('async with')")
        await self._news.wait()
        if self._error is not None:
            self._told = True
            raise self._error
        results = self._results
        if any(result is None for result in results):
            raise RuntimeError("the inputs were stopped before their end (the runtime stopped)")
        return [result for result in results if result is not None]

    def untold_failure(self) -> BaseException | None:
        """The first error of an input that failed, unless :meth:`wait` raised it already:
        the runtime's exit raises it."""
        return None if self._told else self._error


def _input(given: Any, feature_set: FeatureSet) -> Input:
    """``given`` as a checked :class:`Input`."""
    if isinstance(given, Source):
        item = Input(given)
    elif isinstance(given, Input):
        item = given
    else:
        raise TypeError(
            "inputs: each item must be a Source (NatsSource, RedisStreamSource, CsvSource...) or "
            f"an Input(source, stream=, batch_size=), got {type(given).__name__}"
        )
    if not isinstance(item.source, Source):
        raise TypeError(f"Input.source must be a Source, got {type(item.source).__name__}")
    name = getattr(item.source, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"inputs: a source's name must be a non-empty str, got {name!r}")
    size = item.batch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"inputs: {name!r}: batch_size must be an int >= 1, got {size!r}")
    if item.stream is not None and item.stream not in feature_set.stream_names:
        known = ", ".join(feature_set.stream_names)
        raise ValueError(f"inputs: {name!r}: no stream named {item.stream!r} (known: {known})")
    item.source.check(feature_set)
    return item
