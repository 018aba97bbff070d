"""
``hastaple doctor`` against real HAProxy 2.6 and 2.8 and real responders.

Per HAProxy version, three setups run once (a module fixture): ``clean``
(nothing may be found but must pass), ``broken`` (most findings at once) and
``nosocket`` (only an operator socket, and a certificate file removed after
HAProxy started). Each check id is asserted present in its broken setup and
absent from the clean one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hastaple.app.doctor import checks
from hastaple.testing import haproxy as haproxy_proc
from hastaple.testing.pki import PKI, issue
from hastaple.testing.responders import FaultResponder, OpensslResponder, Serve

VERSIONS = ["2.6", "2.8"]


def _chattr(flag: str, path: Path) -> bool:
    return (
        subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False).returncode
        == 0
    )


async def _doctor(*args: str) -> tuple[int, dict]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hastaple", "doctor", "--json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode in {0, 1}, err.decode()
    return proc.returncode, json.loads(out)


def _config(sockets: str, binds: str, extra: str = "") -> str:
    return (
        f"global\n{sockets}{extra}    noreuseport\n"
        "defaults\n    mode http\n    timeout client 5s\n    timeout server 5s\n"
        "    timeout connect 5s\n"
        f"frontend tls\n{binds}    http-request return status 200\n"
    )


def _start(binary: str, work: Path, cfg: str) -> subprocess.Popen[bytes]:
    (work / "haproxy.cfg").write_text(cfg)
    log = (work / "haproxy.log").open("wb")
    proc = subprocess.Popen(
        [binary, "-db", "-f", str(work / "haproxy.cfg")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=work,
    )  # fmt: skip
    log.close()
    return proc


def _wait(proc: subprocess.Popen[bytes], sock: Path, work: Path) -> None:
    for _ in range(250):
        assert proc.poll() is None, (work / "haproxy.log").read_text()
        try:
            if "Pid:" in haproxy_proc.cli(sock, "show info"):
                return
        except OSError:
            pass
        import time  # noqa: PLC0415

        time.sleep(0.02)
    raise AssertionError((work / "haproxy.log").read_text())


async def _scenarios(  # noqa: PLR0915 - one linear script of three setups
    binary: str, version: str, pki: PKI, root: Path
) -> dict[str, object]:
    procs: list[subprocess.Popen[bytes]] = []
    immutable: list[Path] = []
    results: dict[str, object] = {}
    (root / "ca").mkdir()
    async with (
        OpensslResponder(pki.write_openssl_ca(root / "ca")) as good,
        FaultResponder() as slow,
        FaultResponder() as skewed,
    ):
        short_dir = pki.write_openssl_ca(root / "ca-short")
        short = issue(
            pki.intermediate, "short-lived responder", ocsp_signing=True, ocsp_url=None,
            not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=3),
        )  # fmt: skip
        (short_dir / "rsigner.pem").write_bytes(short.cert_pem)
        (short_dir / "rkey.pem").write_bytes(short.key_pem)
        async with OpensslResponder(short_dir) as delegated:
            try:
                # ---------------------------------------------------------- clean
                clean = root / "clean"
                (clean / "certs").mkdir(parents=True)
                leaf = pki.leaf("clean.test", ocsp_url=good.url + "/", must_staple=True)
                good.add(leaf.cert)
                pki.write(clean / "certs", "clean.pem", leaf)
                (clean / "certs" / "clean.pem.ocsp").write_bytes(pki.response(leaf.cert))
                port = haproxy_proc.free_port()
                cfg = _config(
                    f"    stats socket {clean}/admin.sock level admin\n",
                    f"    bind 127.0.0.1:{port} ssl crt {clean}/certs\n",
                )
                procs.append(_start(binary, clean, cfg))
                _wait(procs[-1], clean / "admin.sock", clean)
                state = root / "state-clean"
                state.mkdir(mode=0o700)
                results["clean"] = await _doctor(
                    "--haproxy-config", str(clean / "haproxy.cfg"), "--state-dir", str(state)
                )

                # --------------------------------------------------------- broken
                work = root / "broken"
                certs = work / "certs"
                certs.mkdir(parents=True)
                url = good.url + "/"
                for name, kwargs in {
                    "chainless.pem": {},
                    "noocsp.pem": {"ocsp_url": None},
                    "muststaple.pem": {"must_staple": True},
                    "expired.pem": {
                        "not_before": dt.datetime.now(dt.UTC) - dt.timedelta(days=30),
                        "not_after": dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
                    },
                    "expiring.pem": {"not_after": dt.datetime.now(dt.UTC) + dt.timedelta(days=10)},
                    "removed.pem": {},
                    "down.pem": {"ocsp_url": f"http://127.0.0.1:{haproxy_proc.free_port()}/"},
                    "slow.pem": {"ocsp_url": slow.url + "/"},
                    "skew.pem": {"ocsp_url": skewed.url + "/"},
                    "delegated.pem": {"ocsp_url": delegated.url + "/"},
                }.items():
                    one = pki.leaf(name, **({"ocsp_url": url} | kwargs))
                    good.add(one.cert)
                    delegated.add(one.cert)
                    pki.write(certs, name, one, chain=name != "chainless.pem")
                    if name == "slow.pem":
                        slow.on(None, Serve(pki.response(one.cert), delay=2.3))
                    if name == "skew.pem":
                        then = dt.datetime.now(dt.UTC).timestamp() - 3600
                        date = email.utils.formatdate(then, usegmt=True)
                        skewed.on(None, Serve(pki.response(one.cert), headers=(("Date", date),)))
                (certs / "chainless.pem.issuer").unlink()
                binds = f"    bind 127.0.0.1:{haproxy_proc.free_port()} ssl crt {certs}\n"
                if version != "2.6":  # 2.6: "unknown ssl keyword ocsp-update" (measured)
                    (work / "m").mkdir()
                    managed = pki.leaf("managed.test", ocsp_url=url)
                    good.add(managed.cert)
                    pki.write(work / "m", "managed.pem", managed)
                    (work / "list").write_text(f"{work}/m/managed.pem [ocsp-update on]\n")
                    binds += (
                        f"    bind 127.0.0.1:{haproxy_proc.free_port()} ssl crt-list {work}/list\n"
                    )
                tcp = haproxy_proc.free_port()
                cfg = _config(
                    f"    stats socket {work}/admin.sock level admin\n"
                    f"    stats socket ipv4@127.0.0.1:{tcp} level admin\n"
                    f"    stats socket {work}/op.sock level operator\n",
                    binds,
                    "    ssl-load-extra-files bundle sctl issuer key\n    tune.bufsize 4096\n",
                )
                procs.append(_start(binary, work, cfg))
                _wait(procs[-1], work / "admin.sock", work)
                (certs / "removed.pem").unlink()
                pki.write(certs, "added.pem", pki.leaf("added.test", ocsp_url=url))
                (certs / "garbled.pem").write_text(  # copied in half, say
                    "-----BEGIN CERTIFICATE-----\nMIIB not base64\n-----END CERTIFICATE-----\n"
                )
                if _chattr("+i", certs):
                    immutable.append(certs)
                state = root / "state-broken"
                state.mkdir()
                state.chmod(0o777)
                results["broken"] = await _doctor(
                    "--haproxy-config", str(work / "haproxy.cfg"), "--state-dir", str(state),
                    "--haproxy", str(work / "missing.sock"),
                )  # fmt: skip
                results["immutable"] = bool(immutable)

                # ------------------------------------------------------- nosocket
                nos = root / "nos"
                (nos / "c").mkdir(parents=True)
                one = pki.leaf("nos.test", ocsp_url=url)
                good.add(one.cert)
                pki.write(nos / "c", "one.pem", one)
                cfg = _config(
                    f"    stats socket {nos}/op.sock level operator\n",
                    f"    bind 127.0.0.1:{haproxy_proc.free_port()} ssl crt {nos}/c/one.pem\n",
                )
                procs.append(_start(binary, nos, cfg))
                _wait(procs[-1], nos / "op.sock", nos)
                (nos / "c" / "one.pem").unlink()
                results["nosocket"] = await _doctor(
                    "--haproxy-config", str(nos / "haproxy.cfg"), "--no-responders",
                    "--state-dir", str(root / "state-missing"),
                )  # fmt: skip
            finally:
                for path in immutable:
                    _chattr("-i", path)
                for proc in procs:
                    proc.terminate()
                    proc.wait(timeout=5)
    return results


@pytest.fixture(name="runs", scope="module", params=VERSIONS)
def _runs(request, pki):
    binary = haproxy_proc.binary(request.param)
    if binary is None:
        pytest.skip(f"HAProxy {request.param} is not installed")
    root = Path(tempfile.mkdtemp(prefix="hsd-"))
    try:
        results = asyncio.run(_scenarios(binary, request.param, pki, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["version"] = request.param
    return results


def _ids(run: object) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for f in run[1]["findings"]:  # type: ignore[index]
        found.setdefault(f["check"], []).append(f)
    return found


BROKEN = [
    ("chainless-no-issuer", "broken", "error"),
    ("cert-unreadable", "broken", "error"),
    ("no-ocsp-url", "broken", "info"),
    ("managed-by-haproxy", "broken", "info"),
    ("must-staple-unstapled", "broken", "error"),
    ("cert-expired", "broken", "error"),
    ("cert-expiring", "broken", "warning"),
    ("cert-not-served", "broken", "warning"),
    ("cert-not-on-disk", "broken", "warning"),
    ("cert-dir-not-writable", "broken", "error"),
    ("extra-files-hide-ocsp", "broken", "warning"),
    ("bufsize-too-small", "broken", "warning"),
    ("socket-alias", "broken", "warning"),
    ("socket-not-admin", "broken", "warning"),
    ("socket-unreachable", "broken", "error"),
    ("state-dir-permissions", "broken", "warning"),
    ("responder-down", "broken", "error"),
    ("responder-slow", "broken", "warning"),
    ("responder-delegate-expiring", "broken", "warning"),
    ("clock-skew", "broken", "error"),
    ("no-admin-socket", "nosocket", "error"),
    ("config-invalid", "nosocket", "error"),
]


def test_clean_setup_exits_0_with_no_finding(runs):
    code, doc = runs["clean"]
    assert doc["findings"] == []
    assert (code, doc["ok"]) == (0, True)


def test_broken_setups_exit_1(runs):
    assert runs["broken"][0] == 1
    assert runs["nosocket"][0] == 1


@pytest.mark.parametrize(("check", "setup", "severity"), BROKEN, ids=[b[0] for b in BROKEN])
def test_each_check_fires_on_its_broken_setup_only(runs, check, setup, severity):
    if check == "managed-by-haproxy" and runs["version"] == "2.6":
        pytest.skip("HAProxy 2.6 refuses `ocsp-update on`: unknown ssl keyword (measured)")
    if check == "cert-dir-not-writable" and not runs["immutable"]:
        pytest.skip("chattr +i is not available here, and root can write any directory")
    assert check not in _ids(runs["clean"])
    found = _ids(runs[setup]).get(check)
    assert found, json.dumps(runs[setup][1], indent=1)
    assert {f["severity"] for f in found} == {severity}
    assert all(f["fix"] and f["message"] for f in found)


def test_findings_name_the_configuration_line(runs):
    found = _ids(runs["broken"])
    (hide,) = found["extra-files-hide-ocsp"]
    assert hide["file"].endswith("haproxy.cfg")
    assert hide["line"] == 5
    assert (
        hide["fix"] == "add `ocsp` to it: `ssl-load-extra-files bundle sctl issuer key ocsp`"
        " (or remove the line)"
    )
    (chainless,) = found["chainless-no-issuer"]
    assert "chainless.pem.issuer" in chainless["fix"]


def test_every_check_is_in_the_readme():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [check for check, _, _ in BROKEN if f"`{check}`" not in readme]
    assert missing == []


def test_a_staple_larger_than_bufsize_is_an_error():
    from hastaple.app.doctor.facts import CertFact, Facts, Setting, Settings  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)
    cert = CertFact(Path("/c/a.pem"), ("/c/a.pem",), "cfg:9", managed=False, staple_bytes=3000)
    facts = Facts(
        user="u", now=now, certs=(cert,), settings=Settings(bufsize=Setting(("3000",), "cfg:3"))
    )
    (finding,) = checks.bufsize_too_small(facts)
    assert (finding.severity, finding.file, finding.line) == ("error", "cfg", 3)
    facts = Facts(user="u", now=now, certs=(cert,))
    assert list(checks.bufsize_too_small(facts)) == []


def test_usage_errors_exit_2(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "hastaple", "doctor"], capture_output=True, check=False
    )
    assert run.returncode == 2
    run = subprocess.run(
        [sys.executable, "-m", "hastaple", "doctor", "--haproxy-config", str(tmp_path / "no.cfg")],
        capture_output=True,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert b"no.cfg" in run.stderr


def test_paths_alone_ask_for_no_socket():
    from hastaple.app.doctor.facts import Facts, SocketFact  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)
    assert list(checks.no_admin_socket(Facts(user="u", now=now))) == []
    given = Facts(user="u", now=now, sockets=(SocketFact("/x.sock", None, None, error="gone"),))
    assert [f.check for f in checks.no_admin_socket(given)] == ["no-admin-socket"]


def test_certificate_facts_come_from_the_files_haproxy_reads(pki, tmp_path):
    """
    With ssl-load-extra-del-ext the staple is site.ocsp; issuers-chain-path gives the issuer.

    doctor read <crt>.ocsp and only the PEM chain or <crt>.issuer: a fresh
    must-staple site.crt was reported unstapled, and a chainless PEM whose CA
    is in issuers-chain-path chainless-no-issuer.
    """
    from hastaple.app.doctor.gather import read_cert  # noqa: PLC0415
    from hastaple.core.model import CertEntry  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)
    leaf = pki.leaf("site.example.test", must_staple=True)
    site = pki.write(tmp_path, "site.crt", leaf, chain=False)
    site.with_name("site.crt.issuer").unlink()
    (tmp_path / "site.ocsp").write_bytes(pki.response(leaf.cert))
    chains = tmp_path / "chains"
    chains.mkdir()
    (chains / "ca.pem").write_bytes(pki.intermediate.cert_pem)
    entry = CertEntry(str(site), extra_base=tmp_path / "site", issuers_chain=chains)

    fact = read_cert(entry, now)
    assert (fact.error, fact.has_local_issuer, fact.staple_problem) == (None, True, None)
    assert list(checks.chainless_no_issuer(_facts_of(fact, now))) == []
    assert list(checks.must_staple_unstapled(_facts_of(fact, now))) == []


def _facts_of(fact, now):
    from hastaple.app.doctor.facts import Facts  # noqa: PLC0415

    return Facts(user="u", now=now, certs=(fact,))
