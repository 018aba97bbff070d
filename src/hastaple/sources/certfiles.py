"""
Read one certificate's files as a reload would load them: PEM, ``.key``, ``.issuer``, ``.ocsp``.

``target_of`` says where HAProxy loads a file from (its crt-list line or
``crt`` directory), which is where a process that lacks it must add it.

The staple on disk is validated against the certificate now in the PEM
before it goes anywhere: after a renewal the ``.ocsp`` may still be the old
certificate's (HAProxy would load it with a warning and staple nothing), and
loading an invalid one would serve a must-staple certificate without a
staple. Such a staple is left out, with the reason in ``staple_problem``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from hastaple.core import issuer as issuers
from hastaple.core.model import CertEntry, Status
from hastaple.core.ocsp import request
from hastaple.core.ocsp.validate import validate
from hastaple.errors import CertificateError, InvalidResponse
from hastaple.haproxy.certload import CertFiles
from hastaple.sources import issuerchains, pem
from hastaple.stores import store


@dataclass(frozen=True, slots=True)
class Read:
    """``files`` to load; ``staple_problem`` says why the ``.ocsp`` on disk was left out."""

    files: CertFiles
    staple_problem: str | None = None


def read(
    path: Path,
    crt: str | None = None,
    *,
    now: dt.datetime,
    base: Path | None = None,
    chains: Path | None = None,
) -> Read:
    """
    Read ``path`` (named ``crt`` in HAProxy, by default its path) and the files beside it.

    ``base`` is what HAProxy appends ``.key``, ``.issuer`` and ``.ocsp`` to
    (default ``path``); ``chains`` the ``issuers-chain-path`` directory, where
    HAProxy finds the chain of a PEM without one (then no ``.issuer`` is sent).

    Raises:
        CertificateError: the PEM is unreadable, or its issuer is in no local file.
    """
    base = base or path
    data = pem.read(path)
    bundle = pem.parse(data, source=path)
    key_path = base.with_name(base.name + ".key")
    key = pem.read(key_path) if not bundle.has_key and key_path.exists() else None
    issuer_pem = None
    candidates = list(bundle.chain)
    if not candidates and chains is not None:
        candidates = list(issuerchains.load(chains).chain_for(bundle.leaf))
    if not candidates and (raw := store.read(store.issuer_path(base))) is not None:
        issuer_pem = raw
        candidates = issuers.parse_certificates(raw)
    issuer = issuers.choose_local(bundle.leaf, candidates)
    if issuer is None:
        raise CertificateError(path, "no issuer in the PEM chain or in its .issuer file")
    cert_id = request.cert_id(bundle.leaf, issuer)
    staple, problem = store.read(store.staple_path(base)), None
    if staple is not None:
        try:
            verdict = validate(staple, cert=bundle.leaf, issuer=issuer, now=now)
            if verdict.status is not Status.GOOD:
                problem = f"the staple on disk says {verdict.status.value}"
        except InvalidResponse as exc:
            problem = f"the staple on disk is not valid for this certificate: {exc.reason}"
    else:
        problem = "no staple on disk"
    files = CertFiles(
        crt=crt or str(path),
        pem=data,
        serial=bundle.leaf.serial_number,
        key=key,
        issuer_pem=issuer_pem,
        staple=staple if problem is None else None,
        cert_id=cert_id,
        must_staple=pem.is_must_staple(bundle.leaf),
    )
    return Read(files, problem)


@dataclass(frozen=True, slots=True)
class Target:
    """One certificate file, and where HAProxy would add it if it lacks it (list or directory)."""

    entry: CertEntry
    crt_list: str | None = None
    line: str = ""


def target_of(
    entry: CertEntry,
    config_files: AbstractSet[Path],
    directories: AbstractSet[Path] = frozenset(),
) -> Target:
    """
    Where the entry comes from: a crt-list line (with its options) or a ``crt`` directory.

    ``config_files`` are the haproxy.cfg files read (resolved); ``directories``
    certificate directories given directly (the daemon's ``paths``), whose
    files HAProxy loads through ``crt <dir>``.
    """
    source, _, number = entry.source.rpartition(":")
    if entry.path.parent.resolve() in directories:
        return Target(entry, str(entry.path.parent))
    if not source or not number.isdigit():
        return Target(entry)
    origin = Path(source)
    if origin.resolve() in config_files:  # a ``crt <dir>`` (or file) on a bind line
        directory = entry.path.parent
        return Target(entry, str(directory) if entry.names else None)
    try:
        text = origin.read_text().split("\n")[int(number) - 1]
    except (OSError, IndexError, UnicodeDecodeError):
        return Target(entry)
    words = text.strip().split(None, 1)
    return Target(entry, str(origin.resolve()), words[1] if len(words) > 1 else "")
