"""
Where hastaple keeps its state, and other settings shared by the commands.

The environment is passed in, never read at import (environ-config), so the
tests set it without patching.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SYSTEM_STATE_DIR = Path("/var/lib/hastaple")


def default_state_dir(environ: Mapping[str, str], *, is_root: bool | None = None) -> Path:
    """
    ``HASTAPLE_STATE_DIR``, else /var/lib/hastaple for root, else the XDG state dir.

    The state directory holds downloaded issuers and the daemon's database;
    it is never a certificate directory (HAProxy would load what we put there).
    """
    if value := environ.get("HASTAPLE_STATE_DIR"):
        return Path(value)
    if is_root if is_root is not None else os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")) / ".local" / "state")
    return Path(base).expanduser() / "hastaple"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700 (it may hold cached issuers and history)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
