"""
What a run keeps per certificate, measured: at 100,000 certificates every byte is 100 KB.

tracemalloc counts the bytes Python allocated and still holds, which is
deterministic for the same objects (no timing, no RSS): each test measures a
few thousand objects and states a bound per certificate, with room over
today's figure and well under what the objects cost before they were packed.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import tracemalloc

from hastaple.config import Config
from hastaple.daemon.scheduler import Daemon
from hastaple.daemon.state import State
from hastaple.engine.fetch import Fetcher
from hastaple.stores import index

N = 3000
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def _raw(i: int) -> dict[str, object]:
    """A realistic entry: distinct file identities (64-bit times), times, serial and CertID."""
    ns = 1_796_000_000_000_000_000 + i

    def t(hours: int) -> str:
        return (T0 + dt.timedelta(hours=hours, seconds=i)).isoformat()

    return {
        "pem": [7_000_000 + i, 2_400 + i % 7, ns, ns],
        "ocsp": [8_000_000 + i, 500 + i % 5, ns + 1, ns + 1],
        "issuer_file": None,
        "url": "http://ocsp.example.test/",
        "cert_id": "3049300906052b0e03021a05000414" + f"{i:040x}" * 2 + f"0210{i:032x}",
        "issuer_pem": None,
        "this": t(-1),
        "next": t(167),
        "produced": t(-1),
        "serial": f"{0x1000 + i:x}",
        "signer": "delegated responder CN=OCSP signer",
        "from": t(-2),
        "until": t(167),
        "must_staple": False,
    }


def test_an_index_entry_is_a_few_hundred_bytes(tmp_path):
    """
    Loaded from index.json, an entry (its name included) costs under 600 bytes.

    Today about 470 (the entry packed: about 300; its name and its slot in the
    dict). As objects (three 4-integer file identities, five datetimes, a
    Verdict) it was about 1,110: 111 MB at 100,000 certificates, the largest
    part of what a run kept.
    """
    certs = {f"/etc/haproxy/certs/site-{i:06d}.example.test.pem": _raw(i) for i in range(N)}
    doc = {"version": 2, "generation": "0123456789abcdef", "certs": certs, "revoked": {}}
    (tmp_path / index.INDEX_NAME).write_text(json.dumps(doc))
    del certs, doc
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        idx = index.Index.load(tmp_path)
        gc.collect()
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / N
    finally:
        tracemalloc.stop()
    assert len(idx) == N
    assert per_entry < 600, f"{per_entry:.0f} bytes per index entry"


def test_the_daemon_keeps_no_start_up_records_in_its_view(pki, tmp_path):
    """
    After the view is applied its records are the daemon's; the view keeps none.

    The start-up view holds a Record and a news line per certificate (about
    250 bytes); kept by the daemon's view, they stayed for its whole life.
    """
    crt = tmp_path / "crt"
    crt.mkdir()
    for i in range(3):
        pki.write(crt, f"c{i}.pem", pki.leaf(f"c{i}.test"))
    config = Config(state_dir=tmp_path / "state", paths=(crt,))
    state = State.open(config.state_dir)
    try:
        daemon = Daemon(config, fetcher=Fetcher(), state=state)
        daemon.rediscover()
        assert len(daemon.records) == 3
        assert (daemon.view.saves, daemon.view.news) == ((), ())
    finally:
        state.close()
