"""
`hastaple fetch` and `hastaple check` end to end, as a user runs them.

The fetch runs are real processes (`python -m hastaple`) against a real
`openssl ocsp` responder or the fault-injecting one, on real files; the input
errors run in-process with click's CliRunner.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import ssl
import sys
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner

from faults import FAULTS, Case
from hastaple.app.cli import cli
from hastaple.core.model import Status
from hastaple.core.ocsp.validate import validate
from hastaple.testing.pki import PKI, Issued, now
from hastaple.testing.responders import FaultResponder, Serve


async def hastaple(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m hastaple ARGS``; return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hastaple",
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def fetch_json(*args: str | Path) -> tuple[int, list[dict[str, object]], str]:
    code, out, err = await hastaple("fetch", "--json", "--timeout", "2", *args)
    assert "Traceback" not in err, err
    return code, json.loads(out), err


def valid_staple(pki: PKI, leaf: Issued, path: Path) -> bool:
    der = path.read_bytes()
    return (
        validate(der, cert=leaf.cert, issuer=pki.intermediate.cert, now=now()).status is Status.GOOD
    )


async def test_fetch_directory_stores_valid_staples(pki, openssl_responder, tmp_path):
    """RSA and ECDSA leaves in a crt directory each get a valid <crt>.ocsp from openssl."""
    certs = tmp_path / "certs"
    certs.mkdir()
    leaves = {
        "rsa.pem": pki.leaf("rsa.example.test", kind="rsa", ocsp_url=openssl_responder.url),
        "ec.pem": pki.leaf("ec.example.test", ocsp_url=openssl_responder.url),
    }
    for name, leaf in leaves.items():
        pki.write(certs, name, leaf)
        openssl_responder.add(leaf.cert)
    (certs / "ec.pem.key").write_text("not a certificate; HAProxy skips .key files\n")
    code, rows, _ = await fetch_json(certs, "--state-dir", tmp_path / "state")
    assert code == 0
    assert {Path(r["cert"]).name for r in rows} == set(leaves)
    for row in rows:
        assert row["status"] == "good"
        assert row["action"] == "fetched"
        assert row["ocsp_url"] == openssl_responder.url
        assert row["error"] is None
        assert dt.datetime.fromisoformat(row["next_update"]) > now() + dt.timedelta(days=6)
    for name, leaf in leaves.items():
        assert valid_staple(pki, leaf, certs / f"{name}.ocsp")
    assert openssl_responder.methods == ["GET", "GET"]  # RFC 5019: short requests use GET
    assert sorted(p.name for p in certs.iterdir()) == sorted(
        ["rsa.pem", "ec.pem", "ec.pem.key", "rsa.pem.ocsp", "ec.pem.ocsp"]
    )  # nothing else written into the certificate directory


async def test_fresh_staple_is_not_fetched_again(pki, openssl_responder, tmp_path):
    """A second run asks the CA nothing and leaves the file alone; --force asks again."""
    leaf = pki.leaf(ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    cert = pki.write(tmp_path, "site.pem", leaf)
    staple = tmp_path / "site.pem.ocsp"
    assert (await fetch_json(cert))[0] == 0
    first = staple.read_bytes()
    code, rows, _ = await fetch_json(cert)
    assert (code, rows[0]["action"], rows[0]["status"]) == (0, "fresh", "good")
    assert openssl_responder.requests == 1
    assert staple.read_bytes() == first
    code, rows, _ = await fetch_json(cert, "--force")
    assert (code, rows[0]["action"]) == (0, "fetched")
    assert openssl_responder.requests == 2


async def test_due_staple_is_refreshed(pki, openssl_responder, tmp_path):
    """A staple past half of its validity is replaced by a newer one."""
    leaf = pki.leaf(ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    cert = pki.write(tmp_path, "site.pem", leaf)
    old_this = now() - dt.timedelta(days=5)
    old = pki.response(leaf.cert, this_update=old_this, next_update=old_this + dt.timedelta(days=7))
    (tmp_path / "site.pem.ocsp").write_bytes(old)
    code, rows, _ = await fetch_json(cert)
    assert (code, rows[0]["action"]) == (0, "fetched")
    assert (tmp_path / "site.pem.ocsp").read_bytes() != old
    assert valid_staple(pki, leaf, tmp_path / "site.pem.ocsp")


async def test_chainless_pem_with_issuer_file(pki, openssl_responder, tmp_path):
    """A PEM without chain takes its issuer from <crt>.issuer, as HAProxy does."""
    leaf = pki.leaf(ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    cert = pki.write(tmp_path, "site.pem", leaf, chain=False)
    code, rows, _ = await fetch_json(cert)
    assert (code, rows[0]["status"]) == (0, "good")
    assert valid_staple(pki, leaf, tmp_path / "site.pem.ocsp")


async def test_chainless_pem_without_issuer_is_an_input_error(pki, openssl_responder, tmp_path):
    """No chain, no .issuer, no AIA: exit 2 naming the file; nothing is asked or written."""
    leaf = pki.leaf(ocsp_url=openssl_responder.url)
    cert = tmp_path / "site.pem"
    cert.write_bytes(pki.bundle(leaf, chain=False))
    code, rows, err = await fetch_json(cert)
    assert code == 2
    assert rows[0]["status"] == "error"
    assert f"error: {cert}: issuer not found" in err
    assert openssl_responder.requests == 0
    assert not (tmp_path / "site.pem.ocsp").exists()


async def test_no_ocsp_url(pki, tmp_path):
    """A certificate without an OCSP URL (Let's Encrypt since 2025) is skipped, exit 0."""
    leaf = pki.leaf(ocsp_url=None)
    cert = pki.write(tmp_path, "le.pem", leaf)
    code, rows, err = await fetch_json(cert)
    assert code == 0, err
    assert (rows[0]["status"], rows[0]["action"], rows[0]["ocsp_url"]) == (
        "no-ocsp",
        "skipped",
        None,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["le.pem"]


async def test_revoked_certificate(pki, openssl_responder, tmp_path):
    """Openssl says revoked: exit 1, status revoked, nothing stored."""
    leaf = pki.leaf(ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert, revoked=True)
    cert = pki.write(tmp_path, "site.pem", leaf)
    code, rows, err = await fetch_json(cert)
    assert code == 1
    assert (rows[0]["status"], rows[0]["action"]) == ("revoked", "failed")
    assert "REVOKED" in err
    assert not (tmp_path / "site.pem.ocsp").exists()


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_keeps_the_old_staple(pki, fault_responder, tmp_path, fault):
    """Each lying or broken responder: exit 1, the reason named, the old staple byte-identical."""
    url = fault_responder.url_for(fault)
    leaf = pki.leaf(ocsp_url=url)
    behaviour, words = FAULTS[fault](Case(pki, leaf, url))
    fault_responder.on(fault, behaviour)
    cert = pki.write(tmp_path, "site.pem", leaf)
    old_this = now() - dt.timedelta(days=5)  # due: past half of its validity
    old = pki.response(leaf.cert, this_update=old_this, next_update=old_this + dt.timedelta(days=7))
    (tmp_path / "site.pem.ocsp").write_bytes(old)
    code, rows, err = await fetch_json(cert, "--timeout", "1")
    assert code == 1, err
    assert rows[0]["action"] == "failed"
    assert words.lower() in (rows[0]["error"] or "").lower()
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: {cert}: "), err
    assert (tmp_path / "site.pem.ocsp").read_bytes() == old
    assert len(fault_responder.seen_under(fault)) >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.pem", "site.pem.ocsp"]


async def test_https_responder_of_a_private_ca_is_trusted_through_ssl_cert_file(pki, tmp_path):
    """
    A private PKI's https responder: refused by default, trusted when SSL_CERT_FILE names its CA.

    The README tells operators to point SSL_CERT_FILE at their CA bundle; this
    is the promise, with a real TLS responder on 127.0.0.1.
    """
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    bundle = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with FaultResponder(ssl_context=ctx) as responder:
        leaf = pki.leaf(ocsp_url=responder.url_for("ok"))
        responder.on("ok", Serve(pki.response(leaf.cert)))
        cert = pki.write(tmp_path, "site.pem", leaf)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSL_CERT_")}
        code, out, err = await hastaple("fetch", "--json", "--timeout", "2", cert, env=env)
        assert code == 1
        assert "the responder's TLS certificate is not trusted" in err, err
        code, out, err = await hastaple(
            "fetch", "--json", "--timeout", "2", cert, env={**env, "SSL_CERT_FILE": str(bundle)}
        )
    assert code == 0, err
    assert json.loads(out)[0]["action"] == "fetched"
    assert valid_staple(pki, leaf, tmp_path / "site.pem.ocsp")


# -- input errors, in-process ------------------------------------------------------------


def run_cli(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "file is empty"),
        (b"hello, world\n", "no PEM certificate found"),
        (
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
            "holds a private key but no certificate",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
            "unreadable PEM certificate",
        ),
    ],
    ids=["empty", "not-a-certificate", "key-only", "broken-pem"],
)
def test_bad_certificate_file(tmp_path, content, problem):
    """An unusable certificate file: exit 2, one line naming the file and the problem."""
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    code, out, err = run_cli("fetch", bad)
    assert code == 2
    assert err == f"error: {bad}: {problem}\n"
    assert "Traceback" not in out + err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pem"]


