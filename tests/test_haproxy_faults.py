"""
HAProxy misbehaving: a clear error, a retry where it helps, never a crash or a hang.

Most faults come from ``fake_haproxy.FakeHAProxy`` (garbled, stalled, dropped,
slow, "too big"), one each; permission denied is real (an unprivileged
process against a root-owned 0600 socket, via setpriv), and "command too big"
is also shown on a real HAProxy 2.6 and 2.8 with a small ``tune.bufsize``.
The parsers are fuzzed: for any reply, a value or ``HAProxyCommandFailed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_haproxy import NOGROUP, CommandReader, FakeHAProxy, Threaded, as_nobody, words
from hastaple.core.ocsp.request import cert_id
from hastaple.errors import ConfigError, HAProxyCommandFailed, HAProxyError, HAProxyUnreachable
from hastaple.haproxy import protocol as p
from hastaple.haproxy.deploy import RETRY_DELAYS, DeployItem, Session, deploy

CRT = "/etc/haproxy/certs/site.pem"
OTHER = "/etc/haproxy/certs/other.pem"


def item(pki, leaf, crt: str = CRT, **kwargs) -> DeployItem:
    der = pki.response(leaf.cert, **kwargs)
    resp = ocsp.load_der_ocsp_response(der)
    return DeployItem(
        crt=crt,
        der=der,
        cert_id=cert_id(leaf.cert, pki.intermediate.cert),
        issuer_pem=None,
        this_update=resp.this_update_utc,
        next_update=resp.next_update_utc,
    )


@pytest.fixture(name="leaf", scope="module")
def _leaf(pki):
    return pki.leaf("site.example.test")


def fake(sock_dir: Path, pki, leaf, **kwargs) -> FakeHAProxy:
    hap = FakeHAProxy(sock_dir / "admin.sock", **kwargs)
    for crt in (CRT, OTHER):
        hap.register(crt, cert_id(leaf.cert, pki.intermediate.cert).hex())
    return hap


async def test_healthy_fake_deploys(pki, leaf, sock_dir):
    """The negative of every test below: the same fake, well-behaved, takes the staple."""
    async with fake(sock_dir, pki, leaf) as hap:
        [outcome] = await deploy(str(hap.path), [item(pki, leaf)])
    assert (outcome.ok, outcome.method, outcome.error) == (True, "update", None)


async def test_the_fake_routes_a_response_by_its_exact_cert_id(pki, leaf, sock_dir):
    """
    As HAProxy: our issuer's key hash and our serial under another issuer name is not ours.

    HAProxy looks the whole CertID up; a fake matching parts of it would
    accept what HAProxy answers with the pitfall text.
    """
    other_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Another issuer")])
    twin = (  # our serial, our issuer's key, another issuer name: another CertID
        x509.CertificateBuilder()
        .subject_name(leaf.cert.subject)
        .issuer_name(other_name)
        .public_key(leaf.cert.public_key())
        .serial_number(leaf.cert.serial_number)
        .not_valid_before(leaf.cert.not_valid_before_utc)
        .not_valid_after(leaf.cert.not_valid_after_utc)
        .sign(pki.intermediate.key, hashes.SHA256())
    )
    ours = item(pki, leaf)
    der = pki.response(twin)
    theirs = dataclasses.replace(ours, der=der)
    async with fake(sock_dir, pki, leaf) as hap:
        [outcome] = await deploy(str(hap.path), [theirs])
    assert not outcome.ok
    assert p.PITFALL in (outcome.error or "")


async def test_missing_socket(pki, leaf, sock_dir):
    """No socket file, for good: HAProxyUnreachable 'no such socket' after the short retries."""
    path = sock_dir / "gone.sock"
    started = time.monotonic()
    with pytest.raises(HAProxyUnreachable, match="no such socket") as info:
        await deploy(str(path), [item(pki, leaf)], timeout=5)
    assert str(path) in str(info.value)
    assert time.monotonic() - started < sum(RETRY_DELAYS) + 1


@pytest.mark.parametrize("gap", ["missing", "refusing"])
async def test_restarting_haproxy_is_retried(pki, leaf, sock_dir, gap):
    """
    HAProxy restarting: its socket is gone or refuses for a moment, then it is back.

    deploy retries the connection and the staple goes in (docs/haproxy.md:
    2.6's master CLI refuses connections briefly during a reload).
    """
    hap = fake(sock_dir, pki, leaf)
    if gap == "refusing":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(hap.path))  # a socket file with nobody listening

    async def come_back() -> None:
        await asyncio.sleep(0.3)
        hap.path.unlink(missing_ok=True)
        await hap.__aenter__()

    back = asyncio.create_task(come_back())
    try:
        [outcome] = await deploy(str(hap.path), [item(pki, leaf)], timeout=5)
    finally:
        await back
        await hap.__aexit__(None, None, None)
    assert outcome.ok, outcome.error
    assert hap.connections == 1


async def test_stale_socket_is_refused(pki, leaf, sock_dir):
    """A socket file nobody listens on (HAProxy died): 'connection refused' after the retries."""
    path = sock_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # bound, never listening, then closed: the file stays
    started = time.monotonic()
    with pytest.raises(HAProxyUnreachable, match="refused"):
        await deploy(str(path), [item(pki, leaf)], timeout=5)
    assert time.monotonic() - started < sum(RETRY_DELAYS) + 1


async def test_garbled_reply(pki, leaf, sock_dir):
    """Binary garbage before each prompt: every item fails with the garbage quoted, no crash."""
    async with fake(sock_dir, pki, leaf, fault="garble") as hap:
        outcomes = await deploy(str(hap.path), [item(pki, leaf), item(pki, leaf, OTHER)])
    assert [o.ok for o in outcomes] == [False, False]
    for outcome in outcomes:
        assert "'show ssl cert" in (outcome.error or "")
        assert "garbled" in (outcome.error or "")


@pytest.mark.parametrize("fault", ["garble-no-prompt", "stall"])
async def test_no_prompt_times_out(pki, leaf, sock_dir, fault):
    """Garbage and then silence, or silence only: HAProxyUnreachable within the timeout."""
    async with fake(sock_dir, pki, leaf, fault=fault) as hap:
        started = time.monotonic()
        with pytest.raises(HAProxyUnreachable, match=r"no answer within 0\.5 s"):
            await deploy(str(hap.path), [item(pki, leaf)], timeout=0.5)
        assert time.monotonic() - started < 2


async def test_slow_socket_still_succeeds(pki, leaf, sock_dir):
    """Every reply 50 ms late: slow is not broken, the staple goes in."""
    async with fake(sock_dir, pki, leaf, fault="slow", delay=0.05) as hap:
        [outcome] = await deploy(str(hap.path), [item(pki, leaf)], timeout=5)
    assert outcome.ok, outcome.error


@pytest.mark.parametrize("after", [0, 1, 2, 3])
async def test_connection_dropped_mid_batch(pki, leaf, sock_dir, after):
    """
    HAProxy restarting mid-batch (the connection drops after N commands).

    Each item still gets an outcome: ok only if HAProxy confirmed it, else an
    error saying the connection closed; never an exception, never a hang.
    """
    items = [item(pki, leaf), item(pki, leaf, OTHER)]
    async with fake(sock_dir, pki, leaf, fault="close-after", after=after) as hap:
        outcomes = await asyncio.wait_for(deploy(str(hap.path), items, timeout=5), 5)
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert not outcome.ok
        assert "closed the connection" in (outcome.error or ""), outcome.error


async def test_session_reconnects_after_haproxy_closed(pki, leaf, sock_dir):
    """
    HAProxy closes the connection during one round (a restart).

    That round's items fail, and the next round of the same run goes in over
    a new connection.
    """
    hap = fake(sock_dir, pki, leaf, fault="close-after", after=1)
    async with hap, Session(str(hap.path), timeout=5) as session:
        [lost] = await session.push([item(pki, leaf)])
        hap.fault = "none"
        [pushed] = await session.push([item(pki, leaf, OTHER)])
    assert not lost.ok
    assert "closed the connection" in (lost.error or ""), lost.error
    assert pushed.ok, pushed.error
    assert hap.connections == 2


async def test_session_resends_a_round_its_idle_connection_lost(pki, leaf, sock_dir):
    """
    HAProxy's idle timeout closes the connection just as the next round is sent.

    Nothing of that round was read, so it goes again over a new connection
    instead of failing every certificate in it.
    """
    # The first connection answers 'show info' and one certificate's three
    # commands, then hangs up on the next command it reads.
    hap = fake(sock_dir, pki, leaf, fault="close-after", after=4)
    async with hap, Session(str(hap.path), timeout=5) as session:
        [first] = await session.push([item(pki, leaf)])
        [second] = await session.push([item(pki, leaf, OTHER)])
    assert first.ok, first.error
    assert second.ok, second.error
    assert hap.connections == 2


async def test_session_resends_a_round_written_into_a_closed_idle_connection(pki, leaf, sock_dir):
    """
    HAProxy closed the idle connection while the event loop was busy (validating).

    The loop has not seen the close when the next round is written, so the
    write fails (EPIPE) instead of the reply being a close: that round, too,
    goes again over a new connection.
    """
    hap = fake(sock_dir, pki, leaf, idle_close=0.2)
    with Threaded(hap):  # the server closes on its own loop while ours is blocked
        async with Session(str(hap.path), timeout=5) as session:
            [first] = await session.push([item(pki, leaf)])
            time.sleep(0.5)  # busy: the close is in the kernel, not yet seen by the loop
            [second] = await session.push([item(pki, leaf, OTHER)])
    assert first.ok, first.error
    assert second.ok, second.error
    assert hap.connections == 2


async def test_session_gives_up_on_a_dead_socket_once(pki, leaf, sock_dir):
    """
    No socket: the first round waits out the retries and fails.

    Later rounds fail at once with the same error instead of retrying every time.
    """
    path = sock_dir / "gone.sock"
    async with Session(str(path), timeout=5) as session:
        with pytest.raises(HAProxyUnreachable, match="no such socket"):
            await session.push([item(pki, leaf)])
        async with fake(sock_dir, pki, leaf) as hap:
            hap.path.rename(path)  # the socket appears now: too late for this run
            started = time.monotonic()
            with pytest.raises(HAProxyUnreachable, match="no such socket"):
                await session.push([item(pki, leaf)])
            assert time.monotonic() - started < RETRY_DELAYS[0]
    assert hap.connections == 0


async def test_too_big_reply(pki, leaf, sock_dir):
    """HAProxy 2.8's 'command is too big' (small tune.bufsize) fails that item with the reason."""
    async with fake(sock_dir, pki, leaf, fault="too-big", bufsize=600) as hap:
        [outcome] = await deploy(str(hap.path), [item(pki, leaf)])
    assert not outcome.ok
    assert "too big for the buffer size" in (outcome.error or "")


def test_over_bufsize_is_not_sent():
    """A command over 16 KiB is refused before sending (2.6 would just hang up)."""
    with pytest.raises(HAProxyCommandFailed, match=r"tune\.bufsize"):
        p.set_ocsp_response(b"\x30" * 13_000).encode(p.parse_address("/x.sock"))


# -- permission denied, for real ---------------------------------------------------------


def _deploy_as_nobody(path: Path) -> str:
    """Connect as nobody:nogroup; say what hastaple said."""

    def attempt() -> str:
        try:
            asyncio.run(deploy(str(path), [], timeout=5))
        except HAProxyError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "connected"

    return as_nobody(attempt)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
@pytest.mark.parametrize(
    ("mode", "group", "expected"),
    [
        (0o600, 0, "HAProxyUnreachable: haproxy {sock}: permission denied"),
        (0o660, NOGROUP, "connected"),  # `stats socket ... mode 660 group nogroup`
    ],
    ids=["root-0600", "group-0660"],
)
def test_unprivileged_user_and_socket_mode(pki, leaf, sock_dir, *, mode, group, expected):
    """
    As nobody:nogroup, a root 0600 socket is 'permission denied'; a 0660 group socket works.

    The error is HAProxyUnreachable with one sentence naming the socket, never
    a traceback; the working case is the documented deployment (SECURITY.md).
    """
    sock_dir.chmod(0o755)  # traversable by nobody
    with Threaded(fake(sock_dir, pki, leaf)) as hap:
        os.chown(hap.path, 0, group)
        hap.path.chmod(mode)
        assert _deploy_as_nobody(hap.path) == expected.format(sock=hap.path)


# -- fuzzing: every parser, any reply ----------------------------------------------------

PARSERS = [
    (p.parse_set_ocsp_response, p.set_ocsp_response(b"\x30\x00")),
    (p.parse_set_cert, p.set_cert_ocsp(CRT, b"\x30\x00")),
    (p.parse_commit, p.commit_cert(CRT)),
    (p.parse_abort, p.abort_cert(CRT)),
    (p.parse_show_cert, p.show_cert(CRT)),
    (p.parse_ocsp_response, p.show_ocsp_response("00")),
    (p.parse_info, p.SHOW_INFO),
]
_LINES = st.sampled_from(
    [
        "OCSP Response updated!",
        "Success!",
        "Committing x.",
        "Filename: /x",
        "OCSP Response Key: ABCD",
        "Cert Status: good",
        "This Update: Nov 29 16:55:52 2026 GMT",
        "Next Update: Feb 30 99:99:99 2026 GMT",
        "Pid: 12",
        "Uptime_sec: -1",
        "Version: x",
        "Transaction created for certificate x!",
        "Content will be ignored",
        "+ + ",
        "> ",
        "",
    ]
)
_REPLY_TEXT = st.one_of(
    st.text(max_size=400),
    st.lists(st.one_of(_LINES, st.text(max_size=30)), max_size=12).map("\n".join),
)


@settings(max_examples=400, deadline=None)
@given(parser=st.sampled_from(PARSERS), text=_REPLY_TEXT, closed=st.booleans())
def test_fuzz_every_parser(parser, text, closed):
    """For any reply text, each parse_* returns a value or raises HAProxyCommandFailed."""
    parse, command = parser
    with contextlib.suppress(HAProxyCommandFailed):
        parse("/x.sock", command, p.Reply(text, closed=closed))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600), chunk=st.integers(1, 64))
