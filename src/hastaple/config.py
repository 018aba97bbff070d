"""
Where hastaple keeps its state, and the daemon's configuration.

One table of keys (``FIELDS``) serves all three sources, so none can drift:
a TOML file (``[refresh]`` keys flatten to ``refresh_<key>``), a
``HASTAPLE_<KEY>`` environment variable, and a ``--<key>`` flag. Precedence:
flag over environment over file over default. The environment is passed in,
never read at import (environ-config), so the tests set it without patching.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hastaple.core.schedule import DEFAULT_POLICY, Policy
from hastaple.errors import ConfigError

# Seconds for one whole exchange with a responder (``fetch --timeout``, the daemon).
FETCH_TIMEOUT = 15.0
# Seconds a run waits for another one on the same state directory (``fetch --wait``,
# the daemon's batches): a daemon batch over 10,000 certificates takes well under this.
LOCK_WAIT = 120.0
# Connections to one responder host at once (``--responder-connections``): a
# certificate costs about one round trip, so N certificates take about
# N x RTT / connections. 8 keeps a CA 50 ms away at 160 requests a second,
# 8x a one-at-a-time updater, while staying near what one browser opens
# to one host (6); see the README.
RESPONDER_CONNECTIONS = 8
# More connections than certificates in flight (pipeline.MAX_IN_FLIGHT) would
# never be used: the range a configuration may ask for.
RESPONDER_CONNECTIONS_RANGE = (1, 256)

# Fleet mode (``--fleet``): the key prefix, so several fleets can share one
# Redis, and how long one node may fetch a staple for all before another may:
# two fetch timeouts, so a live holder keeps it and a dead one frees it soon.
FLEET_PREFIX = "hastaple:"
FLEET_LEASE = dt.timedelta(seconds=2 * FETCH_TIMEOUT)

SYSTEM_STATE_DIR = Path("/var/lib/hastaple")
# How long a runtime socket may be down or refuse staples before /healthz fails.
HAPROXY_GRACE = dt.timedelta(minutes=2)
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9877"
LOG_FORMATS = ("keyvalue", "json")
# Longer is a typo, not a policy: "now + interval" must stay a datetime (year <= 9999).
MAX_DURATION = dt.timedelta(days=3650)


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


@dataclass(frozen=True, slots=True)
class Field:
    """One configuration key: its kind decides how text from env or flags is parsed."""

    name: str
    kind: str  # paths | strings | path | string | int | float | duration | mapping | bool
    help: str

    @property
    def env(self) -> str:
        """The environment variable, e.g. ``HASTAPLE_REFRESH_JITTER``."""
        return "HASTAPLE_" + self.name.upper()

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--refresh-jitter``."""
        return "--" + self.name.replace("_", "-")


_POLICY_HELP = {
    "jitter": "share of the validity window added at random after the half-life point",
    "retry_room": "the latest refresh leaves this long before nextUpdate",
    "interval": "refresh period without nextUpdate; re-check period without OCSP URL",
    "min_interval": "a Cache-Control max-age never brings a fetch closer than this",
    "backoff_base": "first wait after a failure",
    "backoff_cap": "longest wait after failures",
    "alert_before": "warn and fail /healthz when a staple expires within this",
    "must_staple_alert_before": "the same for a must-staple certificate (earlier)",
    "spread": "missing staples are fetched within this (10 ms a certificate), spread out",
}

