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

from hastaple.verify.judge import Handshake, Target, VerifyError

TIMEOUT_SECONDS = 10.0


def handshake(target: Target, *, timeout: float = TIMEOUT_SECONDS) -> Handshake:
    """
    Connect, send SNI and status_request, and return the staple and served chain.

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
            raise VerifyError(target.address, f"TLS handshake failed: {_ssl_reason(exc)}") from exc
        else:
            return


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