def test_fuzz_bytes_through_reader_and_parsers(data, chunk):
    """Any bytes, cut anywhere, through ReplyReader and then every parser: no other error."""
    reader = p.ReplyReader()
    replies = []
    for at in range(0, len(data), chunk):
        reader.feed(data[at : at + chunk])
        while (reply := reader.next_reply()) is not None:
            replies.append(reply)
    reader.feed_eof()
    while (reply := reader.next_reply()) is not None:
        replies.append(reply)
        if reply.closed:
            break
    for reply in replies:
        for parse, command in PARSERS:
            with contextlib.suppress(HAProxyCommandFailed):
                parse("/x.sock", command, reply)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80))
def test_fuzz_parse_address(text):
    """Any --haproxy text is an Address or a ConfigError, never anything else."""
    try:
        address = p.parse_address(text)
    except ConfigError:
        return
    assert address.path is not None or (address.host is not None and address.port)


# Names built from what HAProxy's CLI reads specially, and from anything else.
_CLI_BYTES = [*"<;; \t\\#'\"@\n\r", "<<", "a", "/", ".pem", "é", "€"]
_NAMES = (
    st.lists(st.sampled_from(_CLI_BYTES) | st.text(max_size=3), max_size=20)
    .map("".join)
    .filter(bool)
)