FIELDS: tuple[Field, ...] = (
    Field("paths", "paths", "certificate files or directories"),
    Field("crt_lists", "paths", "crt-list files"),
    Field("haproxy_config", "paths", "haproxy.cfg: its bind lines and admin stats sockets"),
    Field("haproxy", "strings", "runtime sockets: unix path, host:port or master.sock@1"),
    Field("state_dir", "path", "directory for the state database and cached issuers"),
    Field("metrics_address", "string", "host:port for /metrics and /healthz ('off' disables)"),
    Field("proxy", "string", "HTTP proxy for responders (else HTTP(S)_PROXY)"),
    Field("responder_overrides", "mapping", "OCSP URL replacements, 'from=to,...'"),
    Field("log_format", "string", "log lines as 'keyvalue' or 'json'"),
    Field("haproxy_poll", "duration", "how often HAProxy is checked for restarts"),
    Field(
        "haproxy_grace", "duration",
        "/healthz fails once a runtime socket is down or refuses staples this long",
    ),
    Field("responder_connections", "int", "connections to one OCSP responder host at once"),
    Field("fleet", "string", "Redis/Valkey URL the HAProxy nodes share staples through"),
    Field("fleet_prefix", "string", "key prefix in that Redis, so several fleets can share it"),
    Field("fleet_lease", "duration", "one node fetches a staple for the fleet at most this long"),
    Field(
        "hot_certs", "bool",
        "load renewed, new and removed certificate files into HAProxy as a reload would",
    ),
    *(Field("refresh_" + key, "float" if key == "jitter" else "duration", text)
      for key, text in _POLICY_HELP.items()),
)  # fmt: skip
_BY_NAME = {f.name: f for f in FIELDS}


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``hastaple run`` needs; build it with ``load``."""

    state_dir: Path
    paths: tuple[Path, ...] = ()
    crt_lists: tuple[Path, ...] = ()
    haproxy_configs: tuple[Path, ...] = ()
    sockets: tuple[str, ...] = ()
    metrics_address: str | None = DEFAULT_METRICS_ADDRESS
    proxy: str | None = None
    responder_overrides: tuple[tuple[str, str], ...] = ()
    log_format: str = "keyvalue"
    haproxy_poll: dt.timedelta = dt.timedelta(seconds=2)
    # Longer than a restart of a large HAProxy plus the first push retry.
    haproxy_grace: dt.timedelta = HAPROXY_GRACE
    responder_connections: int = RESPONDER_CONNECTIONS
    fleet: str | None = None  # the URL; None: no fleet, the file system alone
    fleet_prefix: str = FLEET_PREFIX
    fleet_lease: dt.timedelta = FLEET_LEASE
    policy: Policy = DEFAULT_POLICY
    # Off by default: it changes which certificates HAProxy serves, not only staples.
    hot_certs: bool = False

    def responder(self, url: str) -> str:
        """The URL to ask instead of ``url`` (an operator's override), or ``url``."""
        return dict(self.responder_overrides).get(url, url)


def load(
    toml_path: Path | None,
    environ: Mapping[str, str],
    flags: Mapping[str, object] | None = None,
) -> Config:
    """
    Merge defaults, the TOML file, ``HASTAPLE_*`` variables and flags.

    ``flags`` maps field names to what click parsed (None or () for "not given").

    Raises:
        ConfigError: unreadable file, unknown key, bad value, or nothing to watch;
            the message names where the value came from.
    """
    raw: dict[str, tuple[str, object]] = {}
    if toml_path is not None:
        raw.update(_from_toml(toml_path))
    for f in FIELDS:
        if (text := environ.get(f.env)) is not None and text != "":
            raw[f.name] = (f.env, text)
        value = (flags or {}).get(f.name)
        if value is not None and value != ():
            raw[f.name] = (f.flag, value)
    values = {name: _parse(_BY_NAME[name], where, value) for name, (where, value) in raw.items()}
    if toml_path is not None:
        base = toml_path.parent
        for name in ("paths", "crt_lists", "haproxy_config"):
            if raw.get(name, ("",))[0] == str(toml_path):
                values[name] = tuple(base / p for p in values[name])
    return _build(values, environ)


def _build(values: dict[str, Any], environ: Mapping[str, str]) -> Config:
    policy = dataclasses.replace(
        DEFAULT_POLICY,
        **{k: values[f"refresh_{k}"] for k in _POLICY_HELP if f"refresh_{k}" in values},
    )
    address = values.get("metrics_address", DEFAULT_METRICS_ADDRESS)
    config = Config(
        state_dir=values.get("state_dir") or default_state_dir(environ),
        paths=values.get("paths", ()),
        crt_lists=values.get("crt_lists", ()),
        haproxy_configs=values.get("haproxy_config", ()),
        sockets=values.get("haproxy", ()),
        metrics_address=None if address.lower() in {"", "off", "none"} else address,
        proxy=values.get("proxy") or None,
        responder_overrides=tuple(sorted(values.get("responder_overrides", {}).items())),
        log_format=values.get("log_format", "keyvalue"),
        haproxy_poll=values.get("haproxy_poll", dt.timedelta(seconds=2)),
        haproxy_grace=values.get("haproxy_grace", HAPROXY_GRACE),
        responder_connections=values.get("responder_connections", RESPONDER_CONNECTIONS),
        fleet=values.get("fleet") or None,
        fleet_prefix=values.get("fleet_prefix", FLEET_PREFIX),
        fleet_lease=values.get("fleet_lease", FLEET_LEASE),
        policy=policy,
        hot_certs=values.get("hot_certs", False),
    )
    if not (config.paths or config.crt_lists or config.haproxy_configs):
        raise ConfigError(
            "nothing to watch: set paths, crt_lists or haproxy_config "
            "(e.g. --haproxy-config /etc/haproxy/haproxy.cfg)"
        )
    return config


def split_address(text: str) -> tuple[str, int]:
    """
    ``host:port`` (``[v6]:port``) of the metrics server.

    Raises:
        ConfigError: not host:port.
    """
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", text.strip())
    if match is None or int(match.group(2)) > 65535:  # noqa: PLR2004 - the TCP port range
        raise ConfigError(f"metrics_address {text!r}: expected host:port, e.g. 127.0.0.1:9877")
    return match.group(1), int(match.group(2))


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (the metrics server's default)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _from_toml(path: Path) -> dict[str, tuple[str, object]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {(exc.strerror or str(exc)).lower()}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    flat: dict[str, tuple[str, object]] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in _BY_NAME:
            for sub, subvalue in value.items():
                flat[f"{key}_{sub}"] = (str(path), subvalue)
        else:
            flat[key] = (str(path), value)
    for key in flat:
        if key not in _BY_NAME:
            known = ", ".join(sorted(_BY_NAME))
            raise ConfigError(f"{path}: unknown key {key.replace('_', '.', 1)!r} (known: {known})")
    return flat


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse(field: Field, where: str, value: object) -> Any:  # noqa: ANN401 - one value per kind
    try:
        parsed = _PARSERS[field.kind](value)
        if check := _CHECKS.get(field.name):
            check(parsed)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"{where}: {field.name}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return parsed


def _check_log_format(value: str) -> None:
    if value not in LOG_FORMATS:
        raise ValueError(f"{value!r}: use one of {', '.join(LOG_FORMATS)}")


def _check_jitter(value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{value}: must be between 0 and 1")


def check_connections(value: int) -> None:
    """A connection count within ``RESPONDER_CONNECTIONS_RANGE`` (also ``fetch``'s flag)."""
    low, high = RESPONDER_CONNECTIONS_RANGE
    if not low <= value <= high:
        raise ValueError(f"{value}: must be between {low} and {high}")


def check_fleet_prefix(value: str) -> None:
    """A Redis key prefix: printable, no spaces, short (also ``fetch``'s flag)."""
    if len(value) > 100 or not value.isprintable() or any(c.isspace() for c in value):  # noqa: PLR2004
        raise ValueError(f"{value!r}: at most 100 printable characters, no spaces")


def _check_fleet(value: str) -> None:
    # The whole URL is read by stores.redis_url when the command starts (exit 2
    # there too); here only what shows a value in the wrong key.
    if value and value.partition("://")[0].lower() not in {"redis", "rediss", "unix"}:
        raise ValueError(f"{value!r}: a fleet URL starts redis://, rediss:// or unix://")


def _check_lease(value: dt.timedelta) -> None:
    if not dt.timedelta(seconds=0.1) <= value <= dt.timedelta(hours=1):
        raise ValueError("must be between 0.1 s and 1 hour")


def _check_address(value: str) -> None:
    if value.lower() not in {"", "off", "none"}:
        split_address(value)


_CHECKS: dict[str, Any] = {
    "log_format": _check_log_format,
    "refresh_jitter": _check_jitter,
    "metrics_address": _check_address,
    "responder_connections": check_connections,
    "fleet": _check_fleet,
    "fleet_prefix": check_fleet_prefix,
    "fleet_lease": _check_lease,
}


def split_list(text: str) -> tuple[str, ...]:
    """A list given as one string (environment, flag): comma-separated, blanks dropped."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return split_list(value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(s for v in value for s in _strings(v))
    raise TypeError(f"expected a list of strings, not {value!r}")


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {value!r}")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"expected a whole number, not {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"expected a whole number, not {value!r}") from None


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"expected a number, not {value!r}")
    return float(value)


def _duration(value: object) -> dt.timedelta:
    """Seconds as a number, or text like ``90s``, ``5m``, ``12h``, ``2d``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*([\d.]+)\s*([smhd]?)\s*", value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"expected a duration such as 30s, 5m, 12h or 2d, not {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if not math.isfinite(seconds) or seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{value!r}: a duration must be finite and at most {MAX_DURATION.days}d")
    return dt.timedelta(seconds=seconds)


def _mapping(value: object) -> dict[str, str]:
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return {str(k): v for k, v in value.items()}
    pairs = {}
    for item in _strings(value):
        source, sep, target = item.partition("=")
        if not sep or not source or not target:
            raise ValueError(f"expected 'from=to' pairs, not {item!r}")
        pairs[source.strip()] = target.strip()
    return pairs


def _bool(value: object) -> bool:
    """true/false in TOML; 1/0, true/false, yes/no, on/off as text (environment)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else None
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, not {value!r}")


_PARSERS = {
    "paths": lambda v: tuple(Path(p) for p in _strings(v)),
    "strings": _strings,
    "path": lambda v: Path(_string(v)),
    "string": _string,
    "int": _int,
    "float": _float,
    "duration": _duration,
    "mapping": _mapping,
    "bool": _bool,
}
