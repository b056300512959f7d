"""What must be durable downstream before a checkpoint is written.

A checkpoint records the state after some events. The updates those events published are
applied to the state whether or not anyone downstream kept them: were the process to die
after the checkpoint is written but before a sink wrote them, the restored runtime would not
publish them again (their events are in the state), and the sink would have lost them. So a
sink (``run_sink``) guards the checkpoints: once the state is captured and before the file is
written, the runtime awaits each guard, which returns once everything published before it
was called is written and flushed by its sink. Delivery to sinks is then at least once across
a crash: updates after the checkpoint are published again by the replay of their events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

__all__ = ["CheckpointGuard", "CheckpointGuards"]

#: returns once everything the runtime published before the call is durable downstream
CheckpointGuard = Callable[[], Awaitable[None]]


class CheckpointGuards:
    """The guards of one runtime's checkpoints, awaited in the order they were added."""

    __slots__ = ("_guards",)

    def __init__(self) -> None:
        self._guards: list[CheckpointGuard] = []

    def __len__(self) -> int:
        return len(self._guards)

    def add(self, guard: CheckpointGuard) -> Callable[[], None]:
        """Guard the checkpoints with ``guard`` until the returned function is called."""
        self._guards.append(guard)

        def remove() -> None:
            if guard in self._guards:
                self._guards.remove(guard)

        return remove

    async def wait(self) -> None:
        """Await every guard (a checkpoint's state is captured: its file is not written yet).
        A guard that raises fails the checkpoint."""
        for guard in list(self._guards):
            await guard()