@settings(max_examples=500, deadline=None)
@given(crt=_NAMES, der=st.binary(min_size=1, max_size=64), master=st.booleans())
def test_fuzz_commands_encode(crt, der, master):
    """
    Any certificate name reaches HAProxy as exactly one argument, or is refused.

    The bytes sent are read back with HAProxy's own rules (the fake's model of
    src/cli.c): exactly one command, payload mode exactly when the command has
    a payload (whichever version's or the master CLI's rule), and the words
    are the verb and the name, byte for byte. Only control characters refuse.
    """
    address = p.parse_address("/m.sock@1" if master else "/x.sock")
    prefix = [b"@1"] if master else []
    for command, name in (
        (p.show_cert(crt), crt), (p.set_cert_ocsp(crt, der), crt + ".ocsp"),
        (p.commit_cert(crt), crt), (p.abort_cert(crt), crt),
    ):  # fmt: skip
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in crt):  # C0 controls and DEL
            with pytest.raises(HAProxyCommandFailed, match="control character"):
                command.encode(address)
            continue
        data = command.encode(address)
        reader = CommandReader()
        reader.buf += data
        line, payload, used = reader.next_command() or (b"", None, 0)
        assert used == len(data), data  # one command, nothing left over to run
        assert (payload is None) == (command.payload is None), data
        verb = [w.encode() for w in command.line.split()[:3]]
        assert words(line) == [*prefix, *verb, name.encode("utf-8", "surrogateescape")], data


