"""The pipeline's promise: one certificate's failure is its own row, never the batch's."""

from __future__ import annotations

import logging

from hastaple.core.model import Action, CertEntry, Status
from hastaple.engine import pipeline
from hastaple.engine.fetch import Fetcher, OCSPReply
from hastaple.testing.pki import now
from hastaple.testing.responders import Serve


class BuggyFetcher(Fetcher):
    """The real fetcher, with a bug (not a HastapleError) for one responder URL."""

    def __init__(self, buggy_url: str) -> None:
        super().__init__()
        self.buggy_url = buggy_url

    async def ocsp(self, url: str, request_der: bytes) -> OCSPReply:
        if url == self.buggy_url:
            raise ZeroDivisionError("a bug in one exchange")
        return await super().ocsp(url, request_der)


async def test_a_failing_certificate_does_not_stop_the_run(pki, fault_responder, tmp_path, caplog):
    """
    Among five certificates, one bad file, one lying responder and one bug: the rest are fetched.

    Each failure is a row that says why (the bug as an "internal error", its
    traceback in the log); the good certificates get their staples.
    """
    good = [
        pki.leaf(f"g{i}.example.test", ocsp_url=fault_responder.url_for(f"g{i}")) for i in (0, 1)
    ]
    for i, leaf in enumerate(good):
        fault_responder.on(f"g{i}", Serve(pki.response(leaf.cert)))
    liar = pki.leaf("liar.example.test", ocsp_url=fault_responder.url_for("liar"))
    fault_responder.on("liar", Serve(b"not an OCSP response"))
    buggy = pki.leaf("bug.example.test", ocsp_url=fault_responder.url_for("bug"))
    paths = [
        pki.write(tmp_path, "g0.pem", good[0]),
        pki.write(tmp_path, "liar.pem", liar),
        pki.write(tmp_path, "bug.pem", buggy),
        tmp_path / "broken.pem",
        pki.write(tmp_path, "g1.pem", good[1]),
    ]
    paths[3].write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
    options = pipeline.Options(state_dir=tmp_path / "state")
    async with BuggyFetcher(fault_responder.url_for("bug")) as fetcher:
        rows = await pipeline.run(
            [CertEntry(str(p)) for p in paths], options, fetcher=fetcher, now=now()
        )
    by_name = {row.cert.rsplit("/", 1)[-1]: row for row in rows}
    assert [(by_name[n].status, by_name[n].action) for n in ("g0.pem", "g1.pem")] == [
        (Status.GOOD, Action.FETCHED)
    ] * 2
    assert all((tmp_path / f"g{i}.pem.ocsp").exists() for i in (0, 1))
    for name in ("liar.pem", "bug.pem", "broken.pem"):
        assert (by_name[name].status, by_name[name].action) == (Status.ERROR, Action.FAILED), name
    assert by_name["broken.pem"].bad_input
    assert by_name["bug.pem"].error == (
        "internal error: ZeroDivisionError('a bug in one exchange') (see the log)"
    )
    (logged,) = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert "bug.pem" in logged.getMessage()
