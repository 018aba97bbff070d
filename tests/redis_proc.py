"""
Run a real ``redis-server`` for the fleet tests, on 127.0.0.1 and a free port.

Persistence is off (``--save '' --appendonly no``) and the working directory
is the test's own temp directory, so nothing outlives the test. The server
runs in the foreground in its own process group; ``stop()`` ends it, and
``start()`` again brings it back on the same port (the "Redis restarted
mid-run" tests), empty, as a restarted Redis without persistence is.
Optional: a unix socket, a password (``requirepass``) and TLS (certificates
from trustme, client certificates required when ``tls_client_ca`` is set).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hastaple.testing.haproxy import free_port

BINARY = shutil.which("redis-server") or "/usr/bin/redis-server"
STARTUP_SECONDS = 10.0


def available() -> bool:
    """
    Whether the fleet tests can run: ``redis-server`` is installed, or this is CI.

    Under CI (``CI`` set) a missing server must fail the tests, not skip them:
    ``.ci/run`` installs Debian's.
    """
    return os.access(BINARY, os.X_OK) or bool(os.environ.get("CI"))


@dataclass
class Redis:
    """One ``redis-server`` process (restartable on the same port)."""

    workdir: Path
    port: int = 0
    unix: bool = False
    password: str | None = None
    tls_cert: Path | None = None  # server certificate chain (PEM); with tls_key: TLS only
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # require client certificates issued by this CA
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket_path(self) -> Path:
        return self.workdir / "redis.sock"

    @property
    def url(self) -> str:
        """The URL hastaple's ``--fleet`` takes for this server (db 0)."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls_cert is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        args = [BINARY, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir), "--daemonize", "no", "--protected-mode", "no"]
        args += ["--logfile", str(self.workdir / "redis.log")]
        if self.tls_cert is not None and self.tls_key is not None:
            args += ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", str(self.tls_cert), "--tls-key-file", str(self.tls_key)]
            if self.tls_client_ca is not None:
                args += ["--tls-ca-cert-file", str(self.tls_client_ca), "--tls-auth-clients", "yes"]
            else:
                args += ["--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.unix:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self) -> Redis:
        """Start (or restart) the server; wait until it accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if not self.port:
                self.port = free_port()
            self.proc = subprocess.Popen(
                self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            if self._wait_ready():
                return self
            self.stop()
            self.port = 0  # taken by someone else meanwhile: another free port
        raise RuntimeError(f"redis-server did not start: {self.log()[-2000:]}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return True
            time.sleep(0.02)
        return False

    def log(self) -> str:
        try:
            return (self.workdir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """End the server (SIGKILL to its group: a crash, nothing is saved anyway)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections and answers nothing (a hung Redis)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def cli(self, *words: str) -> str:
        """``redis-cli`` against this server (plain TCP only), its stdout."""
        argv = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "--no-auth-warning"]
        if self.password:
            argv += ["-a", self.password]
        out = subprocess.run([*argv, *words], capture_output=True, check=True, timeout=10)
        return out.stdout.decode()
