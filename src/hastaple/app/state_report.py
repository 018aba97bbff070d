"""
``hastaple status``: what the daemon knows, read from its state database.

One row per certificate: name, OCSP URL, status, whether it is must-staple,
thisUpdate, nextUpdate, next refresh, last error (or a note: something to
change though all is in order), and what each HAProxy got at the last push. Nothing is
asked of a CA or of HAProxy: the command is safe to run at any time.
In fleet mode, the daemon's ``fleet.json`` adds who fetched each staple (a
``fetched_by`` field and column) and a summary of the fleet on stderr.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hastaple.daemon.state import Record

COLUMNS = ("certificate", "ocsp url", "status", "must staple", "this update", "next update",
           "next refresh", "haproxy", "error")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Fleet:
    """What ``status`` shows of the fleet: a summary and who fetched each staple."""

    summary: str
    fetched_by: Mapping[str, str]


def fleet(state_dir: Path) -> Fleet | None:
    """The daemon's view of the fleet, or None when it runs without one."""
    from hastaple.stores import fleet_status  # noqa: PLC0415 - fleet mode only

    data = fleet_status.read(state_dir)
    if data is None:
        return None
    by = data.get("fetched_by")
    return Fleet(fleet_status.summary(data), by if isinstance(by, dict) else {})


def as_json(records: Sequence[Record], *, fetched_by: Mapping[str, str] | None = None) -> str:
    """One JSON document: a list with one object per certificate."""
    rows = [r.to_json() for r in records]
    if fetched_by is not None:
        for row, r in zip(rows, records, strict=True):
            row["fetched_by"] = fetched_by.get(r.cert)
    return json.dumps(rows, indent=2)


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
        r.error or (f"note: {r.note}" if r.note else ""),
    ]


def as_lines(records: Sequence[Record]) -> str:
    """Tab-separated lines for pipes, in COLUMNS order."""
    return "\n".join("\t".join(_cells(r)).rstrip("\t") for r in records)


def table(
    records: Sequence[Record], stream: IO[str], *, fetched_by: Mapping[str, str] | None = None
) -> None:
    """A rich table for a terminal (with "fetched by" in fleet mode)."""
    # rich only when a table is printed (see render.table).
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    t = Table(box=None, header_style="bold")
    for col in (*COLUMNS, "fetched by") if fetched_by is not None else COLUMNS:
        t.add_column(col, overflow="fold")
    for r in records:
        extra = [] if fetched_by is None else [fetched_by.get(r.cert, "-")]
        t.add_row(*_cells(r), *extra)
    Console(file=stream).print(t)


def healthy(records: Sequence[Record]) -> bool:
    """Whether every certificate's last attempt succeeded (exit code 0)."""
    return all(r.failures == 0 for r in records)
