"""
The sans-IO runtime API core, table-driven with the exact replies in docs/haproxy.md.

Every reply is fed as HAProxy sends it in prompt mode (payload echoes, empty
line, prompt), whole, one byte at a time, and followed by the next reply's start.
"""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hastaple.errors import ConfigError, HAProxyCommandFailed
from hastaple.haproxy import protocol as p

SOCK = "/run/haproxy.sock"
CRT = "/etc/haproxy/certs/leaf1.pem"
KEY = (
    "303b300906052b0e03021a05000414ab7bb55dc11679203a043ca2704354f1deab9d5e"
    "04149c46ab7f046d8233df673e4ebb88a3512c3aaec502021001"
)
SHOW_CERT = f"""Filename: {CRT}
Status: Used
Serial: 1001
notBefore: Nov 29 15:43:08 2026 GMT
notAfter: Nov 29 15:43:08 2027 GMT
Subject Alternative Name: DNS:leaf1.lab.test
Algorithm: RSA2048
SHA1 FingerPrint: FE7F67D0B1549B89E0A13B6E7743D80C4EB60AA1
Subject: /CN=leaf1.lab.test
Issuer: /CN=Lab Intermediate CA
Chain Subject: /CN=Lab Intermediate CA
Chain Issuer: /CN=Lab Root CA
OCSP Response Key: {KEY.upper()}
"""
SHOW_OCSP = """OCSP Response Data:
    OCSP Response Status: successful (0x0)
    Response Type: Basic OCSP Response
    Version: 1 (0x0)
    Responder Id: D459CFF5DA6A8B39E2494955313D34352B081849
    Produced At: Nov 29 16:56:52 2026 GMT
    Responses:
    Certificate ID:
      Hash Algorithm: sha1
      Issuer Name Hash: 47C7469ED7F054A323F622560DC6ED5FACEE3663
      Issuer Key Hash: 9C4BC4A8F7DFC02D3B997B828C92D4AE0B2B2383
      Serial Number: 1004
    Cert Status: good
    This Update: Nov 29 16:55:52 2026 GMT
    Next Update: Dec  6 16:55:52 2026 GMT
<SPACE>
    Signature Algorithm: ecdsa-with-SHA256
Certificate:
    Data:
        Serial Number: 4098 (0x1002)
        Validity
            Not Before: Nov 28 16:56:52 2026 GMT
        a prompt-like '> ' only ever occurs mid-line
-----END CERTIFICATE-----
""".replace("<SPACE>", " ")  # HAProxy prints a line holding one space
SHOW_INFO = "Name: HAProxy\nVersion: 2.8.25-5cf5d0683\nRelease_date: 2026/06/26\nPid: 4012\nUptime: 0d 0h00m07s\nUptime_sec: 7\n"  # noqa: E501
PITFALL = "OCSP single response: Certificate ID does not match any certificate or issuer."
TOO_BIG = (
    "The command is too big for the buffer size. Please change tune.bufsize in the "
    "configuration to use a bigger command."
)
UTC = dt.UTC

SET = p.set_ocsp_response(b"\x30\x03\x0a\x01\x00")
SET_CERT = p.set_cert_ocsp(CRT, b"\x30\x03\x0a\x01\x00")
COMMIT = p.commit_cert(CRT)

# (parser, command, reply text as HAProxy sends it before the prompt, expected value)
OK_CASES = [
    (p.parse_set_ocsp_response, SET, "OCSP Response updated!\n", None),
    (p.parse_set_ocsp_response, SET, "+ + + + OCSP Response updated!\n", None),
    (p.parse_set_cert, SET_CERT, f"+ + Transaction created for certificate {CRT}!\n", None),
    (p.parse_set_cert, SET_CERT, f"+ + Transaction updated for certificate {CRT}!\n", None),
    (p.parse_commit, COMMIT, f"Committing {CRT}.\nSuccess!\n", None),
    (p.parse_commit, COMMIT, f"Committing {CRT}\nSuccess!\n", None),
    (p.parse_abort, p.abort_cert(CRT), f"Transaction aborted for certificate '{CRT}'!\n", True),
    (p.parse_abort, p.abort_cert(CRT), "No ongoing transaction!\n", False),
    (p.parse_show_cert, p.show_cert(CRT), SHOW_CERT, p.CertInfo(CRT, "1001", KEY)),
    (
        p.parse_show_cert,
        p.show_cert(CRT),
        SHOW_CERT.replace(KEY.upper(), ""),
        p.CertInfo(CRT, "1001", None),
    ),
    (
        p.parse_show_cert,
        p.show_cert(CRT),
        "Can't display the certificate: Not found or the certificate is a bundle!\n",
        None,
    ),
    (
        p.parse_ocsp_response,
        p.show_ocsp_response(KEY),
        SHOW_OCSP,
        p.Served(
            "good",
            dt.datetime(2026, 11, 29, 16, 55, 52, tzinfo=UTC),
            dt.datetime(2026, 12, 6, 16, 55, 52, tzinfo=UTC),
            "1004",
        ),
    ),
    (p.parse_info, p.SHOW_INFO, SHOW_INFO, p.Info(4012, 7, "2.8.25-5cf5d0683")),
]

