"""
haproxy.cfg settings that change what HAProxy reads: parsed as HAProxy parses them.

The same settings are checked against real HAProxy 2.6 and 2.8 in
tests/integration/test_config_semantics.py.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from hastaple.errors import ConfigError
from hastaple.haproxy import cfgcond
from hastaple.haproxy.cfgfile import parse_haproxy_config
from hastaple.sources.discover import discover
from hastaple.testing import haproxy as haproxy_proc


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


# ----------------------------------------------------- .if conditions, against haproxy -cc

ENV = {"FOO": "bar", "EMPTY": "", "PATH": "/usr/bin:/bin"}
# Conditions as written after ".if"; haproxy -cc splits them the way the
# configuration parser does, so the same text means the same on both sides.
CONDITIONS = [
    "1",
    "0",
    "0x10",
    "010",
    "-1",
    "",
    "!0",
    "! ! 1",
    "defined(FOO)",
    "defined(NOPE)",
    "defined(EMPTY)",
    "!defined(NOPE)",
    'streq("$FOO",bar)',
    'strneq("$FOO",bar)',
    "streq(a,a) && strneq(a,b)",
    "streq(a,b) || streq(c,c)",
    "0 || 0 || 1",
    "1 && 1 && 0",
    "(0 || 1) && !(1 && 0)",
    "( defined(FOO) )",
    'streq("a,b","a,b")',
    "streq('x)y','x)y')",
    r"streq(a\ b,'a b')",
    "defined(NOPE) && nonsense(",  # parsed whole before evaluating: an error
    "nonsense(1)",
    "defined",
    "defined(A,B)",
    "streq(a)",
    "1 2",
    "(1",
    "1 &&",
    "defined (FOO)",
    "defined(FOO",
    "streq(a,b,c)",
    "1 ||",
    "!",
    "0x",
    "08",
    "streq(,)",
    "strneq(a,)",
    'streq("a\\"b",x)',
    "!!defined(FOO)&&1",
]


def _ours(condition: str) -> int:
    """0 true, 1 false, 2 refused: haproxy -cc's exit codes."""
    from hastaple.haproxy import cfgread, cfgwords  # noqa: PLC0415 - local to this table

    try:
        text = " ".join(cfgwords.split_line(condition, env=ENV, where="c", section=""))
        outcome = cfgcond.evaluate(cfgcond.parse(text, "c"), ENV, cfgread.never)
    except ConfigError:
        return 2
    return 0 if outcome.value else 1


@pytest.mark.integration
@pytest.mark.parametrize("version", ["2.6", "2.8"])
def test_conditions_evaluate_as_haproxy_does(version):
    """Each condition is true, false or refused exactly when `haproxy -cc` says so."""
    binary = haproxy_proc.binary(version)
    if binary is None:
        pytest.skip(f"HAProxy {version} not found")
    mismatches = []
    for condition in CONDITIONS:
        theirs = subprocess.run(
            [binary, "-cc", condition], env=ENV, capture_output=True, check=False
        ).returncode
        if _ours(condition) != theirs:
            mismatches.append((condition, _ours(condition), theirs))
    assert mismatches == []


# ------------------------------------------------------------- blocks and environment


def _crts(text: str, environ: dict[str, str] | None = None, **kwargs) -> list[str]:
    config = parse_haproxy_config(text, source="h.cfg", environ=environ or {}, **kwargs)
    return [r.path for r in config.refs]


def test_global_environment_applies_in_order():
    """Setenv overwrites, presetenv only fills, unset/resetenv remove; only later lines see it."""
    text = (
        "global\n"
        ' crt-base "$A"\n'
        "frontend one\n bind :1 crt a.pem\n"
        "global\n setenv A /set\n presetenv B /pre\n presetenv KEEP /no\n"
        ' crt-base "$A$B$KEEP"\n'
        "frontend two\n bind :1 crt b.pem\n"
        "global\n unsetenv A B\n resetenv KEEP\n"
        'frontend three\n bind :1 crt "[$A$B$KEEP$OTHER]/c.pem"\n'
    )
    environ = {"A": "/proc-a", "KEEP": "/keep", "OTHER": "x"}
    config = parse_haproxy_config(text, source="h.cfg", environ=environ)
    assert [(r.path, r.crt_base) for r in config.refs] == [
        ("a.pem", "/proc-a"),
        ("b.pem", "/set/pre/keep"),
        ("[/keep]/c.pem", "/set/pre/keep"),
    ]
    assert environ == {"A": "/proc-a", "KEEP": "/keep", "OTHER": "x"}  # ours is untouched


