"""
The logging options (-v, -vv, -q, --debug) before and after the command's name (issue 11, item 13).

The README lists them as options of every command; ``hastaple fetch -q`` used
to fail with "No such option: -q".
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from hastaple.app.cli import cli

COMMANDS = ["check", "demo", "deploy", "doctor", "fetch", "run", "status", "verify"]
LOG_OPTIONS = ["-v", "-vv", "-q", "--debug"]


def test_the_list_covers_every_command():
    """A new command is tested below too (or this fails)."""
    assert sorted(cli.commands) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["before", "after"])
def test_every_command_takes_the_log_options(command, where):
    """``hastaple -q CMD`` and ``hastaple CMD -q``: accepted (parsing stops at --help)."""
    args = [*LOG_OPTIONS, command] if where == "before" else [command, *LOG_OPTIONS]
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert f" {command} [OPTIONS]" in result.output


def _check(tmp_path, pki, *options: str) -> subprocess.CompletedProcess[str]:
    """``hastaple check`` of a good response, with ``options`` after the command."""
    leaf = pki.leaf()
    cert = pki.write(tmp_path, "site.pem", leaf)
    resp = tmp_path / "resp.der"
    resp.write_bytes(pki.response(leaf.cert))
    argv = [sys.executable, "-m", "hastaple", "check", str(resp), "--cert", str(cert), *options]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize(
    ("options", "info_logged"),
    [((), False), (("-v",), True), (("-vv",), True), (("-v", "-q"), False)],
)
def test_log_options_after_the_command_take_effect(pki, tmp_path, options, info_logged):
    """``check -v`` logs the signer at INFO; ``-q`` wins over ``-v``; nothing by default."""
    done = _check(tmp_path, pki, *options)
    assert done.returncode == 0, done.stderr
    assert ("INFO hastaple signer=" in done.stderr) is info_logged, done.stderr


def test_debug_after_the_command_shows_the_traceback(pki, tmp_path):
    """``hastaple -v check ... --debug``: an input error comes with its traceback, then one line."""
    leaf = pki.leaf()
    cert = pki.write(tmp_path, "site.pem", leaf)
    argv = [sys.executable, "-m", "hastaple", "-v", "check", str(tmp_path / "missing.der"),
            "--cert", str(cert), "--debug"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 2
    assert "Traceback" in done.stderr  # --debug after the command: the traceback is shown
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
