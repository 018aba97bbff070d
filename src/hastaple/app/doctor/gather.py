"""
What ``doctor`` looks at, gathered once: files, runtime sockets, responders (all the I/O).

Every value gathered is plain data (``facts``); ``checks`` judges it without any I/O. The
runtime sockets are asked read-only commands only (``show cli level``,
``show info``, ``show ssl cert``): never a set/commit/new/del, and never an
OCSP command, since HAProxy 2.8 was seen to crash when its own updater ran
while the CLI polled those. Each responder host gets at most one request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import os
import pwd
import stat
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.x509 import ocsp

from hastaple.app.doctor.facts import (
    CertFact,
    DirFact,
    Facts,
    ResponderFact,
    Setting,
    Settings,
    SocketFact,
    StateDirFact,
)
from hastaple.core import certs
from hastaple.core import issuer as issuers
from hastaple.core.model import CertEntry
from hastaple.core.ocsp import request
from hastaple.core.ocsp.validate import UNREADABLE, validate
from hastaple.engine.fetch import Fetcher, Limits
from hastaple.engine.issuers import local_issuer
from hastaple.errors import CertificateError, ConfigError, FetchError, HAProxyError, InvalidResponse
from hastaple.haproxy import cfgload, client, protocol
from hastaple.haproxy.cfgwords import SPACE, split_line
from hastaple.sources import discover, pem
from hastaple.stores import store

# Keywords that open a section: only what comes after ``global`` until the next counts.
_SECTIONS = frozenset(
    {"global", "defaults", "frontend", "backend", "listen", "peers", "resolvers", "userlist",
     "mailers", "program", "http-errors", "ring", "cache", "fcgi-app", "crt-store",
     "log-forward", "traces"}
)  # fmt: skip


def read_settings(text: str, *, source: str, environ: Mapping[str, str]) -> Settings:
    """
    The ``global`` keywords ``ssl-load-extra-files`` and ``tune.bufsize`` (last one wins).

    Words are split by the same tokeniser ``discover`` uses; lines it cannot
    split were already reported by ``discover``, so they are skipped here.
    """
    section = ""
    found: dict[str, Setting] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        where = f"{source}:{number}"
        try:
            words = split_line(raw.lstrip(SPACE), env=environ, where=where, section=section)
        except ConfigError:
            continue
        if not words or words[0].startswith("."):
            continue
        if words[0] in _SECTIONS:
            section = words[0]
        if section == "global" and words[0] in {"ssl-load-extra-files", "tune.bufsize"}:
            found[words[0]] = Setting(tuple(words[1:]), where)
    return Settings(found.get("ssl-load-extra-files"), found.get("tune.bufsize"))


def read_cert(entry: CertEntry, now: dt.datetime) -> CertFact:
    """Read one certificate file, its ``.issuer`` and its ``.ocsp`` (no network)."""
    base = CertFact(entry.path, entry.haproxy_names, entry.source, entry.managed)
    try:
        bundle = pem.parse_file(entry.path)
        issuer = local_issuer(entry.path, bundle, base=entry.files_base, chains=entry.issuers_chain)
        leaf = bundle.leaf
        must_staple = certs.is_must_staple(leaf)
        url = issuers.ocsp_url(leaf)
    except CertificateError as exc:
        return _replace(base, error=exc.problem)
    except UNREADABLE as exc:
        return _replace(base, error=f"unreadable certificate: {exc}")
    staple = store.read(entry.ocsp_file or store.staple_path(entry.files_base))
    problem: str | None = "no staple on disk"
    if staple is not None:
        problem = _staple_problem(staple, leaf, issuer[0] if issuer else None, now)
    return CertFact(
        path=entry.path,
        names=entry.haproxy_names,
        source=entry.source,
        managed=entry.managed,
        not_after=leaf.not_valid_after_utc,
        ocsp_url=url,
        must_staple=must_staple,
        has_local_issuer=issuer is not None,
        staple_bytes=len(staple) if staple is not None else None,
        staple_problem=problem,
    )


def _staple_problem(
    der: bytes, leaf: x509.Certificate, issuer: x509.Certificate | None, now: dt.datetime
) -> str | None:
    if issuer is None:
        return "the staple cannot be checked without the issuer"
    try:
        verdict = validate(der, cert=leaf, issuer=issuer, now=now)
    except InvalidResponse as exc:
        return exc.reason
    if verdict.status.value != "good":
        return f"the staple says {verdict.status.value}"
    return None


def _replace(fact: CertFact, *, error: str) -> CertFact:
    return CertFact(fact.path, fact.names, fact.source, fact.managed, error=error)


def cert_dirs(facts: Sequence[CertFact]) -> tuple[DirFact, ...]:
    """The directories of the certificates hastaple staples, and whether we can write them."""
    dirs: dict[Path, list[str]] = {}
    for fact in facts:
        if fact.error is None and fact.ocsp_url and not fact.managed:
            dirs.setdefault(fact.path.parent, []).append(str(fact.path))
    return tuple(
        DirFact(path, os.access(path, os.W_OK | os.X_OK), tuple(names))
        for path, names in dirs.items()
    )


def state_dir_fact(path: Path) -> StateDirFact:
    """The state directory's mode; when missing, whether its nearest parent lets us create it."""
    try:
        info = path.stat()
    except OSError:
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        return StateDirFact(
            path, exists=False, mode=None, writable=os.access(parent, os.W_OK | os.X_OK)
        )
    mode = stat.S_IMODE(info.st_mode)
    return StateDirFact(path, exists=True, mode=mode, writable=os.access(path, os.W_OK | os.X_OK))


