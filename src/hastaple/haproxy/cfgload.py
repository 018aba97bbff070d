"""
Reading an haproxy.cfg from disk as the running HAProxy does.

``read_haproxy_config`` reads the file, adds what HAProxy sets before it
reads it (``HAPROXY_LOCALPEER``) and has the ``.if`` predicates only the
binary knows answered by that binary (``hastaple.haproxy.process``);
``config_root`` finds the directory relative paths are read from. The
parsing itself is ``hastaple.haproxy.cfgfile``'s, which does no I/O.
Must not decide which certificates exist (``hastaple.sources.discover``).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from pathlib import Path

from hastaple.errors import ConfigError
from hastaple.haproxy import process
from hastaple.haproxy.cfgfile import CertRef, HAProxyConfig, join_base, parse_haproxy_config
from hastaple.haproxy.crtlist import parse_crt_list

logger = logging.getLogger(__name__)


def config_root(config: HAProxyConfig, path: Path, base: Path, warnings: list[str]) -> Path:
    """
    The directory HAProxy reads this configuration's relative paths from (pass it to resolve_ref).

    ``path``: the configuration as read, relative to ``base`` (our directory);
    a warning is appended to ``warnings`` when the directory is a guess.

    Asked only when there are relative paths: the running HAProxy's working
    directory when one of its sockets answers on this host, else the
    configuration's own directory, said in a warning.
    """
    if not any(_is_relative(ref, base) for ref in config.refs):
        return base
    addresses = [s.address for s in config.sockets if not s.address.startswith(("fd@", "sock"))]
    running = process.working_directory(addresses, chroot=config.chroot is not None)
    if running is not None:
        logger.info("%s: relative paths read from %s (%s)", path, running.path, running.how)
        return running.path
    folder = (base / path).parent
    warnings.append(
        f"{path}: relative certificate paths read from {folder}, the configuration's "
        "directory: no HAProxy answered on a stats socket of this configuration on "
        "this host, so its working directory is unknown (absolute paths or an "
        "absolute crt-base avoid the guess)"
    )
    return folder


def _is_relative(ref: CertRef, base: Path) -> bool:
    """Whether resolving ``ref`` depends on HAProxy's starting directory."""
    if ref.directory is not None:
        return not ref.directory.startswith("/")
    if ref.kind == "crt":
        return not join_base(ref.path, ref.crt_base).startswith("/")
    if not ref.path.startswith("/"):
        return True
    try:
        text = (base / ref.path).read_bytes().decode("utf-8", "surrogateescape")
        entries = parse_crt_list(text, source=ref.path, crt_base=ref.crt_base, cwd=base)
    except (OSError, ConfigError):
        return False  # resolving it says what is wrong
    return any(not name.startswith("/") for e in entries for name in e.names)


def socket_address(address: str, cwd: Path) -> str:
    """Keep the address as written, but anchor a relative ``unix@`` path at HAProxy's cwd."""
    if address.startswith("unix@") and not address[5:].startswith("/"):
        return f"unix@{cwd / address[5:]}"
    return address


def read_haproxy_config(
    path: Path, *, cwd: Path, environ: Mapping[str, str], haproxy_binary: str | None = None
) -> HAProxyConfig:
    """
    Read and parse the haproxy.cfg at ``path`` (relative to ``cwd``).

    ``haproxy_binary`` answers ``.if feature(...)``, ``version_atleast(...)``
    and the like. By default, when the configuration asks such a question:
    the running HAProxy's own executable (found through a stats socket of
    the configuration on this host), else ``haproxy`` on the PATH or in /usr/sbin.

    Raises:
        ConfigError: the file cannot be read, or HAProxy would refuse it.
    """
    text = _read(cwd / path, str(path))
    # HAProxy sets this one before it reads the configuration (the host name, or -L).
    env = {**environ, "HAPROXY_LOCALPEER": socket.gethostname()}
    if haproxy_binary is None:
        asked: list[str] = []

        def record(name: str, _args: tuple[str, ...]) -> None:  # a first pass, to find sockets
            asked.append(name)

        first = parse_haproxy_config(text, source=str(path), environ=env, ask=record)
        if asked:
            haproxy_binary = process.running_binary(s.address for s in first.sockets)
            logger.info("%s: .if predicates asked of %s", path, haproxy_binary or "haproxy")
    ask, why = process.condition_oracle(haproxy_binary)
    return parse_haproxy_config(text, source=str(path), environ=env, ask=ask, why_unknown=why)


def _read(path: Path, label: str) -> str:
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise ConfigError(f"{label}: {exc.strerror or exc}") from exc
