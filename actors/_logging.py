"""Loggers of the kernel (and of libraries built on it): structlog in front, stdlib behind.

A library must not print on its own. ``get_logger(name)`` returns a structlog logger whose
events go to the stdlib logger ``name``: an application that configures nothing sees only
warnings and errors, on stderr, through logging's last-resort handler; one that configures
logging (or calls ``runtime.configure_logging``) decides format and level. Each record carries
the structured event as ``record.structured`` (a dict) for formatters that want the fields, and
a ``event key=value ...`` message for those that do not.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["get_logger"]


def _to_stdlib(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    exc_info = event_dict.pop("exc_info", None)
    event = str(event_dict.get("event", ""))
    fields = " ".join(f"{key}={value!r}" for key, value in event_dict.items() if key != "event")
    kwargs: dict[str, Any] = {
        "msg": f"{event} {fields}" if fields else event,
        "extra": {"structured": dict(event_dict)},
    }
    if exc_info:
        kwargs["exc_info"] = exc_info
    return kwargs


def get_logger(name: str) -> Any:
    """A structlog logger emitting through the stdlib logger ``name`` (see the module docs)."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[structlog.stdlib.filter_by_level, _to_stdlib],
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
