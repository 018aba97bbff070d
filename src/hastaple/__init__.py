"""hastaple keeps OCSP staples fresh in HAProxy."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hastaple")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
