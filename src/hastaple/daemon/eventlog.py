"""
One log line per daemon event: ``key=value`` by default, JSON on request.

Canonical log lines (structlog's idea): ``event=fetched cert=...
responder=... next_refresh=...``; the fields travel on the record too, so the
JSON formatter needs no parsing. Never log key material: only names, URLs,
times and sentences.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sys
from typing import Any

from hastaple.core.model import rfc3339

logger = logging.getLogger("hastaple.daemon")
_MICRO = 1_000_000


def log_event(level: int, event: str, **fields: object) -> None:
    """
    Log ``event`` with ``fields`` (None values are left out).

    Nothing is done for a level that is off. The key=value text is built
    when a handler first asks for the message (``_Line``), so the JSON format
    never builds it.
    """
    if not logger.isEnabledFor(level):
        return
    kept = {k: v if type(v) is str else _plain(v) for k, v in fields.items() if v is not None}
    # ``logger.log`` would walk the stack to name the caller, and always find
    # this function: the record names it directly.
    record = logger.makeRecord(
        logger.name, level, __file__, _LINENO, _Line(event, kept), (), None, "log_event",
        {"event": event, "fields": kept},
    )  # fmt: skip
    logger.handle(record)


_LINENO = log_event.__code__.co_firstlineno


class _Line:
    """The message ``event=... key=value ...``, built once, on first use."""

    __slots__ = ("event", "fields", "text")

    def __init__(self, event: str, fields: dict[str, str | int | float | bool]) -> None:
        self.event, self.fields, self.text = event, fields, ""

    def __str__(self) -> str:
        if not self.text:
            parts = [f"event={self.event}"]
            parts += [f"{k}={_quote(str(v))}" for k, v in self.fields.items()]
            self.text = " ".join(parts)
        return self.text


def _plain(value: object) -> str | int | float | bool:
    if isinstance(value, dt.datetime):
        return rfc3339(value)
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _quote(text: str) -> str:
    if text and " " not in text and '"' not in text and "=" not in text and "\n" not in text:
        return text
    return json.dumps(text)


class _Stamps:
    """
    A record's time as ``datetime.fromtimestamp(created, UTC)`` writes it, cheaply.

    The date and time to the second are formatted once per second, not once
    per line (``strftime`` was a tenth of a log line's cost); the microseconds
    are rounded as ``fromtimestamp`` rounds them (half to even).
    """

    def __init__(self) -> None:
        # One tuple, replaced whole: safe with handlers in several threads.
        self._last = (-1, "")

    def split(self, created: float) -> tuple[str, int]:
        """``YYYY-MM-DDTHH:MM:SS`` (UTC) and the microseconds of ``created``."""
        fraction, whole = math.modf(created)
        micro = round(fraction * 1e6)
        second = int(whole)
        if micro >= _MICRO:
            second, micro = second + 1, micro - _MICRO
        last = self._last
        if last[0] != second:
            text = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            last = self._last = (second, text)
        return last[1], micro

    def isoformat(self, created: float) -> str:
        """``created`` as ``fromtimestamp(created, UTC).isoformat()``."""
        second, micro = self.split(created)
        return f"{second}.{micro:06d}+00:00" if micro else f"{second}+00:00"


_STAMPS = _Stamps()


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... <message>``; an exception as an escaped field."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line."""
        second, micro = _STAMPS.split(record.created)
        ts = f"{second}.{micro:06d}Z"
        line = (
            f"ts={ts} level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        )
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one JSON line."""
        out: dict[str, Any] = {
            "ts": _STAMPS.isoformat(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if hasattr(record, "event"):
            out["event"] = record.event
            out.update(getattr(record, "fields", {}))
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Send logs to stderr in ``log_format`` ("keyvalue" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min(root.level or level, level) if root.level else level)
