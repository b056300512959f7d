"""Structured logging setup for applications and demos.

The library only *emits* through structlog loggers named ``featurist`` and ``actors.*``; it
never configures logging on import. Call :func:`configure_logging` once in your application (or
configure structlog yourself) to choose the format and the level.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

__all__ = ["configure_logging"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    *, format: Literal["console", "json"] = "console", level: str = "info"
) -> None:
    """Configure structlog for the whole process.

    Args:
        format: ``"console"`` for colored, aligned lines for people; ``"json"`` for one JSON
            object per line for log collectors.
        level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.

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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