# -- one certificate's problem stays its own; long batches are not a timeout ---------------

BAD = "/etc/haproxy/certs/bad\tname.pem"  # a tab: refused before sending (it would split)


def bare(sock_dir: Path, pki, leaf, crts: tuple[str, ...], **kwargs) -> FakeHAProxy:
    """A fake serving ``crts`` with no OCSP entry (the pitfall): only a commit staples them."""
    hap = FakeHAProxy(sock_dir / "admin.sock", **kwargs)
    for crt in crts:
        hap.register(crt, None, commit_key=cert_id(leaf.cert, pki.intermediate.cert).hex())
    return hap


async def test_bad_name_fails_alone_on_fast_path(pki, leaf, sock_dir):
    """A name with a control character fails its own item; the good one in the batch is updated."""
    async with fake(sock_dir, pki, leaf) as hap:
        bad, good = await deploy(str(hap.path), [item(pki, leaf, BAD), item(pki, leaf)])
    assert (bad.ok, good.ok, good.method, good.error) == (False, True, "update", None)
    assert "control character" in (bad.error or "")
    # "certs/bad", not "bad": a base64 staple payload may well contain "bad".
    assert not any("certs/bad" in command for command in hap.commands)


async def test_bad_name_fails_alone_on_commit_path(pki, leaf, sock_dir):
    """The same on the transaction path: the good certificate is committed and read back."""
    async with bare(sock_dir, pki, leaf, (CRT,)) as hap:
        good, bad = await deploy(str(hap.path), [item(pki, leaf), item(pki, leaf, BAD)])
    assert (good.ok, good.method, good.error) == (True, "commit", None)
    assert not bad.ok
    assert "control character" in (bad.error or "")
    assert hap.transaction is None


