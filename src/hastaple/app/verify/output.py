"""What a person reads: a summary line and labelled details per target, or one JSON document."""

from __future__ import annotations

import json
from collections.abc import Sequence

import click

from hastaple.app.verify.judge import Check
from hastaple.core.model import rfc3339


def summary(result: Check) -> str:
    """One line: stapled or not, status, time left, or the reason it failed."""
    if result.ok and result.verdict is not None:
        return f"stapled, good, {duration(result.seconds_left or 0)} left, {result.verdict.signer}"
    if result.ok:  # no-ocsp
        return "not stapled: the certificate names no OCSP responder, so there is nothing to staple"
    if not result.stapled:
        return f"FAILED: {result.error}"
    return f"stapled, FAILED: {result.error}"


def fields(result: Check) -> list[tuple[str, str]]:
    """The labelled details under the summary line, in a fixed order."""
    v = result.verdict
    out = [
        ("certificate", result.cert),
        ("ocsp url", result.ocsp_url or "-"),
        ("stapled", "yes" if result.stapled else "no"),
        ("status", result.status.value),
    ]
    if v is not None:
        out += [
            ("this update", rfc3339(v.this_update)),
            ("next update", rfc3339(v.next_update)),
            ("time left", duration(result.seconds_left or 0)),
            ("signer", v.signer),
        ]
    if result.key_type:
        out.append(("key", result.key_type))
    if result.must_staple:
        out.append(("must-staple", "yes"))
    if result.target.note:
        out.append(("note", result.target.note))
    return out


def duration(seconds: int) -> str:
    """``3d 4h 5m`` style; negative means already past."""
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{sign}{days}d {hours}h {minutes}m"
    if hours:
        return f"{sign}{hours}h {minutes}m"
    return f"{sign}{minutes}m {rest % 60}s"


def report(results: Sequence[Check], *, as_json: bool) -> None:
    """
    Print the checks: one JSON document, or a summary line and details per target.

    Colour comes from ``click.style``; ``click.echo`` drops it when stdout is
    not a terminal, so pipes get plain, stable lines.
    """
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2))
        for r in results:
            if r.error:
                click.echo(f"error: {r.label}: {r.error}", err=True)
        return
    for r in results:
        colour = "green" if r.ok else "red"
        click.echo(f"{click.style(r.label, bold=True)}: {click.style(summary(r), fg=colour)}")
        for label, value in fields(r):
            click.echo(f"  {label + ':':<13}{value}")
