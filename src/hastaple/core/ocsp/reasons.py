"""
How a rejected response is worded: one line, times in UTC, and what decoding can raise.

Pure. Shared by ``validate`` and ``signer`` (and ``verify``, which words its
reasons the same way). Must not judge anything.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

# What decoding untrusted DER can raise in cryptography, besides our own reasons
# (public: verify reads served certificates with the same net).
UNREADABLE = (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension)


def one_line(exc: BaseException) -> str:  # public: verify words its reasons the same way
    """An exception's message on one line, short enough for a log line or a table cell."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."  # noqa: PLR2004


def fmt(when: dt.datetime) -> str:
    """A time as reasons print it: ``2026-12-01 12:00:00Z``."""
    return when.strftime("%Y-%m-%d %H:%M:%SZ")


def oid_in(exc: Exception) -> str:
    """The dotted OID cryptography names in an UnsupportedAlgorithm message, else 'unknown'."""
    words = [w for w in str(exc).replace(":", " ").split() if w.count(".") >= 2]  # noqa: PLR2004
    return words[0] if words else "unknown"
