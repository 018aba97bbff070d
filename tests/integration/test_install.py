"""
The README's install paths, as an operator takes them on a fresh host.

hastaple is built into a wheel from this checkout and installed the two ways
the README gives: a venv under /opt (here: under a temp directory) and
pipx. Each installed command then runs `demo` against a real HAProxy from
a directory outside the checkout, so nothing is imported from ``src/``:
what works is what the wheel holds (modules, entry point, dependencies as
``pyproject.toml`` declares them). The units in ``contrib/`` that run the
installed command are checked by tests/test_contrib_units.py.

Installing pulls the dependencies from the package registry (pip's cache
makes a second run quick). Locally a missing ``pipx`` skips; under CI it
fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hastaple.testing import haproxy as haproxy_proc

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 600  # a cold pip cache downloads aiohttp, cryptography, ...


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} not found (.ci/run installs it)")
        pytest.skip(f"{tool} not found")
    return found


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(name="wheel", scope="module")
def _wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # This interpreter's pip if it has one (a venv made by uv has none), else python3's.
    has_pip = _run([sys.executable, "-m", "pip", "--version"], out).returncode == 0
    python = sys.executable if has_pip else (shutil.which("python3") or "python3")
    build = _run(
        [python, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        cwd=out,
        timeout=INSTALL_TIMEOUT,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = out.glob("hastaple-*.whl")
    return wheel


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without this venv on PATH or PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    here = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != here)
    return env | extra


def _demo_works(command: Path, cwd: Path, env: dict[str, str]) -> None:
    """The installed command staples a real HAProxy end to end (`demo`)."""
    binary = haproxy_proc.binary("2.6") or haproxy_proc.binary("2.8")
    if binary is None:
        pytest.skip("no HAProxy binary")  # the version matrix fails for it under CI
    version = _run([str(command), "--version"], cwd, env)
    assert version.returncode == 0 and "hastaple" in version.stdout, version
    demo = _run([str(command), "demo", "--haproxy", str(binary)], cwd, env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "verify after: stapled, good" in demo.stdout, demo.stdout


def _where_imported(python: Path, cwd: Path, env: dict[str, str]) -> Path:
    probe = _run([str(python), "-c", "import hastaple; print(hastaple.__file__)"], cwd, env)
    assert probe.returncode == 0, probe.stderr
    return Path(probe.stdout.strip())


def test_venv_under_opt(wheel, tmp_path):
    """`python3 -m venv /opt/hastaple && /opt/hastaple/bin/pip install hastaple`."""
    venv = tmp_path / "opt" / "hastaple"
    env = _clean_env()
    made = _run(["python3", "-m", "venv", str(venv)], tmp_path, env)
    assert made.returncode == 0, made.stderr
    pip = _run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)], tmp_path, env, INSTALL_TIMEOUT
    )
    assert pip.returncode == 0, pip.stderr
    # The wheel's copy, not the checkout's: a module missing from the wheel fails here.
    assert venv in _where_imported(venv / "bin" / "python", tmp_path, env).parents
    _demo_works(venv / "bin" / "hastaple", tmp_path, env)


def test_pipx(wheel, tmp_path):
    """`pipx install hastaple`: its own venv, the command on PATH."""
    pipx = _need("pipx")
    home, bin_dir = tmp_path / "pipx", tmp_path / "bin"
    env = _clean_env(PIPX_HOME=str(home), PIPX_BIN_DIR=str(bin_dir))
    installed = _run([pipx, "install", str(wheel)], tmp_path, env, INSTALL_TIMEOUT)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    command = bin_dir / "hastaple"
    assert command.exists(), installed.stdout
    python = home / "venvs" / "hastaple" / "bin" / "python"
    assert home in _where_imported(python, tmp_path, env).parents
    _demo_works(command, tmp_path, env)
