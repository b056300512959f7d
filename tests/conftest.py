"""Shared test configuration: every async test runs on asyncio and on asyncio with uvloop,
but those of the pure-computation directories (``_ONE_LOOP``), which run on uvloop alone."""

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


#: Directories of pure computation (windows, joins, keyed kernels, checkpoints, custom
#: aggregates, rolling statistics, ingest's validation, training sets, replay, drift): their
#: async tests run on uvloop alone, the loop the runtime runs on by default (``actors.run``),
#: where uvloop is installed. The event loop schedules their tasks in the same order either
#: way; running both took minutes of CI's time. Tests of sockets, processes, brokers, sources
#: and timing run on both loops.
_ONE_LOOP = tuple(
    os.path.join("tests", "runtime", name) + os.sep
    for name in (
        "windows",
        "joins",
        "keyed",
        "checkpoints",
        "udaf",
        "stats",
        "ingest",
        "training",
        "replay",
        "drift",
    )
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if len(_BACKENDS) < 2:
        return
    root = str(config.rootpath) + os.sep
    ids = {item.nodeid for item in items}
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        where = str(item.path).removeprefix(root)
        # the asyncio case of a test that has a uvloop case too (not one asking for asyncio)
        if (
            callspec is not None
            and callspec.params.get("anyio_backend") == ("asyncio", {})
            and where.startswith(_ONE_LOOP)
            and item.nodeid.replace("[asyncio", "[uvloop", 1) in ids
        ):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def services_required() -> bool:
    """True when a missing server must fail the test instead of skipping it (CI sets this)."""
    return os.environ.get("FEATURIST_REQUIRE_SERVICES", "") not in ("", "0")
