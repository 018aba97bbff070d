"""
verify: target parsing, the pure judge, haproxy.cfg binds, and real TLS handshakes.

The handshakes run against an in-process pyOpenSSL server on 127.0.0.1 that
staples whatever bytes a test gives it (HAProxy itself is in integration/).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import socket
import threading
from typing import Self

import pytest
from click.testing import CliRunner
from cryptography import x509
from OpenSSL import SSL

import der_edit
from hastaple.app import verify
from hastaple.app.verify import Handshake, Target, VerifyError
from hastaple.core.model import Status
from hastaple.errors import ConfigError
from hastaple.testing.pki import Issued, now

T = Target("127.0.0.1", 8443, "www.example.test")


class StaplingServer:
    """A TLS server on 127.0.0.1 serving ``chain`` and stapling ``staple`` (None: no staple)."""

    def __init__(
        self, leaf, chain, staple: bytes | None, *, also=None, proxy: bool = False
    ) -> None:
        """``also``: a second (leaf, staple) of another key type; ``proxy``: expect a PROXY line."""
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        staples = {leaf.cert.serial_number: staple}
        for cert, key in [(leaf.cert, leaf.key), *([(also[0].cert, also[0].key)] if also else [])]:
            ctx.use_certificate(cert)  # OpenSSL keeps one certificate per key type
            ctx.use_privatekey(key)
        if also:
            staples[also[0].cert.serial_number] = also[1]
        for cert in chain:
            ctx.add_extra_chain_cert(cert)
        ctx.set_ocsp_server_callback(
            lambda conn, _data: staples[conn.get_certificate().get_serial_number()] or b""
        )
        self.proxy = proxy
        self.proxy_lines: list[bytes] = []
        ctx.set_tlsext_servername_callback(self._on_sni)
        self.ctx = ctx
        self.servernames: list[bytes | None] = []
        self.errors: list[Exception] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _on_sni(self, conn) -> None:
        self.servernames.append(conn.get_servername())

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with client:
                client.setblocking(True)  # pyOpenSSL needs a blocking socket here
                if self.proxy:  # what HAProxy's accept-proxy reads first: one line
                    line = client.recv(6, socket.MSG_WAITALL)
                    if line != b"PROXY ":
                        continue  # closed with unread data: a reset, as HAProxy answers
                    while not line.endswith(b"\r\n") and (byte := client.recv(1)):
                        line += byte
                    self.proxy_lines.append(line)
                conn = SSL.Connection(self.ctx, client)
                conn.set_accept_state()
                try:
                    conn.do_handshake()
                    conn.shutdown()
                except SSL.Error as exc:
                    self.errors.append(exc)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.sock.close()
        self.thread.join(5)


@pytest.fixture(name="leaf", scope="module")
def _leaf(pki):
    return pki.leaf("www.example.test", ocsp_url="http://127.0.0.1:9/ocsp")


# --- parse_target ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.test", ("example.test", 443)),
        ("example.test:8443", ("example.test", 8443)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]:8443", ("::1", 8443)),
        ("[::1]", ("::1", 443)),
        ("::1", ("::1", 443)),
    ],
)
def test_parse_target_accepts_host_and_optional_port(text, expected):
    """HOST[:PORT] and [v6]:PORT parse; the port defaults to 443."""
    assert verify.parse_target(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "", ":443", "host:0", "host:65536", "host:https", "a:b:c", "[::1", "http://x/",
        "a" * 64 + ".test", "a" * 64 + ".test:443", "a..b", "[a..b]:443",
    ],
)  # fmt: skip
def test_parse_target_rejects_bad_input(text):
    """Anything else, including a name DNS cannot carry, is a ConfigError (exit 2)."""
    with pytest.raises(ConfigError, match=r"HOST|port|host name"):
        verify.parse_target(text)


def test_sni_defaults_to_host_but_not_to_an_ip():
    """SNI is the servername, else the host name; an IP literal sends no SNI (RFC 6066 §3)."""
    assert Target("example.test", 443).sni == "example.test"
    assert Target("127.0.0.1", 443).sni is None
    assert Target("127.0.0.1", 443, "a.test").sni == "a.test"
    assert Target("::1", 443).address == "[::1]:443"


# --- judge (pure) ----------------------------------------------------------------------------


def _judge(pki, leaf, staple, *, chain=True, at=None):
    served = (leaf.cert, pki.intermediate.cert) if chain else (leaf.cert,)
    return verify.judge(T, Handshake(staple, served), now=at or now())


def test_judge_valid_good_staple_is_ok(pki, leaf):
    """A good, well-signed staple for the served certificate passes, with its details."""
    result = _judge(pki, leaf, pki.response(leaf.cert))
    assert result.ok
    assert (result.stapled, result.status, result.error) == (True, Status.GOOD, None)
    assert result.cert == "www.example.test"
    assert result.ocsp_url == "http://127.0.0.1:9/ocsp"
    assert result.verdict.signer == "delegated responder CN=hastaple Test OCSP Responder"
    assert 6 * 86400 < result.seconds_left <= 7 * 86400


def test_judge_no_staple_fails_and_says_so(pki, leaf):
    """No staple at all is a failure that says the server did not staple."""
    result = _judge(pki, leaf, None)
    assert not result.ok
    assert not result.stapled
    assert "no OCSP staple" in result.error


def test_judge_revoked_staple_fails_and_says_revoked(pki, leaf):
    """A valid, signed "revoked" staple is reported as REVOKED and fails."""
    result = _judge(pki, leaf, pki.response(leaf.cert, status="revoked"))
    assert not result.ok
    assert result.status is Status.REVOKED
    assert "REVOKED since" in result.error
    assert "keyCompromise" in result.error


def test_judge_unknown_staple_fails(pki, leaf):
    """A staple saying "unknown" fails too."""
    result = _judge(pki, leaf, pki.response(leaf.cert, status="unknown"))
    assert not result.ok
    assert "status is unknown" in result.error


def test_judge_expired_staple_fails_with_reason(pki, leaf):
    """A staple judged after its nextUpdate fails with the validator's "expired" reason."""
    staple = pki.response(leaf.cert)
    result = _judge(pki, leaf, staple, at=now() + dt.timedelta(days=8))
    assert not result.ok
    assert result.stapled
    assert result.error.startswith("invalid staple: response expired at")