async def test_transactions_follow_each_other(pki, leaf, sock_dir):
    """
    Each certificate's commit (and an abort) comes before the next one's ``set ssl cert``.

    HAProxy holds one transaction at a time, so this order is what lets the
    writes be pipelined.
    """
    async with bare(sock_dir, pki, leaf, (CRT, OTHER)) as hap:
        outcomes = await deploy(str(hap.path), [item(pki, leaf), item(pki, leaf, OTHER)])
    assert [(o.ok, o.method) for o in outcomes] == [(True, "commit"), (True, "commit")]
    txn = [c for c in hap.commands if c.startswith(("set ssl cert", "commit", "abort"))]
    assert txn == [
        f"set ssl cert {CRT}.ocsp",
        f"commit ssl cert {CRT}",
        f"abort ssl cert {CRT}",
        f"set ssl cert {OTHER}.ocsp",
        f"commit ssl cert {OTHER}",
        f"abort ssl cert {OTHER}",
    ]


async def test_failed_commit_does_not_block_the_next(pki, leaf, sock_dir):
    """
    A commit that fails and leaves its transaction open is aborted before the next certificate.

    Without that, the next ``set ssl cert`` would be refused (2.8) or filed
    into the failed certificate's transaction (2.6).
    """
    async with bare(sock_dir, pki, leaf, (CRT, OTHER), fail_commit={CRT}) as hap:
        failed, ok = await deploy(str(hap.path), [item(pki, leaf), item(pki, leaf, OTHER)])
    assert (failed.ok, failed.method) == (False, "commit")
    assert "Failed!" in (failed.error or "")
    assert (ok.ok, ok.method, ok.error) == (True, "commit", None)
    assert hap.transaction is None


async def test_cancelled_commit_leaves_no_transaction_open(pki, leaf, sock_dir):
    """
    A run stopped while a transaction is open (Ctrl-C, the daemon's SIGTERM) aborts it.

    HAProxy keeps a transaction after the connection closes, and holds one at
    a time: left open, it would refuse (2.8) or swallow (2.6) every later
    commit until someone aborted it by hand.
    """
    async with bare(sock_dir, pki, leaf, (CRT, OTHER), fault="slow", delay=0.05) as hap:
        push = asyncio.create_task(deploy(str(hap.path), [item(pki, leaf), item(pki, leaf, OTHER)]))
        while hap.transaction is None:  # the first certificate's .ocsp is in
            await asyncio.sleep(0.005)
        push.cancel()
        with pytest.raises(asyncio.CancelledError):
            await push
        assert hap.transaction is None
        assert hap.commands[-1].startswith("abort ssl cert ")


