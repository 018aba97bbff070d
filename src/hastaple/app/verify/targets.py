"""
Which endpoints ``verify`` checks: ``HOST[:PORT]`` arguments and the TLS binds of haproxy.cfg.

``bind_targets`` takes the TLS ``bind`` lines of an haproxy.cfg and the
certificates behind each from ``discover`` (one parser of HAProxy's rules),
so ``verify --haproxy-config`` checks every certificate name on its TLS
listeners.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from hastaple.app.verify.judge import Target
from hastaple.errors import CertificateError, ConfigError
from hastaple.haproxy import cfgload
from hastaple.sources import discover, pem

DEFAULT_PORT = 443

logger = logging.getLogger(__name__)


def parse_target(text: str, *, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """
    Split ``HOST[:PORT]`` (``[v6]:PORT`` for IPv6) into host and port.

    Raises:
        ConfigError: the text is not a host with an optional port 1-65535.
    """
    host, port_text = text.strip(), ""
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or (host[end + 1 :] and not host[end + 1 :].startswith(":")):
            raise ConfigError(f"{text!r}: not HOST[:PORT]")
        host, port_text = host[1:end], host[end + 2 :]
    elif host.count(":") == 1:
        host, port_text = host.split(":")
    elif ":" in host:
        try:
            ipaddress.IPv6Address(host)  # a bare IPv6 literal has no port
        except ValueError:
            raise ConfigError(f"{text!r}: not HOST[:PORT] (write IPv6 as [ADDRESS]:PORT)") from None
    if not host or any(c in host for c in "/ @"):
        raise ConfigError(f"{text!r}: not HOST[:PORT]")
    if not _is_host_name(host):
        raise ConfigError(f"{text!r}: not a host name (DNS labels are 1-63 characters)")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:  # noqa: PLR2004 - TCP port range
        raise ConfigError(f"{text!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def _is_host_name(host: str) -> bool:
    """Whether the resolver can be asked for ``host``: an IP literal, or a name IDNA encodes."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    try:
        host.encode("idna")  # what getaddrinfo() does first; it refuses labels over 63 octets
    except UnicodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class BindAddress:
    """One address of a bind line: where to connect, or (``host`` None) why it is not checked."""

    host: str | None
    port: int = 0
    note: str | None = None


def bind_addresses(address: str) -> list[BindAddress]:
    """
    Where to connect for a ``bind`` line's address argument (``cfgfile.Bind.address``).

    Pure. Addresses like ``:443``, ``*:443`` and ``0.0.0.0:443`` mean "every
    address", checked on 127.0.0.1; ``ipv4@``/``ipv6@`` prefixes are dropped.
    A port range is checked on its first port (every port of a range serves
    the same certificates), with a note. Unix sockets, ``fd@`` and QUIC are
    not TCP: they come back without a host, with the reason.
    """
    return [_bind_address(part) for part in address.split(",") if part]


def _bind_address(text: str) -> BindAddress:
    written = text
    for prefix in ("ipv4@", "ipv6@", "tcp@", "tcp4@", "tcp6@"):
        text = text.removeprefix(prefix)
    if "@" in text or text.startswith("/"):
        kind = text.split("@", 1)[0] + "@" if "@" in text else "a unix socket"
        return BindAddress(None, note=f"{written}: {kind} is not a TCP address verify can reach")
    host, _, port = text.rpartition(":")
    first, dash, last = port.partition("-")
    if not first.isdigit() or (dash and not last.isdigit()):
        return BindAddress(None, note=f"{written}: not a port verify understands")
    note = f"port range {first}-{last}: checked on its first port, {first}" if dash else None
    host = host.strip("[]")
    if host in ("", "*", "0.0.0.0"):  # noqa: S104 - a bind address, not ours
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return BindAddress(host, int(first), note)


def names(cert: x509.Certificate) -> list[str]:
    """The DNS names to send as SNI for ``cert``: its SANs (``*.`` made concrete), else CN."""
    dns = _dns_names(cert)
    return list(dict.fromkeys(n.replace("*.", "hastaple-verify.", 1) for n in dns))


def is_for(cert: x509.Certificate, sni: str | None) -> bool:
    """
    Whether ``cert`` answers for ``sni``: a DNS SAN (or, without SANs, the CN), ``*.`` one label.

    No SNI (an IP target): any certificate is what that address serves.
    """
    if sni is None:
        return True
    wanted = sni.lower().rstrip(".")
    for dns in _dns_names(cert):
        pattern = dns.lower()
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and wanted.partition(".")[2] == pattern[2:]:
            return True
    return False


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    return dns or [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def bind_targets(
    config: Path, *, cwd: Path | None = None, environ: Mapping[str, str] | None = None
) -> list[Target]:
    """
    One Target per (address, certificate name) of each TLS bind of an haproxy.cfg.

    The config is read by ``discover`` (HAProxy's quoting, crt-base, crt-lists,
    the files a crt directory loads); ``cwd`` is HAProxy's working directory,
    where relative paths resolve (default: ours), ``environ`` its environment
    for ``"$VAR"`` (default: ours).

    Raises:
        ConfigError: the file or a certificate it names cannot be read, or it
            has no TLS bind with certificates.
    """
    base = Path.cwd() if cwd is None else cwd
    env = os.environ if environ is None else environ
    parsed = cfgload.read_haproxy_config(config, cwd=base, environ=env)
    seen: dict[Path, list[str]] = {}
    targets: list[Target] = []
    for bind in parsed.binds:
        if not bind.ssl or not bind.refs:
            continue
        files: dict[str, list[Path]] = {}  # SNI name -> the files that serve it
        for ref in bind.refs:
            for entry in discover.resolve_ref(ref, cwd=base):
                if entry.path not in seen:
                    seen[entry.path] = _names_in(entry.path)
                for name in seen[entry.path]:
                    files.setdefault(name, []).append(entry.path)
        for where in bind_addresses(bind.address):
            if where.host is None:
                logger.warning("%s: bind not checked: %s", bind.source, where.note)
                continue
            targets += [
                Target(
                    where.host, where.port, name, cert_files=tuple(paths),
                    proxy=bind.accept_proxy, note=where.note,
                )
                for name, paths in files.items()
            ]  # fmt: skip
    if not targets:
        raise ConfigError(f"{config}: no TLS bind line with certificates found")
    return targets


def _names_in(path: Path) -> list[str]:
    try:
        return names(pem.parse_file(path).leaf)
    except CertificateError as exc:
        raise ConfigError(str(exc)) from exc


def unique(targets: Iterable[Target]) -> list[Target]:
    """Drop repeated targets, keeping the first."""
    return list(dict.fromkeys(targets))


def targets_from(
    addresses: Sequence[str], servernames: Sequence[str], configs: Sequence[Path]
) -> list[Target]:
    """
    The targets the command line asks for: each address with each servername, and every bind.

    Raises:
        ConfigError: a bad HOST[:PORT], an unreadable config, or nothing to check.
    """
    found: list[Target] = []
    for text in addresses:
        host, port = parse_target(text)
        found += [Target(host, port, n) for n in servernames] or [Target(host, port)]
    for config in configs:
        found += bind_targets(config)
    if not found:
        raise ConfigError("nothing to check: give HOST[:PORT] or --haproxy-config")
    return unique(found)