def test_judge_badly_signed_staple_fails_with_reason(pki, leaf):
    """An altered signature fails with the validator's reason."""
    result = _judge(pki, leaf, pki.response(leaf.cert, bad_signature=True))
    assert not result.ok
    assert "signature does not verify" in result.error


def test_judge_unauthorised_signer_fails(pki, leaf):
    """A staple signed by another CA's key is not authorised for this certificate."""
    result = _judge(pki, leaf, pki.response(leaf.cert, signer=pki.other_ca))
    assert not result.ok
    assert "not issued by the certificate's issuer" in result.error


def test_judge_staple_for_another_certificate_fails(pki, leaf):
    """A staple for a different serial than the served certificate fails."""
    other = pki.leaf("other.test")
    result = _judge(pki, leaf, pki.response(other.cert))
    assert "not for this certificate" in result.error


def test_judge_needs_the_issuer_in_the_served_chain(pki, leaf):
    """Without the issuer in the chain the staple cannot be checked: a failure that says why."""
    result = _judge(pki, leaf, pki.response(leaf.cert), chain=False)
    assert not result.ok
    assert "lacks the issuer" in result.error


def test_judge_no_certificate():
    """A handshake with no certificate fails with a sentence, not an exception."""
    result = verify.judge(T, Handshake(b"x", ()), now=now())
    assert result.error == "the server sent no certificate"


def test_json_has_the_row_fields_and_verify_extras(pki, leaf):
    """to_json: the README's row fields plus stapled, signer, seconds_left."""
    good = _judge(pki, leaf, pki.response(leaf.cert)).to_json()
    assert set(good) >= {
        "cert", "ocsp_url", "status", "action", "this_update", "next_update", "error",
        "stapled", "signer", "seconds_left",
    }  # fmt: skip
    assert (good["status"], good["action"], good["error"], good["stapled"]) == (
        "good", "fresh", None, True,
    )  # fmt: skip
    bad = _judge(pki, leaf, None).to_json()
    assert (bad["status"], bad["action"], bad["stapled"], bad["signer"]) == (
        "error", "failed", False, None,
    )  # fmt: skip