def test_missing_path(tmp_path):
    """A path that does not exist: exit 2 naming it."""
    missing = tmp_path / "nope.pem"
    code, _, err = run_cli("fetch", missing)
    assert code == 2
    assert str(missing) in err and err.startswith("error: ") and err.count("\n") == 1


def test_nothing_to_do():
    """Fetch without any source is a usage error."""
    code, _, err = run_cli("fetch")
    assert code == 2
    assert "nothing to do" in err


def test_missing_socket(pki, tmp_path):
    """A --haproxy socket that does not exist: exit 2 before any CA is asked."""
    cert = pki.write(tmp_path, "site.pem", pki.leaf())
    sock = tmp_path / "haproxy.sock"
    code, _, err = run_cli("fetch", cert, "--haproxy", sock)
    assert code == 2
    assert err == f"error: {sock}: no such HAProxy socket\n"


def test_socket_path_is_not_a_socket(pki, tmp_path):
    """A regular file given as --haproxy is refused with exit 2."""
    cert = pki.write(tmp_path, "site.pem", pki.leaf())
    code, _, err = run_cli("fetch", cert, "--haproxy", cert)
    assert code == 2
    assert "not a unix socket" in err


# -- check -------------------------------------------------------------------------------


def test_check_good_and_at(pki, tmp_path):
    """Check validates a file; --at judges it at another time (expired 8 days later)."""
    leaf = pki.leaf()
    cert = pki.write(tmp_path, "site.pem", leaf)
    resp = tmp_path / "resp.der"
    resp.write_bytes(pki.response(leaf.cert))
    code, out, _ = run_cli("check", resp, "--cert", cert, "--json")
    assert code == 0
    assert json.loads(out)[0]["status"] == "good"
    later = (now() + dt.timedelta(days=8)).isoformat()
    code, out, err = run_cli("check", resp, "--cert", cert, "--at", later, "--json")
    assert code == 1
    assert "expired" in json.loads(out)[0]["error"]
    assert "expired" in err


