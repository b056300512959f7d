"""Structured logging setup for applications and demos.

The library only *emits*, through structlog loggers backed by stdlib loggers named
``featurist...`` and ``actors...``; it never configures logging on import. Call
:func:`configure_logging` once in your application, or configure stdlib logging yourself.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog
from structlog.typing import EventDict

__all__ = ["configure_logging"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _structured(logger: Any, name: str, event_dict: EventDict) -> EventDict:
    """Use the structured event a featurist logger attached to the record, if any."""
    record = event_dict.get("_record")
    structured = getattr(record, "structured", None)
    if isinstance(structured, dict):
        rebuilt: EventDict = dict(structured)
        rebuilt["_record"] = record
        rebuilt["_from_structlog"] = False
        event_dict = rebuilt
    if record is not None:
        event_dict.setdefault("logger", record.name)
    return event_dict


def configure_logging(
    *,
    format: Literal["console", "json"] = "console",
    level: str = "info",
    loggers: tuple[str, ...] = ("actors", "featurist"),
) -> None:
    """Send the library's logs to stderr as console lines or JSON, at ``level`` and above.

    The library logs through stdlib loggers named ``actors...`` and ``featurist...`` (see
    ``actors.get_logger``); this installs one handler on each of ``loggers`` with a structlog
    formatter, and stops them from propagating to the root logger. Without this call (or your
    own logging configuration) only warnings and errors appear, through logging's last-resort
    handler. Calling it again replaces the handler.

    Args:
        format: ``"console"`` for aligned lines for people; ``"json"`` for one JSON object per
            line for log collectors.
        level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.
        loggers: the logger names to configure.

    Raises:
        ValueError: an unknown format or level.
    """
    if level not in _LEVELS:
        raise ValueError(f"level must be one of {', '.join(_LEVELS)}, got {level!r}")
    if format not in ("console", "json"):
        raise ValueError(f"format must be 'console' or 'json', got {format!r}")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            _structured,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    for name in loggers:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(_LEVELS[level])
        logger.propagate = False
