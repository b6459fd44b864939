"""Logging: one JSON (or text) line per event on stderr, uvicorn's own loggers included."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
_FORMATS = {
    "text": "%(asctime)s %(levelname)s %(name)s: %(message)s",
    "json": "%(asctime)s %(levelname)s %(name)s %(message)s",
}


def configure_logging(level: str, fmt: str) -> None:
    """Route every logger, uvicorn's included, through one handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            OrjsonFormatter(
                _FORMATS["json"],
                datefmt=_DATE_FORMAT,
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's ANSI copy of the message
            )
        )
    else:
        handler.setFormatter(logging.Formatter(_FORMATS["text"], datefmt=_DATE_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
