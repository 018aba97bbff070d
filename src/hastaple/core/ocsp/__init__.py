"""The pure OCSP core: building requests and validating responses (no I/O)."""
