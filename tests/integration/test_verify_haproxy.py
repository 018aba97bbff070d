"""`hastaple verify` against a real HAProxy 2.6 and 2.8 serving staples it loaded at start-up."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner

from pki import now

pytestmark = pytest.mark.integration


def _verify(*args):
    from hastaple.cli import cli  # noqa: PLC0415 - the CLI imports every module

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
    """HAProxy staples a revoked response (HAPROXY.md §0.4); verify says REVOKED, exit 1."""
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
