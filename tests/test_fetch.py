"""
hastaple.engine.fetch against real servers: openssl ocsp, the fault responder, a proxy.

Every failure must come out as FetchError with a sentence a person can act on;
nothing else may escape.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import socket
import ssl
import types
from collections.abc import AsyncIterator

import aiohttp
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from hastaple import __version__
from hastaple.core.ocsp import request
from hastaple.engine import fetch_errors, proxies
from hastaple.engine.fetch import Fetcher, Limits, OCSPReply
from hastaple.errors import FetchError
from hastaple.testing.responders import (
    MB,
    Cut,
    Drip,
    FaultResponder,
    Hangup,
    Huge,
    RecordingProxy,
    Redirect,
    Serve,
    Stall,
)

# Small timeouts keep the failure tests fast; nothing legitimate takes 0.5 s on loopback.
FAST = Limits(timeout=0.5, connect_timeout=0.5)


@pytest.fixture(name="leaf")
def _leaf(pki):
    return pki.leaf("fetch.example.test")


@pytest.fixture(name="request_der")
def _request_der(pki, leaf):
    return request.build(leaf.cert, pki.intermediate.cert)


@pytest.fixture(name="good_der")
def _good_der(pki, leaf):
    return pki.response(leaf.cert)


async def _fetch(url: str, der: bytes, limits: Limits = FAST) -> OCSPReply:
    async with Fetcher(limits) as fetcher:
        return await fetcher.ocsp(url, der)


async def _fetch_error(url: str, der: bytes, limits: Limits = FAST) -> FetchError:
    with pytest.raises(FetchError) as info:
        await _fetch(url, der, limits)
    return info.value


# --- a real responder: openssl ocsp -------------------------------------------------------


@pytest.mark.integration
async def test_openssl_get(openssl_responder, pki, leaf, request_der):
    """A short request goes as an RFC 5019 GET and openssl's signed answer comes back whole."""
    openssl_responder.add(leaf.cert)

    reply = await _fetch(openssl_responder.url + "/", request_der)

    assert openssl_responder.methods == ["GET"]
    resp = ocsp.load_der_ocsp_response(reply.der)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.serial_number == leaf.cert.serial_number
    assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert reply.url.startswith(openssl_responder.url + "/")
    assert reply.max_age is None  # openssl sends no Cache-Control
    assert reply.elapsed > 0


@pytest.mark.integration
async def test_openssl_post_for_long_request(openssl_responder, pki, leaf):
    """A request too long for a GET URL (RFC 5019: 255 bytes) is POSTed, and answered."""
    openssl_responder.add(leaf.cert, revoked=True)
    long_der = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(leaf.cert, pki.intermediate.cert, hashes.SHA1())  # noqa: S303
        .add_extension(x509.OCSPNonce(os.urandom(200)), critical=False)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )

    reply = await _fetch(openssl_responder.url + "/", long_der)

    assert openssl_responder.methods == ["POST"]
    assert openssl_responder.seen[0].body == long_der
    resp = ocsp.load_der_ocsp_response(reply.der)
    assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED


# --- what a good exchange looks like --------------------------------------------------------


async def test_body_returned_verbatim_with_max_age(fault_responder, request_der, good_der):
    """The DER is returned byte for byte; Cache-Control max-age becomes max_age (RFC 5019 §6.2)."""
    url = fault_responder.on(
        "ok", Serve(good_der, headers=(("Cache-Control", "public, max-age=3600, no-transform"),))
    )

    reply = await _fetch(url, request_der)

    assert reply.der == good_der
    assert reply.max_age == 3600
    seen = fault_responder.seen_under("ok")
    assert [s.method for s in seen] == ["GET"]
    assert seen[0].user_agent == f"hastaple/{__version__}"


@pytest.mark.parametrize("body", [b"garbage, not DER", b"\x30\x82\x01"], ids=["garbage", "cut"])
async def test_body_not_judged(fault_responder, request_der, body):
    """Garbage or truncated DER is the validator's business: fetch returns it as it came."""
    url = fault_responder.on("odd", Serve(body))

    assert (await _fetch(url, request_der)).der == body


async def test_keep_alive(fault_responder, request_der, good_der):
    """Two requests to one responder share one connection (keep-alive)."""
    url = fault_responder.on("ok", Serve(good_der))

    async with Fetcher(FAST) as fetcher:
        await fetcher.ocsp(url, request_der)
        await fetcher.ocsp(url, request_der)

    ports = {s.client_port for s in fault_responder.seen}
    assert len(fault_responder.seen) == 2
    assert len(ports) == 1