def current_user() -> str:
    """``name (uid N)`` of the user doctor runs as, for the messages."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "?"
    return f"{name} (uid {uid})"


_LEVEL = protocol.Command("show cli level")


_INFO = protocol.Command("show info")


_SHOW_CERTS = protocol.Command("show ssl cert")


async def ask_socket(
    address: str,
    *,
    source: str | None,
    config_level: str | None,
    timeout: float,  # noqa: ASYNC109
) -> SocketFact:
    """Ask one socket who it is and (at ``level admin``) which certificates it serves."""
    try:
        async with client.connect(address, timeout=timeout) as conn:
            level_reply, info_reply = await conn.run([_LEVEL, _INFO])
            info = protocol.parse_info(address, _INFO, info_reply)
            level = level_reply.text.strip() or None
            served = None
            if level == "admin":
                served = parse_cert_list(await conn.run_one(_SHOW_CERTS))
    except (HAProxyError, ConfigError) as exc:
        why = exc.problem if isinstance(exc, HAProxyError) else str(exc)
        if "Unknown command" in why or "help" in why.lower():
            why += " (a master socket needs a worker selector such as @1)"
        return SocketFact(address, source, config_level, error=why)
    return SocketFact(
        address,
        source,
        config_level,
        level=level,
        pid=info.pid,
        version=info.version,
        served=served,
    )


def parse_cert_list(reply: protocol.Reply) -> tuple[str, ...]:
    """The names ``show ssl cert`` lists, one a line (``*`` lines are open transactions)."""
    return tuple(
        line.strip()
        for line in reply.text.splitlines()
        if line.strip() and not line.startswith(("#", "*"))
    )


SLOW_LIMIT = 10.0  # seconds one responder exchange may take before doctor gives up


async def ask_responders(
    entries: Sequence[CertEntry],
    facts: Sequence[CertFact],
    *,
    timeout: float,  # noqa: ASYNC109
) -> tuple[ResponderFact, ...]:
    """One request per responder host, for the first certificate there with a local issuer."""
    chosen: dict[str, tuple[CertEntry, CertFact]] = {}
    for entry, fact in zip(entries, facts, strict=True):
        if fact.ocsp_url and fact.has_local_issuer and not fact.managed:
            host = urllib.parse.urlsplit(fact.ocsp_url).netloc
            chosen.setdefault(host, (entry, fact))
    limits = Limits(timeout=timeout, connect_timeout=min(timeout, Limits().connect_timeout))
    async with Fetcher(limits) as fetcher:
        return tuple(await asyncio.gather(*(_ask(fetcher, e, f) for e, f in chosen.values())))


async def _ask(fetcher: Fetcher, entry: CertEntry, fact: CertFact) -> ResponderFact:
    url = fact.ocsp_url or ""
    try:
        bundle = pem.parse_file(entry.path)
        found = local_issuer(entry.path, bundle, base=entry.files_base, chains=entry.issuers_chain)
    except CertificateError as exc:
        return ResponderFact(url, str(entry.path), error=exc.problem)
    if found is None:  # ask_responders only picks certificates with a local issuer
        return ResponderFact(url, str(entry.path), error="no issuer on disk")
    issuer = found[0]
    try:
        reply = await fetcher.ocsp(url, request.build(bundle.leaf, issuer))
    except FetchError as exc:
        return ResponderFact(url, str(entry.path), error=exc.problem)
    local = dt.datetime.now(dt.UTC)
    date = _http_date(reply.date)
    this_update, delegate, delegate_not_after = _response_times(reply.der, issuer)
    error = None
    try:
        validate(reply.der, cert=bundle.leaf, issuer=issuer, now=local)
    except InvalidResponse as exc:
        error = f"answered with a response that fails validation: {exc.reason}"
    return ResponderFact(
        url,
        str(entry.path),
        error=error,
        elapsed=reply.elapsed,
        local_time=local,
        date=date,
        this_update=this_update,
        delegate=delegate,
        delegate_not_after=delegate_not_after,
    )


def _http_date(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _response_times(
    der: bytes, issuer: x509.Certificate
) -> tuple[dt.datetime | None, str | None, dt.datetime | None]:
    """thisUpdate, and the delegated signer's subject and notAfter when one is included."""
    try:
        resp = ocsp.load_der_ocsp_response(der)
        if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            return None, None, None
        this_update = resp.this_update_utc
        delegates = [c for c in resp.certificates if c.subject != issuer.subject]
    except UNREADABLE:
        return None, None, None
    if not delegates:
        return this_update, None, None
    return this_update, delegates[0].subject.rfc4514_string(), delegates[0].not_valid_after_utc


