"""
The pure core, with no I/O.

OCSP requests and CertIDs, response validation, certificates and issuers, the
refresh policy and schedule, the result model. Nothing here touches files,
sockets, subprocesses, asyncio networking, aiohttp or sqlite, and nothing here
imports from outside core/ except ``hastaple.errors``;
tests/test_architecture.py enforces both.
"""