def test_setenv_outside_global_is_not_applied():
    assert _crts('frontend f\n setenv X /x\n bind :1 crt "$X/a.pem"\n') == ["/a.pem"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("setenv X", "expects a name and a value"),
        ('setenv X ""', "expects a name and a value"),
        ("setenv X a b c", "too many arguments"),
        ("setenv A=B c", "Invalid argument"),
        ("unsetenv", "expects at least one variable name"),
    ],
)
def test_environment_errors(line, message):
    with pytest.raises(ConfigError, match=f"^h.cfg:2: .*{message}"):
        parse_haproxy_config(f"global\n {line}\n", source="h.cfg")


BLOCKS = [
    (".if 1\n bind :1 crt a\n.else\n bind :1 crt b\n.endif\n", ["a"]),
    (".if 0\n bind :1 crt a\n.elif 1\n bind :1 crt b\n.elif 1\n bind :1 crt c\n.endif\n", ["b"]),
    (".if 0\n bind :1 crt a\n.elif 0\n bind :1 crt b\n.else\n bind :1 crt c\n.endif\n", ["c"]),
    (".if 0\n .if 1\n  bind :1 crt a\n .else\n  bind :1 crt b\n .endif\n.endif\n", []),
    (".if 1\n .if 0\n  bind :1 crt a\n .else\n  bind :1 crt b\n .endif\n.endif\n", ["b"]),
    # Conditions of branches that cannot be taken are not even parsed.
    (".if 1\n bind :1 crt a\n.elif nonsense(\n.endif\n", ["a"]),
    (".if 0\n.if nonsense(\n.endif\n.endif\n bind :1 crt z\n", ["z"]),
    (".if 0\n .alert boom\n .whatever\n.endif\n", []),
    (".if 1\n .notice 'one message'\n .diag x\n .warning y\n.endif\n", []),
    ("[scope]\n bind :1 crt a\n", ["a"]),
]


@pytest.mark.parametrize(("body", "expected"), BLOCKS)
def test_blocks_read_only_the_branch_taken(body, expected):
    assert _crts("frontend f\n" + body) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (".if 1\n", "not closed"),
        (".endif\n", "without a matching '.if'"),
        (".else\n", "without a matching '.if'"),
        (".if 1\n.else\n.else\n.endif\n", "'.else' after '.else'"),
        (".if 0\n.else\n.elif 1\n.endif\n", "'.elif' after '.else'"),
        (".if 1\n.else x\n.endif\n", "unexpected argument 'x'"),
        (".alert 'stop here'\n", ".alert 'stop here'"),
        (".warning two words\n", "unexpected argument 'words'"),
        (".include x\n", "unknown directive '.include'"),
        (".if 0\nbind :1 'unterminated\n.endif\n", "unmatched quote"),  # split even when skipped
        (".if nonsense(x)\n.endif\n", "unparsable"),
        (".if 1\n" * 100, "too many nested"),
    ],
)
def test_block_errors(body, message):
    with pytest.raises(ConfigError, match=message):
        parse_haproxy_config("frontend f\n" + body, source="h.cfg")


def test_undecidable_predicate_is_assumed_false_and_said():
    """Without an HAProxy to ask, feature() counts as false, and a warning says which way."""
    text = "frontend f\n.if feature(QUIC)\n bind :1 crt a\n.else\n bind :1 crt b\n.endif\n"
    config = parse_haproxy_config(text, source="h.cfg", why_unknown="no haproxy binary found")
    assert [r.path for r in config.refs] == ["b"]
    assert config.warnings == (
        (
            "h.cfg:2: cannot evaluate feature(QUIC) (no haproxy binary found); assumed false, "
            "so this '.if' branch was not taken"
        ),
    )
    asked = []

    def ask(name, args):
        asked.append((name, args))
        return True

    assert _crts(text, ask=ask) == ["a"]
    assert asked == [("feature", ("QUIC",))]


# ---------------------------------------------------------- relative paths, default-path


def test_relative_paths_without_a_running_haproxy_use_the_config_directory(tmp_path, monkeypatch):
    """No socket answers: the configuration's directory is used, and a warning says so."""
    _touch(tmp_path / "etc" / "certs" / "a.pem")
    cfg = _touch(
        tmp_path / "etc" / "h.cfg",
        f"global\n stats socket {tmp_path}/none.sock level admin\n crt-base certs\n"
        "frontend f\n bind :1 ssl crt a.pem\n",
    )
    monkeypatch.chdir(tmp_path)
    found = discover(haproxy_configs=[Path("etc/h.cfg")])
    assert [(c.path, c.names) for c in found.certs] == [
        (tmp_path / "etc" / "certs" / "a.pem", ("certs/a.pem",))
    ]
    (warning,) = found.warnings
    assert warning.startswith(
        f"etc/h.cfg: relative certificate paths read from {tmp_path / 'etc'}, "
        "the configuration's directory"
    )
    assert cfg.exists()


