"""
Check what a live TLS endpoint staples: handshake with status_request, then validate.

    target -> TCP connect -> TLS handshake (SNI, status_request) -> staple + served chain
           -> issuer from the chain -> ocsp.validate (the same checks as fetch) -> Check

Split by what each part touches: ``judge`` is pure (bytes, certificates and
a clock in, a ``Check`` out); ``tls`` is the blocking handshake; ``targets``
turns the command line and haproxy.cfg into endpoints; ``output`` prints.
``check`` here runs them for many targets at once.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence

from hastaple.app.verify.judge import SERVED_MARGIN, Check, Handshake, Target, judge
from hastaple.app.verify.judge import failed as judge_failed
from hastaple.app.verify.lookup import find_issuer
from hastaple.app.verify.output import duration, fields, report, summary
from hastaple.app.verify.targets import (
    DEFAULT_PORT,
    bind_addresses,
    bind_targets,
    is_for,
    names,
    parse_target,
    targets_from,
    unique,
)
from hastaple.app.verify.tls import FAMILIES, TIMEOUT_SECONDS, handshake
from hastaple.core import certs
from hastaple.core import issuer as issuers
from hastaple.core.ocsp.validate import UNREADABLE, one_line
from hastaple.errors import VerifyError

__all__ = [
    "DEFAULT_PORT",
    "SERVED_MARGIN",
    "TIMEOUT_SECONDS",
    "Check",
    "Handshake",
    "Target",
    "VerifyError",
    "bind_addresses",
    "bind_targets",
    "check",
    "duration",
    "fields",
    "handshake",
    "is_for",
    "judge",
    "names",
    "parse_target",
    "report",
    "summary",
    "targets_from",
    "unique",
]

logger = logging.getLogger(__name__)


def check(
    targets: Sequence[Target], *, timeout: float = TIMEOUT_SECONDS, at: dt.datetime | None = None
) -> list[Check]:
    """
    Handshake with every target concurrently and judge each, in order.

    One Check per certificate a target serves: a name served with both an
    RSA and an ECDSA certificate gives two (each family offered in turn).
    ``at`` judges the staples as of another time ("still valid tomorrow?");
    default now.
    """

    def one(target: Target) -> list[Check]:
        try:
            return _check_target(target, timeout=timeout, at=at)
        except VerifyError as exc:
            return [judge_failed(target, exc.problem)]
        except UNREADABLE as exc:  # the served certificate itself does not decode
            why = f"the server's certificate cannot be read: {one_line(exc)}"
            return [judge_failed(target, why)]
        except Exception as exc:  # a bug: this target reports it, the others are still checked
            logger.exception("internal error while checking %s", target)
            return [judge_failed(target, f"internal error: {exc!r} (see the log)")]

    if len(targets) == 1:
        return one(targets[0])
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(targets) or 1)) as pool:
        return [c for checks in pool.map(one, targets) for c in checks]


def _check_target(target: Target, *, timeout: float, at: dt.datetime | None) -> list[Check]:
    """Judge every certificate ``target`` serves; several are marked for the output."""
    checks = []
    for result in _each_certificate(target, timeout=timeout):
        issuer, why = None, None
        if result.staple and not issuers.choose(result.chain[0], result.chain[1:]):
            issuer, why = find_issuer(target, result, timeout=timeout)
        now = at or dt.datetime.now(dt.UTC)
        checks.append(judge(target, result, now=now, issuer=issuer, issuer_problem=why))
    if len(checks) > 1:
        checks = [dataclasses.replace(c, several=True) for c in checks]
    return checks


def _each_certificate(target: Target, *, timeout: float) -> list[Handshake]:
    """
    A handshake as any client makes it, then one offering only each other key family.

    A server without a certificate of that family fails the handshake: nothing
    more to check. One that falls back to another name's certificate (no
    strict-sni) is not reporting on this name, so that answer is dropped too.
    """
    first = handshake(target, timeout=timeout)
    if not first.chain:
        return [first]
    found = [first]
    for family in FAMILIES:
        if family == certs.key_type(first.chain[0]):
            continue
        try:
            other = handshake(target, timeout=timeout, family=family)
        except VerifyError:
            continue
        leaf = other.chain[0] if other.chain else None
        if leaf is not None and is_for(leaf, target.sni) and all(leaf != h.chain[0] for h in found):
            found.append(other)
    return found
