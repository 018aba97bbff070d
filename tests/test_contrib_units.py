"""The systemd units in contrib/ pass ``systemd-analyze verify`` (skipped where it is missing)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONTRIB = Path(__file__).parent.parent / "contrib"
UNITS = sorted([*CONTRIB.glob("*.service"), *CONTRIB.glob("*.timer")])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_units_verify_clean(tmp_path):
    # The units run /usr/bin/hastaple; verify checks that it exists, so point
    # them at this environment's script (the only change made to the copies).
    script = Path(sys.executable).parent / "hastaple"
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/usr/bin/hastaple", str(script)))
        copies.append(str(copy))
    assert len(copies) >= 3  # the daemon, the one-shot service and its timer
    run = subprocess.run(
        ["systemd-analyze", "verify", *copies], capture_output=True, text=True, check=False
    )
    # Unknown keys and bad values are only warnings (exit 0): any output is a failure.
    assert (run.returncode, run.stdout + run.stderr) == (0, "")
