"""
The doctor's checks: pure functions from gathered ``Facts`` to ``Finding``s (no I/O).

Each check has a stable id (``CHECKS``); the README's findings table lists
them. The checks themselves are in ``haproxy_checks`` and ``cert_checks``;
``Finding`` is in ``finding``. Severity ``error`` means stapling is blocked (or a certificate will
break clients), so ``doctor`` exits 1; ``warning`` and ``info`` do not.
"""

from __future__ import annotations

from hastaple.app.doctor.cert_checks import (
    cert_dir_not_writable,
    cert_expiry,
    cert_not_on_disk,
    cert_not_served,
    cert_unreadable,
    chainless_no_issuer,
    clock_skew,
    delegate_expiring,
    managed_by_haproxy,
    must_staple_unstapled,
    no_ocsp_url,
    responder_down,
    responder_slow,
    state_dir_permissions,
)
from hastaple.app.doctor.facts import Facts
from hastaple.app.doctor.finding import Check, Finding
from hastaple.app.doctor.haproxy_checks import (
    bufsize_too_small,
    config_invalid,
    extra_files_hide_ocsp,
    no_admin_socket,
    socket_alias,
    socket_not_admin,
    socket_unreachable,
)

__all__ = ["CHECKS", "Finding", "blocks_stapling", "bufsize_too_small", "judge", "no_admin_socket"]


CHECKS: tuple[Check, ...] = (
    config_invalid,
    no_admin_socket,
    socket_unreachable,
    socket_not_admin,
    socket_alias,
    cert_unreadable,
    chainless_no_issuer,
    must_staple_unstapled,
    cert_expiry,
    cert_dir_not_writable,
    bufsize_too_small,
    extra_files_hide_ocsp,
    cert_not_served,
    cert_not_on_disk,
    state_dir_permissions,
    responder_down,
    responder_slow,
    delegate_expiring,
    clock_skew,
    no_ocsp_url,
    managed_by_haproxy,
)


_ORDER = {"error": 0, "warning": 1, "info": 2}


def judge(facts: Facts) -> list[Finding]:
    """Every finding, errors first, then warnings, then infos (stable within each)."""
    findings = [finding for check in CHECKS for finding in check(facts)]
    return sorted(findings, key=lambda f: _ORDER[f.severity])


def blocks_stapling(findings: list[Finding]) -> bool:
    """Whether any finding is an error: ``doctor`` exits 1."""
    return any(f.severity == "error" for f in findings)