# (parser, command, reply text, words the error must contain)
ERROR_CASES = [
    (p.parse_set_ocsp_response, SET, f"+ + {PITFALL}\n", PITFALL),
    (p.parse_set_ocsp_response, SET, f"{TOO_BIG}\n", "too big"),
    (
        p.parse_set_ocsp_response,
        SET,
        "OCSP single response: certificate status is unknown.\n",
        "unknown",
    ),
    (p.parse_set_ocsp_response, SET, "OCSP single response: missing nextupdate.\n", "nextupdate"),
    (
        p.parse_set_ocsp_response,
        SET,
        "'set ssl ocsp-response' received invalid base64 encoded response.\n",
        "invalid base64",
    ),
    (
        p.parse_set_cert,
        SET_CERT,
        "'set ssl cert expects a filename and a certificate as a payload\n",
        "expects a filename",
    ),
    (
        p.parse_set_cert,
        SET_CERT,
        f"The ongoing transaction is about '/x.pem' but you are trying to set '{CRT}'\n",
        "ongoing transaction",
    ),
    (p.parse_set_cert, SET_CERT, "Permission denied\n", "Permission denied"),
    (
        p.parse_commit,
        COMMIT,
        (
            f"Committing {CRT}.\n '{CRT}.ocsp' is present and activates OCSP but it is impossible "
            "to compute the OCSP certificate ID (maybe the issuer could not be found)'.\nFailed!\n"
        ),
        "impossible to compute the OCSP certificate ID",
    ),
    (
        p.parse_commit,
        COMMIT,
        (
            f"Committing {CRT}.\nLoading: OCSP single response: certificate status is unknown. "
            "Content will be ignored.\nSuccess!\n"
        ),
        "Content will be ignored",
    ),
    (p.parse_commit, COMMIT, "No ongoing transaction!\n", "No ongoing transaction"),
    (
        p.parse_abort,
        p.abort_cert(CRT),
        (
            f"The ongoing transaction is about '/x.pem' but you are trying to abort a "
            f"transaction for '{CRT}'\n"
        ),
        "ongoing transaction is about",
    ),
    (p.parse_show_cert, p.show_cert(CRT), "Can't allocate memory!\n", "allocate memory"),
    (
        p.parse_ocsp_response,
        p.show_ocsp_response(KEY),
        "Certificate ID does not match any certificate.\n",
        "does not match",
    ),
    (
        p.parse_ocsp_response,
        p.show_ocsp_response(KEY),
        "Certificate ID or path does not match any certificate.\n",
        "does not match",
    ),
    (p.parse_info, p.SHOW_INFO, "Unknown command: 'show infoo'\n", "Unknown command"),
]


def _ids(cases: list) -> list[str]:
    return [f"{case[0].__name__}-{n}" for n, case in enumerate(cases)]


def _stream(text: str, prompt: str = "> ") -> bytes:
    """A reply as it goes over the wire in prompt mode: body, empty line, prompt."""
    return (text + "\n" + prompt).encode()


def _replies(data: bytes, *, chunk: int | None = None, eof: bool = False) -> list[p.Reply]:
    reader = p.ReplyReader()
    out: list[p.Reply] = []
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(len(data))]
    for piece in pieces:
        reader.feed(piece)
        while (reply := reader.next_reply()) is not None:
            out.append(reply)
    if eof:
        reader.feed_eof()
        while (reply := reader.next_reply()) is not None:
            out.append(reply)
            if reply.closed:
                break
    return out


FEEDS = {
    "whole": _replies,
    "bytewise": lambda d: _replies(d, chunk=1),
    "trailing": lambda d: _replies(d + b"Name: HAPro")[:1],
}


