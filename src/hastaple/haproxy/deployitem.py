"""What loading staples into HAProxy takes and gives: items, outcomes, processes (values)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# Certificates per pipelined round: bounds the commands and replies held at
# once (10,000 certificates held about 40 MB of read-back text in one batch).
CHUNK = 256


@dataclass(frozen=True, slots=True)
class DeployItem:
    """
    One validated response to load for one certificate.

    ``crt`` is the path as HAProxy names it; ``cert_id`` the DER CertID
    (``hastaple.core.ocsp.request.cert_id``); ``issuer_pem`` is sent as
    ``<crt>.issuer`` when the PEM has no chain.
    """

    crt: str
    der: bytes
    cert_id: bytes
    issuer_pem: bytes | None
    this_update: datetime
    next_update: datetime


@dataclass(frozen=True, slots=True)
class Process:
    """
    The HAProxy process behind a socket, from its ``show info``.

    Two sockets reach one process when node (the host name unless set), pid
    and start time agree: a unix and an ``ipv4@`` socket of one worker, or a
    worker socket and a master CLI's ``@1``. The start time is ours (now less
    ``Uptime_sec``), so it is compared within a few seconds; a pid is reused
    only by a later process, and containers' pids differ by node or start.
    """

    node: str
    pid: int
    started: float  # seconds since the epoch, as estimated here

    def same(self, other: Process) -> bool:
        """Whether ``other`` is this process."""
        return (self.node, self.pid) == (other.node, other.pid) and abs(
            self.started - other.started
        ) <= _START_SLACK


# Seconds two estimates of one process's start may differ by: Uptime_sec is
# whole seconds, read at two moments.
_START_SLACK = 2.5


# The method of an outcome whose file HAProxy serves in an older version: the
# staple is stored for the reload (or restart) that loads the new certificate.
STORED = "stored"


@dataclass(frozen=True, slots=True)
class DeployOutcome:
    """
    What happened to one item: ``method`` is "update" (fast path) or "commit".

    ``STORED`` (not ok): HAProxy serves another certificate from that file,
    an older one until its next reload; nothing was loaded.

    ``error`` is the problem alone; the caller names the socket.
    """

    crt: str
    ok: bool
    method: str
    error: str | None = None