async def test_get_any_content_type(fault_responder):
    """get() (AIA caIssuers downloads) accepts any content type but still needs HTTP 200."""
    url = fault_responder.on("ca", Serve(b"DER CERT", content_type="application/pkix-cert"))
    missing = fault_responder.on("gone", Serve(b"", status=404, content_type="text/plain"))

    async with Fetcher(FAST) as fetcher:
        assert await fetcher.get(url + "ca.der") == b"DER CERT"
        with pytest.raises(FetchError, match="HTTP 404 from responder"):
            await fetcher.get(missing + "ca.der")


async def test_outside_context_is_a_bug():
    """Using a Fetcher without 'async with' is a programming error, not a FetchError."""
    with pytest.raises(RuntimeError, match="async with"):
        await Fetcher().get("http://127.0.0.1:9/")


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 500, 503, 429, 400, 403])
async def test_http_status(fault_responder, request_der, status):
    """Any status but 200 is a FetchError naming it."""
    url = fault_responder.on("st", Serve(b"oops", status=status, content_type="text/plain"))

    err = await _fetch_error(url, request_der)

    assert err.problem == f"HTTP {status} from responder"
    assert err.url == url


async def test_wrong_content_type(fault_responder, request_der, good_der):
    """An answer that is not application/ocsp-response (a captive portal, say) is refused."""
    url = fault_responder.on("html", Serve(good_der, content_type="text/html"))

    err = await _fetch_error(url, request_der)

    assert "content type 'text/html'" in err.problem
    assert "application/ocsp-response" in err.problem


async def test_huge_body_stops_at_cap(fault_responder, request_der):
    """A 50 MB chunked body is abandoned just past the cap: the server never sends it all."""
    huge = Huge(size=50 * MB)
    url = fault_responder.on("huge", huge)

    err = await _fetch_error(url, request_der, Limits(timeout=10))

    assert err.problem == "response larger than 65536 bytes"
    await asyncio.wait_for(huge.done.wait(), 10)
    # The client read 64 KB; what else left the server sat in socket buffers.
    assert huge.sent < 20 * MB, huge.sent


async def test_huge_declared_length_refused_at_once(fault_responder, request_der):
    """A Content-Length above the cap is refused on sight, without waiting for the body."""
    # One KB a second: reading up to the cap would hit the 0.5 s timeout instead.
    huge = Huge(size=50 * MB, chunk=1024, interval=1.0, declare_length=True)
    url = fault_responder.on("huge", huge)

    err = await _fetch_error(url, request_der)

    assert err.problem == "response larger than 65536 bytes"
    await asyncio.wait_for(huge.done.wait(), 10)
    assert huge.sent <= 2048


async def test_compressed_body_is_capped_after_decompression(fault_responder, request_der):
    """20 KB of gzip (with its Content-Length) that inflates to 20 MB is refused at the cap."""
    bomb = gzip.compress(b"\0" * (20 * MB))
    assert len(bomb) < 65536
    url = fault_responder.on("bomb", Serve(bomb, headers=(("Content-Encoding", "gzip"),)))

    err = await _fetch_error(url, request_der, Limits(timeout=10))

    assert err.problem == "response larger than 65536 bytes"


@pytest.mark.parametrize("declare_length", [True, False])
async def test_cap_boundary(fault_responder, request_der, declare_length):
    """A body of exactly max_body_bytes is fine; one byte more is not."""
    limits = Limits(timeout=5, max_body_bytes=1000)
    exact = fault_responder.on("exact", Huge(size=1000, chunk=300, declare_length=declare_length))
    over = fault_responder.on("over", Huge(size=1001, chunk=300, declare_length=declare_length))

    assert len((await _fetch(exact, request_der, limits)).der) == 1000
    err = await _fetch_error(over, request_der, limits)
    assert err.problem == "response larger than 1000 bytes"


async def test_stall_before_headers(fault_responder, request_der):
    """A responder that never answers costs at most the total timeout, then a FetchError."""
    url = fault_responder.on("stall", Stall(30))
    loop = asyncio.get_running_loop()
    started = loop.time()

    err = await _fetch_error(url, request_der)

    assert loop.time() - started < 2
    assert err.problem == "no complete answer within 0.5 s"
    assert isinstance(err.__cause__, TimeoutError)


