"""
HAProxy's runtime API as bytes in and values out: no sockets (sans-IO, like h11).

Theory of operation (docs/haproxy.md). The client opens one connection
and sends ``prompt`` first: in prompt mode HAProxy keeps the connection open and
ends every reply with a prompt at the start of a line (``> `` on a worker
socket, ``master> `` on the master CLI), so replies can be split exactly and
commands pipelined, whatever their size. Non-interactive mode ends replies
with an empty line, which the OCSP text dump can also contain, and closes the
connection as soon as its input buffer is empty, so it is not used.

In payload mode (``<<``) HAProxy echoes ``+ `` for every payload line before
the reply: ``ReplyReader`` strips these. A command longer than tune.bufsize
gets "The command is too big ..." on 2.8 and a silently closed connection on
2.6; ``Command`` refuses such commands before they are sent.

Every ``parse_*`` function takes a ``Reply`` and returns a value, or raises
``HAProxyCommandFailed``; anything else is a bug.
"""

from hastaple.haproxy.protocol.commands import (
    MAX_COMMAND_BYTES,
    PAYLOAD_LINE_CHARS,
    PROMPT,
    SHOW_CERTS,
    SHOW_INFO,
    Address,
    Command,
    abort_cert,
    commit_cert,
    escape_arg,
    parse_address,
    set_cert_issuer,
    set_cert_ocsp,
    set_ocsp_response,
    show_cert,
    show_ocsp_response,
    show_ocsp_response_der,
    shows_der,
)
from hastaple.haproxy.protocol.replies import (
    LOCKED,
    MASTER_WITHOUT_WORKER,
    PITFALL,
    CertInfo,
    Info,
    Reply,
    ReplyReader,
    Served,
    command_failed,
    locked,
    master_refusal,
    parse_abort,
    parse_cert_names,
    parse_commit,
    parse_info,
    parse_ocsp_response,
    parse_ocsp_response_der,
    parse_set_cert,
    parse_set_ocsp_response,
    parse_show_cert,
)

__all__ = [
    "LOCKED",
    "MASTER_WITHOUT_WORKER",
    "MAX_COMMAND_BYTES",
    "PAYLOAD_LINE_CHARS",
    "PITFALL",
    "PROMPT",
    "SHOW_CERTS",
    "SHOW_INFO",
    "Address",
    "CertInfo",
    "Command",
    "Info",
    "Reply",
    "ReplyReader",
    "Served",
    "abort_cert",
    "command_failed",
    "commit_cert",
    "escape_arg",
    "locked",
    "master_refusal",
    "parse_abort",
    "parse_address",
    "parse_cert_names",
    "parse_commit",
    "parse_info",
    "parse_ocsp_response",
    "parse_ocsp_response_der",
    "parse_set_cert",
    "parse_set_ocsp_response",
    "parse_show_cert",
    "set_cert_issuer",
    "set_cert_ocsp",
    "set_ocsp_response",
    "show_cert",
    "show_ocsp_response",
    "show_ocsp_response_der",
    "shows_der",
]