def test_duration_formats():
    """Time left reads as days/hours/minutes."""
    assert verify.duration(3 * 86400 + 4 * 3600 + 5 * 60) == "3d 4h 5m"
    assert verify.duration(3600 + 60) == "1h 1m"
    assert verify.duration(65) == "1m 5s"
    assert verify.duration(-65) == "-1m 5s"


# --- real handshakes -------------------------------------------------------------------------


def test_handshake_gets_staple_chain_and_sends_sni(pki, leaf):
    """status_request brings the staple back; the served chain and our SNI are seen."""
    staple = pki.response(leaf.cert)
    with StaplingServer(leaf, [pki.intermediate.cert], staple) as server:
        result = verify.handshake(Target("127.0.0.1", server.port, "www.example.test"))
    assert result.staple == staple
    assert [c.subject for c in result.chain] == [leaf.cert.subject, pki.intermediate.cert.subject]
    assert server.servernames == [b"www.example.test"]


def test_handshake_without_staple_returns_none(pki, leaf):
    """A server that does not staple gives staple None, and check() reports it."""
    with StaplingServer(leaf, [pki.intermediate.cert], None) as server:
        [result] = verify.check([Target("127.0.0.1", server.port, "www.example.test")])
    assert not result.stapled
    assert "no OCSP staple" in result.error


def test_check_many_targets_in_order(pki, leaf):
    """check() handles several targets concurrently and returns them in the given order."""
    with (
        StaplingServer(leaf, [pki.intermediate.cert], pki.response(leaf.cert)) as good,
        StaplingServer(leaf, [pki.intermediate.cert], None) as bare,
    ):
        targets = [Target("127.0.0.1", p, "www.example.test") for p in (good.port, bare.port)]
        results = verify.check(targets)
    assert [r.ok for r in results] == [True, False], results


def test_connection_refused_is_could_not_connect():
    """A closed port is a VerifyError saying "could not connect"."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(VerifyError, match="could not connect: connection refused"):
        verify.handshake(Target("127.0.0.1", port))


def test_bad_servername_is_a_verify_error(pki, leaf):
    """A servername that is not a host name fails the check with a sentence."""
    with StaplingServer(leaf, [pki.intermediate.cert], None) as server:
        [result] = verify.check([Target("127.0.0.1", server.port, "a..b")])
    assert result.error == "'a..b' is not a host name"


def test_host_dns_cannot_carry_is_a_verify_error_not_a_traceback():
    """A host with a label over 63 octets fails the check with a sentence, no UnicodeError.

    The name is refused while encoding, before any lookup, so nothing leaves the machine.
    """
    target = Target("a" * 70 + ".test", 443)
    with pytest.raises(VerifyError, match="is not a host name"):
        verify.handshake(target)
    results = verify.check([target, Target("b" * 70, 443)])  # through the thread pool too
    assert [r.error for r in results] == [
        f"could not connect: {t.host!r} is not a host name" for t in (target, Target("b" * 70, 443))
    ]


def test_handshake_times_out_on_a_silent_server():
    """A server that accepts and never answers TLS times out within the timeout."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        with pytest.raises(VerifyError, match="timed out"):
            verify.handshake(Target("127.0.0.1", port), timeout=0.3)


