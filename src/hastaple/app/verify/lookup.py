"""
The issuer of a served certificate whose chain lacks it, found the way ``fetch`` finds it.

HAProxy staples for a chainless PEM when ``<crt>.issuer`` lies next to it,
but it does not send that issuer in the handshake, so the served chain alone
cannot check the staple. When verify knows the file behind the name (from
``--haproxy-config``), ``engine.issuers.resolve_issuer`` looks exactly as fetch
does: the PEM chain, ``<crt>.issuer``, then AIA caIssuers. For a bare
``HOST:PORT`` only the served certificate's AIA URL is there to ask.
Blocking (its own event loop): called from verify's worker threads.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from hastaple.app.verify.judge import Handshake, Target
from hastaple.core import issuer as issuers
from hastaple.errors import HastapleError
from hastaple.sources import pem

if TYPE_CHECKING:
    from hastaple.engine.fetch import Limits


def find_issuer(
    target: Target, result: Handshake, *, timeout: float
) -> tuple[x509.Certificate | None, str | None]:
    """
    The issuer of the served leaf, or None and why not.

    The file behind the name is used only when it holds the very certificate
    served; a renewed file HAProxy has not loaded yet says nothing about it.
    """
    leaf = result.chain[0]
    path = next((p for p in target.cert_files if _holds(p, leaf)), None)
    bundle = pem.parse_file(path) if path is not None else None
    from hastaple.engine.fetch import Limits  # noqa: PLC0415 - aiohttp only when an issuer is missing

    limits = Limits(timeout=timeout, connect_timeout=min(timeout, Limits().connect_timeout))
    try:
        found = asyncio.run(_resolve(path, bundle, leaf, limits))
    except HastapleError as exc:
        return None, f"its issuer was not found ({exc})"
    if found is None:
        urls = issuers.ca_issuers_urls(leaf)
        where = f"nor its caIssuers URL {urls[0]}" if urls else "and it has no caIssuers URL"
        return None, f"neither the served chain holds the issuer {where}"
    return found, None


async def _resolve(
    path: Path | None, bundle: pem.Bundle | None, leaf: x509.Certificate, limits: Limits
) -> x509.Certificate | None:
    from hastaple.engine.fetch import Fetcher  # noqa: PLC0415 - see find_issuer
    from hastaple.engine.issuers import resolve_issuer  # noqa: PLC0415

    async with Fetcher(limits) as fetcher:
        if path is not None and bundle is not None:
            issuer, _pem = await resolve_issuer(path, bundle, fetcher, state_dir=None)
            return issuer
        for url in issuers.ca_issuers_urls(leaf):
            found = issuers.choose(leaf, issuers.parse_certificates(await fetcher.get(url)))
            if found is not None:
                return found
    return None


def _holds(path: Path, leaf: x509.Certificate) -> bool:
    try:
        return pem.parse_file(path).leaf == leaf
    except HastapleError:
        return False
