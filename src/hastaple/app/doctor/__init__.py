"""
``hastaple doctor``: what a setup lacks for stapling, as a checklist with fixes.

``facts`` gathers (files, read-only runtime commands, one request per
responder host); ``checks`` judges (pure); ``render`` prints.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

from hastaple.app.doctor.checks import Finding, blocks_stapling, judge

__all__ = ["Finding", "as_json", "as_text", "blocks_stapling", "judge"]

_MARK = {"error": "✗ ERROR", "warning": "! WARNING", "info": "· INFO"}


def as_text(findings: Sequence[Finding]) -> str:
    """The checklist for a person: one block per finding, then a summary line."""
    lines: list[str] = []
    for f in findings:
        where = f"{f.file}:{f.line}" if f.file and f.line else (f.file or "")
        head = f"{_MARK[f.severity]} [{f.check}]" + (f" {where}" if where else "")
        lines += [head, f"    {f.message}", f"    fix: {f.fix}"]
    counts = {s: sum(1 for f in findings if f.severity == s) for s in _MARK}
    verdict = (
        "stapling is blocked" if blocks_stapling(list(findings)) else "nothing blocks stapling"
    )
    lines.append(
        f"{counts['error']} errors, {counts['warning']} warnings, {counts['info']} infos: {verdict}"
    )
    return "\n".join(lines)


def as_json(findings: Sequence[Finding]) -> str:
    """One JSON document: ``ok`` and the findings (check, severity, file, line, message, fix)."""
    return json.dumps(
        {
            "ok": not blocks_stapling(list(findings)),
            "findings": [asdict(f) for f in findings],
        },
        indent=2,
    )
