"""The inputs a runtime consumes itself: ``FeatureRuntime(feature_set, inputs=[...])``.

Each input is a source read by :func:`consume` in a task the runtime owns, from the moment the
runtime runs (after a checkpoint's restore, so each source starts from the position the
checkpoint holds for it) until the source ends or the runtime stops. When the runtime stops,
the inputs stop first; after its last checkpoint each source is given that checkpoint's
position to commit, then closed, all at once (shielded from the runtime's own cancellation,
within what is left of its shutdown deadline).

An input that fails (its source raises, or the runtime refuses its offsets) stops alone: the
error is logged (``input_failed``), the other inputs and the runtime go on, and
:meth:`Inputs.wait` raises it, or else leaving the runtime's ``async with`` block does, unless
that block raised an error of its own. Each failure is raised once; nothing fails silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio

from actors import get_logger

from .._exceptions import ConfigError, RuntimeClosed
from .._spec.feature_set import FeatureSet
from .consume import ConsumeHost, ConsumeResult, consume
from .source import Source

__all__ = ["Input", "Inputs", "InputsStopped"]

# the kernel's loggers, as everywhere in the runtime: through the stdlib (which the
# application configures), never structlog's own default renderer, whose tracebacks show
# local variables (a broker URL with its password, say)
_log = get_logger("featurist.inputs")


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


class InputsStopped(RuntimeError):
    """The runtime stopped (or failed) before its inputs ended: raised by ``wait``."""


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
        count = len(self.items)
        #: each input's result once its source ended, or its error, by index
        self._results: list[ConsumeResult | None] = [None] * count
        self._errors: list[Exception | None] = [None] * count
        #: whether each input's error was raised already (by ``wait`` or the runtime's exit)
        self._told = [False] * count
        #: each task's scope, which ``stop`` cancels
        self._scopes: list[anyio.CancelScope] = []
        self._stopping = False
        #: the runtime's own stop or failure, as an input met it (not the input's failure)
        self._closed: RuntimeClosed | None = None
        self._running = 0
        #: set when an input ends or fails (made anew once seen: ``_next_news``). Made when
        #: the runtime starts: an event needs the event loop.
        self._news: anyio.Event | None = None

    def __bool__(self) -> bool:
        return bool(self.items)

    async def start(
        self,
        rt: ConsumeHost,
        stack: AsyncExitStack,
        final_positions: Callable[[], Any],
        budget: Callable[[], float],
        spent: Callable[[float], None],
    ) -> None:
        """Consume every input into ``rt`` (running) in tasks of their own, until each ends
        or :meth:`stop`. When ``stack`` unwinds, after the tasks ended, every source at once
        is given its position in ``final_positions()`` (the runtime's offset in its last
        checkpoint, or None) to commit, then closed: all within ``budget()`` seconds (what
        is left of the runtime's shutdown deadline), whose use is then told to ``spent``."""
        if not self.items:
            return
        self._news = anyio.Event()
        sources = [item.source for item in self.items]
        entered: list[Source] = []
        try:
            for source in sources:
                await source.__aenter__()
                entered.append(source)
        finally:
            stack.push_async_callback(_close, entered, final_positions, budget, spent)
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
        except RuntimeClosed as exc:
            # the runtime stops (or failed, and says why itself): so does the input
            if not self._stopping:
                _log.warning("input_stopped", source=item.source.name, reason=str(exc))
                self._closed = exc
                assert self._news is not None
                self._news.set()  # a waiter learns it now, not once every input ended
        except Exception as exc:  # the input stops; wait() or the runtime's exit raise it
            _log.error(
                "input_failed",
                source=item.source.name,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )
            # a client's own error (redis-py's, say) names no source: the note does, in the
            # traceback of whoever raises it (wait_inputs, the runtime's exit)
            exc.add_note(f"raised by the input reading source {item.source.name!r}")
            self._errors[index] = exc
            assert self._news is not None
            self._news.set()
        finally:
            self._running -= 1
            assert self._news is not None
            self._news.set()

    async def stop(self) -> None:
        """Stop the inputs still reading (a batch read is first ingested whole, with its
        position) and wait for their tasks to end."""
        self._stopping = True
        for scope in self._scopes:
            scope.cancel()
        while self._running:
            await self._next_news()

    async def wait(self) -> list[ConsumeResult | None]:
        """Wait until every input ended (each a finite source read to its end), and return
        what each consumed, in the order given (None for an input that failed); or until one
        fails, and raise its error (the others go on). Each failure is raised once: call
        again to wait for the others.

        Raises:
            the error of an input that failed, not raised before.
            InputsStopped: the runtime stopped before the inputs ended.
            RuntimeError: the runtime has no inputs, or is not running.
        """
        if not self.items:
            raise RuntimeError("the runtime has no inputs (FeatureRuntime(inputs=[...]))")
        if self._news is None:
            raise RuntimeError("the inputs are read while the runtime runs ('async with')")
        while True:
            untold = self._untold()
            if untold:
                index, error = untold[0]
                self._told[index] = True
                raise error
            if self._closed is not None:
                raise InputsStopped("the runtime stopped under its inputs") from self._closed
            if self._running == 0:
                break
            await self._next_news()
        stopped = [
            item.source.name
            for item, result, error in zip(self.items, self._results, self._errors, strict=True)
            if result is None and error is None
        ]
        if stopped:
            raise InputsStopped(
                f"the inputs were stopped before their end (the runtime stopped): {stopped}"
            )
        return list(self._results)

    async def _next_news(self) -> None:
        """Until an input ends or fails after what was seen so far."""
        news = self._news
        assert news is not None
        if news.is_set():  # seen: wait for what comes next
            news = self._news = anyio.Event()
        await news.wait()

    def untold_failure(self) -> Exception | None:
        """The errors of the inputs that failed and that :meth:`wait` did not raise, as one
        exception (an ``ExceptionGroup`` of several), now told; None if there are none."""
        untold = self._untold()
        for index, _ in untold:
            self._told[index] = True
        errors = [error for _, error in untold]
        if not errors:
            return None
        if len(errors) == 1:
            return errors[0]
        return ExceptionGroup(f"{len(errors)} inputs failed", errors)

    def _untold(self) -> list[tuple[int, Exception]]:
        """The inputs that failed and whose error was not raised yet, with it."""
        return [
            (index, error)
            for index, error in enumerate(self._errors)
            if error is not None and not self._told[index]
        ]


async def _close(
    sources: list[Source],
    final_positions: Callable[[], Any],
    budget: Callable[[], float],
    spent: Callable[[float], None],
) -> None:
    """Give each source its final position to commit, then close it: all at once, shielded
    from the cancellation the runtime's own exit runs under, within ``budget()`` seconds."""
    if not sources:
        return
    positions = final_positions()
    began = anyio.current_time()
    with anyio.CancelScope(shield=True):
        with anyio.move_on_after(budget()) as scope:
            async with anyio.create_task_group() as tasks:
                for source in sources:
                    position = positions.get(source.name) if isinstance(positions, dict) else None
                    tasks.start_soon(_commit_and_close, source, position)
        if scope.cancelled_caught:
            _log.warning("inputs_close_timed_out", sources=[source.name for source in sources])
    spent(anyio.current_time() - began)


async def _commit_and_close(source: Source, position: Any) -> None:
    if position is not None:
        try:
            await source.commit(position)
        except Exception as exc:  # read again after a restart: at least once
            _log.warning("input_final_commit_failed", source=source.name, error=exc)
    try:
        await source.__aexit__(None, None, None)
    except Exception as exc:  # logged: it must not replace the runtime's own error
        _log.warning("input_close_failed", source=source.name, error=exc)


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
