"""
haproxy.cfg settings that change what HAProxy reads: parsed as HAProxy parses them.

The same settings are checked against real HAProxy 2.6 and 2.8 in
tests/integration/test_config_semantics.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hastaple.discover import discover, parse_haproxy_config
from hastaple.errors import ConfigError


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------ ssl-load-extra-files / -del-ext


def test_del_ext_moves_the_extra_files_of_crt_files_only(tmp_path):
    """With del-ext, site.crt's extras are site.*; a .pem keeps <crt>.*; bind order counts."""
    for name in ("site.crt", "other.pem", "early.crt"):
        _touch(tmp_path / name)
    cfg = _touch(
        tmp_path / "h.cfg",
        "global\n crt-base .\n"
        "frontend early\n bind :1 ssl crt early.crt\n"
        "global\n ssl-load-extra-del-ext\n"
        "frontend f\n bind :2 ssl crt site.crt crt other.pem\n",
    )
    found = discover(haproxy_configs=[cfg], cwd=tmp_path)
    bases = {c.path.name: c.files_base for c in found.certs}
    assert bases == {
        "early.crt": tmp_path / "early.crt",  # loaded before the setting was read
        "site.crt": tmp_path / "site",
        "other.pem": tmp_path / "other.pem",
    }


def test_extra_files_without_ocsp_is_marked_and_warned(tmp_path):
    """ssl-load-extra-files without ocsp: entries say so, one warning names the line."""
    _touch(tmp_path / "a.pem")
    _touch(tmp_path / "b.pem")
    cfg = _touch(
        tmp_path / "h.cfg",
        "global\n ssl-load-extra-files key issuer\n"
        "frontend f\n bind :1 ssl crt a.pem\n bind :2 ssl crt b.pem\n",
    )
    found = discover(haproxy_configs=[cfg], cwd=tmp_path)
    assert [(c.ocsp_at_start, c.ocsp_source) for c in found.certs] == [(False, f"{cfg}:2")] * 2
    (warning,) = found.warnings
    assert warning.startswith(f"{cfg}:2: ssl-load-extra-files without 'ocsp'")


@pytest.mark.parametrize("setting", ["all", "ocsp", "bundle ocsp key"])
def test_extra_files_with_ocsp(tmp_path, setting):
    _touch(tmp_path / "a.pem")
    cfg = _touch(
        tmp_path / "h.cfg",
        f"global\n ssl-load-extra-files {setting}\nfrontend f\n bind :1 crt a.pem\n",
    )
    found = discover(haproxy_configs=[cfg], cwd=tmp_path)
    assert found.certs[0].ocsp_at_start
    assert found.warnings == ()


def test_bundles_only_with_the_bundle_setting(tmp_path):
    """Without 'bundle', HAProxy does not look for site.pem.rsa when site.pem is missing."""
    _touch(tmp_path / "site.pem.rsa")
    cfg = _touch(
        tmp_path / "h.cfg",
        "global\n ssl-load-extra-files ocsp\nfrontend f\n bind :1 crt site.pem\n",
    )
    with pytest.raises(ConfigError, match=r"certificate site\.pem: No such file"):
        discover(haproxy_configs=[cfg], cwd=tmp_path)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "expects one or more of"),
        ("none ocsp", "'none' and 'all' stand alone"),
        ("ocsp all", "'none' and 'all' stand alone"),
        ("ocsp sctp", "unknown word 'sctp'"),
    ],
)
def test_extra_files_errors(setting, message):
    with pytest.raises(ConfigError, match=f"^h.cfg:2: .*{message}"):
        parse_haproxy_config(f"global\n ssl-load-extra-files {setting}\n", source="h.cfg")
