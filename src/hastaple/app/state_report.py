"""
``hastaple status``: what the daemon knows, read from its state database.

One row per certificate: name, OCSP URL, status, whether it is must-staple,
thisUpdate, nextUpdate, next refresh, last error, and what each HAProxy got
at the last push. Nothing is
asked of a CA or of HAProxy: the command is safe to run at any time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO

from hastaple.daemon.state import Record

COLUMNS = ("certificate", "ocsp url", "status", "must staple", "this update", "next update",
           "next refresh", "haproxy", "error")  # fmt: skip


def as_json(records: Sequence[Record]) -> str:
    """One JSON document: a list with one object per certificate."""
    return json.dumps([r.to_json() for r in records], indent=2)


def _cells(r: Record) -> list[str]:
    data = r.to_json()
    served = ", ".join(f"{sock}={how}" for sock, how in r.haproxy) or "-"
    return [
        r.cert,
        r.ocsp_url or "-",
        r.status or "-",
        "yes" if r.must_staple else "no",
        str(data["this_update"] or "-"),
        str(data["next_update"] or "-"),
        str(data["next_refresh"] or "-"),
        served,
        r.error or "",
    ]


def as_lines(records: Sequence[Record]) -> str:
    """Tab-separated lines for pipes, in COLUMNS order."""
    return "\n".join("\t".join(_cells(r)).rstrip("\t") for r in records)


def table(records: Sequence[Record], stream: IO[str]) -> None:
    """A rich table for a terminal."""
    # rich only when a table is printed (see render.table).
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    t = Table(box=None, header_style="bold")
    for col in COLUMNS:
        t.add_column(col, overflow="fold")
    for r in records:
        t.add_row(*_cells(r))
    Console(file=stream).print(t)


def healthy(records: Sequence[Record]) -> bool:
    """Whether every certificate's last attempt succeeded (exit code 0)."""
    return all(r.failures == 0 for r in records)