async def test_slow_drip_body(fault_responder, request_der):
    """A body dripped a byte at a time hits the whole-exchange timeout, not a per-read one."""
    url = fault_responder.on("drip", Drip(b"\x30" * 100, chunk=1, interval=0.05))

    err = await _fetch_error(url, request_der)

    assert err.problem == "no complete answer within 0.5 s"


async def test_redirect_followed(fault_responder, request_der, good_der):
    """A redirect to another http URL is followed and the final URL reported."""
    target = fault_responder.on("new", Serve(good_der))
    url = fault_responder.on("old", Redirect(target + "moved"))

    reply = await _fetch(url, request_der)

    assert reply.der == good_der
    assert reply.url == target + "moved"


async def test_post_redirect_keeps_body(fault_responder, pki, leaf, good_der):
    """A redirected POST stays a POST with its body: the OCSP request must not be lost."""
    target = fault_responder.on("new", Serve(good_der))
    url = fault_responder.on("old", Redirect(target, status=301))
    long_der = b"\x30" + b"\x00" * 300  # long enough to be POSTed; the body is not judged

    await _fetch(url, long_der)

    assert [(s.method, s.body) for s in fault_responder.seen_under("new")] == [("POST", long_der)]


async def test_redirect_loop(fault_responder, request_der):
    """A redirect loop stops after max_redirects, having asked max_redirects + 1 times."""
    url = fault_responder.on("loop", Redirect("/loop/"))

    err = await _fetch_error(url, request_der)

    assert err.problem == "more than 3 redirects"
    assert len(fault_responder.seen) == 4


async def test_redirect_to_ftp(fault_responder, request_der):
    """A redirect to a non-http(s) scheme is refused, and retrying will not help."""
    url = fault_responder.on("ftp", Redirect("ftp://127.0.0.1/ocsp"))

    err = await _fetch_error(url, request_der)

    assert err.problem.startswith("redirected to unsupported URL scheme 'ftp'")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/ocsp", "ldap://127.0.0.1/", "file:///etc/x"])
async def test_unsupported_scheme(url, request_der):
    """Only http and https are spoken; nothing is sent for another scheme."""
    err = await _fetch_error(url, request_der)

    scheme = url.split(":", 1)[0]
    assert err.problem == f"unsupported URL scheme '{scheme}'"


@pytest.mark.parametrize("url", ["http://[::1/ocsp", "http://127.0.0.1:99999/"])
async def test_invalid_url(url, request_der):
    """A malformed responder URL is a FetchError that retrying will not fix, not a ValueError."""
    err = await _fetch_error(url, request_der)

    assert err.problem.startswith("invalid URL")


async def test_redirect_without_location(fault_responder, request_der):
    """A 3xx without a Location header is a FetchError, not a loop or a crash."""
    url = fault_responder.on("nowhere", Serve(b"", status=302, content_type="text/plain"))

    err = await _fetch_error(url, request_der)

    assert err.problem == "HTTP 302 redirect without a Location header"


async def test_redirect_to_malformed_location(fault_responder, request_der):
    """A malformed Location header is refused as an invalid URL."""
    url = fault_responder.on("bad", Redirect("http://[::1/x"))

    err = await _fetch_error(url, request_der)

    assert err.problem.startswith("invalid URL 'http://[::1/x'")


async def test_content_type_parameters_ignored(fault_responder, request_der, good_der):
    """Content-Type is compared without parameters and case (RFC 9110 §8.3.1)."""
    url = fault_responder.on(
        "ok", Serve(good_der, content_type="Application/OCSP-Response; charset=binary")
    )

    assert (await _fetch(url, request_der)).der == good_der


async def test_connection_refused(request_der):
    """Nobody listening is "cannot connect", caused by the OS error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The port is free now (nobody listens), so connecting is refused.

    err = await _fetch_error(f"http://127.0.0.1:{port}/", request_der)

    assert err.problem.startswith("cannot connect")
    assert isinstance(err.__cause__, aiohttp.ClientConnectorError)


async def test_hangup(fault_responder, request_der):
    """A responder that drops the connection without answering is a FetchError."""
    url = fault_responder.on("bye", Hangup())

    err = await _fetch_error(url, request_der)

    assert err.problem == "the responder closed the connection without answering"


async def test_https_untrusted_certificate(request_der, good_der):
    """An https responder whose certificate does not verify is refused, in OpenSSL's words."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    async with FaultResponder(ssl_context=ctx) as responder:
        url = responder.on("ok", Serve(good_der))

        err = await _fetch_error(url, request_der)

    assert err.problem == (
        "the responder's TLS certificate is not trusted: unable to get local issuer certificate"
    )
    assert isinstance(err.__cause__, aiohttp.ClientConnectorCertificateError)
    assert responder.seen == []