@pytest.mark.parametrize("feed", FEEDS.values(), ids=FEEDS.keys())
@pytest.mark.parametrize(("parse", "command", "text", "expected"), OK_CASES, ids=_ids(OK_CASES))
def test_success_replies(feed, parse, command, text, expected):
    """Each success reply parses to its value however the bytes arrive."""
    [reply] = feed(_stream(text))
    assert parse(SOCK, command, reply) == expected


@pytest.mark.parametrize("feed", FEEDS.values(), ids=FEEDS.keys())
@pytest.mark.parametrize(("parse", "command", "text", "words"), ERROR_CASES, ids=_ids(ERROR_CASES))
def test_error_replies(feed, parse, command, text, words):
    """Each error reply raises HAProxyCommandFailed naming socket, command and reason."""
    [reply] = feed(_stream(text))
    with pytest.raises(HAProxyCommandFailed) as info:
        parse(SOCK, command, reply)
    assert words in str(info.value)
    assert SOCK in str(info.value)
    assert info.value.command == str(command)
    assert "\n" not in str(info.value)


def test_empty_reply_on_close_is_an_error():
    """2.6 closes without a reply when a command is too big: an error naming tune.bufsize."""
    [reply] = _replies(b"", eof=True)
    assert reply == p.Reply("", closed=True)
    with pytest.raises(HAProxyCommandFailed, match=r"closed the connection.*tune\.bufsize"):
        p.parse_set_ocsp_response(SOCK, SET, reply)


def test_truncated_reply_is_an_error_even_if_it_looks_fine():
    """A reply cut by EOF before the prompt is never taken as success."""
    [reply] = _replies(b"OCSP Response updated!\n", eof=True)
    assert reply.closed
    with pytest.raises(HAProxyCommandFailed):
        p.parse_set_ocsp_response(SOCK, SET, reply)


@pytest.mark.parametrize("chunk", [None, 1])
def test_pipelined_replies_split_in_order(chunk):
    """The first prompt (after `prompt`) and several replies split exactly, master or worker."""
    for prompt in ("> ", "master> "):
        first = b"\n> " if prompt == "> " else b"master> "
        data = first + _stream("+ + OCSP Response updated!", prompt) + _stream(SHOW_INFO, prompt)
        replies = _replies(data, chunk=chunk)
        assert [r.text for r in replies] == ["", "OCSP Response updated!", SHOW_INFO.rstrip()]


def test_nothing_before_the_prompt_arrives():
    """A reply is not complete until its prompt has arrived in full."""
    reader = p.ReplyReader()
    reader.feed(b"OCSP Response updated!\n\n>")
    assert reader.next_reply() is None
    reader.feed(b" ")
    assert reader.next_reply() == p.Reply("OCSP Response updated!", prompt=">")
    assert reader.next_reply() is None


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=20))
def test_reader_never_loses_or_invents_bytes(data, chunk):
    """For any bytes, the reader returns replies or None, never raises, and ends on EOF."""
    replies = _replies(data, chunk=chunk, eof=True)
    assert replies
    assert replies[-1].closed
    assert sum(r.closed for r in replies) == 1


ADDRESSES = [
    ("/run/haproxy.sock", p.Address("/run/haproxy.sock", path="/run/haproxy.sock")),
    ("unix@/run/h.sock", p.Address("unix@/run/h.sock", path="/run/h.sock")),
    ("haproxy.sock", p.Address("haproxy.sock", path="haproxy.sock")),
    ("127.0.0.1:9999", p.Address("127.0.0.1:9999", host="127.0.0.1", port=9999)),
    ("ipv4@127.0.0.1:9999", p.Address("ipv4@127.0.0.1:9999", host="127.0.0.1", port=9999)),
    ("ipv6@[::1]:9999", p.Address("ipv6@[::1]:9999", host="::1", port=9999)),
    ("localhost:80", p.Address("localhost:80", host="localhost", port=80)),
    (
        "/run/haproxy-master.sock@1",
        p.Address("/run/haproxy-master.sock@1", path="/run/haproxy-master.sock", prefix="@1 "),
    ),
    ("unix@/m.sock@!4242", p.Address("unix@/m.sock@!4242", path="/m.sock", prefix="@!4242 ")),
    ("127.0.0.1:9999@1", p.Address("127.0.0.1:9999@1", host="127.0.0.1", port=9999, prefix="@1 ")),
    ("/odd/a:b.sock", p.Address("/odd/a:b.sock", path="/odd/a:b.sock")),
    # abns@ is bound over the whole sun_path (108 bytes), abnsz@ (3.1) over the name alone
    ("abns@hap", p.Address("abns@hap", path="\0hap" + "\0" * 104)),
    ("abnsz@hap", p.Address("abnsz@hap", path="\0hap")),
    ("abns@hap@1", p.Address("abns@hap@1", path="\0hap" + "\0" * 104, prefix="@1 ")),
]


