"""Logging: one JSON (or text) line per event on stderr, uvicorn's own loggers included, and the access log."""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

from gateway.exchange import Exchange

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
        handler.setFormatter(TextFormatter(_FORMATS["text"], datefmt=_DATE_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # watchfiles says "1 change detected" at INFO on every save; the gateway's own reload line says what matters.
    logging.getLogger("watchfiles").setLevel(max(logging.WARNING, root.level))


class TextFormatter(logging.Formatter):
    """The text format, one line per record: control characters in a message (a client's path or header quoted
    in it) are escaped, so that it cannot end the line and forge another. A traceback follows on its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


class AccessLog:
    """One line per request on stderr, in the same shape as the other log lines but written directly.

    Through the logging module a line cost ~60 us here (a LogRecord, `extra` set attribute by attribute, the
    handler lock): 16% of a proxied request's CPU. This is one dict, one orjson call and one write.
    """

    def __init__(self, fmt: str) -> None:
        self._json = fmt == "json"
        self._second = -1
        self._stamp = ""

    def write(self, exchange: Exchange) -> None:
        fields = exchange.log_fields()
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            self._stamp = time.strftime(_DATE_FORMAT, time.localtime(now))
        if self._json:
            message = f"{fields['method']} {fields['path']} {fields['status']} {fields['duration_ms']:.1f}ms"
            line = orjson.dumps(
                {"time": self._stamp, "level": "INFO", "logger": "gateway.access", "message": message, **fields}
            )
        else:
            # The path is the client's: its control characters escaped, so that it cannot end the line and forge
            # another (JSON escapes them itself).
            path = escape_controls(fields["path"])
            message = f"{fields['method']} {path} {fields['status']} {fields['duration_ms']:.1f}ms"
            # Only what says something: no `retries=0` on every line of a healthy gateway.
            extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and v != 0 and k in _TEXT_FIELDS)
            line = f"{self._stamp} INFO gateway.access: {message} {extra}".encode()
        # Looked up on every write so that a redirected stderr (tests, daemons) is honoured.
        stream = getattr(sys.stderr, "buffer", None)
        if stream is None:
            sys.stderr.write(line.decode() + "\n")
        else:
            stream.write(line + b"\n")
            stream.flush()


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """`text` with its control characters (line ends, escape sequences, Unicode line separators) as `\\xNN`."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}" if ord(match.group()) < 0x100 else f"\\u{ord(match.group()):04x}"


_TEXT_FIELDS = frozenset(
    [
        "request_id",
        "key_id",
        "agent",
        "requested_agent",
        "target",
        "upstream_status",
        "stream",
        "prompt_tokens",
        "completion_tokens",
        "session_id",
        "retries",
        "overhead_ms",
        "error_class",
    ]
)