async def test_https_to_plain_http(fault_responder, request_der, good_der):
    """Speaking TLS to a plain-HTTP port fails as a TLS handshake error, not a crash."""
    url = fault_responder.on("ok", Serve(good_der)).replace("http://", "https://")

    err = await _fetch_error(url, request_der)

    assert err.problem == "TLS handshake failed: wrong version number"


async def test_transfer_cut_short(fault_responder, request_der):
    """A body shorter than its Content-Length (connection dropped) is a FetchError."""
    url = fault_responder.on("cut", Cut(b"\x30\x82", declared=1000))

    err = await _fetch_error(url, request_der)

    assert err.problem == "the response body was cut short or malformed"
    assert isinstance(err.__cause__, aiohttp.ClientPayloadError)


# --- limits and environment -----------------------------------------------------------------


async def test_per_host_limit(fault_responder, request_der, good_der):
    """No more than per_host requests are in flight to one responder at once."""
    url = fault_responder.on("slow", Serve(good_der, delay=0.05))

    async with Fetcher(Limits(per_host=2, timeout=5)) as fetcher:
        await asyncio.gather(*(fetcher.ocsp(url, request_der) for _ in range(8)))

    assert len(fault_responder.seen) == 8
    assert fault_responder.max_in_flight == 2


async def test_http_proxy_env(monkeypatch, fault_responder, request_der, good_der):
    """With HTTP_PROXY set, the request goes to the proxy in absolute form, not to the responder."""
    url = fault_responder.on("ok", Serve(b"direct"))
    async with RecordingProxy(good_der) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)

        reply = await _fetch(url, request_der)

    assert reply.der == good_der
    assert len(proxy.request_lines) == 1
    assert proxy.request_lines[0].startswith(f"GET {url}")
    assert fault_responder.seen == []


async def test_http_proxy_credentials_sent(monkeypatch, fault_responder, request_der, good_der):
    """HTTP_PROXY=http://user:pw@proxy: a plain-http request carries Proxy-Authorization."""
    url = fault_responder.on("ok", Serve(b"direct"))
    async with RecordingProxy(good_der) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://user:pw@"))

        reply = await _fetch(url, request_der)

    assert reply.der == good_der
    assert "Proxy-Authorization: Basic dXNlcjpwdw==" in proxy.heads[0]  # user:pw


async def test_password_only_url_with_netrc(monkeypatch, tmp_path, fault_responder, request_der):
    """http://:pw@host plus a netrc entry: a FetchError or an answer, never a ValueError."""
    netrc = tmp_path / "netrc"
    netrc.write_text("default login ocsp password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    url = fault_responder.on("ok", Serve(b"fine")).replace("http://", "http://:pw@")

    reply = await _fetch(url, request_der)

    assert reply.der == b"fine"


async def test_no_proxy_env(monkeypatch, fault_responder, request_der, good_der):
    """NO_PROXY exempts a host from HTTP_PROXY."""
    url = fault_responder.on("ok", Serve(good_der))
    async with RecordingProxy(b"via proxy") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")

        reply = await _fetch(url, request_der)

    assert reply.der == good_der
    assert proxy.request_lines == []


async def test_proxy_env_change_seen_by_a_live_fetcher(
    monkeypatch, fault_responder, request_der, good_der
):
    """A proxy set after a direct request is used by the same Fetcher's next one (daemon reload)."""
    url = fault_responder.on("ok", Serve(b"direct"))
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    async with RecordingProxy(good_der) as proxy, Fetcher(FAST) as fetcher:
        first = await fetcher.ocsp(url, request_der)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        second = await fetcher.ocsp(url, request_der)

    assert (first.der, second.der) == (b"direct", good_der)
    assert len(proxy.request_lines) == 1


@contextlib.asynccontextmanager
async def _recording_responder() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A bare HTTP server answering 'ok' that keeps every request head: (url, heads)."""
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/", heads


async def test_netrc_credentials_sent(monkeypatch, tmp_path, request_der):
    """NETRC (~/.netrc) credentials for the responder's host are sent, as with trust_env."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login ocsp password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    async with _recording_responder() as (url, heads):
        reply = await _fetch(url, request_der)

    assert reply.der == b"ok"
    assert b"\r\nAuthorization: Basic b2NzcDpzM2NyZXQ=\r\n" in heads[0]


async def test_netrc_written_later_is_used_by_a_live_fetcher(monkeypatch, tmp_path, request_der):
    """The daemon's fetcher lives for days: a netrc created meanwhile is read within a recheck."""
    monkeypatch.setattr(proxies, "NETRC_RECHECK", 0.2)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))  # not there yet

    async with _recording_responder() as (url, heads), Fetcher(FAST) as fetcher:
        await fetcher.ocsp(url, request_der)
        netrc.write_text("machine 127.0.0.1 login ocsp password s3cret\n")
        netrc.chmod(0o600)
        await asyncio.sleep(0.3)
        await fetcher.ocsp(url, request_der)

    assert b"Authorization:" not in heads[0]
    assert b"\r\nAuthorization: Basic b2NzcDpzM2NyZXQ=\r\n" in heads[1]


