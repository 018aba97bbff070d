"""
crt-store sections (HAProxy 3.x): names, bases, errors, the updater, and discovery.

The names and file rules are the ones HAProxy 3.0.11 showed (``show ssl cert``
lists ``@web/a`` and ``@web/site-00001.pem``) and src/ssl_ckch.c applies; the
real-HAProxy checks are in tests/integration/test_crt_store_haproxy.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hastaple.errors import ConfigError
from hastaple.haproxy.crtstore import CrtStoreReader, CrtStores
from hastaple.sources.discover import discover


def _stores(text: str) -> CrtStores:
    reader = CrtStoreReader()
    section = ""
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if words and words[0] in {"global", "crt-store", "frontend", "defaults"}:
            section = words[0]
        reader.feed(section, words, f"c:{number}")
    return reader.stores()


@pytest.mark.parametrize(
    ("text", "name", "crt"),
    [
        ("crt-store web\n load crt a.pem alias a\n", "@web/a", "a.pem"),
        ("crt-store web\n load crt site.pem\n", "@web/site.pem", "site.pem"),
        ("crt-store web\n load crt /c/site.pem\n", "@web/c/site.pem", "/c/site.pem"),
        ("crt-store\n load crt /c/a.pem alias a\n", "@/a", "/c/a.pem"),
        ("crt-store\n load crt /c/a.pem\n", "/c/a.pem", "/c/a.pem"),
        # Without a store name, the name takes global crt-base, not the section's own.
        (
            "global\n crt-base /g\ncrt-store\n crt-base /s\n load crt a.pem\n",
            "/g/a.pem",
            "/s/a.pem",
        ),
        ("global\n crt-base /g\ncrt-store web\n load crt a.pem\n", "@web/a.pem", "/g/a.pem"),
        ("crt-store web\n crt-base /s\n load crt a.pem crt b.pem\n", "@web/b.pem", "/s/b.pem"),
    ],
)
def test_runtime_name_and_file(text, name, crt):
    """The runtime name and the file HAProxy opens, for each way of writing a load line."""
    stores = _stores(text)
    assert list(stores.loads) == [name]
    assert stores.loads[name].crt == crt


def test_files_take_their_own_base():
    """Key joins key-base; ocsp, issuer and sctl join crt-base; absolute paths stay."""
    load = _stores(
        "global\n crt-base /g\n key-base /gk\n"
        "crt-store web\n key-base /k\n"
        " load crt a.pem key a.key ocsp a.ocsp issuer /i/ca.pem sctl a.sctl alias a\n"
    ).loads["@web/a"]
    assert (load.crt, load.key, load.ocsp, load.issuer, load.sctl) == (
        "/g/a.pem", "/k/a.key", "/g/a.ocsp", "/i/ca.pem", "/g/a.sctl",
    )  # fmt: skip


def test_section_bases_reset_at_the_next_crt_store():
    """A section's own crt-base ends with it; the next section starts from global."""
    stores = _stores("crt-store a\n crt-base /s\n load crt x.pem\ncrt-store b\n load crt y.pem\n")
    assert (stores.loads["@a/x.pem"].crt, stores.loads["@b/y.pem"].crt) == ("/s/x.pem", "y.pem")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("crt-store a b\n", "at most one name"),
        ("crt-store\n load alias a\n", "needs 'crt <file>'"),
        ("crt-store\n load crt a.pem foo bar\n", "unknown keyword 'foo'"),
        ("crt-store\n load crt\n", "needs a value"),
        ("crt-store\n load crt a.pem alias /a\n", "cannot start with '/'"),
        ("crt-store\n load crt a.pem ocsp-update yes\n", "on or off"),
        ("crt-store\n load crt a.pem\n crt-base /x\n", "before the first 'load'"),
        ("crt-store\n crt-base\n", "needs a path"),
        ("crt-store\n bind :443\n", "unknown keyword 'bind'"),
        ("crt-store w\n load crt a.pem alias a\n load crt b.pem alias a\n", "already loaded"),
        ("global\n ocsp-update.mode yes\n", "on or off"),
    ],
)
def test_lines_haproxy_refuses(text, message):
    """What HAProxy refuses to start with is a ConfigError naming the line."""
    with pytest.raises(ConfigError, match=message):
        _stores(text)