def test_absolute_paths_need_no_working_directory(tmp_path, monkeypatch):
    _touch(tmp_path / "a.pem")
    _touch(tmp_path / "l.txt", f"{tmp_path}/a.pem\n")
    cfg = _touch(
        tmp_path / "h.cfg",
        f"frontend f\n bind :1 ssl crt {tmp_path}/a.pem crt-list {tmp_path}/l.txt\n",
    )
    monkeypatch.chdir("/")
    assert discover(haproxy_configs=[cfg]).warnings == ()


@pytest.mark.parametrize(
    ("setting", "folder"),
    [
        ("current", "start"),
        ("config", "start/etc"),
        ("parent", "start/etc/.."),
        ("origin /ORIGIN", "ORIGIN"),
        ("origin rel", "start/rel"),
    ],
)
def test_default_path_moves_relative_paths(tmp_path, setting, folder):
    """With global default-path, HAProxy reads later relative paths from another directory."""
    setting = setting.replace("/ORIGIN", str(tmp_path / "ORIGIN"))
    _touch(tmp_path / folder / "a.pem")
    _touch(
        tmp_path / "start" / "etc" / "h.cfg",
        f"global\n default-path {setting}\nfrontend f\n bind :1 crt a.pem\n",
    )
    found = discover(haproxy_configs=[Path("etc/h.cfg")], cwd=tmp_path / "start")
    assert [(c.path, c.names) for c in found.certs] == [(tmp_path / folder / "a.pem", ("a.pem",))]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "missing default-path mode"),
        ("here", "unsupported default-path mode 'here'"),
        ("origin", "'default-path origin' expects a directory"),
    ],
)
def test_default_path_errors(setting, message):
    with pytest.raises(ConfigError, match=f"^h.cfg:2: {message}"):
        parse_haproxy_config(f"global\n default-path {setting}\n", source="h.cfg")


def test_haproxy_sets_its_local_peer_name_before_reading(tmp_path):
    """HAPROXY_LOCALPEER (the host name by default) is defined for .if and "$VAR"."""
    _touch(tmp_path / f"{socket.gethostname()}.pem")
    cfg = _touch(
        tmp_path / "h.cfg",
        "frontend f\n.if defined(HAPROXY_LOCALPEER)\n"
        ' bind :1 crt "$HAPROXY_LOCALPEER.pem"\n.endif\n',
    )
    found = discover(haproxy_configs=[cfg], cwd=tmp_path, environ={})
    assert [c.path for c in found.certs] == [tmp_path / f"{socket.gethostname()}.pem"]


# ------------------------------------------------------------------ issuers-chain-path


def test_issuers_chain_path_applies_to_certificates_read_after_it(tmp_path):
    """The directory in force at a bind line counts, read from the default-path then in force."""
    for name in ("early.pem", "late.pem"):
        _touch(tmp_path / "certs" / name)
    (tmp_path / "etc" / "chains").mkdir(parents=True)
    cfg = _touch(
        tmp_path / "h.cfg",
        "global\n crt-base certs\n"
        "frontend early\n bind :1 ssl crt early.pem\n"
        "global\n default-path origin etc\n issuers-chain-path chains/\n default-path current\n"
        "frontend f\n bind :2 ssl crt late.pem\n",
    )
    found = discover(haproxy_configs=[cfg], cwd=tmp_path)
    assert {c.path.name: c.issuers_chain for c in found.certs} == {
        "early.pem": None,
        "late.pem": tmp_path / "etc" / "chains",
    }


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "'issuers-chain-path' expects one directory"),
        ("a b", "'issuers-chain-path' expects one directory"),
    ],
)
def test_issuers_chain_path_syntax_errors(setting, message):
    with pytest.raises(ConfigError, match=f"^h.cfg:2: {message}"):
        parse_haproxy_config(f"global\n issuers-chain-path {setting}\n", source="h.cfg")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_issuers_chain_path_must_be_a_directory(tmp_path, kind):
    """HAProxy refuses to start without the directory: so does discovery, naming the line."""
    _touch(tmp_path / "a.pem")
    if kind == "file":
        _touch(tmp_path / "chains")
    cfg = _touch(
        tmp_path / "h.cfg", "global\n issuers-chain-path chains\nfrontend f\n bind :1 crt a.pem\n"
    )
    expected = "No such file or directory" if kind == "missing" else "is not a directory"
    with pytest.raises(ConfigError, match=f"h.cfg:2: issuers-chain-path chains.*{expected}"):
        discover(haproxy_configs=[cfg], cwd=tmp_path)
