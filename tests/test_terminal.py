"""What a person sees: a progress bar and colours on a terminal, plain stable lines in a pipe."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import struct
import sys
import termios
from pathlib import Path

from hastaple.testing.pki import PKI
from hastaple.testing.responders import OpensslResponder
from test_fetch_command import hastaple

ESC = "\x1b["


async def in_pty(*args: str | Path) -> tuple[int, str]:
    """Run ``python -m hastaple ARGS`` with a pseudo-terminal as stdin, stdout and stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in {"NO_COLOR", "COLUMNS"}}
    env["TERM"] = "xterm-256color"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hastaple", *map(str, args),
        stdin=slave, stdout=slave, stderr=slave, env=env,
    )  # fmt: skip
    os.close(slave)
    out = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            out.extend(chunk)

    await asyncio.get_running_loop().run_in_executor(None, drain)
    code = await proc.wait()
    os.close(master)
    return code, out.decode(errors="replace")


def certs_for(pki: PKI, responder: OpensslResponder, directory: Path, count: int) -> Path:
    directory.mkdir()
    for n in range(count):
        leaf = pki.leaf(f"site{n}.example.test", ocsp_url=responder.url)
        responder.add(leaf.cert)
        pki.write(directory, f"site{n}.pem", leaf)
    return directory


async def test_terminal_gets_progress_bar_and_colour(pki, openssl_responder, tmp_path):
    """On a terminal: a finished progress bar on stderr, and a coloured table."""
    certs = certs_for(pki, openssl_responder, tmp_path / "certs", 3)
    code, screen = await in_pty("fetch", certs)
    assert code == 0, screen
    assert "Stapled" in screen
    assert "100%" in screen
    assert "━" in screen  # the bar itself
    assert ESC in screen  # colour
    assert "certificate" in screen and "status" in screen  # the table's header
    assert screen.count("good") >= 3


async def test_quiet_terminal_has_no_bar(pki, openssl_responder, tmp_path):
    """-q: no progress bar even on a terminal; the results are still shown."""
    certs = certs_for(pki, openssl_responder, tmp_path / "certs", 2)
    code, screen = await in_pty("-q", "fetch", certs)
    assert code == 0, screen
    assert "Stapl" not in screen
    assert screen.count("good") >= 2


async def test_pipe_gets_plain_stable_lines(pki, openssl_responder, tmp_path):
    """In a pipe: one tab-separated line per certificate, no escape codes, nothing on stderr."""
    certs = certs_for(pki, openssl_responder, tmp_path / "certs", 2)
    code, out, err = await hastaple("fetch", certs)
    assert code == 0, err
    assert ESC not in out + err
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 2
    for line, n in zip(sorted(lines), range(2), strict=True):
        cert, status, action, next_update = line.split("\t")
        assert cert == str(certs / f"site{n}.pem")
        assert (status, action) == ("good", "fetched")
        assert next_update.endswith("Z")


def test_table_shows_brackets_literally():
    """Paths and errors with [brackets] are printed as they are, not read as markup."""
    import io  # noqa: PLC0415 - this test only

    from hastaple.app import render  # noqa: PLC0415
    from hastaple.core.model import Action, ResultRow, Status  # noqa: PLC0415

    row = ResultRow(
        "/certs/[old]/a.pem", None, Status.ERROR, Action.FAILED,
        error="haproxy [/run/h.sock]: no such socket [/]",
    )  # fmt: skip
    out = io.StringIO()
    render.table([row], out)
    text = out.getvalue()
    assert "/certs/[old]/a.pem" in text
    assert "[/run/h.sock]" in text
    assert "[/]" in text
