"""
What a doctor check returns: a ``Finding`` (check id, severity, message, fix, where).

Also the thresholds the checks share. Severity ``error`` means stapling is
blocked (or a certificate will break clients), so ``doctor`` exits 1;
``warning`` and ``info`` do not. Pure. Must not gather facts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from hastaple.app.doctor.facts import Facts

Severity = Literal["error", "warning", "info"]

EXPIRING = dt.timedelta(days=30)
DELEGATE_EXPIRING = dt.timedelta(days=7)
SLOW = 2.0  # seconds
SKEW_WARNING = dt.timedelta(seconds=60)
DEFAULT_BUFSIZE = 16384
# A large real response (0.5-4 KB is usual): the runtime command must fit it.
TYPICAL_RESPONSE_BYTES = 4096
COMMAND = "set ssl ocsp-response "


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the checklist."""

    check: str
    severity: Severity
    message: str
    fix: str
    file: str | None = None
    line: int | None = None

    @classmethod
    def at(
        cls, check: str, severity: Severity, source: str | None, message: str, fix: str
    ) -> Finding:
        """A finding located at ``source`` ("file:line", a file, or None)."""
        file, line = split_source(source)
        return cls(check, severity, message, fix, file, line)


def split_source(source: str | None) -> tuple[str | None, int | None]:
    """``"cfg:12"`` -> ("cfg", 12); "argument" and None -> (None, None)."""
    if not source or source == "argument":
        return None, None
    file, sep, line = source.rpartition(":")
    if sep and line.isdigit():
        return file, int(line)
    return source, None


Check = Callable[[Facts], Iterator[Finding]]
