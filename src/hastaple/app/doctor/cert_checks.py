"""
The doctor's checks of certificates, directories, responders and the clock.

Pure functions from gathered ``Facts`` to ``Finding``s (no I/O). Must not
gather facts (``facts``) nor decide the order of the checklist (``checks``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from hastaple.app.doctor.facts import Facts
from hastaple.app.doctor.finding import (
    DELEGATE_EXPIRING,
    EXPIRING,
    SKEW_WARNING,
    SLOW,
    Finding,
    Severity,
)
from hastaple.core.ocsp.validate import CLOCK_SKEW


def _served(facts: Facts) -> set[str] | None:
    lists = [s.served for s in facts.sockets if s.served is not None]
    if not lists:
        return None
    return {name for served in lists for name in served}


def cert_not_served(facts: Facts) -> Iterator[Finding]:
    """A certificate of the configuration that HAProxy does not serve."""
    served = _served(facts)
    if served is None:
        return
    for cert in facts.certs:
        if not served & set(cert.names):
            yield Finding.at(
                "cert-not-served",
                "warning",
                cert.source,
                f"{cert.path} is in the configuration but HAProxy does not serve it "
                "(added after HAProxy started?)",
                "reload HAProxy so it loads the certificate, or remove the file",
            )


def cert_not_on_disk(facts: Facts) -> Iterator[Finding]:
    """A certificate HAProxy serves that the configuration on disk does not name."""
    served = _served(facts)
    if served is None or not facts.configs or facts.config_errors:
        return
    known = {name for cert in facts.certs for name in cert.names}
    known |= {str(cert.path) for cert in facts.certs}
    for name in sorted(served - known):
        yield Finding.at(
            "cert-not-on-disk",
            "warning",
            facts.configs[0],
            f"HAProxy serves {name}, which the configuration on disk no longer names "
            "or which was removed: hastaple will not staple it",
            "reload HAProxy to match the files on disk, or restore the certificate file",
        )


def cert_unreadable(facts: Facts) -> Iterator[Finding]:
    """A certificate file that cannot be read as PEM."""
    for cert in facts.certs:
        if cert.error is not None:
            yield Finding.at(
                "cert-unreadable",
                "error",
                cert.source,
                f"{cert.path}: {cert.error}",
                "replace it with a PEM file: the certificate first, then its key and chain",
            )


def chainless_no_issuer(facts: Facts) -> Iterator[Finding]:
    """A PEM without chain and without ``.issuer``: no CertID for HAProxy."""
    for cert in facts.certs:
        if cert.error is None and cert.ocsp_url and not cert.has_local_issuer:
            yield Finding.at(
                "chainless-no-issuer",
                "error",
                cert.source,
                f"{cert.path} has no chain and no {cert.path.name}.issuer: HAProxy cannot "
                "compute its OCSP certificate ID, so hastaple will not write its .ocsp",
                f"append the issuing CA certificate to {cert.path}, or write it to "
                f"{cert.path}.issuer",
            )


def no_ocsp_url(facts: Facts) -> Iterator[Finding]:
    """A certificate whose CA names no OCSP responder."""
    for cert in facts.certs:
        if cert.error is None and not cert.ocsp_url:
            yield Finding.at(
                "no-ocsp-url",
                "info",
                cert.source,
                f"{cert.path} names no OCSP responder: there is nothing to staple",
                "nothing to do (its CA does not offer OCSP)",
            )


def managed_by_haproxy(facts: Facts) -> Iterator[Finding]:
    """A certificate left to HAProxy's updater (``ocsp-update on``)."""
    for cert in facts.certs:
        if cert.managed:
            yield Finding.at(
                "managed-by-haproxy",
                "info",
                cert.source,
                f"{cert.path} has `ocsp-update on`: HAProxy's own updater keeps its staple; "
                "hastaple leaves it alone",
                "nothing to do; to let hastaple manage it, remove `ocsp-update on` from that line",
            )


def must_staple_unstapled(facts: Facts) -> Iterator[Finding]:
    """A must-staple certificate without a fresh staple on disk."""
    for cert in facts.certs:
        if cert.must_staple and not cert.managed and cert.staple_problem is not None:
            yield Finding.at(
                "must-staple-unstapled",
                "error",
                cert.source,
                f"{cert.path} is must-staple and has no fresh staple ({cert.staple_problem}): "
                "browsers that honour must-staple refuse the site",
                f"run `hastaple fetch {cert.path}` (with --haproxy) and keep `hastaple run` going",
            )


