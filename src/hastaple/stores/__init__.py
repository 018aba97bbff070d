"""
Where staples are kept besides each certificate's ``<crt>.ocsp`` file.

The file system stays the embedded default and the only place HAProxy reads
from. A store here is shared between hastaple nodes (``fleet``: a Redis or
Valkey server), so a fleet of HAProxy nodes asks the CA once per certificate.
Nothing read from a shared store is trusted: every entry is validated as if a
responder had sent it (``coordinator``).
"""
