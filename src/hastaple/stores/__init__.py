"""Where staples are kept: the file store (atomic writes, validation index, run lock)."""
