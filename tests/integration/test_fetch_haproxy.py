"""
`hastaple fetch` against real HAProxy 2.6 and 2.8.

The responder is a real `openssl ocsp`, the client a real `openssl s_client -status`.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from hastaple.testing import haproxy as haproxy_proc
from hastaple.testing.pki import PKI, Issued, now
from hastaple.testing.responders import Serve
from test_fetch_command import fetch_json

pytestmark = pytest.mark.integration


def this_update_served(hap: haproxy_proc.HAProxy, name: str) -> str:
    text = haproxy_proc.staple(hap.port, name)
    assert "Cert Status: good" in text, text
    return text.split("This Update: ", 1)[1].splitlines()[0].strip()


def due_staple(pki: PKI, leaf: Issued) -> bytes:
    """A valid response past half of its validity: fetch must replace it."""
    this = now() - dt.timedelta(days=5)
    return pki.response(leaf.cert, this_update=this, next_update=this + dt.timedelta(days=7))


async def test_fetch_deploys_without_reload(pki, openssl_responder, crt_dir, start_haproxy):
    """
    Three certificates, three HAProxy situations, one `fetch`: all stapled, no reload.

    a.pem had a .ocsp at start (fast path), b.pem had none (the seed's pitfall:
    needs the commit path), c.pem is chainless with a .issuer file.
    """
    leaves = {
        n: pki.leaf(f"{n}.example.test", ocsp_url=openssl_responder.url) for n in ("a", "b", "c")
    }
    for name, leaf in leaves.items():
        pki.write(crt_dir, f"{name}.pem", leaf, chain=name != "c")
        openssl_responder.add(leaf.cert)
    (crt_dir / "a.pem.ocsp").write_bytes(due_staple(pki, leaves["a"]))
    hap = start_haproxy()
    pid, uptime = hap.pid, hap.uptime
    assert "no response sent" in haproxy_proc.staple(hap.port, "b.example.test")

    code, rows, err = await fetch_json(crt_dir, "--haproxy", hap.socket)
    assert code == 0, err
    assert {r["action"] for r in rows} == {"deployed"}
    by_name = {Path(str(r["cert"])).stem: r for r in rows}
    methods = {name: by_name[name]["haproxy"] for name in leaves}
    sock = str(hap.socket)
    assert methods == {"a": {sock: "update"}, "b": {sock: "commit"}, "c": {sock: "commit"}}
    for name in leaves:
        expected = dt.datetime.fromisoformat(str(by_name[name]["this_update"]))
        assert this_update_served(hap, f"{name}.example.test") == haproxy_proc.openssl_time(
            expected
        )
    assert hap.pid == pid
    assert hap.uptime >= uptime  # the same process, never restarted
    assert "reload" not in hap.log.lower()

    # The hourly cron run: nothing asked of the CA, everything still stapled.
    requests = openssl_responder.requests
    code, rows, err = await fetch_json(crt_dir, "--haproxy", hap.socket)
    assert code == 0, err
    assert {r["action"] for r in rows} == {"fresh"}
    assert openssl_responder.requests == requests
    for name in leaves:
        assert "Cert Status: good" in haproxy_proc.staple(hap.port, f"{name}.example.test")


async def test_fetch_from_haproxy_config(pki, openssl_responder, crt_dir, start_haproxy):
    """--haproxy-config alone finds the certificates and the admin socket."""
    leaf = pki.leaf("cfg.example.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    pki.write(crt_dir, "cfg.pem", leaf)
    hap = start_haproxy()
    code, rows, err = await fetch_json("--haproxy-config", hap.workdir / "haproxy.cfg")
    assert code == 0, err
    assert [r["action"] for r in rows] == ["deployed"]
    assert "Cert Status: good" in haproxy_proc.staple(hap.port, "cfg.example.test")


async def test_bad_response_keeps_served_staple(pki, fault_responder, crt_dir, start_haproxy):
    """A forged response is refused: HAProxy keeps serving the old staple, the file is kept."""
    leaf = pki.leaf("forged.example.test", ocsp_url=fault_responder.url_for("forged"))
    fault_responder.on("forged", Serve(pki.response(leaf.cert, bad_signature=True)))
    pki.write(crt_dir, "forged.pem", leaf)
    old = due_staple(pki, leaf)
    (crt_dir / "forged.pem.ocsp").write_bytes(old)
    hap = start_haproxy()
    before = this_update_served(hap, "forged.example.test")
    code, rows, err = await fetch_json(crt_dir, "--haproxy", hap.socket)
    assert code == 1
    assert "signature does not verify" in err
    assert rows[0]["action"] == "failed"
    assert (crt_dir / "forged.pem.ocsp").read_bytes() == old
    assert this_update_served(hap, "forged.example.test") == before


async def test_haproxy_not_running(pki, openssl_responder, crt_dir, start_haproxy):
    """HAProxy gone (stale socket): the staple is stored, the row fails naming the socket."""
    leaf = pki.leaf("gone.example.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    pki.write(crt_dir, "gone.pem", leaf)
    hap = start_haproxy()
    hap.stop()
    code, rows, err = await fetch_json(crt_dir, "--haproxy", hap.socket)
    assert code == 1
    assert rows[0]["action"] == "failed"
    assert str(hap.socket) in err and "refused" in err
    assert (crt_dir / "gone.pem.ocsp").exists()  # a reload would pick it up


def unstapled(hap: haproxy_proc.HAProxy, names: list[str]) -> list[str]:
    """The certificates HAProxy does not staple with a good response, read back over its CLI."""
    missing = []
    for name in names:
        shown = haproxy_proc.cli(hap.socket, f"show ssl cert {hap.crt_dir / name}")
        key = shown.split("OCSP Response Key:", 1)[-1].splitlines()[0].strip()
        served = haproxy_proc.cli(hap.socket, f"show ssl ocsp-response {key}") if key else ""
        if "Cert Status: good" not in served:
            missing.append(name)
    return missing


@pytest.mark.parametrize("second", ["ipv4", "master"])
async def test_two_sockets_to_one_process_deploy_once(  # noqa: PLR0917 - fixtures
    pki, openssl_responder, crt_dir, start_haproxy, tmp_path, second
):
    """
    A unix socket plus an ipv4@ socket, or a worker socket plus master @1: one process.

    Both sockets pushing raced each other's transactions (HAProxy holds one),
    leaving certificates unstapled. Twenty first runs (no .ocsp at start: every
    certificate takes a transaction) over twenty certificates: every run exits
    0, every certificate is stapled, and the second socket is its alias.
    """
    names = [f"c{i:02d}.pem" for i in range(20)]
    for i, name in enumerate(names):
        leaf = pki.leaf(f"c{i:02d}.example.test", ocsp_url=openssl_responder.url)
        openssl_responder.add(leaf.cert)
        pki.write(crt_dir, name, leaf)
    for run in range(20):
        for staple in crt_dir.glob("*.ocsp"):
            staple.unlink()
        if second == "ipv4":
            port = haproxy_proc.free_port()
            hap = start_haproxy(global_extra=f"    stats socket ipv4@127.0.0.1:{port} level admin")
            other = f"ipv4@127.0.0.1:{port}"
        else:
            hap = start_haproxy(master=True)
            other = f"{hap.workdir / 'master.sock'}@1"

        code, rows, err = await fetch_json(
            crt_dir, "--haproxy", hap.socket, "--haproxy", other, "--force",
            "--state-dir", tmp_path / "state",
        )  # fmt: skip

        assert code == 0, err
        assert unstapled(hap, names) == []
        assert "Cert Status: good" in haproxy_proc.staple(hap.port, f"c{run:02d}.example.test")
        assert {r["action"] for r in rows} == {"deployed"}
        assert {str(r["cert"]): r["aliases"] for r in rows} == {
            str(crt_dir / name): {other: str(hap.socket)} for name in names
        }
        assert {str(r["cert"]): r["haproxy"] for r in rows} == {
            str(crt_dir / name): {str(hap.socket): "commit", other: "alias"} for name in names
        }
        hap.stop()


@pytest.mark.parametrize("admin_too", [False, True])
async def test_sockets_below_admin_deploy_nothing_and_say_so(  # noqa: PLR0917 - fixtures
    pki, openssl_responder, crt_dir, start_haproxy, sock_dir, admin_too
):
    """
    A configuration whose only stats socket is `level operator` fails every row (exit 1).

    With an admin socket to the same process as well, the operator socket is
    its alias and the run is in order.
    """
    leaf = pki.leaf("oper.example.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    pki.write(crt_dir, "oper.pem", leaf)
    oper = sock_dir / "oper.sock"
    hap = start_haproxy(global_extra=f"    stats socket {oper} level operator")
    config = hap.workdir / "haproxy.cfg"
    if not admin_too:  # what hastaple reads: the same HAProxy, its admin socket not declared
        config = hap.workdir / "operator-only.cfg"
        lines = (hap.workdir / "haproxy.cfg").read_text().splitlines()
        config.write_text("\n".join(line for line in lines if "level admin" not in line) + "\n")

    code, rows, err = await fetch_json("--haproxy-config", config)

    if admin_too:
        assert code == 0, err
        assert rows[0]["action"] == "deployed"
        assert rows[0]["aliases"] == {str(oper): str(hap.socket)}
        assert "Cert Status: good" in haproxy_proc.staple(hap.port, "oper.example.test")
    else:
        assert code == 1, err
        assert rows[0]["action"] == "failed"
        assert rows[0]["haproxy"] == {str(oper): "error"}
        assert f"haproxy {oper}: " in str(rows[0]["error"])
        assert "level operator, not admin" in str(rows[0]["error"])
        assert "no response sent" in haproxy_proc.staple(hap.port, "oper.example.test")


@pytest.mark.parametrize("registered", [True, False])
async def test_renewed_certificate_not_served_yet_is_stored_not_failed(
    pki, openssl_responder, crt_dir, start_haproxy, registered
):
    """
    The file is renewed on disk; HAProxy serves the old certificate until its reload.

    The new staple is stored for that reload: action "stored" with a note,
    exit 0, nothing loaded (the old certificate keeps its own staple). Both
    when the old one was loaded with a .ocsp (fast path) and without (the
    commit path, where HAProxy says "Certificate ID does not match").
    """
    old = pki.leaf("renewed.example.test", ocsp_url=openssl_responder.url)
    path = pki.write(crt_dir, "renewed.pem", old)
    if registered:
        path.with_name("renewed.pem.ocsp").write_bytes(pki.response(old.cert))
    hap = start_haproxy()
    new = pki.leaf("renewed.example.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(new.cert)
    pki.write(crt_dir, "renewed.pem", new)

    code, rows, err = await fetch_json(crt_dir, "--haproxy", hap.socket)

    assert code == 0, err
    [row] = rows
    assert (row["action"], row["status"], row["error"]) == ("stored", "good", None), row
    assert "older certificate" in str(row["note"]) and "reload" in str(row["note"])
    assert row["haproxy"] == {str(hap.socket): "stored"}
    staple = ocsp.load_der_ocsp_response(path.with_name("renewed.pem.ocsp").read_bytes())
    assert staple.serial_number == new.cert.serial_number
    served = haproxy_proc.staple(hap.port, "renewed.example.test")
    assert ("Cert Status: good" in served) is registered, served


async def test_abstract_socket_is_reached_as_haproxy_binds_it(
    pki, openssl_responder, crt_dir, haproxy_binary, tmp_path
):
    """
    `stats socket abns@name`: HAProxy binds the whole sun_path, the name padded with zeroes.

    A client that connects with the bare name is refused; hastaple must use
    the padded one (and uvloop refuses that, so it connects its own socket).
    """
    leaf = pki.leaf("sock.example.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    pki.write(crt_dir, "sock.pem", leaf)
    name = f"hastaple-{haproxy_proc.free_port()}-{tmp_path.name}"[:100]
    reach = ("\0" + name).ljust(108, "\0")
    port = haproxy_proc.free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        f"global\n    stats socket abns@{name} level admin\n"
        "defaults\n    mode http\n    timeout client 5s\n    timeout server 5s\n"
        f"    timeout connect 5s\nfrontend tls\n    bind 127.0.0.1:{port} ssl crt {crt_dir}\n"
        "    http-request return status 200\n"
    )
    proc = haproxy_proc.spawn_logged([haproxy_binary, "-db", "-f", str(cfg)], tmp_path, "log")
    try:
        for _ in range(200):
            try:
                if "Pid:" in haproxy_proc.cli(reach, "show info"):
                    break
            except OSError:
                time.sleep(0.05)
        code, rows, err = await fetch_json("--haproxy-config", cfg)
        assert code == 0, (err, rows)
        assert [r["action"] for r in rows] == ["deployed"], rows
        assert "Cert Status: good" in haproxy_proc.staple(port, "sock.example.test")
    finally:
        haproxy_proc.stop_group(proc)
