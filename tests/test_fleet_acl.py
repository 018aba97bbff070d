"""
The README's Redis ACL line, applied to a real redis-server: hastaple works under it.

The line is read from the README itself, so the documented permissions are
the tested ones: a command hastaple sends that the line forgot fails here.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import shlex
from pathlib import Path

import pytest

import redis_proc
from hastaple.core.ocsp import request
from hastaple.core.ocsp.validate import validate
from hastaple.engine.fetch import OCSPReply
from hastaple.stores import redis_url
from hastaple.stores.coordinator import Coordinator
from hastaple.stores.fleet import Fleet

pytestmark = pytest.mark.skipif(not redis_proc.available(), reason="redis-server not installed")
README = Path(__file__).resolve().parent.parent / "README.md"


def acl_line() -> list[str]:
    found = re.search(r"^user hastaple on .*$", README.read_text(), re.MULTILINE)
    assert found is not None, "the README lost its ACL line"
    return shlex.split(found.group(0))[1:]  # ACL SETUSER takes what follows "user"


async def test_hastaple_works_under_the_readme_acl_and_nothing_more(pki, tmp_path, caplog):
    srv = redis_proc.Redis(tmp_path / "r").start()
    try:
        srv.cli("ACL", "SETUSER", *acl_line())
        url = f"redis://hastaple:SECRET@127.0.0.1:{srv.port}/0"
        caplog.set_level(logging.WARNING)
        leaf = pki.leaf("acl.test")
        now = dt.datetime.now(dt.UTC)
        check = functools.partial(validate, cert=leaf.cert, issuer=pki.intermediate.cert, now=now)
        req = request.build(leaf.cert, pki.intermediate.cert)

        async def ca() -> OCSPReply:
            return OCSPReply(pki.response(leaf.cert), "http://ca.test/", None, 0.0)

        srv.cli("SCRIPT", "FLUSH")  # the node loads its scripts itself (SCRIPT LOAD)
        async with (
            Fleet(redis_url.parse(url), node="a") as a,
            Fleet(redis_url.parse(url.replace("/0", "/0")), node="b") as b,
        ):
            assert a.up and b.up
            first = await Coordinator(a).obtain(req, check=check, ask_ca=ca, now=now)
            second = await Coordinator(b).obtain(req, check=check, ask_ca=ca, now=now)
            assert (first.source, second.source) == ("ca", "fleet")
            assert a.stats.published == 1
            assert sorted(n for n, _ in await a.nodes_seen()) == ["a", "b"]
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert warnings == [], warnings
        # And nothing more: no FLUSHALL, no KEYS, no keys outside the prefix.
        denied = srv.cli("--user", "hastaple", "--pass", "SECRET", "FLUSHALL")
        assert "NOPERM" in denied
        assert "NOPERM" in srv.cli("--user", "hastaple", "--pass", "SECRET", "GET", "other")
    finally:
        srv.stop()