def test_handshake_with_a_non_tls_server_fails():
    """A plain-text server that closes at once is a TLS handshake failure, not a traceback."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]

        def answer():
            conn, _ = srv.accept()
            with conn:
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        with pytest.raises(VerifyError, match="TLS handshake failed"):
            verify.handshake(Target("127.0.0.1", port), timeout=5)
        thread.join(5)


# --- haproxy.cfg binds -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:8443", [("127.0.0.1", 8443)]),
        (":443", [("127.0.0.1", 443)]),
        ("*:443,:8443", [("127.0.0.1", 443), ("127.0.0.1", 8443)]),
        ("0.0.0.0:443", [("127.0.0.1", 443)]),
        ("ipv4@10.0.0.1:443", [("10.0.0.1", 443)]),
        ("[::]:443", [("::1", 443)]),
        (":::443", [("::1", 443)]),
        ("unix@/run/x.sock", []),
        ("/run/x.sock", []),
        (":443-445", [("127.0.0.1", 443)]),  # a range: its first port
        ("quic4@:443", []),  # QUIC is not TCP
        ("", []),
    ],
)
def test_bind_addresses(address, expected):
    """Where to connect for a bind's address argument; wildcards are checked on loopback."""
    found = verify.bind_addresses(address)
    assert [(a.host, a.port) for a in found if a.host] == expected


@pytest.mark.parametrize(
    ("address", "note"),
    [
        (":8443-8445", "port range 8443-8445: checked on its first port, 8443"),
        ("unix@/run/x.sock", "unix@/run/x.sock: unix@ is not a TCP address"),
        ("/run/x.sock", "/run/x.sock: a unix socket is not a TCP address"),
        ("quic4@:443", "quic4@:443: quic4@ is not a TCP address"),
    ],
)
def test_bind_addresses_say_what_they_did_not_check(address, note):
    """A port range says which port was checked; what cannot be reached says why (was silent)."""
    [found] = verify.bind_addresses(address)
    assert note in (found.note or "")


def _config(tmp_path, text, name="haproxy.cfg"):
    cfg = tmp_path / name
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(text)
    return cfg


def test_bind_targets_from_a_real_config(tmp_path, pki):
    """Every name of each bind's certificates (dir, file, crt-list) on that bind is a target."""
    crt_dir = tmp_path / "certs"
    crt_dir.mkdir()
    pki.write(crt_dir, "a.pem", pki.leaf("a.test", sans=["a.test", "*.wild.test"]))
    (crt_dir / "a.pem.ocsp").write_bytes(b"")  # skipped, as HAProxy skips it
    pki.write(tmp_path, "b.pem", pki.leaf("b.test"), chain=False)  # b.pem.issuer skipped too
    (tmp_path / "list.txt").write_text("# comment\nb.pem [ocsp-update on]\n")
    cfg = _config(
        tmp_path,
        "frontend f\n"
        f"    bind 127.0.0.1:8443 ssl crt {crt_dir}\n"
        "    bind 127.0.0.1:9443 ssl crt-list list.txt\n"
        "    bind 127.0.0.1:8080\n",
    )
    targets = verify.bind_targets(cfg, cwd=tmp_path)
    assert [(t.port, t.servername) for t in targets] == [
        (8443, "a.test"),
        (8443, "hastaple-verify.wild.test"),
        (9443, "b.test"),
    ]


def test_bind_targets_skip_hastaples_own_temp_files(tmp_path, pki):
    """A dot temp file left in a crt directory (a staple being written) is not a certificate."""
    crt_dir = tmp_path / "certs"
    crt_dir.mkdir()
    pki.write(crt_dir, "site.pem", pki.leaf("site.test"))
    (crt_dir / ".site.pem.ocsp.1a2b3c4d.tmp").write_bytes(b"half a staple")
    cfg = _config(tmp_path, f"frontend f\n    bind :8443 ssl crt {crt_dir}\n")
    assert [t.servername for t in verify.bind_targets(cfg, cwd=tmp_path)] == ["site.test"]


def test_bind_targets_resolve_relative_paths_in_haproxys_working_directory(tmp_path, pki):
    """Relative paths resolve in HAProxy's working directory, not the config's directory.

    crt-base applies to a relative crt and to crt-list entries, never to the list file itself.
    """
    (tmp_path / "certs").mkdir()
    pki.write(tmp_path / "certs", "a.pem", pki.leaf("a.test"))
    pki.write(tmp_path / "certs", "b.pem", pki.leaf("b.test"))
    pki.write(tmp_path, "c.pem", pki.leaf("c.test"))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.txt").write_text("b.pem\n")  # certs/b.pem via crt-base
    cfg = _config(
        tmp_path,
        "global\n    crt-base certs\nfrontend f\n"
        f"    bind :8443 ssl crt a.pem crt-list lists/l.txt crt {tmp_path}/c.pem\n",
        name="etc/haproxy.cfg",
    )
    targets = verify.bind_targets(cfg, cwd=tmp_path)
    assert [t.servername for t in targets] == ["a.test", "b.test", "c.test"]