@pytest.mark.parametrize(("text", "address"), ADDRESSES)
def test_parse_address(text, address):
    """Unix paths, host:port and HAProxy's unix@/ipv4@ forms, with a master worker suffix."""
    assert p.parse_address(text) == address


@pytest.mark.parametrize(
    "text",
    [
        *("", "unix@", "ipv4@/run/x.sock", "127.0.0.1:0", "h:99999", "a:b"),
        *("abns@", "abns@" + "x" * 108),
    ],
)
def test_bad_address(text):
    """Text that is no address is a ConfigError quoting it."""
    with pytest.raises(ConfigError, match="HAProxy socket"):
        p.parse_address(text)


def test_commands_encode_as_haproxy_expects():
    """One-line and `<<` payload forms; payload ends with an empty line; worker prefix."""
    der = bytes(range(256)) * 2
    b64 = base64.b64encode(der).decode()
    worker = p.parse_address("/m.sock@1")
    plain = p.parse_address("/w.sock")
    assert p.set_ocsp_response(der).encode(plain) == f"set ssl ocsp-response {b64}\n".encode()
    payload = p.set_cert_ocsp(CRT, der).encode(worker).decode()
    lines = payload.split("\n")
    assert lines[0] == f"@1 set ssl cert {CRT}.ocsp <<"
    assert "".join(lines[1:-2]) == b64
    assert all(len(line) <= 64 for line in lines[1:-2])
    assert lines[-2:] == ["", ""]
    assert p.PROMPT.encode(worker) == b"prompt\n"
    assert p.commit_cert(CRT).encode(worker) == f"@1 commit ssl cert {CRT}\n".encode()


def test_issuer_payload_has_no_empty_line():
    """An empty line would end the payload early, so the PEM's blank lines are dropped."""
    pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n\n-----END CERTIFICATE-----\n\n"
    data = p.set_cert_issuer(CRT, pem).encode(p.parse_address(SOCK))
    assert data.endswith(b"AAAA\n-----END CERTIFICATE-----\n\n")
    assert data.count(b"\n\n") == 1


@pytest.mark.parametrize("payload", [True, False])
def test_command_over_bufsize_is_refused_before_sending(payload):
    """DER of 12.3 KB (16,440 base64 chars, docs/haproxy.md) does not fit; 11.5 KB does."""
    address = p.parse_address(SOCK)
    assert (
        len(p.set_ocsp_response(b"x" * 11561, payload=payload).encode(address))
        <= p.MAX_COMMAND_BYTES
    )
    with pytest.raises(HAProxyCommandFailed, match=r"not sent.*tune\.bufsize") as info:
        p.set_ocsp_response(b"x" * 12329, payload=payload).encode(address)
    assert info.value.socket == SOCK


@pytest.mark.parametrize(
    ("version", "expected"),
    [("2.8.25-5cf5d0683", True), ("3.0.1", True), ("2.6.12-1+deb12u4", False), ("2.7.0", False),
     ("", False)],
)  # fmt: skip
def test_shows_der_from_version(version, expected):
    """Only 2.8 and later get the base64 read-back; 2.6 does not know it, 2.7 was not measured."""
    assert p.shows_der(version) is expected


def test_parse_ocsp_response_der():
    """The base64 read-back decodes to the exact bytes; 2.6's refusal text is a failure."""
    cmd = p.show_ocsp_response_der("30aa")
    assert cmd.line == "show ssl ocsp-response base64 30aa"
    assert p.parse_ocsp_response_der("s", cmd, p.Reply("MIIB\n")) == b"0\x82\x01"
    with pytest.raises(HAProxyCommandFailed, match="does not match"):
        p.parse_ocsp_response_der(
            "s", cmd, p.Reply("Certificate ID does not match any certificate.")
        )


def test_reply_knows_its_prompt():
    """A reply says whether a worker (``>``) or a master CLI (``master>``) ended it."""
    reader = p.ReplyReader()
    reader.feed(b"\nmaster> Unknown command, but maybe...\n\nmaster> Pid: 7\n> ")
    replies = [reader.next_reply() for _ in range(3)]
    assert [(r.text, r.on_master) for r in replies if r] == [
        ("", True), ("Unknown command, but maybe...", True), ("Pid: 7", False),
    ]  # fmt: skip
    assert p.master_refusal(replies[1]) == p.MASTER_WITHOUT_WORKER
    assert "no such worker" in (
        p.master_refusal(p.Reply("Can't find the target PID matching the prefix '@2'")) or ""
    )


