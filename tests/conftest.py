"""
Shared fixtures: the test PKI, real responders and a clean environment.

tests/ is on sys.path (pytest's rootdir conftest), so helpers import as
``from pki import PKI`` and ``from responders import FaultResponder``.
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, settings

from hastaple.testing.pki import PKI
from hastaple.testing.responders import FaultResponder, OpensslResponder

# click 8.1 (the lowest version allowed) mixes stderr into stdout unless told
# not to; 8.2 always keeps them apart and has no such flag. The tests read both.
if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
    CliRunner.__init__ = functools.partialmethod(CliRunner.__init__, mix_stderr=False)  # type: ignore[method-assign]

# The suite runs on shared, often loaded machines: Hypothesis's "generation is
# too slow" check and per-example deadlines would measure the machine, not the code.
settings.register_profile(
    "shared-machine", suppress_health_check=[HealthCheck.too_slow], deadline=None
)
settings.load_profile("shared-machine")

# Read by hastaple or by aiohttp's trust_env; a developer's shell must not leak in.
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch, tmp_path_factory):
    """
    Remove HASTAPLE_* and proxy variables for every test (httpx's clean_environ).

    The default state directory becomes one of the test's own: tests run in
    parallel, and runs sharing /var/lib/hastaple would wait for each other's
    lock (and write into the machine's real state).
    """
    for name in list(os.environ):
        if name.startswith("HASTAPLE_") or name.upper() in _PROXY_VARS:
            monkeypatch.delenv(name)
    monkeypatch.setenv("HASTAPLE_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(name="sock_dir")
def _sock_dir():
    """A short directory for unix sockets (tmp_path can exceed the 107-byte limit)."""
    path = Path(tempfile.mkdtemp(prefix="hs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(name="pki", scope="session")
def _pki() -> PKI:
    """One PKI per session: key generation is the slow part."""
    return PKI.build()


@pytest.fixture(name="openssl_responder")
async def _openssl_responder(pki, tmp_path):
    """A started ``openssl ocsp`` responder over a fresh index; add leaves with ``.add()``."""
    async with OpensslResponder(pki.write_openssl_ca(tmp_path / "openssl-ca")) as responder:
        yield responder


@pytest.fixture(name="fault_responder")
async def _fault_responder():
    """A started fault-injecting responder; set behaviours with ``.on(name, ...)``."""
    async with FaultResponder() as responder:
        yield responder
