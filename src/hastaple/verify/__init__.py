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
import datetime as dt
import logging
from collections.abc import Sequence

from hastaple.ocsp.validate import UNREADABLE, one_line
from hastaple.verify.judge import (
    SERVED_MARGIN,
    Check,
    Handshake,
    Target,
    VerifyError,
    judge,
)
from hastaple.verify.judge import failed as judge_failed
from hastaple.verify.output import duration, fields, report, summary
from hastaple.verify.targets import (
    DEFAULT_PORT,
    bind_addresses,
    bind_targets,
    names,
    parse_target,
    targets_from,
    unique,
)
from hastaple.verify.tls import TIMEOUT_SECONDS, handshake

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
    Handshake with every target concurrently and judge each; one Check per target, in order.

    ``at`` judges the staples as of another time ("still valid tomorrow?"); default now.
    """

    def one(target: Target) -> Check:
        try:
            result = handshake(target, timeout=timeout)
            return judge(target, result, now=at or dt.datetime.now(dt.UTC))
        except VerifyError as exc:
            return judge_failed(target, exc.problem)
        except UNREADABLE as exc:  # the served certificate itself does not decode
            return judge_failed(target, f"the server's certificate cannot be read: {one_line(exc)}")
        except Exception as exc:  # a bug: this target reports it, the others are still checked
            logger.exception("internal error while checking %s", target)
            return judge_failed(target, f"internal error: {exc!r} (see the log)")

    if len(targets) == 1:
        return [one(targets[0])]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(targets) or 1)) as pool:
        return list(pool.map(one, targets))