def cert_expiry(facts: Facts) -> Iterator[Finding]:
    """An expired certificate, or one expiring within 30 days."""
    for cert in facts.certs:
        if cert.not_after is None:
            continue
        left = cert.not_after - facts.now
        if left <= dt.timedelta(0):
            yield Finding.at(
                "cert-expired",
                "error",
                cert.source,
                f"{cert.path} expired on {cert.not_after:%Y-%m-%d %H:%M} UTC",
                "renew the certificate and reload HAProxy",
            )
        elif left < EXPIRING:
            yield Finding.at(
                "cert-expiring",
                "warning",
                cert.source,
                f"{cert.path} expires on {cert.not_after:%Y-%m-%d %H:%M} UTC (in {left.days} days)",
                "renew the certificate (check that automatic renewal runs)",
            )


def cert_dir_not_writable(facts: Facts) -> Iterator[Finding]:
    """A certificate directory this user cannot write ``.ocsp`` files into."""
    for directory in facts.dirs:
        if not directory.writable:
            yield Finding(
                "cert-dir-not-writable",
                "error",
                f"{facts.user} cannot write {directory.path}, where the .ocsp of "
                f"{directory.certs[0]} goes: staples are lost at HAProxy's next restart",
                f"run hastaple as a user that can write {directory.path}, or grant it: "
                f"`chgrp <hastaple-group> {directory.path} && chmod g+wx {directory.path}`",
                str(directory.path),
            )


def state_dir_permissions(facts: Facts) -> Iterator[Finding]:
    """A state directory that is world-writable, or that we cannot write or create."""
    state = facts.state_dir
    if state is None:
        return
    if state.exists and state.mode is not None and state.mode & 0o002:
        yield Finding(
            "state-dir-permissions",
            "warning",
            f"state directory {state.path} is world-writable (mode {state.mode:04o}): "
            "anyone can plant issuers and state",
            f"chmod 700 {state.path}",
            str(state.path),
        )
    if not state.writable:
        what = "write" if state.exists else "create"
        yield Finding(
            "state-dir-permissions",
            "error",
            f"{facts.user} cannot {what} the state directory {state.path}",
            f"create it for that user: `install -d -m 700 -o <user> {state.path}`, "
            "or choose another with --state-dir",
            str(state.path),
        )


def responder_down(facts: Facts) -> Iterator[Finding]:
    """A responder that does not answer with a valid response."""
    for resp in facts.responders:
        if resp.error is not None:
            yield Finding(
                "responder-down",
                "error",
                f"responder {resp.url} (asked for {resp.cert}): {resp.error}",
                "check that this host can reach it (firewall, HTTP proxy via HTTP_PROXY); "
                "if it is the CA's outage, existing staples last until their nextUpdate",
            )


def responder_slow(facts: Facts) -> Iterator[Finding]:
    """A responder that takes more than 2 s."""
    for resp in facts.responders:
        if resp.elapsed is not None and resp.elapsed > SLOW:
            yield Finding(
                "responder-slow",
                "warning",
                f"responder {resp.url} took {resp.elapsed:.1f} s to answer (more than {SLOW:g} s)",
                "check the network path to it; raise --timeout if it stays this slow",
            )


def delegate_expiring(facts: Facts) -> Iterator[Finding]:
    """A delegated responder certificate expiring within 7 days."""
    for resp in facts.responders:
        if resp.delegate_not_after is None:
            continue
        left = resp.delegate_not_after - facts.now
        if left < DELEGATE_EXPIRING:
            yield Finding(
                "responder-delegate-expiring",
                "warning",
                f"responder {resp.url} signs with delegated certificate {resp.delegate}, "
                f"which expires on {resp.delegate_not_after:%Y-%m-%d %H:%M} UTC",
                "nothing to do here if the CA rotates it in time; if not, tell the CA",
            )


def clock_skew(facts: Facts) -> Iterator[Finding]:
    """This host's clock against the responder's (HTTP Date, else thisUpdate)."""
    for resp in facts.responders:
        if resp.local_time is None:
            continue
        skew: dt.timedelta | None = None
        if resp.date is not None:
            skew = resp.date - resp.local_time
        elif resp.this_update is not None and resp.this_update > resp.local_time:
            skew = resp.this_update - resp.local_time
        if skew is None or abs(skew) <= SKEW_WARNING:
            continue
        ahead = "behind" if skew > dt.timedelta(0) else "ahead of"
        severity: Severity = "error" if abs(skew) > CLOCK_SKEW else "warning"
        yield Finding(
            "clock-skew",
            severity,
            f"this host's clock is {abs(skew).total_seconds():.0f} s {ahead} responder "
            f"{resp.url}'s: responses may be judged not yet valid or expired",
            "synchronise the clock (e.g. `timedatectl set-ntp true`, chrony or systemd-timesyncd)",
        )
