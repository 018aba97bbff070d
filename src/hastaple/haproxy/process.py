"""
What only the HAProxy process or binary knows about reading its configuration.

- ``working_directory``: where a running HAProxy reads relative paths from;
- ``running_binary``: the executable of a running HAProxy;
- ``condition_oracle``: ``.if`` predicates answered by ``haproxy -cc``.

HAProxy reads relative ``crt``/``crt-list`` paths from the directory it was
started in (after ``-C <dir>``); nothing in the configuration says which one
that was. When one of its runtime sockets answers on this host, ``show info``
gives its pid and ``/proc/<pid>/cwd`` the directory. A worker that did
``chroot`` shows the chroot instead, so then its parent is asked: in
master-worker mode that is the master, which never chroots.

``haproxy -cc '<condition>'`` evaluates one condition as the configuration
parser would and answers with its exit code (0 true, 1 false, 2 refused).

Blocking and short (one ``show info`` per socket, 1 s each; one ``-cc`` per
distinct predicate): it runs while the configuration is read, before
anything else happens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hastaple.errors import ConfigError
from hastaple.haproxy import cfgcond, cfgread, protocol

logger = logging.getLogger(__name__)

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True, slots=True)
class WorkingDirectory:
    """A running HAProxy's working directory and how it was found, for a person."""

    path: Path
    how: str


def working_directory(
    addresses: Iterable[str], *, chroot: bool, timeout: float = 1.0
) -> WorkingDirectory | None:
    """
    The working directory of the HAProxy behind the first of ``addresses`` that answers.

    ``addresses`` are stats socket addresses as written (absolute unix paths,
    ``unix@``, loopback ``ipv4@``); ``chroot``: the configuration has
    ``chroot``. None when no socket on this host answers, or the process's
    directory cannot be read.
    """
    for address in addresses:
        pid = _pid(address, timeout)
        if pid is None:
            continue
        found = _directory_of(pid, chroot=chroot)
        if found is not None:
            return WorkingDirectory(found[0], f"{found[1]}, from {address}")
    return None


def running_binary(addresses: Iterable[str], *, timeout: float = 1.0) -> str | None:
    """
    The executable of the HAProxy behind the first of ``addresses`` that answers.

    ``/proc/<pid>/exe`` itself, which runs the very binary even when the file
    was replaced on disk since. None when no HAProxy on this host answers.
    """
    for address in addresses:
        pid = _pid(address, timeout)
        if pid is None:
            continue
        exe = Path(f"/proc/{pid}/exe")
        try:
            if "haproxy" in exe.readlink().name:
                return str(exe)
        except OSError as exc:
            logger.debug("executable of pid %d: %s", pid, exc)
    return None


def _target(address: str) -> tuple[int, str | tuple[str, int]] | None:
    """Socket family and address of a stats socket on this host, or None."""
    try:
        where = protocol.parse_address(address)
    except ConfigError:
        return None
    if where.prefix:
        return None  # a master CLI selector: not a stats socket of this configuration
    if where.path is not None:
        return (socket.AF_UNIX, where.path) if where.path.startswith(("/", "\0")) else None
    if where.host in _LOOPBACK and where.port is not None:
        family = socket.AF_INET6 if ":" in where.host else socket.AF_INET
        return family, (where.host, where.port)
    return None  # another host: its pid means nothing here


def _pid(address: str, timeout: float) -> int | None:
    target = _target(address)
    if target is None:
        return None
    try:
        reply = _ask(*target, timeout)
    except OSError as exc:
        logger.debug("show info on %s: %s", address, exc)
        return None
    for line in reply.splitlines():
        if line.startswith("Pid:"):
            with contextlib.suppress(ValueError):
                return int(line.split(":", 1)[1])
    return None


def _ask(family: int, target: str | tuple[str, int], timeout: float) -> str:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(target)
        sock.sendall(b"show info\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _directory_of(pid: int, *, chroot: bool) -> tuple[Path, str] | None:
    """``/proc/<pid>/cwd``, or its master's when the worker chrooted."""
    try:
        exe = Path(f"/proc/{pid}/exe").readlink()
        if "haproxy" not in exe.name:
            return None  # another pid namespace (a container): not the process that answered
        if not chroot:
            return Path(f"/proc/{pid}/cwd").readlink(), f"HAProxy pid {pid}"
        parent = _parent(pid)
        if parent is None or Path(f"/proc/{parent}/exe").readlink() != exe:
            return None  # a chrooted process that is not a master's worker
        return Path(f"/proc/{parent}/cwd").readlink(), f"HAProxy master pid {parent}"
    except OSError as exc:
        logger.debug("working directory of pid %d: %s", pid, exc)
        return None


def _parent(pid: int) -> int | None:
    with Path(f"/proc/{pid}/status").open() as status:
        for line in status:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    return None


def condition_oracle(binary: str | None = None) -> tuple[cfgcond.Ask, str]:
    """
    Answer ``.if`` predicates with ``<binary> -cc '<predicate>'`` (exit 0 true, 1 false).

    Returns the callback and, for warnings, why it may not know. Each
    question is asked once per callback.
    """
    found = binary or shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:{_SBIN}")
    if found is None:
        return cfgread.never, "no haproxy binary found on the PATH or in /usr/sbin"
    answers: dict[tuple[str, tuple[str, ...]], bool | None] = {}

    def ask(name: str, args: tuple[str, ...]) -> bool | None:
        if (name, args) not in answers:
            answers[name, args] = _run_condition(found, _condition_text(name, args))
        return answers[name, args]

    return ask, f"{found} -cc could not answer"


_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def _condition_text(name: str, args: tuple[str, ...]) -> str:
    """A predicate spelled so that ``haproxy -cc`` reads back exactly ``args``."""
    # make_arg_list() level: each argument in double quotes; parse_line() level:
    # the whole in single quotes, so that nothing is expanded a second time.
    quoted = ",".join('"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"' for a in args)
    return "'" + f"{name}({quoted})".replace("'", "'\\''") + "'"


def _run_condition(binary: str, condition: str) -> bool | None:
    try:
        done = subprocess.run(
            [binary, "-cc", condition],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("%s -cc %s: %s", binary, condition, exc)
        return None
    logger.debug("%s -cc %s: exit %d", binary, condition, done.returncode)
    return {0: True, 1: False}.get(done.returncode)
