"""
The blocking TLS side of ``verify``: connect, handshake with SNI and status_request.

The standard ``ssl`` module cannot ask for a staple, so the handshake uses
pyOpenSSL's OCSP client callback. Non-blocking socket and one deadline, so a
silent server costs at most ``timeout`` seconds.
"""

from __future__ import annotations

import select
import socket
import time

from OpenSSL import SSL

from hastaple.app.verify.judge import Handshake, Target
from hastaple.errors import VerifyError

TIMEOUT_SECONDS = 10.0


# The signature algorithms that make a server pick a certificate of one key family:
# HAProxy (and OpenSSL's own selection) serves the ECDSA certificate of a name to
# a client that offers ECDSA signatures, the RSA one otherwise.
_FAMILY_SIGALGS = {
    "RSA": b"rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512:"
    b"rsa_pkcs1_sha256:rsa_pkcs1_sha384:rsa_pkcs1_sha512",
    "ECDSA": b"ecdsa_secp256r1_sha256:ecdsa_secp384r1_sha384:ecdsa_secp521r1_sha512",
}
_FAMILY_CIPHERS = {"RSA": b"aRSA", "ECDSA": b"aECDSA"}
FAMILIES = tuple(_FAMILY_SIGALGS)


def handshake(
    target: Target, *, timeout: float = TIMEOUT_SECONDS, family: str | None = None
) -> Handshake:
    """
    Connect, send SNI and status_request, and return the staple and served chain.

    ``family`` ("RSA" or "ECDSA") offers only that family's signature
    algorithms, so a name served with both an RSA and an ECDSA certificate
    shows each. A bind with ``accept-proxy`` gets a PROXY protocol v1 header
    first, as a load balancer in front of it would send.

    Raises:
        VerifyError: connection refused, name not resolved, timeout or handshake failure.
    """
    deadline = time.monotonic() + timeout
    staples: list[bytes] = []

    def on_ocsp(_conn: SSL.Connection, data: bytes, _arg: object) -> bool:
        staples.append(data)
        return True  # judge() decides; the handshake must finish to get the chain

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE)  # the staple is what is checked, not the chain's trust
    ctx.set_ocsp_client_callback(on_ocsp)
    if family is not None:
        _offer_only(ctx, family)
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except UnicodeError as exc:  # IDNA refused the name (a label over 63 octets, an empty one)
        why = f"could not connect: {target.host!r} is not a host name"
        raise VerifyError(target.address, why) from exc
    except TimeoutError as exc:
        raise VerifyError(
            target.address, f"could not connect: timed out after {timeout:g} s"
        ) from exc
    except OSError as exc:
        raise VerifyError(target.address, f"could not connect: {_os_reason(exc)}") from exc
    with sock:
        if target.proxy:
            _send_proxy_header(sock, target)
        sock.setblocking(False)  # noqa: FBT003 - socket API
        conn = SSL.Connection(ctx, sock)
        if target.sni:
            try:
                conn.set_tlsext_host_name(target.sni.encode("idna"))
            except UnicodeError as exc:
                raise VerifyError(target.address, f"{target.sni!r} is not a host name") from exc
        conn.request_ocsp()
        conn.set_connect_state()
        _drive(conn, sock, deadline, target)
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        conn.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
    data = staples[-1] if staples else b""
    return Handshake(staple=data or None, chain=tuple(chain))


def _offer_only(ctx: SSL.Context, family: str) -> None:
    """Offer only ``family``'s signatures (TLS 1.2 and 1.3), else only its TLS 1.2 ciphers."""
    # pyOpenSSL has no public call for SSL_CTX_set1_sigalgs_list; its cffi binding has.
    from OpenSSL._util import lib  # noqa: PLC0415

    setter = getattr(lib, "SSL_CTX_set1_sigalgs_list", None)
    if setter is not None and setter(ctx._context, _FAMILY_SIGALGS[family]) == 1:  # noqa: SLF001
        return
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)  # TLS 1.3 suites name no key type
    ctx.set_cipher_list(_FAMILY_CIPHERS[family])


def _send_proxy_header(sock: socket.socket, target: Target) -> None:
    """
    A PROXY protocol v1 line naming this connection's own ends (what ``accept-proxy`` reads).

    Raises:
        VerifyError: the server closed the connection before it was sent.
    """
    src, dst = sock.getsockname(), sock.getpeername()
    family = "TCP6" if sock.family == socket.AF_INET6 else "TCP4"
    line = f"PROXY {family} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n"
    try:
        sock.sendall(line.encode("ascii"))
    except OSError as exc:
        why = f"could not send the PROXY header: {_os_reason(exc)}"
        raise VerifyError(target.address, why) from exc


def _drive(conn: SSL.Connection, sock: socket.socket, deadline: float, target: Target) -> None:
    """Run the non-blocking handshake to its end or the deadline."""
    while True:
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            _wait(sock, deadline, target, write=False)
        except SSL.WantWriteError:
            _wait(sock, deadline, target, write=True)
        except SSL.Error as exc:  # SysCallError too: _ssl_reason tells them apart
            why = f"TLS handshake failed: {_ssl_reason(exc)}"
            if isinstance(exc, SSL.SysCallError) and not (target.proxy or target.cert_files):
                why += _PROXY_HINT
            raise VerifyError(target.address, why) from exc
        else:
            return


_PROXY_HINT = (
    " (if this bind has accept-proxy, check it with --haproxy-config, which sends a PROXY header)"
)


def _wait(sock: socket.socket, deadline: float, target: Target, *, write: bool) -> None:
    reads, writes = ([], [sock]) if write else ([sock], [])
    readable, writable, _ = select.select(reads, writes, [], max(deadline - time.monotonic(), 0))
    if not (readable or writable):
        raise VerifyError(target.address, "TLS handshake timed out")


def _ssl_reason(exc: SSL.Error) -> str:
    if isinstance(exc, SSL.SysCallError):
        code, text = ((*exc.args, None, None))[:2]
        return "the server closed the connection" if code in (-1, 0) else f"{text} ({code})"
    details = [str(e[2]) for e in (exc.args[0] if exc.args else []) if isinstance(e, tuple)]
    return "; ".join(details) or str(exc) or type(exc).__name__


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror})"
    return (exc.strerror or str(exc)).lower()