# -- real replies, version by version -------------------------------------------------------

STORE = "@web/a"  # 3.0: a crt-store certificate's name
B64 = base64.b64encode(b"\x30\x03\x0a\x01\x00").decode()
LOCKED = "Operations on certificates are currently locked!"
# (version, parser, command, reply text before the prompt, prompt, value or the error's words)
VERSIONED = [
    ("2.6", p.parse_set_ocsp_response, SET, "OCSP Response updated!\n", "> ", None),
    ("2.6", p.parse_set_ocsp_response, SET, f"+ + {PITFALL}\n", "> ", PITFALL),
    ("2.6", p.parse_commit, COMMIT, f"Committing {CRT}.\nSuccess!\n", "> ", None),
    ("2.6", p.parse_ocsp_response_der, p.show_ocsp_response_der(KEY),
     "Certificate ID does not match any certificate.\n", "> ", "does not match"),
    ("2.6", p.parse_info, p.SHOW_INFO, "Can't find the target PID matching the prefix '@2'\n",
     "master> ", "no such worker"),
    ("2.8", p.parse_set_cert, SET_CERT, f"+ + + Transaction created for certificate {CRT}!\n",
     "> ", None),
    ("2.8", p.parse_commit, COMMIT,
     (f"Committing {CRT}.\nLoading: Unable to parse OCSP response. Content will be ignored.\n"
      "Success!\n"), "> ", "Content will be ignored"),
    ("2.8", p.parse_ocsp_response_der, p.show_ocsp_response_der(KEY), f"{B64}\n", "> ",
     b"\x30\x03\x0a\x01\x00"),
    ("2.8", p.parse_ocsp_response_der, p.show_ocsp_response_der(KEY),
     "Certificate ID or path does not match any certificate.\n", "> ", "does not match"),
    ("2.8", p.parse_info, p.SHOW_INFO,
     ("Unknown command: 'show', but maybe one of the following ones is a better match:\n"
      "  show proc                               : show processes status\n"), "master> ",
     "add a worker selector such as @1"),
    ("2.8", p.parse_info, p.SHOW_INFO, SHOW_INFO + "node: lb1\n", "master> ",
     p.Info(4012, 7, "2.8.25-5cf5d0683", "lb1")),
    ("3.0", p.parse_set_cert, p.set_cert_ocsp(STORE, b"0"),
     f"+ Transaction created for certificate {STORE}!\n", "> ", None),
    ("3.0", p.parse_commit, p.commit_cert(STORE), f"Committing {STORE}.\nSuccess!\n", "> ", None),
    ("3.0", p.parse_show_cert, p.show_cert(STORE), SHOW_CERT.replace(CRT, STORE), "> ",
     p.CertInfo(STORE, "1001", KEY)),
    ("3.0", p.parse_show_cert, p.show_cert(CRT), f"Can't show!\n{LOCKED}\n", "> ", LOCKED),
    ("3.0", p.parse_set_cert, SET_CERT, f"+ + Can't update the certificate!\n{LOCKED}\n", "> ",
     LOCKED),
    ("3.0", p.parse_commit, COMMIT, f"Can't commit the certificate!\n{LOCKED}\n", "> ", LOCKED),
    ("3.0", p.parse_abort, p.abort_cert(CRT), f"Can't abort!\n{LOCKED}\n", "> ", LOCKED),
]  # fmt: skip


@pytest.mark.parametrize("feed", FEEDS.values(), ids=FEEDS.keys())
@pytest.mark.parametrize(
    ("version", "parse", "command", "text", "prompt", "expected"),
    VERSIONED,
    ids=[f"{case[0]}-{case[1].__name__}-{n}" for n, case in enumerate(VERSIONED)],
)
def test_real_replies_of_each_version(feed, version, parse, command, text, prompt, expected):  # noqa: PLR0917 - the table's columns
    """
    HAProxy 2.6, 2.8 and 3.0 replies as measured, fed whole, byte by byte, and with more behind.

    The lock reply of any version is recognised (and retried by deploy).
    """
    [reply] = feed(_stream(text, prompt))
    assert p.locked(reply) is (LOCKED in text)
    if isinstance(expected, str):
        with pytest.raises(HAProxyCommandFailed) as info:
            parse(SOCK, command, reply)
        assert expected in str(info.value)
        assert "\n" not in str(info.value)
    else:
        assert parse(SOCK, command, reply) == expected
