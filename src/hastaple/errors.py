"""
Every expected failure of hastaple, as one tree.

    HastapleError                 every expected failure; str(exc) is one sentence
    ├─ ConfigError                bad flag, file or input -> exit 2, no traceback
    ├─ CertificateError(path)     unparsable bundle, issuer not found
    ├─ FetchError(url)            transport, timeout, HTTP status, body too large
    ├─ InvalidResponse(reason)    the validator's only exception
    ├─ StoreError(path)           the staple could not be written
    ├─ StateBusy(path)            another run held the state directory too long
    ├─ VerifyError(target)        verify: endpoint unreachable, TLS handshake failed
    └─ HAProxyError(socket)
       ├─ HAProxyUnreachable      no such socket, refused, timed out
       └─ HAProxyCommandFailed    HAProxy answered, but not with success

Anything else that escapes a module is a bug: engine/refresh.py reports it as an
"internal error" row with its traceback in the log.
"""

from __future__ import annotations

from pathlib import Path


class HastapleError(Exception):
    """Base of every failure hastaple expects; the message is for a person."""


class ConfigError(HastapleError):
    """Bad usage, configuration or input: the CLI exits 2."""


class CertificateError(HastapleError):
    """A certificate file cannot be used (unreadable, no certificate, no issuer)."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class FetchError(HastapleError):
    """The responder could not be asked or did not answer with an OCSP response."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"{url}: {problem}")


class InvalidResponse(HastapleError):  # noqa: N818 - the name says what it is, as in h11
    """The OCSP response fails a check; ``reason`` names the check."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class StoreError(HastapleError):
    """The staple could not be written; the previous file is untouched."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class StateBusy(HastapleError):  # noqa: N818 - reads as a state, like HAProxyUnreachable
    """Another run held the state directory's lock for as long as this one would wait."""

    def __init__(self, path: Path | str, holder: str, waited: float) -> None:
        self.path = Path(path)
        self.holder = holder
        self.waited = waited
        super().__init__(
            f"{self.path.parent}: in use by {holder}; gave up after waiting {waited:g} s "
            "(another hastaple run on the same state directory)"
        )


class VerifyError(HastapleError):
    """The endpoint could not be reached or the TLS handshake failed (``verify``)."""

    def __init__(self, target: str, problem: str) -> None:
        self.target = target
        self.problem = problem
        super().__init__(f"{target}: {problem}")


class HAProxyError(HastapleError):
    """Talking to an HAProxy runtime socket failed."""

    def __init__(self, socket: str, problem: str) -> None:
        self.socket = socket
        self.problem = problem
        super().__init__(f"haproxy {socket}: {problem}")


class HAProxyUnreachable(HAProxyError):  # noqa: N818 - reads as a state, like httpx's ConnectError
    """The socket does not exist, refuses connections or does not answer in time."""


class HAProxyCommandFailed(HAProxyError):  # noqa: N818 - reads as a state
    """HAProxy answered a command with something other than success."""

    def __init__(self, socket: str, command: str, reply: str) -> None:
        self.command = command
        self.reply = reply
        first = reply.strip().splitlines()[0] if reply.strip() else "an empty reply"
        super().__init__(socket, f"'{command}' failed: {first}")
