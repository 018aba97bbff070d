"""Deploy against a real HAProxy 2.6 and 2.8, checked with a real TLS handshake."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import socket
import time
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from hastaple.core.ocsp.request import cert_id
from hastaple.errors import HAProxyUnreachable
from hastaple.haproxy import client, protocol
from hastaple.haproxy.deploy import DeployItem, Session, deploy
from hastaple.testing import haproxy as haproxy_proc
from hastaple.testing.pki import now

pytestmark = pytest.mark.integration


def _item(pki, leaf, crt, *, chain=True, **kwargs) -> DeployItem:
    der = pki.response(leaf.cert, **kwargs)
    resp = ocsp.load_der_ocsp_response(der)
    return DeployItem(
        crt=str(crt),
        der=der,
        cert_id=cert_id(leaf.cert, pki.intermediate.cert),
        issuer_pem=None if chain else pki.intermediate.cert_pem,
        this_update=resp.this_update_utc,
        next_update=resp.next_update_utc,
    )


def _assert_stapled(hap, servername, item) -> None:
    text = haproxy_proc.staple(hap.port, servername)
    assert "Cert Status: good" in text, text
    assert f"This Update: {haproxy_proc.openssl_time(item.this_update)}" in text, text


AN_HOUR_AGO = dt.timedelta(hours=1)


async def test_fast_path_updates_registered_cert(pki, crt_dir, start_haproxy):
    """A cert with a .ocsp at start is updated in place with `set ssl ocsp-response`."""
    leaf = pki.leaf("fast.test")
    crt = pki.write(crt_dir, "fast.pem", leaf)
    old = pki.response(leaf.cert, this_update=now() - 2 * AN_HOUR_AGO)
    crt.with_name("fast.pem.ocsp").write_bytes(old)
    hap = start_haproxy()
    item = _item(pki, leaf, crt, this_update=now() - dt.timedelta(minutes=5))

    [outcome] = await deploy(str(hap.socket), [item])

    assert (outcome.ok, outcome.method, outcome.error) == (True, "update", None)
    _assert_stapled(hap, "fast.test", item)


async def test_unregistered_cert_is_stapled_without_reload(pki, crt_dir, start_haproxy):
    """A cert without .ocsp at start (the pitfall) is stapled by a commit; same process."""
    leaf = pki.leaf("bare.test", kind="rsa")
    crt = pki.write(crt_dir, "bare.pem", leaf)
    hap = start_haproxy()
    assert "no response sent" in haproxy_proc.staple(hap.port, "bare.test")
    pid, uptime = hap.pid, hap.uptime
    item = _item(pki, leaf, crt)

    [outcome] = await deploy(str(hap.socket), [item])

    assert (outcome.ok, outcome.method, outcome.error) == (True, "commit", None)
    _assert_stapled(hap, "bare.test", item)
    assert hap.pid == pid
    assert hap.uptime >= uptime
    assert hap.proc.poll() is None


async def test_second_deploy_after_commit_takes_fast_path(pki, crt_dir, start_haproxy):
    """Once committed, the cert is registered and the next deploy uses the fast path."""
    leaf = pki.leaf("again.test")
    crt = pki.write(crt_dir, "again.pem", leaf)
    hap = start_haproxy()
    first = _item(pki, leaf, crt, this_update=now() - AN_HOUR_AGO)
    second = _item(pki, leaf, crt, this_update=now() - dt.timedelta(minutes=2))

    [one] = await deploy(str(hap.socket), [first])
    [two] = await deploy(str(hap.socket), [second])

    assert (one.ok, one.method) == (True, "commit")
    assert (two.ok, two.method, two.error) == (True, "update", None)
    _assert_stapled(hap, "again.test", second)


async def test_same_certificate_in_a_second_file_without_ocsp(pki, crt_dir, start_haproxy):
    """
    Registration is per file (docs/haproxy.md): the same certificate twice, one with a .ocsp.

    The set for the second file answers "updated" (it updates the shared
    CertID entry) but leaves that file unregistered: it must be committed.
    """
    leaf = pki.leaf("twice.test")
    first = pki.write(crt_dir, "twice-a.pem", leaf)
    second = pki.write(crt_dir, "twice-b.pem", leaf)
    # registered at start (docs/haproxy.md, "The pitfall: unregistered certificates")
    first.with_name("twice-a.pem.ocsp").write_bytes(b"")
    hap = start_haproxy()

    a, b = await deploy(str(hap.socket), [_item(pki, leaf, first), _item(pki, leaf, second)])

    assert (a.ok, a.error) == (True, None)  # 2.6 reports no key for it either: a commit
    assert (b.ok, b.method, b.error) == (True, "commit", None)
    key = cert_id(leaf.cert, pki.intermediate.cert).hex()
    async with client.connect(str(hap.socket)) as conn:
        for crt in (first, second):
            cmd = protocol.show_cert(str(crt))
            info = protocol.parse_show_cert(str(hap.socket), cmd, await conn.run_one(cmd))
            assert info is not None
            assert info.ocsp_key == key, crt


@pytest.mark.parametrize("loop", ["idle", "busy"])
async def test_round_after_haproxy_closed_the_idle_connection(pki, crt_dir, start_haproxy, loop):
    """
    A round after HAProxy closed the connection for 'stats timeout' still goes in.

    Rounds of one run are apart by however long the fetching takes, which can
    exceed 'stats timeout' (10 s by default, 1 s here). With the event loop
    idle meanwhile it sees the close before the next write; busy (validating),
    it does not: 2.8's close then makes the write fail (EPIPE), 2.6 lets it
    through and answers nothing. Either way the round goes over a new connection.
    """
    leaf = pki.leaf(f"{loop}.test")
    crt = pki.write(crt_dir, f"{loop}.pem", leaf)
    crt.with_name(f"{loop}.pem.ocsp").write_bytes(b"")
    hap = start_haproxy(global_extra="    stats timeout 1s")
    async with Session(str(hap.socket), timeout=5) as session:
        [first] = await session.push([_item(pki, leaf, crt)])
        if loop == "idle":
            await asyncio.sleep(1.5)
        else:
            time.sleep(1.5)  # CPU work on the loop while HAProxy closes the connection
        item = _item(pki, leaf, crt, this_update=now() - dt.timedelta(minutes=1))
        [second] = await session.push([item])

    assert (first.ok, first.error) == (True, None)
    assert (second.ok, second.method, second.error) == (True, "update", None)
    _assert_stapled(hap, f"{loop}.test", item)


async def test_chainless_pem_needs_issuer_in_transaction(pki, crt_dir, start_haproxy):
    """A chainless PEM is stapled when the issuer goes in the transaction, and not without."""
    leaf = pki.leaf("nochain.test")
    crt = pki.write(crt_dir, "nochain.pem", leaf, chain=False)
    hap = start_haproxy()
    without = _item(pki, leaf, crt, chain=True)  # issuer_pem None

    [failed] = await deploy(str(hap.socket), [without])

    assert (failed.ok, failed.method) == (False, "commit")
    assert "impossible to compute the OCSP certificate ID" in failed.error
    assert "no response sent" in haproxy_proc.staple(hap.port, "nochain.test")

    item = _item(pki, leaf, crt, chain=False)
    [outcome] = await deploy(str(hap.socket), [item])

    assert (outcome.ok, outcome.method, outcome.error) == (True, "commit", None)
    _assert_stapled(hap, "nochain.test", item)


async def test_many_certs_one_failure_does_not_stop_others(pki, crt_dir, start_haproxy):
    """Items are independent: an unknown cert fails alone, the others are stapled."""
    a, b = pki.leaf("a.test"), pki.leaf("b.test", kind="rsa")
    crt_a, crt_b = pki.write(crt_dir, "a.pem", a), pki.write(crt_dir, "b.pem", b)
    crt_a.with_name("a.pem.ocsp").write_bytes(pki.response(a.cert, this_update=now() - AN_HOUR_AGO))
    hap = start_haproxy()
    ghost = _item(pki, pki.leaf("ghost.test"), crt_dir / "ghost.pem")
    items = [_item(pki, a, crt_a), ghost, _item(pki, b, crt_b)]

    outcomes = await deploy(str(hap.socket), items)

    assert [(o.ok, o.method) for o in outcomes] == [
        (True, "update"),
        (False, "update"),
        (True, "commit"),
    ]
    assert outcomes[1].error == f"HAProxy does not serve {crt_dir / 'ghost.pem'}"
    _assert_stapled(hap, "a.test", items[0])
    _assert_stapled(hap, "b.test", items[2])


async def test_read_back_catches_what_haproxy_serves(pki, crt_dir, start_haproxy):
    """HAProxy answers 'updated' to a revoked response; the read-back reports it served."""
    leaf = pki.leaf("rev.test")
    crt = pki.write(crt_dir, "rev.pem", leaf)
    crt.with_name("rev.pem.ocsp").write_bytes(pki.response(leaf.cert))
    hap = start_haproxy()
    item = _item(pki, leaf, crt, status="revoked")

    [outcome] = await deploy(str(hap.socket), [item])

    assert not outcome.ok
    assert "HAProxy answered 'updated' but serves status revoked" in outcome.error


async def test_master_cli_worker_prefix(pki, crt_dir, start_haproxy):
    """Through the master CLI with `@1`, the commit and fast path work as on the worker."""
    leaf = pki.leaf("master.test")
    crt = pki.write(crt_dir, "master.pem", leaf)
    hap = start_haproxy(master=True)
    socket_text = f"{hap.workdir / 'master.sock'}@1"
    first = _item(pki, leaf, crt, this_update=now() - AN_HOUR_AGO)
    second = _item(pki, leaf, crt)

    [one] = await deploy(socket_text, [first])
    [two] = await deploy(socket_text, [second])

    assert (one.ok, one.method, one.error) == (True, "commit", None)
    assert (two.ok, two.method, two.error) == (True, "update", None)
    _assert_stapled(hap, "master.test", second)


async def test_oversized_response_refused_client_side(pki, crt_dir, start_haproxy):
    """A response over tune.bufsize is not sent; HAProxy keeps serving the previous staple."""
    leaf = pki.leaf("big.test")
    crt = pki.write(crt_dir, "big.pem", leaf)
    crt.with_name("big.pem.ocsp").write_bytes(pki.response(leaf.cert))
    hap = start_haproxy()
    served_before = haproxy_proc.staple(hap.port, "big.test")
    item = _item(pki, leaf, crt)
    big = DeployItem(
        item.crt, item.der + b"\0" * 13000, item.cert_id, None, item.this_update, item.next_update
    )

    [outcome] = await deploy(str(hap.socket), [big])

    assert not outcome.ok
    assert "tune.bufsize" in outcome.error
    assert "not sent" in outcome.error
    assert haproxy_proc.staple(hap.port, "big.test") == served_before
    assert hap.proc.poll() is None


async def test_missing_socket_is_unreachable(tmp_path, pki):
    """A socket path that does not exist raises HAProxyUnreachable naming the path."""
    path = tmp_path / "nope.sock"
    with pytest.raises(HAProxyUnreachable) as info:
        await deploy(str(path), [])
    assert str(path) in str(info.value)
    assert "no such socket" in str(info.value)


async def test_stale_socket_is_refused(tmp_path):
    """A socket file left by a stopped HAProxy gives 'connection refused'."""
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # bound, never listening: the kernel refuses connections
        with pytest.raises(HAProxyUnreachable) as info:
            await deploy(str(path), [])
    assert "connection refused (is HAProxy running?)" in str(info.value)
    assert str(path) in str(info.value)


async def test_stopped_haproxy_socket_is_refused(pki, crt_dir, start_haproxy):
    """After HAProxy is killed its socket file remains and deploy reports it refused."""
    leaf = pki.leaf("gone.test")
    crt = pki.write(crt_dir, "gone.pem", leaf)
    hap = start_haproxy()
    hap.proc.kill()  # SIGKILL: HAProxy cannot remove its socket file
    hap.proc.wait()
    assert hap.socket.exists()

    with pytest.raises(HAProxyUnreachable, match="connection refused"):
        await deploy(str(hap.socket), [_item(pki, leaf, crt)])


async def test_silent_peer_times_out(tmp_path):
    """A socket that accepts but never answers gives 'no answer within ...'."""
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen()
        with pytest.raises(HAProxyUnreachable, match=r"no answer within 0\.3 s"):
            await deploy(str(path), [], timeout=0.3)


async def test_tcp_stats_socket(pki, crt_dir, start_haproxy):
    """A `stats socket ipv4@127.0.0.1:<port>` works like the unix one (host:port form)."""
    leaf = pki.leaf("tcp.test")
    crt = pki.write(crt_dir, "tcp.pem", leaf)
    port = haproxy_proc.free_port()
    hap = start_haproxy(global_extra=f"    stats socket ipv4@127.0.0.1:{port} level admin")
    item = _item(pki, leaf, crt)

    [outcome] = await deploy(f"127.0.0.1:{port}", [item])

    assert (outcome.ok, outcome.method, outcome.error) == (True, "commit", None)
    _assert_stapled(hap, "tcp.test", item)


async def test_closed_tcp_port_is_refused():
    """A TCP address where nothing listens is 'connection refused', naming host:port."""
    port = haproxy_proc.free_port()
    with pytest.raises(HAProxyUnreachable, match=rf"127\.0\.0\.1:{port}: connection refused"):
        await deploy(f"127.0.0.1:{port}", [])


@pytest.mark.parametrize(
    ("exc", "problem"),
    [
        (FileNotFoundError(2, "No such file or directory"), "no such socket"),
        (PermissionError(13, "Permission denied"), "permission denied"),
        (ConnectionRefusedError(111, "Connection refused"), "connection refused (is HAProxy"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection reset by HAProxy"),
        (OSError(99, "Cannot assign requested address"), "Cannot assign requested address"),
    ],
)
def test_every_socket_error_is_mapped(exc, problem):
    """Each OSError kind becomes HAProxyUnreachable with a sentence naming the socket."""
    address = protocol.parse_address("/run/haproxy.sock")
    error = client._unreachable(address, exc)
    assert isinstance(error, HAProxyUnreachable)
    assert str(error).startswith("haproxy /run/haproxy.sock: ")
    assert problem in str(error)


async def test_bad_name_fails_alone(pki, crt_dir, start_haproxy):
    """A name that cannot be sent (a tab) fails alone; the other unregistered cert is stapled."""
    leaf = pki.leaf("good.test")
    crt = pki.write(crt_dir, "good.pem", leaf)
    hap = start_haproxy()
    good = _item(pki, leaf, crt)
    bad = DeployItem(
        f"{crt_dir}/bad\tname.pem", good.der, good.cert_id, None, good.this_update, good.next_update
    )

    bad_out, good_out = await deploy(str(hap.socket), [bad, good])

    assert not bad_out.ok
    assert "control character" in bad_out.error
    assert (good_out.ok, good_out.method, good_out.error) == (True, "commit", None)
    _assert_stapled(hap, "good.test", good)


async def test_foreign_open_transaction_is_left_alone(pki, crt_dir, start_haproxy):
    """
    Another client's open transaction: our commit fails naming it, theirs stays open.

    HAProxy holds one transaction at a time. 2.8 refuses our ``set ssl cert``;
    2.6 answers "Transaction updated for certificate <theirs>!" (it files our
    .ocsp into their transaction), which deploy must not take as accepted.
    """
    ours, theirs = pki.leaf("ours.test"), pki.leaf("theirs.test")
    crt, other = pki.write(crt_dir, "ours.pem", ours), pki.write(crt_dir, "theirs.pem", theirs)
    hap = start_haproxy()
    b64 = base64.b64encode(pki.response(theirs.cert)).decode()
    assert "Transaction created" in hap.command(f"set ssl cert {other}.ocsp <<\n{b64}\n")
    item = _item(pki, ours, crt)

    [outcome] = await deploy(str(hap.socket), [item])

    assert (outcome.ok, outcome.method) == (False, "commit")
    assert str(other) in outcome.error
    assert f"*{other}" in hap.command("show ssl cert").splitlines()[1]
    assert "no response sent" in haproxy_proc.staple(hap.port, "ours.test")
    assert "Transaction aborted" in hap.command(f"abort ssl cert {other}")


async def test_thousands_of_unregistered_certs_within_a_short_idle_timeout(
    pki, crt_dir, start_haproxy
):
    """
    2,000 certificates without .ocsp (a first run): all committed, though it takes > timeout.

    The timeout bounds each wait for HAProxy, not the socket's whole batch
    (about 1 s for 2,000 commits here), so a large first run cannot fail
    every row half-way.
    """
    count = 2000
    items = []
    for n in range(count):
        leaf = pki.leaf(f"m{n}.test")
        der = pki.response(leaf.cert, signer="issuer")
        resp = ocsp.load_der_ocsp_response(der)
        items.append(
            DeployItem(
                str(pki.write(crt_dir, f"m{n}.pem", leaf)),
                der,
                cert_id(leaf.cert, pki.intermediate.cert),
                None,
                resp.this_update_utc,
                resp.next_update_utc,
            )
        )
    hap = start_haproxy()
    started = time.monotonic()

    outcomes = await deploy(str(hap.socket), items, timeout=0.5)

    elapsed = time.monotonic() - started
    assert [o.error for o in outcomes if not o.ok] == []
    assert {o.method for o in outcomes} == {"commit"}
    assert elapsed > 0.5  # longer than the timeout, and still no HAProxyUnreachable
    for n in (0, count - 1):
        _assert_stapled(hap, f"m{n}.test", items[n])


# Names HAProxy's CLI reads specially (src/cli.c): "<<" opens a payload (at the
# end on 2.6/2.8, anywhere on their master CLI, as a word prefix on 3.0), ';'
# ends a command, a space splits words, a backslash escapes; quotes, '#' and a
# leading '@' are plain bytes to it. All are legal file names.
HOSTILE = [
    "a.pem<<", "x<<y.pem", "<<b.pem", "@at.pem", "q'uote.pem", 'd"quote.pem', "h#ash.pem",
    "sp ace.pem", "se;mi.pem", "back\\slash.pem", "ünï.pem",
]  # fmt: skip


async def test_hostile_names_reach_haproxy_as_one_argument(pki, crt_dir, start_haproxy):
    """
    Every hostile name is committed on the worker socket, then updated through `@1`.

    Each reaches HAProxy as exactly one argument: stapled, and no other
    certificate's commands swallowed by a payload mode opened by a name.
    """
    leaves = [pki.leaf(f"h{i}.test") for i in range(len(HOSTILE))]
    crts = [pki.write(crt_dir, name, leaf) for name, leaf in zip(HOSTILE, leaves, strict=True)]
    hap = start_haproxy(master=True)
    first = [
        _item(pki, leaf, crt, this_update=now() - AN_HOUR_AGO)
        for leaf, crt in zip(leaves, crts, strict=True)
    ]
    second = [_item(pki, leaf, crt) for leaf, crt in zip(leaves, crts, strict=True)]

    committed = await deploy(str(hap.socket), first)
    updated = await deploy(f"{hap.workdir / 'master.sock'}@1", second)

    assert [(o.ok, o.method, o.error) for o in committed] == [(True, "commit", None)] * len(HOSTILE)
    assert [(o.ok, o.method, o.error) for o in updated] == [(True, "update", None)] * len(HOSTILE)
    for i, item in enumerate(second):
        _assert_stapled(hap, f"h{i}.test", item)


async def test_a_name_with_a_control_character_is_refused_naming_it(pki, crt_dir, start_haproxy):
    """A tab cannot be one argument: refused, with the name in the message; HAProxy untouched."""
    leaf = pki.leaf("tab.test")
    crt = pki.write(crt_dir, "t\tab.pem", leaf)
    hap = start_haproxy()

    [outcome] = await deploy(str(hap.socket), [_item(pki, leaf, crt)])

    assert not outcome.ok
    assert "t\\tab.pem" in outcome.error
    assert "control character '\\t'" in outcome.error
    assert "no response sent" in haproxy_proc.staple(hap.port, "tab.test")


async def test_a_very_long_name(pki, crt_dir, start_haproxy):
    """A path near PATH_MAX (4,000 bytes) is committed and updated: well inside tune.bufsize."""
    deep = crt_dir.joinpath(*["d" * 200] * 19)
    deep.mkdir(parents=True)
    leaf = pki.leaf("long.test")
    crt = pki.write(deep, "long.pem", leaf)
    listing = crt_dir / "list.txt"
    listing.write_text(f"{crt}\n")
    hap = start_haproxy(crt_list=listing)
    first, second = _item(pki, leaf, crt, this_update=now() - AN_HOUR_AGO), _item(pki, leaf, crt)

    assert len(str(crt)) > 3800
    [one] = await deploy(str(hap.socket), [first])
    [two] = await deploy(str(hap.socket), [second])

    assert (one.ok, one.method, one.error) == (True, "commit", None)
    assert (two.ok, two.method, two.error) == (True, "update", None)
    _assert_stapled(hap, "long.test", second)


async def test_the_biggest_command_sent_is_one_haproxy_survives(crt_dir, start_haproxy):
    """
    The largest payload command ``encode`` lets through is answered, not fatal.

    Measured on 2.6.12 and 2.8.25: a payload command of exactly 16,384 bytes
    kills HAProxy (2.6: SIGSEGV; 2.8: the watchdog aborts a spinning applet).
    """
    hap = start_haproxy()
    address = protocol.parse_address(str(hap.socket))
    size = protocol.MAX_COMMAND_BYTES + 8
    while True:
        command = protocol.Command("set ssl cert /nowhere.pem.ocsp", "A" * size)
        try:
            data = command.encode(address)
        except Exception:  # noqa: BLE001 - too big: one byte less
            size -= 1
            continue
        break

    async with client.connect(str(hap.socket), timeout=10) as conn:
        reply = await conn.run_one(command)
        info = await conn.run_one(protocol.SHOW_INFO)

    assert len(data) == protocol.MAX_COMMAND_BYTES
    assert "certificate" in reply.text
    assert "Pid:" in info.text
    assert hap.proc.poll() is None


@pytest.mark.parametrize(
    ("selector", "expected"),
    [("", "add a worker selector such as @1"), ("@2", "the master CLI has no such worker")],
)
async def test_master_cli_without_a_usable_worker_selector(
    pki, crt_dir, start_haproxy, selector, expected
):
    """
    The master CLI alone answers worker commands with its help, ``@2`` names no worker.

    Each says what to change, not "help" text per certificate nor tune.bufsize.
    """
    leaf = pki.leaf("m.test")
    crt = pki.write(crt_dir, "m.pem", leaf)
    hap = start_haproxy(master=True)

    with pytest.raises(HAProxyUnreachable) as info:
        await deploy(f"{hap.workdir / 'master.sock'}{selector}", [_item(pki, leaf, crt)])

    assert expected in str(info.value)
    assert "bufsize" not in str(info.value)
    assert "Unknown command" not in str(info.value)


async def test_a_path_haproxy_knows_by_another_name_is_named(pki, haproxy_binary, tmp_path_factory):
    """
    HAProxy loaded ``crt crt`` relative to its directory: it names the file ``crt/rel.pem``.

    Given the absolute path (as a certbot hook does), the row names the path
    HAProxy serves, so that the operator can give that one.
    """
    workdir = tmp_path_factory.mktemp("hap")
    (workdir / "crt").mkdir()
    leaf = pki.leaf("rel.test")
    crt = pki.write(workdir / "crt", "rel.pem", leaf)
    hap = haproxy_proc.start(haproxy_binary, workdir, Path("crt"))
    try:
        [outcome] = await deploy(str(hap.socket), [_item(pki, leaf, crt)])
    finally:
        hap.stop()

    assert not outcome.ok
    assert outcome.error == (
        f"HAProxy does not serve {crt} under that name; it serves that file as crt/rel.pem: "
        "give that path"
    )