def test_bind_targets_read_haproxy_quoting_and_default_crt(tmp_path, pki):
    """Quotes, "${VAR}" and a quoted '#' read as HAProxy reads them; default-crt counts.

    A stats socket's crt is not a listener to check.
    """
    (tmp_path / "my #1 certs").mkdir()
    pki.write(tmp_path / "my #1 certs", "a.pem", pki.leaf("a.test"))
    pki.write(tmp_path, "d.pem", pki.leaf("d.test"))
    pki.write(tmp_path, "s.pem", pki.leaf("s.test"))
    cfg = _config(
        tmp_path,
        "global\n    stats socket ipv4@127.0.0.1:9999 ssl crt s.pem level admin\n"
        "frontend f\n"
        "    bind :8443 ssl crt \"${HASTAPLE_T}/my #1 certs\" default-crt 'd.pem'  # comment\n",
    )
    targets = verify.bind_targets(cfg, cwd=tmp_path, environ={"HASTAPLE_T": str(tmp_path)})
    assert [(t.port, t.servername) for t in targets] == [(8443, "a.test"), (8443, "d.test")]


def test_bind_targets_missing_certificate_is_a_config_error(tmp_path):
    """A certificate the config names but that is missing is bad input, naming file:line."""
    cfg = _config(tmp_path, "frontend f\n    bind :8443 ssl crt gone.pem\n")
    with pytest.raises(ConfigError, match=r"haproxy\.cfg:2: certificate gone\.pem"):
        verify.bind_targets(cfg, cwd=tmp_path)


def test_bind_targets_without_tls_binds_is_a_config_error(tmp_path):
    """A config with no TLS bind is bad input (exit 2), naming the file."""
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("frontend f\n    bind :80\n")
    with pytest.raises(ConfigError, match=r"haproxy\.cfg: no TLS bind"):
        verify.bind_targets(cfg)


