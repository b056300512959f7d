"""Shared test configuration: every async test runs on asyncio and on asyncio with uvloop."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest

_BACKENDS: list[Any] = [pytest.param(("asyncio", {}), id="asyncio")]
if importlib.util.find_spec("uvloop") is not None:
    _BACKENDS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))


@pytest.fixture(params=_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


def services_required() -> bool:
    """True when a missing server must fail the test instead of skipping it (CI sets this)."""
    return os.environ.get("FEATURIST_REQUIRE_SERVICES", "") not in ("", "0")
