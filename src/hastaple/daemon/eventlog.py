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
import sys
from typing import Any

from hastaple.core.model import rfc3339

logger = logging.getLogger("hastaple.daemon")


def log_event(level: int, event: str, **fields: object) -> None:
    """Log ``event`` with ``fields`` (None values are left out)."""
    kept = {k: _plain(v) for k, v in fields.items() if v is not None}
    text = " ".join([f"event={event}", *(f"{k}={_quote(v)}" for k, v in kept.items())])
    logger.log(level, "%s", text, extra={"event": event, "fields": kept})


def _plain(value: object) -> str | int | float | bool:
    if isinstance(value, dt.datetime):
        return rfc3339(value)
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... <message>``; an exception as an escaped field."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line."""
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
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
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
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