# --- the error mapping, type by type --------------------------------------------------------

_KEY = types.SimpleNamespace(host="ocsp.example.test", port=80, ssl=False)
_INFO = aiohttp.RequestInfo(
    URL("http://ocsp.example.test/"), "GET", CIMultiDictProxy(CIMultiDict())
)
_REFUSED = ConnectionRefusedError(111, "Connection refused")
_EXPIRED = ssl.SSLCertVerificationError(1, "certificate verify failed")
_EXPIRED.verify_message = "certificate has expired"

MAPPED = [
    (aiohttp.ConnectionTimeoutError(), "no connection within 0.5 s"),
    (aiohttp.SocketTimeoutError(), "no complete answer within 0.5 s"),
    (TimeoutError(), "no complete answer within 0.5 s"),
    (
        aiohttp.ClientConnectorDNSError(_KEY, OSError(-2, "Name or service not known")),
        "cannot resolve the host: Name or service not known",
    ),
    (
        aiohttp.ClientProxyConnectionError(_KEY, _REFUSED),
        "cannot connect to the proxy: Connection refused",
    ),
    (
        aiohttp.ClientConnectorCertificateError(_KEY, _EXPIRED),
        "the responder's TLS certificate is not trusted: certificate has expired",
    ),
    (
        aiohttp.ClientSSLError(_KEY, ssl.SSLError(1, "[SSL] handshake failure")),
        "TLS handshake failed: [SSL] handshake failure",
    ),
    (aiohttp.ClientConnectorError(_KEY, _REFUSED), "cannot connect: Connection refused"),
    (
        aiohttp.ServerDisconnectedError(),
        "the responder closed the connection without answering",
    ),
    (aiohttp.ClientPayloadError("bad chunk"), "the response body was cut short or malformed"),
    (aiohttp.ClientHttpProxyError(_INFO, (), status=407), "the proxy answered HTTP 407"),
    (aiohttp.InvalidURL("http://[::1"), "invalid URL: http://[::1"),
    (
        aiohttp.ClientResponseError(_INFO, (), status=400, message="Invalid header"),
        "malformed HTTP response: Invalid header",
    ),
    (aiohttp.ClientError("odd"), "HTTP client error: odd"),
    (OSError(101, "Network is unreachable"), "network error: Network is unreachable"),
    (
        ConnectionResetError(104, "Connection reset by peer"),
        "network error: Connection reset by peer",
    ),
]


@pytest.mark.parametrize(("exc", "problem"), MAPPED, ids=lambda v: type(v).__name__)
def test_error_mapping(exc, problem):
    """Each transport exception becomes a FetchError with a sentence, chained from the original."""
    with pytest.raises(FetchError) as info, fetch_errors.MapErrors("http://r/", FAST):
        raise exc

    assert info.value.problem == problem
    assert info.value.__cause__ is exc


def test_error_mapping_covers_every_caught_type():
    """Every type the mapping catches has a case above (httpx: test every mapped exception)."""
    tested = {type(exc) for exc, _ in MAPPED}

    assert {caught for caught, _ in fetch_errors._ERROR_MAP} <= tested


@pytest.mark.parametrize(
    "exc", [ValueError("bug"), FetchError("http://r/", "already mapped")], ids=["bug", "fetcherror"]
)
def test_error_mapping_lets_others_through(exc):
    """A FetchError passes unchanged and a bug is not disguised as a FetchError."""
    with pytest.raises(type(exc)) as info, fetch_errors.MapErrors("http://r/", FAST):
        raise exc

    assert info.value is exc
