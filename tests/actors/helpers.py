"""Small helpers shared by the actor tests."""

from __future__ import annotations

from collections.abc import Callable

import anyio


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``limit`` seconds."""
    with anyio.fail_after(limit):
        while not predicate():
            await anyio.sleep(0.001)