async def gather(
    *,
    paths: Sequence[Path],
    configs: Sequence[Path],
    sockets: Sequence[str],
    state_dir: Path,
    responders: bool,
    timeout: float,  # noqa: ASYNC109 - per exchange, passed on
    environ: Mapping[str, str],
) -> Facts:
    """
    Read everything doctor judges.

    Raises:
        ConfigError: a configuration file cannot be read (exit 2).
    """
    now = dt.datetime.now(dt.UTC)
    cwd = Path.cwd()
    settings = Settings()
    socket_specs: dict[str, tuple[str | None, str | None]] = {}
    for path in configs:
        parsed = cfgload.read_haproxy_config(path, cwd=cwd, environ=environ)
        text = (cwd / path).read_bytes().decode("utf-8", "surrogateescape")
        settings = _merge(settings, read_settings(text, source=str(path), environ=environ))
        for sock in parsed.sockets:
            if sock.tls or sock.address.startswith(("fd@", "sockpair@")):
                continue  # discover's warning says why hastaple cannot use it
            socket_specs.setdefault(sock.address, (sock.source, sock.level))
    for address in sockets:
        socket_specs.setdefault(address, (None, None))

    config_errors: list[str] = []
    try:
        found = discover.discover(paths, (), configs, environ=environ)
        entries = found.certs
    except ConfigError as exc:
        config_errors.append(str(exc))
        entries = ()
    cert_facts = tuple(read_cert(entry, now) for entry in entries)

    asked = asyncio.gather(
        *(
            ask_socket(address, source=src, config_level=level, timeout=timeout)
            for address, (src, level) in socket_specs.items()
        )
    )
    if responders:
        socket_facts, responder_facts = await asyncio.gather(
            asked, ask_responders(entries, cert_facts, timeout=timeout)
        )
    else:
        socket_facts, responder_facts = await asked, ()
    return Facts(
        user=current_user(),
        now=now,
        configs=tuple(str(c) for c in configs),
        config_errors=tuple(config_errors),
        settings=settings,
        sockets=tuple(socket_facts),
        certs=cert_facts,
        dirs=cert_dirs(cert_facts),
        state_dir=state_dir_fact(state_dir),
        responders=tuple(responder_facts),
        responders_skipped=not responders,
    )


def _merge(old: Settings, new: Settings) -> Settings:
    return Settings(new.extra_files or old.extra_files, new.bufsize or old.bufsize)
