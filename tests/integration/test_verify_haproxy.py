"""`hastaple verify` against a real HAProxy 2.6 and 2.8 serving staples it loaded at start-up."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import pytest
from click.testing import CliRunner

import der_edit
from hastaple.testing import haproxy as haproxy_proc
from hastaple.testing.pki import now

pytestmark = pytest.mark.integration


def _verify(*args):
    from hastaple.app.cli import cli  # noqa: PLC0415 - the CLI imports every module

    return CliRunner().invoke(cli, ["verify", *args])


def _serve(pki, crt_dir, name, staple: bytes | None, **leaf_kwargs):
    leaf = pki.leaf(name, **leaf_kwargs)
    crt = pki.write(crt_dir, f"{name}.pem", leaf)
    if staple is not None:
        crt.with_name(crt.name + ".ocsp").write_bytes(staple(leaf.cert))
    return leaf


def test_valid_good_staple_exits_0(pki, crt_dir, start_haproxy):
    """HAProxy staples a good response: exit 0, text says stapled, good, with the signer."""
    _serve(pki, crt_dir, "good.test", pki.response)
    hap = start_haproxy()

    result = _verify(f"127.0.0.1:{hap.port}", "--servername", "good.test")

    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith(f"127.0.0.1:{hap.port} (good.test): stapled, good, 6d ")
    assert "signer:      delegated responder CN=hastaple Test OCSP Responder" in result.output


def test_valid_good_staple_json(pki, crt_dir, start_haproxy):
    """--json: the row fields plus stapled/signer/seconds_left, times matching the response."""
    this = now() - dt.timedelta(minutes=3)
    _serve(pki, crt_dir, "json.test", lambda c: pki.response(c, this_update=this))
    hap = start_haproxy()

    result = _verify(f"127.0.0.1:{hap.port}", "--servername", "json.test", "--json")

    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["cert"] == "json.test"
    assert (row["status"], row["action"], row["stapled"], row["error"]) == (
        "good", "fresh", True, None,
    )  # fmt: skip
    assert row["this_update"] == this.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert row["ocsp_url"] == "http://127.0.0.1:9/"
    assert 6 * 86400 < row["seconds_left"] < 7 * 86400
    assert row["signer"].startswith("delegated responder")


def test_no_staple_exits_1_and_says_so(pki, crt_dir, start_haproxy):
    """A certificate without .ocsp is served without a staple: exit 1, "no OCSP staple"."""
    _serve(pki, crt_dir, "bare.test", None)
    hap = start_haproxy()

    result = _verify(f"127.0.0.1:{hap.port}", "--servername", "bare.test")

    assert result.exit_code == 1
    assert "FAILED: no OCSP staple" in result.output
    assert "stapled:     no" in result.output


def test_revoked_staple_exits_1_and_says_revoked(pki, crt_dir, start_haproxy):
    """HAProxy staples a revoked response (docs/haproxy.md); verify says REVOKED, exit 1."""
    _serve(pki, crt_dir, "revoked.test", lambda c: pki.response(c, status="revoked"))
    hap = start_haproxy()

    result = _verify(f"127.0.0.1:{hap.port}", "--servername", "revoked.test", "--json")

    assert result.exit_code == 1
    [row] = json.loads(result.stdout)
    assert (row["status"], row["action"], row["stapled"]) == ("revoked", "failed", True)
    assert "REVOKED" in row["error"]


def test_badly_signed_staple_exits_1_with_reason(pki, crt_dir, start_haproxy):
    """HAProxy staples a response with a broken signature; verify refuses it with the reason."""
    _serve(pki, crt_dir, "forged.test", lambda c: pki.response(c, bad_signature=True))
    hap = start_haproxy()

    result = _verify(f"127.0.0.1:{hap.port}", "--servername", "forged.test")

    assert result.exit_code == 1
    assert "stapled, FAILED: invalid staple: response signature does not verify" in result.output


def test_unauthorised_signer_exits_1_with_reason(pki, crt_dir, start_haproxy):
    """A staple signed by an unrelated CA is stapled by HAProxy but refused by verify."""
    _serve(pki, crt_dir, "rogue.test", lambda c: pki.response(c, signer=pki.other_ca))
    hap = start_haproxy()

    result = _verify(f"127.0.0.1:{hap.port}", "--servername", "rogue.test")

    assert result.exit_code == 1
    assert "not issued by the certificate's issuer" in result.output


def test_expired_staple_exits_1_with_reason(pki, crt_dir, start_haproxy):
    """The served staple judged after its nextUpdate (--at) is expired: exit 1, the reason."""
    _serve(pki, crt_dir, "old.test", pki.response)
    hap = start_haproxy()
    later = (now() + dt.timedelta(days=8)).isoformat()

    result = _verify(f"127.0.0.1:{hap.port}", "--servername", "old.test", "--at", later)

    assert result.exit_code == 1
    assert "FAILED: invalid staple: response expired at" in result.output


def test_haproxy_config_checks_every_name_on_every_bind(pki, crt_dir, start_haproxy):
    """--haproxy-config: both certificates of the TLS bind are checked; one bad one gives 1."""
    _serve(pki, crt_dir, "one.test", pki.response)
    _serve(pki, crt_dir, "two.test", None)
    hap = start_haproxy()

    result = _verify("--haproxy-config", str(hap.workdir / "haproxy.cfg"), "--json")

    assert result.exit_code == 1
    rows = {r["servername"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"one.test", "two.test"}
    assert rows["one.test"]["action"] == "fresh"
    assert rows["two.test"]["stapled"] is False
    assert {r["target"] for r in rows.values()} == {f"127.0.0.1:{hap.port}"}


def test_stopped_haproxy_is_could_not_connect(pki, crt_dir, start_haproxy):
    """Once HAProxy is gone the check fails (exit 1) with "could not connect"."""
    _serve(pki, crt_dir, "gone.test", pki.response)
    hap = start_haproxy()
    hap.stop()

    result = _verify(f"127.0.0.1:{hap.port}", "--servername", "gone.test")

    assert result.exit_code == 1
    assert "could not connect" in result.output


# --- issue 11 items 14-18 and must-staple, against the real binary ---------------------------


def _start_with(haproxy_binary, workdir, frontend: str, ports: int = 1) -> haproxy_proc.HAProxy:
    """
    HAProxy with our own frontend lines (``{port}``, ``{last}``: a free port range).

    haproxy_proc.start writes one fixed bind; these tests need accept-proxy and
    port ranges, so the config is written here and started the same way.
    """
    sock = workdir / "admin.sock"
    for _ in range(5):
        port = haproxy_proc.free_port()
        last = port + ports - 1
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(
            f"global\n    stats socket {sock} level admin\n    noreuseport\n"
            "defaults\n    mode http\n    timeout client 5s\n    timeout server 5s\n"
            "    timeout connect 5s\n"
            "frontend tls\n" + frontend.format(port=port, last=last)
            + "\n    http-request return status 200\n"
        )  # fmt: skip
        log = (workdir / "haproxy.log").open("wb")
        proc = subprocess.Popen(
            [haproxy_binary, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir,
        )  # fmt: skip
        log.close()
        hap = haproxy_proc.HAProxy(haproxy_binary, workdir, workdir, port, sock, proc)
        if haproxy_proc._wait_ready(hap):
            return hap
        hap.stop()
        if "cannot bind" not in hap.log and "Address already in use" not in hap.log:
            break
    msg = f"HAProxy did not start:\n{hap.log}"
    raise RuntimeError(msg)


@pytest.fixture(name="own_haproxy")
def _own_haproxy(haproxy_binary, tmp_path_factory):
    started: list[haproxy_proc.HAProxy] = []

    def start(frontend: str, ports: int = 1) -> haproxy_proc.HAProxy:
        hap = _start_with(haproxy_binary, tmp_path_factory.mktemp("hap"), frontend, ports)
        started.append(hap)
        return hap

    yield start
    for hap in started:
        hap.stop()


def _config_rows(hap):
    result = _verify("--haproxy-config", str(hap.workdir / "haproxy.cfg"), "--json")
    return result, json.loads(result.stdout)


def test_rsa_and_ecdsa_of_one_name_are_each_checked(pki, crt_dir, start_haproxy):
    """
    Item 14: one name, ECDSA stapled and RSA not: two rows, exit 1.

    Before, the one handshake got the ECDSA certificate and exit was 0 while
    RSA clients got no staple.
    """
    ec_leaf = pki.leaf("dual.test")
    rsa_leaf = pki.leaf("dual.test", kind="rsa")
    pki.write(crt_dir, "dual-ec.pem", ec_leaf)
    pki.write(crt_dir, "dual-rsa.pem", rsa_leaf)
    (crt_dir / "dual-ec.pem.ocsp").write_bytes(pki.response(ec_leaf.cert))
    hap = start_haproxy()

    result, rows = _config_rows(hap)

    assert result.exit_code == 1, result.output
    by_key = {r["key_type"]: r for r in rows}
    assert set(by_key) == {"ECDSA", "RSA"}
    assert (by_key["ECDSA"]["action"], by_key["ECDSA"]["stapled"]) == ("fresh", True)
    assert "no OCSP staple" in by_key["RSA"]["error"]


def test_rsa_and_ecdsa_both_stapled_pass(pki, crt_dir, start_haproxy):
    """Item 14, the negative: both certificates stapled, two good rows, exit 0."""
    for kind in ("ec", "rsa"):
        leaf = pki.leaf("both.test", kind=kind)
        crt = pki.write(crt_dir, f"both-{kind}.pem", leaf)
        crt.with_name(crt.name + ".ocsp").write_bytes(pki.response(leaf.cert))
    hap = start_haproxy()

    result, rows = _config_rows(hap)

    assert result.exit_code == 0, result.output
    assert sorted(r["key_type"] for r in rows) == ["ECDSA", "RSA"]


def test_certificate_without_ocsp_url_is_no_ocsp(pki, crt_dir, start_haproxy):
    """Item 15: no OCSP URL, nothing stapled: no-ocsp / skipped, exit 0 (it was exit 1)."""
    _serve(pki, crt_dir, "plain.test", None, ocsp_url=None)
    hap = start_haproxy()

    result, [row] = _config_rows(hap)

    assert result.exit_code == 0, result.output
    assert (row["status"], row["action"], row["error"]) == ("no-ocsp", "skipped", None)


def test_chainless_pem_with_issuer_file_is_checked(pki, crt_dir, start_haproxy):
    """Item 16: HAProxy staples a chainless PEM with .issuer; verify uses that .issuer."""
    leaf = pki.leaf("chainless.test")
    crt = pki.write(crt_dir, "chainless.pem", leaf, chain=False)
    crt.with_name("chainless.pem.ocsp").write_bytes(pki.response(leaf.cert))
    hap = start_haproxy()

    result, [row] = _config_rows(hap)

    assert result.exit_code == 0, result.output
    assert (row["status"], row["action"], row["stapled"]) == ("good", "fresh", True)


def test_accept_proxy_bind_is_checked_through_a_proxy_header(pki, crt_dir, own_haproxy):
    """Item 17: an accept-proxy bind was ECONNRESET; now verify sends PROXY v1 and passes."""
    _serve(pki, crt_dir, "proxied.test", pki.response)
    hap = own_haproxy(f"    bind 127.0.0.1:{{port}} ssl crt {crt_dir} accept-proxy strict-sni")

    result, [row] = _config_rows(hap)
    bare = _verify(f"127.0.0.1:{hap.port}", "--servername", "proxied.test")

    assert result.exit_code == 0, result.output
    assert (row["action"], row["stapled"]) == ("fresh", True)
    assert bare.exit_code == 1
    assert "accept-proxy" in bare.output


def test_port_range_bind_is_checked_on_its_first_port(pki, crt_dir, own_haproxy):
    """Item 18: a port-range bind was skipped without a word; now its first port is checked."""
    _serve(pki, crt_dir, "range.test", pki.response)
    hap = own_haproxy(f"    bind 127.0.0.1:{{port}}-{{last}} ssl crt {crt_dir} strict-sni", 2)

    result, [row] = _config_rows(hap)

    assert result.exit_code == 0, result.output
    assert row["target"] == f"127.0.0.1:{hap.port}"
    assert row["action"] == "fresh"
    assert f"port range {hap.port}-{hap.port + 1}" in row["note"]


def test_must_staple_without_staple_fails_with_its_own_message(pki, crt_dir, start_haproxy):
    """Issue 13 item 4: a must-staple certificate served bare is named as such."""
    _serve(pki, crt_dir, "must.test", None, must_staple=True)
    _serve(pki, crt_dir, "must-ok.test", pki.response, must_staple=True)
    hap = start_haproxy()

    result, rows = _config_rows(hap)

    assert result.exit_code == 1
    by_name = {r["servername"]: r for r in rows}
    assert by_name["must.test"]["must_staple"] is True
    assert "must-staple certificate served without a staple" in by_name["must.test"]["error"]
    assert (by_name["must-ok.test"]["action"], by_name["must-ok.test"]["must_staple"]) == (
        "fresh", True,
    )  # fmt: skip


_STAPLED_BY_HAPROXY = [
    "sigalg-unknown-oid", "sigalg-rsa-name-on-ecdsa", "critical-unknown-extension",
    "duplicate-nonce", "revoked-reason-99", "responder-cert-unknown-key-type",
]  # fmt: skip


def test_hostile_staples_served_by_haproxy_are_reasons(pki, crt_dir, start_haproxy):
    """
    Issue 10 item 3 end to end: HAProxy staples hostile responses; verify names each.

    HAProxy loads these (it checks the CertID, not the algorithm or the
    extensions), so a client sees them. One verify run over all of them and a
    good certificate: every hostile one fails with its reason, the good one
    passes, no traceback. Before, the first one crashed the whole run.
    """
    for name in ["good", *_STAPLED_BY_HAPROXY]:
        leaf = pki.leaf(f"{name}.test")
        crt = pki.write(crt_dir, f"{name}.pem", leaf)
        der = pki.response(leaf.cert) if name == "good" else der_edit.HOSTILE[name][0](pki, leaf)
        crt.with_name(crt.name + ".ocsp").write_bytes(der)
    hap = start_haproxy()

    result, rows = _config_rows(hap)

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    by_name = {r["servername"].removesuffix(".test"): r for r in rows}
    assert by_name["good"]["action"] == "fresh"
    for name in _STAPLED_BY_HAPROXY:
        row = by_name[name]
        assert (row["stapled"], row["action"]) == (True, "failed"), (name, row)
        assert der_edit.HOSTILE[name][1] in row["error"], (name, row["error"])