def test_bind_targets_missing_file(tmp_path):
    """A missing config is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"nope\.cfg"):
        verify.bind_targets(tmp_path / "nope.cfg")


def test_targets_from_combines_addresses_and_servernames():
    """Each address is paired with each --servername; repeats are dropped."""
    targets = verify.targets_from(["h:1", "h:1", "g"], ["a", "b"], [])
    assert [(t.host, t.port, t.servername) for t in targets] == [
        ("h", 1, "a"), ("h", 1, "b"), ("g", 443, "a"), ("g", 443, "b"),
    ]  # fmt: skip


# --- the command -----------------------------------------------------------------------------


def _run(*args):
    from hastaple.app.cli import cli  # noqa: PLC0415 - the CLI imports every module

    return CliRunner().invoke(cli, ["verify", *args])


def test_cli_good_staple_text_output(pki, leaf):
    """Exit 0 and stable plain lines (no colour codes) when stdout is not a terminal."""
    with StaplingServer(leaf, [pki.intermediate.cert], pki.response(leaf.cert)) as server:
        result = _run(f"127.0.0.1:{server.port}", "--servername", "www.example.test")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"127.0.0.1:{server.port} (www.example.test): stapled, good, 6d ")
    assert "\x1b[" not in result.output
    labels = [line.split(":", 1)[0].strip() for line in lines[1:]]
    assert labels == [
        "certificate", "ocsp url", "stapled", "status",
        "this update", "next update", "time left", "signer", "key",
    ]  # fmt: skip
    assert "  signer:      delegated responder CN=hastaple Test OCSP Responder" in lines


def test_cli_no_staple_exit_1_json(pki, leaf):
    """--json: one document; no staple gives exit 1, stapled false and the reason."""
    with StaplingServer(leaf, [pki.intermediate.cert], None) as server:
        result = _run(f"127.0.0.1:{server.port}", "--servername", "www.example.test", "--json")
    assert result.exit_code == 1
    [row] = json.loads(result.stdout)
    assert row["stapled"] is False
    assert row["action"] == "failed"
    assert row["cert"] == "www.example.test"
    assert "no OCSP staple" in row["error"]
    assert "error: " in result.stderr


def test_cli_at_judges_another_time(pki, leaf):
    """--at after nextUpdate reports the staple as expired (exit 1)."""
    later = (now() + dt.timedelta(days=8)).isoformat()
    with StaplingServer(leaf, [pki.intermediate.cert], pki.response(leaf.cert)) as server:
        result = _run(f"127.0.0.1:{server.port}", "--at", later)
    assert result.exit_code == 1
    assert "FAILED: invalid staple: response expired at" in result.output


def test_cli_colour_only_on_a_terminal(pki, leaf):
    """With colour on (a terminal) the summary is coloured; plain otherwise (tested above)."""
    from hastaple.app.cli import cli  # noqa: PLC0415

    with StaplingServer(leaf, [pki.intermediate.cert], pki.response(leaf.cert)) as server:
        result = CliRunner().invoke(cli, ["verify", f"127.0.0.1:{server.port}"], color=True)
    assert result.exit_code == 0
    assert "\x1b[32mstapled, good" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "nothing to check"),
        (("host:99999",), "port must be"),
        (("h", "--at", "yesterday"), "not an RFC 3339 time"),
        (("a" * 70,), "not a host name"),
    ],
)
def test_cli_bad_usage_exits_2(args, message):
    """Bad usage is exit 2 with one error line, no traceback."""
    result = _run(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


# --- hostile bytes (issue: one endpoint must not crash the run) -------------------------------


def test_cli_one_hostile_staple_does_not_stop_the_other_targets(pki, leaf):
    """
    A staple naming an unknown signature algorithm: that target fails with the reason.

    It raised UnsupportedAlgorithm through the thread pool and crashed verify
    for every target. Now the good endpoint next to it is still reported.
    """
    build, words = der_edit.HOSTILE["sigalg-unknown-oid"]
    with (
        StaplingServer(leaf, [pki.intermediate.cert], build(pki, leaf)) as hostile,
        StaplingServer(leaf, [pki.intermediate.cert], pki.response(leaf.cert)) as good,
    ):
        result = _run(f"127.0.0.1:{hostile.port}", f"127.0.0.1:{good.port}", "--json")
    assert result.exit_code == 1, result.output
    bad_row, good_row = json.loads(result.stdout)
    assert (bad_row["stapled"], bad_row["action"]) == (True, "failed")
    assert words in bad_row["error"]
    assert (good_row["status"], good_row["action"]) == ("good", "fresh")
    assert "Traceback" not in result.output


def test_served_certificate_with_a_broken_extension_is_a_reason(pki):
    """A served leaf whose AIA extension does not decode: a failed row, not a traceback."""
    leaf = pki.leaf("broken-aia.example.test", ocsp_url="http://127.0.0.1:9/ocsp")

    def break_aia(tbs):
        extensions = next(c for c in tbs.children if c.tag == 0xA3)[0]  # [3] Extensions
        aia = der_edit.oid("1.3.6.1.5.5.7.1.1").content
        for ext in extensions.children:
            if ext[0].content == aia:
                ext.children[-1] = der_edit.Node(der_edit.OCTET_STRING, b"\x30\x03\x30\x01")

    broken = x509.load_der_x509_certificate(der_edit.recertify(pki, leaf.cert, break_aia))
    served = Issued(broken, leaf.key)
    with StaplingServer(served, [pki.intermediate.cert], pki.response(leaf.cert)) as server:
        [row] = verify.check([Target("127.0.0.1", server.port, "broken-aia.example.test")])
    assert not row.ok
    assert "cannot be read" in (row.error or ""), row.error


# --- issue 11 items 14-18 and must-staple (unit level; HAProxy in integration/) --------------


def test_bind_targets_carry_files_proxy_and_range(tmp_path, pki, caplog):
    """accept-proxy, a port range and the files behind each name reach the targets."""
    crt = pki.write(tmp_path, "p.pem", pki.leaf("p.test"))
    cfg = _config(
        tmp_path,
        "frontend f\n"
        f"    bind 127.0.0.1:8443-8445 ssl crt {crt} accept-proxy\n"
        f"    bind unix@/run/tls.sock ssl crt {crt}\n",
    )
    [target] = verify.bind_targets(cfg)
    assert (target.port, target.servername, target.proxy) == (8443, "p.test", True)
    assert target.cert_files == (crt,)
    assert "port range 8443-8445" in (target.note or "")
    assert "unix@ is not a TCP address" in caplog.text


def test_certificate_without_ocsp_url_is_no_ocsp_not_a_failure(pki):
    """Like fetch: no OCSP URL, no staple is in order (exit 0, no-ocsp); it exited 1."""
    bare = pki.leaf("no-ocsp.example.test", ocsp_url=None)
    with StaplingServer(bare, [pki.intermediate.cert], None) as server:
        result = _run(f"127.0.0.1:{server.port}", "--servername", "no-ocsp.example.test", "--json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert (row["status"], row["action"], row["stapled"], row["error"]) == (
        "no-ocsp", "skipped", False, None,
    )  # fmt: skip


def test_must_staple_without_staple_fails_with_its_own_message(pki):
    """RFC 7633 must-staple served bare: its own reason; must_staple in the JSON."""
    must = pki.leaf("must.example.test", must_staple=True)
    with StaplingServer(must, [pki.intermediate.cert], None) as server:
        result = _run(f"127.0.0.1:{server.port}", "--servername", "must.example.test", "--json")
    assert result.exit_code == 1
    [row] = json.loads(result.stdout)
    assert row["must_staple"] is True
    assert "must-staple certificate served without a staple" in row["error"]


def test_must_staple_detection():
    """is_must_staple reads the TLS Feature extension (status_request) and nothing else."""
    from hastaple.core.certs import is_must_staple  # noqa: PLC0415
    from hastaple.testing.pki import PKI  # noqa: PLC0415

    pki = PKI.build()
    assert is_must_staple(pki.leaf("m.test", must_staple=True).cert)
    assert not is_must_staple(pki.leaf("n.test").cert)


def test_rsa_and_ecdsa_certificates_of_one_name_are_each_checked(pki):
    """
    One name, an ECDSA certificate with a good staple and an RSA one without: two rows.

    Only the certificate a default client gets (ECDSA) was checked, so the
    missing RSA staple passed with exit 0.
    """
    ec_leaf = pki.leaf("dual.example.test")
    rsa_leaf = pki.leaf("dual.example.test", kind="rsa")
    with StaplingServer(
        ec_leaf, [pki.intermediate.cert], pki.response(ec_leaf.cert), also=(rsa_leaf, None)
    ) as server:
        result = _run(f"127.0.0.1:{server.port}", "--servername", "dual.example.test", "--json")
    assert result.exit_code == 1, result.output
    rows = {r["key_type"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"ECDSA", "RSA"}
    assert rows["ECDSA"]["action"] == "fresh"
    assert "no OCSP staple" in rows["RSA"]["error"]
    assert "[RSA]" in result.stderr


def test_chainless_pem_is_checked_with_its_issuer_file(pki, tmp_path):
    """
    A server sending only the leaf (HAProxy with a chainless PEM and .issuer): the staple is good.

    It always failed with "the served chain lacks the issuer". The .issuer next
    to the file the name comes from is used, as fetch uses it.
    """
    leaf = pki.leaf("chainless.example.test")
    crt = pki.write(tmp_path, "chainless.pem", leaf, chain=False)
    target = Target("127.0.0.1", 0, "chainless.example.test", cert_files=(crt,))
    with StaplingServer(leaf, [], pki.response(leaf.cert)) as server:
        target = dataclasses.replace(target, port=server.port)
        [row] = verify.check([target])
        crt.with_name("chainless.pem.issuer").unlink()
        [without] = verify.check([target])
    assert row.ok, row.error
    assert not without.ok
    assert "issuer" in (without.error or "")


def test_accept_proxy_target_sends_a_proxy_header(pki, leaf):
    """A bind with accept-proxy gets a PROXY v1 line first; without it the server resets."""
    with StaplingServer(
        leaf, [pki.intermediate.cert], pki.response(leaf.cert), proxy=True
    ) as server:
        [row] = verify.check([Target("127.0.0.1", server.port, "www.example.test", proxy=True)])
        [bare] = verify.check([Target("127.0.0.1", server.port, "www.example.test")])
    assert row.ok, row.error
    assert server.proxy_lines[0].startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ")
    assert not bare.ok
    assert "accept-proxy" in (bare.error or "")


def test_another_names_certificate_of_the_other_family_is_not_reported(pki, leaf):
    """
    Without strict-sni a server answers an RSA-only client with whatever RSA certificate it has.

    That certificate is for another name, so it says nothing about this one:
    one row, exit 0 (it was a second, failing row).
    """
    stranger = pki.leaf("other.example.test", kind="rsa")
    with StaplingServer(
        leaf, [pki.intermediate.cert], pki.response(leaf.cert), also=(stranger, None)
    ) as server:
        result = _run(f"127.0.0.1:{server.port}", "--servername", "www.example.test", "--json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["key_type"] == "ECDSA"


def test_is_for_matches_sans_and_one_wildcard_label(pki):
    """SNI matching as TLS clients do: exact SAN, or ``*.`` for exactly one label."""
    cert = pki.leaf("a.test", sans=["a.test", "*.wild.test"]).cert
    assert verify.is_for(cert, "a.test")
    assert verify.is_for(cert, "x.wild.test")
    assert not verify.is_for(cert, "x.y.wild.test")
    assert not verify.is_for(cert, "b.test")
    assert verify.is_for(cert, None)


async def test_chainless_server_issuer_comes_from_aia(pki, fault_responder):
    """
    A bare HOST:PORT serving only the leaf: the issuer comes from its AIA caIssuers URL.

    The same download fetch uses (a real HTTP server here); it always failed
    with "the served chain lacks the issuer". A URL that gives nothing says so.
    """
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from hastaple.testing.responders import Serve  # noqa: PLC0415

    der = pki.intermediate.cert.public_bytes(serialization.Encoding.DER)
    url = fault_responder.on("ca", Serve(der, content_type="application/pkix-cert"))
    empty = fault_responder.on("nothing", Serve(b"not a certificate"))
    leaf = pki.leaf("aia.example.test", ca_issuers_url=url)
    broken = pki.leaf("aia-broken.example.test", ca_issuers_url=empty)
    with StaplingServer(leaf, [], pki.response(leaf.cert)) as good_server:
        [row] = await asyncio.to_thread(
            verify.check, [Target("127.0.0.1", good_server.port, "aia.example.test")]
        )
    with StaplingServer(broken, [], pki.response(broken.cert)) as bad_server:
        [bad] = await asyncio.to_thread(
            verify.check, [Target("127.0.0.1", bad_server.port, "aia-broken.example.test")]
        )
    assert row.ok, row.error
    assert len(fault_responder.seen_under("ca")) == 1
    assert not bad.ok
    assert f"nor its caIssuers URL {empty}" in (bad.error or "")


def test_must_staple_with_an_invalid_staple_says_must_staple(pki):
    """A must-staple certificate with an expired staple: the reason names must-staple."""
    must = pki.leaf("must-old.example.test", must_staple=True)
    old = now() - dt.timedelta(days=9)
    staple = pki.response(must.cert, this_update=old, next_update=old + dt.timedelta(days=7))
    result = verify.judge(T, Handshake(staple, (must.cert, pki.intermediate.cert)), now=now())
    assert not result.ok
    assert result.must_staple
    assert (result.error or "").startswith("must-staple certificate with an invalid staple: ")
    assert "expired at" in (result.error or "")