async def test_cancelling_the_clean_up_is_not_swallowed(pki, leaf, sock_dir):
    """
    A cancellation during the clean-up after a timed-out commit reaches the caller.

    The clean-up (aborts, up to 2 s) must not turn Ctrl-C or the daemon's
    stop into the timeout's HAProxyUnreachable.
    """
    async with bare(sock_dir, pki, leaf, (CRT,), stall_on="commit ssl cert") as hap:
        push = asyncio.create_task(deploy(str(hap.path), [item(pki, leaf)], timeout=0.5))
        while not any(c.startswith("commit ssl cert") for c in hap.commands):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5 + 0.3)  # the commit timed out; the clean-up is waiting
        assert not push.done()
        push.cancel()
        with pytest.raises(asyncio.CancelledError):
            await push


@pytest.mark.parametrize("merge", [False, True], ids=["2.8-refuses", "2.6-merges"])
async def test_foreign_transaction_is_not_committed(pki, leaf, sock_dir, merge):
    """
    Someone's open transaction on another certificate: our item fails and theirs is left alone.

    2.8 refuses our ``set ssl cert``; 2.6 files it into their transaction
    ("Transaction updated for certificate <theirs>!"), which must not count as
    accepted for ours: no commit is sent, and their transaction stays open.
    """
    async with bare(sock_dir, pki, leaf, (CRT,), merge_transactions=merge) as hap:
        hap.register(OTHER, None)
        hap.answer(f"set ssl cert {OTHER}.ocsp", "MAA=")  # someone else's, still open
        [outcome] = await deploy(str(hap.path), [item(pki, leaf)])
    assert (outcome.ok, outcome.method) == (False, "commit")
    assert OTHER in (outcome.error or "")
    assert f"commit ssl cert {CRT}" not in hap.commands
    assert hap.transaction is not None
    assert hap.transaction.crt == OTHER


async def test_timeout_is_per_wait_not_per_batch(pki, leaf, sock_dir):
    """
    A batch longer than ``timeout`` still succeeds while every reply comes in time.

    Each reply takes 0.1 s and the timeout is 0.3 s; the whole deploy takes
    longer than that (a one-budget timeout would fail every row).
    """
    items = [item(pki, leaf), item(pki, leaf, OTHER)]
    async with fake(sock_dir, pki, leaf, fault="slow", delay=0.1) as hap:
        started = time.monotonic()
        outcomes = await deploy(str(hap.path), items, timeout=0.3)
        elapsed = time.monotonic() - started
    assert [o.error for o in outcomes] == [None, None]
    assert elapsed > 0.3


# -- HAProxy's certificate lock (another client committing) ---------------------------------


@pytest.mark.parametrize("locked", [1, 2, 5])
async def test_the_certificate_lock_is_waited_out_on_the_fast_path(pki, leaf, sock_dir, locked):
    """'Operations on certificates are currently locked!' for a while: sent again, updated."""
    async with fake(sock_dir, pki, leaf, locked=locked) as hap:
        [outcome] = await deploy(str(hap.path), [item(pki, leaf)])
    assert (outcome.ok, outcome.method, outcome.error) == (True, "update", None)
    assert hap.locked == 0


@pytest.mark.parametrize("locked", [1, 2, 3, 6])
async def test_the_certificate_lock_is_waited_out_on_the_commit_path(pki, leaf, sock_dir, locked):
    """The lock met by a show, a set, a commit or an abort: every certificate still committed."""
    async with bare(sock_dir, pki, leaf, (CRT, OTHER), locked=locked) as hap:
        outcomes = await deploy(str(hap.path), [item(pki, leaf), item(pki, leaf, OTHER)])
    assert [(o.ok, o.method, o.error) for o in outcomes] == [(True, "commit", None)] * 2
    assert hap.transaction is None
    assert all(hap.certs[crt].der for crt in (CRT, OTHER))


async def test_a_lock_that_stays_fails_within_the_timeout(pki, leaf, sock_dir):
    """Locked for good: the item fails saying so, once the timeout is spent, not before."""
    async with fake(sock_dir, pki, leaf, locked=10**6) as hap:
        started = time.monotonic()
        [outcome] = await deploy(str(hap.path), [item(pki, leaf)], timeout=0.5)
    assert not outcome.ok
    assert "currently locked" in (outcome.error or "")
    assert 0.4 < time.monotonic() - started < 3