@pytest.mark.parametrize(
    ("global_lines", "option", "managed"),
    [
        ("", "", False),
        ("", "ocsp-update on", True),
        (" ocsp-update.mode on\n", "", True),
        (" ocsp-update.mode on\n", "ocsp-update off", False),
        (" ocsp-update.mode on\n ocsp-update.disable on\n", "ocsp-update on", False),
    ],
)
def test_managed_by_haproxys_updater(global_lines, option, managed):
    """The load line's ocsp-update wins over global ocsp-update.mode; disable stops both."""
    stores = _stores(f"global\n{global_lines}crt-store w\n load crt a.pem alias a {option}\n")
    assert stores.managed(stores.loads["@w/a"]) is managed


def _write_pem(path: Path) -> Path:
    path.write_text("-----BEGIN CERTIFICATE-----\n")  # discovery only checks it exists
    return path


def test_discover_follows_store_references(tmp_path):
    """Bind and crt-list references resolve to the load line: name, PEM and staple file."""
    for name in ("a", "b", "c"):
        _write_pem(tmp_path / f"{name}.pem")
    crt_list = tmp_path / "list.txt"
    crt_list.write_text("@web/c c.test\n")
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"global\n crt-base {tmp_path}\n"
        "crt-store web\n"
        " load crt a.pem alias a ocsp a.ocsp\n"
        " load crt b.pem\n"
        " load crt c.pem alias c ocsp-update on\n"
        f'frontend f\n bind :443 ssl crt "@web/a" crt @web/b.pem crt-list {crt_list}\n'
    )
    found = discover(haproxy_configs=[config], cwd=tmp_path)
    by_path = {e.path.name: e for e in found.certs}
    a, b, c = by_path["a.pem"], by_path["b.pem"], by_path["c.pem"]
    assert (a.names, a.ocsp_file, a.ocsp_at_start) == (("@web/a",), tmp_path / "a.ocsp", True)
    assert (b.names, b.ocsp_file, b.ocsp_at_start) == (("@web/b.pem",), None, False)
    assert b.ocsp_source == f"{config}:5"
    [warning] = found.warnings
    assert warning == (
        f"{config}:5: HAProxy reads no staple file for @web/b.pem when it starts or reloads "
        "(its load line names no 'ocsp <file>'), so the staple lasts only until then; "
        f"hastaple run pushes it again after a restart. Add 'ocsp {tmp_path}/b.pem.ocsp' "
        "to that load line to keep it across reloads"
    )
    assert (c.names, c.managed) == (("@web/c",), True)


def test_plain_path_that_a_store_loaded_is_the_stores(tmp_path):
    """An unnamed store's plain-path load is what a bind naming that path serves."""
    _write_pem(tmp_path / "a.pem")
    (tmp_path / "a.pem.ocsp").write_bytes(b"")  # HAProxy ignores it for a load line
    text = (
        f"crt-store\n load crt {tmp_path}/a.pem\nfrontend f\n bind :443 ssl crt {tmp_path}/a.pem\n"
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    [entry] = discover(haproxy_configs=[config], cwd=tmp_path).certs
    assert (entry.names, entry.ocsp_at_start) == ((f"{tmp_path}/a.pem",), False)


def test_global_updater_mode_covers_classic_certificates(tmp_path):
    """3.x 'ocsp-update.mode on' puts crt-directory certificates under HAProxy's updater too."""
    _write_pem(tmp_path / "a.pem")
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"global\n ocsp-update.mode on\nfrontend f\n bind :443 ssl crt {tmp_path}/a.pem\n"
    )
    [entry] = discover(haproxy_configs=[config], cwd=tmp_path).certs
    assert entry.managed


def test_unknown_store_reference_names_the_line(tmp_path):
    """A bind naming no load line (or one defined further down) stops HAProxy: exit 2 here."""
    _write_pem(tmp_path / "a.pem")
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        'frontend f\n bind :443 ssl crt "@web/a"\n'
        f"crt-store web\n load crt {tmp_path}/a.pem alias a\n"
    )
    with pytest.raises(ConfigError, match=r"haproxy.cfg:2: @web/a names no certificate"):
        discover(haproxy_configs=[config], cwd=tmp_path)


def test_a_certificate_referenced_twice_keeps_its_store_files(tmp_path):
    """Two binds naming one load line: one entry, still with the load line's staple file."""
    _write_pem(tmp_path / "a.pem")
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"crt-store web\n load crt {tmp_path}/a.pem alias a ocsp a.der issuer ca.pem\n"
        'frontend f\n bind :443 ssl crt "@web/a"\n bind :8443 ssl crt "@web/a"\n'
    )
    [entry] = discover(haproxy_configs=[config], cwd=tmp_path).certs
    assert (entry.names, entry.ocsp_file, entry.issuer_file) == (
        ("@web/a",), tmp_path / "a.der", tmp_path / "ca.pem",
    )  # fmt: skip
