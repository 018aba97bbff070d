"""
Where staples are kept: the file store (atomic writes, validation index, run lock).

The file system is the embedded default and the only place HAProxy reads
from. With ``--fleet``, staples are also shared between hastaple nodes
through a Redis or Valkey server (``fleet``, ``layout``), so a fleet of
HAProxy nodes asks the CA once per certificate; nothing read from it is
trusted: every entry is validated as if a responder had sent it
(``coordinator``).
"""
