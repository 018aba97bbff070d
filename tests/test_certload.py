"""The certificate loader's plan and reply checks, without a socket."""

from __future__ import annotations

import pytest

from hastaple.haproxy import protocol
from hastaple.haproxy.certload import (
    Add,
    CertFiles,
    Kind,
    Remove,
    Renew,
    check,
    crt_list_entries,
    plan,
    removal_refused,
)
from hastaple.haproxy.protocol import Reply
from hastaple.testing.pki import PKI

ADDR = protocol.parse_address("/run/haproxy.sock")


def _files(pki: PKI, **kw) -> CertFiles:
    leaf = pki.leaf("plan.test")
    defaults = {
        "crt": "/etc/haproxy/certs/plan.pem",
        "pem": pki.bundle(leaf),
        "serial": leaf.cert.serial_number,
        "staple": b"\x30\x03\x0a\x01\x00",
        "cert_id": b"id",
    }
    return CertFiles(**{**defaults, **kw})


def test_renewal_sends_pem_first_then_staple_in_one_transaction(pki):
    result = plan(Renew(_files(pki, issuer_pem=pki.intermediate.cert_pem)), ADDR)
    lines = [step.command.line for step in result.sets]
    assert lines == [
        "set ssl cert /etc/haproxy/certs/plan.pem",
        "set ssl cert /etc/haproxy/certs/plan.pem.issuer",
        "set ssl cert /etc/haproxy/certs/plan.pem.ocsp",
    ]
    assert result.commit is not None
    assert result.commit.command.line == "commit ssl cert /etc/haproxy/certs/plan.pem"
    assert result.after == ()
    assert all(step.command.payload and "\n\n" not in step.command.payload for step in result.sets)


def test_separate_key_file_goes_after_the_pem(pki):
    leaf = pki.leaf("key.test")
    result = plan(Renew(_files(pki, pem=leaf.cert_pem, key=leaf.key_pem)), ADDR)
    assert [s.command.line.rsplit("/", 1)[1] for s in result.sets] == [
        "plan.pem", "plan.pem.key", "plan.pem.ocsp",
    ]  # fmt: skip


def test_must_staple_without_staple_is_refused(pki):
    result = plan(Renew(_files(pki, staple=None, must_staple=True)), ADDR)
    assert result.refused is not None and "must-staple" in result.refused
    assert result.sets == () and result.commit is None


def test_without_staple_only_the_pem_when_not_must_staple(pki):
    result = plan(Renew(_files(pki, staple=None)), ADDR)
    assert result.refused is None
    assert [s.command.line for s in result.sets] == ["set ssl cert /etc/haproxy/certs/plan.pem"]


def test_pem_too_big_for_one_command_sends_the_key_alone(pki):
    leaf = pki.leaf("big.test", kind="rsa")
    room = protocol.MAX_COMMAND_BYTES - 200 - len(leaf.cert_pem)
    padding = pki.intermediate.cert_pem * (room // len(pki.intermediate.cert_pem))
    files = _files(pki, pem=leaf.cert_pem + leaf.key_pem + padding)
    assert len(files.pem) > protocol.MAX_COMMAND_BYTES  # too big with the key
    result = plan(Renew(files), ADDR)
    assert result.refused is None, result.refused
    pem_cmd, key_cmd = result.sets[0].command, result.sets[1].command
    assert "PRIVATE KEY" not in (pem_cmd.payload or "")
    assert key_cmd.line.endswith(".key") and "PRIVATE KEY" in (key_cmd.payload or "")


def test_pem_too_big_even_without_key_is_refused_before_sending(pki):
    leaf = pki.leaf("huge.test")
    files = _files(pki, pem=leaf.cert_pem + pki.intermediate.cert_pem * 40)
    result = plan(Renew(files), ADDR)
    assert result.refused is not None and "tune.bufsize" in result.refused


def test_add_to_a_directory_is_one_line(pki):
    result = plan(Add(_files(pki), "/etc/haproxy/certs"), ADDR)
    assert result.sets[0].kind is Kind.NEW
    assert result.sets[0].command.line == "new ssl cert /etc/haproxy/certs/plan.pem"
    assert [s.command.line for s in result.after] == [
        "add ssl crt-list /etc/haproxy/certs /etc/haproxy/certs/plan.pem"
    ]


def test_add_to_a_crt_list_carries_options_and_filters(pki):
    result = plan(Add(_files(pki), "/etc/haproxy/list.txt", "[alpn h2] www.test !x.test"), ADDR)
    (add,) = result.after
    assert add.command.line == "add ssl crt-list /etc/haproxy/list.txt"
    assert add.command.payload == "/etc/haproxy/certs/plan.pem [alpn h2] www.test !x.test"


def test_remove_deletes_the_entry_then_the_certificate():
    result = plan(Remove("/c/a b.pem", "/c"), ADDR)
    assert [s.command.line for s in result.after] == [
        "del ssl crt-list /c /c/a\\ b.pem",
        "del ssl cert /c/a\\ b.pem",
    ]


def test_never_the_last_entry():
    assert removal_refused("/c/a.pem", "/c", ["/c/a.pem"]) is not None
    assert removal_refused("/c/a.pem", "/c", ["/c/a.pem", "/c/b.pem"]) is None
    assert removal_refused("/c/z.pem", "/c", ["/c/a.pem"]) is None


def test_crt_list_entries():
    text = "# /l.txt\n/c/a.pem a.test\n/c/b.pem [alpn h2] b.test\n"
    assert crt_list_entries(text) == ["/c/a.pem", "/c/b.pem"]


@pytest.mark.parametrize(
    ("kind", "text", "ok"),
    [
        (Kind.SET, "Transaction created for certificate /c/a.pem!", True),
        (Kind.SET, "Transaction updated for certificate /c/other.pem!", False),
        (Kind.SET, "The ongoing transaction is about '/c/x.pem' but ...", False),
        (Kind.COMMIT, "Committing /c/a.pem.\nSuccess!", True),
        (
            Kind.COMMIT,
            "Committing /c/a.pem.\nLoading: x. Content will be ignored.\nSuccess!",
            False,
        ),
        (Kind.COMMIT, "Committing /c/a.pem.\n'x' is present ...\nFailed!", False),
        (Kind.NEW, "New empty certificate store '/c/a.pem'!", True),
        (Kind.NEW, "Certificate '/c/a.pem' already exists!", False),
        (Kind.ADD, "Inserting certificate '/c/a.pem' in crt-list '/c'.\nSuccess!", True),
        (Kind.ADD, "Can't edit the crt-list: file already exists in this directory!", False),
        (Kind.DEL_ENTRY, "Entry '/c/a.pem' deleted in crtlist '/c'!", True),
        (Kind.DEL_CERT, "Certificate '/c/a.pem' deleted!", True),
        (Kind.DEL_CERT, "Can't remove the certificate: certificate '/c/a.pem' in use", False),
    ],
)
def test_check_replies(kind, text, ok):
    step = plan(Remove("/c/a.pem", "/c"), ADDR).after[0]
    step = type(step)(step.command, kind)
    assert (check("sock", step, Reply(text), "/c/a.pem") is None) is ok


def test_closed_connection_is_a_failure():
    step = plan(Remove("/c/a.pem", "/c"), ADDR).after[1]
    assert check("sock", step, Reply("", closed=True), "/c/a.pem") is not None
