"""Worker tests run on asyncio alone: each runtime with workers starts processes (about a
second each on a busy machine), and the workers run their own event loop (uvloop where it is
installed) whatever the front's backend."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def anyio_backend() -> Any:
    return ("asyncio", {})