def test_check_revoked_and_bad(pki, tmp_path):
    """Check says revoked (exit 1) and names a bad signature (exit 1)."""
    leaf = pki.leaf()
    cert = pki.write(tmp_path, "site.pem", leaf, chain=False)
    revoked = tmp_path / "revoked.der"
    revoked.write_bytes(pki.response(leaf.cert, status="revoked"))
    code, out, _ = run_cli("check", revoked, "--cert", cert)
    assert code == 1
    assert "revoked" in out
    forged = tmp_path / "forged.der"
    forged.write_bytes(pki.response(leaf.cert, bad_signature=True))
    code, _, err = run_cli(
        "check", forged, "--cert", cert, "--issuer", tmp_path / "site.pem.issuer"
    )
    assert code == 1
    assert "signature does not verify" in err


def test_check_bad_inputs(pki, tmp_path):
    """Check with a missing response file or a bad --at: exit 2, one line."""
    cert = pki.write(tmp_path, "site.pem", pki.leaf())
    code, _, err = run_cli("check", tmp_path / "missing.der", "--cert", cert)
    assert code == 2
    assert "missing.der: no such file" in err
    code, _, err = run_cli("check", cert, "--cert", cert, "--at", "yesterday")
    assert code == 2
    assert "--at 'yesterday'" in err


def test_module_help():
    """`python -m hastaple --help` works as a real process (trustme's smoke test)."""
    import subprocess  # noqa: PLC0415 - only this test spawns synchronously

    out = subprocess.run(
        [sys.executable, "-m", "hastaple", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "fetch" in out and "check" in out


def test_environment_lists_are_comma_separated(pki, tmp_path, monkeypatch):
    """HASTAPLE_HAPROXY holds several sockets separated by commas, as `run` reads it."""
    cert = pki.write(tmp_path, "site.pem", pki.leaf())
    monkeypatch.setenv("HASTAPLE_HAPROXY", f"{tmp_path}/a.sock, {tmp_path}/b.sock")
    code, _, err = run_cli("fetch", cert)
    assert code == 2
    assert err == f"error: {tmp_path}/a.sock: no such HAProxy socket\n"  # the first of two


async def test_bad_certificate_in_a_directory_is_one_failed_row(pki, openssl_responder, tmp_path):
    """
    One unusable file in a crt directory fails its own row (exit 1), the others are stapled.

    Exit 2 means nothing could be done; here the good certificate was fetched.
    """
    certs = tmp_path / "certs"
    certs.mkdir()
    leaf = pki.leaf(ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    pki.write(certs, "good.pem", leaf)
    bad = certs / "bad.pem"
    bad.write_bytes(b"not a certificate\n")
    code, rows, err = await fetch_json(certs, "--state-dir", tmp_path / "state")
    assert code == 1, err
    by_name = {Path(str(r["cert"])).name: r for r in rows}
    assert (by_name["good.pem"]["status"], by_name["good.pem"]["action"]) == ("good", "fetched")
    assert (by_name["bad.pem"]["status"], by_name["bad.pem"]["action"]) == ("error", "failed")
    assert f"error: {bad}: " in err
    assert valid_staple(pki, leaf, certs / "good.pem.ocsp")
