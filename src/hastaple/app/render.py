"""
Turn result rows into what a person or a program reads on stdout.

A terminal gets a rich table with colour; a pipe gets plain, stable,
tab-separated lines; ``--json`` gets one JSON document. Logs and errors go to
stderr, never here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import IO

from hastaple.core.model import Action, ResultRow, Status, rfc3339

_STYLE = {
    Status.GOOD: "green",
    Status.REVOKED: "bold red",
    Status.UNKNOWN: "yellow",
    Status.ERROR: "red",
    Status.NO_OCSP: "dim",
    Status.MANAGED: "cyan",
}


def as_json(rows: Sequence[ResultRow]) -> str:
    """
    One JSON document: a list with one object per certificate (the README's contract).

    One object per line: readable, and each line goes through the C encoder
    (``indent`` would fall back to the pure-Python one: slow at 10,000 rows).
    """
    return "".join(json_pieces(rows))


def json_pieces(rows: Sequence[ResultRow]) -> Iterator[str]:
    """
    ``as_json``'s text, a row at a time, to write as it is made.

    At 100,000 rows the whole text and its list of pieces were about 50 MB
    at once, the peak of a warm ``fetch --json``.
    """
    if not rows:
        yield "[]"
        return
    for i, r in enumerate(rows):
        yield ("[\n" if i == 0 else ",\n") + json.dumps(r.to_json())
    yield "\n]"


def as_lines(rows: Sequence[ResultRow]) -> str:
    """Plain lines for pipes and logs: cert, status, action, nextUpdate, error."""
    out = []
    for r in rows:
        nxt = rfc3339(r.next_update) or "-"
        fields = [r.cert, r.status.value, r.action.value, nxt]
        if r.error or r.note:
            fields.append(r.error or r.note or "")
        out.append("\t".join(fields))
    return "\n".join(out)


def table(rows: Sequence[ResultRow], stream: IO[str]) -> None:
    """A rich table for a terminal; paths and errors are text, never markup."""
    # rich only when a table is printed: the daemon and --json never pay for it.
    from rich.console import Console  # noqa: PLC0415
    from rich.markup import escape  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    t = Table(box=None, header_style="bold")
    for col in ("certificate", "status", "action", "next update", "error"):
        t.add_column(col, overflow="fold")
    for r in rows:
        style = _STYLE.get(r.status, "")
        action_style = "red" if r.action is Action.FAILED else ""
        t.add_row(
            escape(r.cert),
            f"[{style}]{r.status.value}[/]" if style else r.status.value,
            f"[{action_style}]{r.action.value}[/]" if action_style else r.action.value,
            rfc3339(r.next_update) or "-",
            escape(r.error or r.note or ""),
        )
    Console(file=stream).print(t)
