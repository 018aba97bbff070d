"""The options several commands share, each defined once, and their checks before any work."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from hastaple import config
from hastaple.app.cli.exits import UsageError
from hastaple.haproxy.protocol import parse_address

if TYPE_CHECKING:
    from hastaple.engine.fetch import Limits


#: What ``click.option(...)`` returns: adds one option to a command.
Decorator = Callable[[Callable[..., None]], Callable[..., None]]


class ListPath(click.Path):
    """A repeatable path whose environment variable is comma-separated, as for ``run``."""

    def split_envvar_value(self, rv: str) -> Sequence[str]:  # noqa: D102 - click's
        return config.split_list(rv)


class ListText(click.types.StringParamType):
    """A repeatable string whose environment variable is comma-separated, as for ``run``."""

    def split_envvar_value(self, rv: str) -> Sequence[str]:  # noqa: D102 - click's
        return config.split_list(rv)


class EnvOption(click.Option):
    """An option that names its environment variable when a bad value came from there."""

    def get_error_hint(self, ctx: click.Context | None) -> str:  # noqa: D102 - click's
        source = ctx.get_parameter_source(self.name) if ctx and self.name else None
        if source is ParameterSource.ENVIRONMENT:
            return f"{self.envvar} (from the environment)"
        return super().get_error_hint(ctx)


state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    cls=EnvOption,
    envvar="HASTAPLE_STATE_DIR",
    help="Where downloaded issuers and state are kept [env HASTAPLE_STATE_DIR].",
)


def haproxy_config_option(help_text: str) -> Decorator:
    """``--haproxy-config``, repeatable, comma-separated in its environment variable."""
    return click.option(
        "--haproxy-config",
        "configs",
        multiple=True,
        type=ListPath(path_type=Path),
        cls=EnvOption,
        envvar="HASTAPLE_HAPROXY_CONFIG",
        help=help_text,
    )


def haproxy_option(help_text: str) -> Decorator:
    """``--haproxy``: runtime sockets, repeatable, comma-separated in its environment variable."""
    return click.option(
        "--haproxy",
        "sockets",
        multiple=True,
        type=ListText(),
        cls=EnvOption,
        envvar="HASTAPLE_HAPROXY",
        help=help_text,
    )


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout."
)


def responder_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--timeout``, ``--wait`` and ``--responder-connections``: the commands that ask CAs."""
    for option in reversed((
        click.option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            default=config.FETCH_TIMEOUT,
            show_default=True,
            cls=EnvOption,
            envvar="HASTAPLE_TIMEOUT",
            help="Seconds for one whole exchange with a responder.",
        ),
        click.option(
            "--wait",
            type=click.FloatRange(min=0),
            default=config.LOCK_WAIT,
            show_default=True,
            cls=EnvOption,
            envvar="HASTAPLE_WAIT",
            help="Seconds to wait while another run (the daemon's batch) uses the state directory.",
        ),
        click.option(
            "--responder-connections",
            type=click.IntRange(*config.RESPONDER_CONNECTIONS_RANGE),
            default=config.RESPONDER_CONNECTIONS,
            show_default=True,
            cls=EnvOption,
            envvar="HASTAPLE_RESPONDER_CONNECTIONS",
            help="Connections to one OCSP responder host at once.",
        ),
    )):  # fmt: skip
        command = option(command)
    return command


def fleet_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--fleet``, ``--fleet-prefix`` and ``--fleet-lease``: sharing staples through Redis."""
    for option in reversed((
        click.option(
            "--fleet",
            "fleet_url",
            cls=EnvOption,
            envvar="HASTAPLE_FLEET",
            help="Share staples with other nodes through this Redis/Valkey: redis://host:port/db, "
            "rediss://... or unix:///path?db=N [env HASTAPLE_FLEET].",
        ),
        click.option(
            "--fleet-prefix",
            default=config.FLEET_PREFIX,
            show_default=True,
            cls=EnvOption,
            envvar="HASTAPLE_FLEET_PREFIX",
            help="Key prefix in that Redis, so several fleets can share it "
            "[env HASTAPLE_FLEET_PREFIX].",
        ),
        click.option(
            "--fleet-lease",
            type=click.FloatRange(0.1, 3600),
            default=config.FLEET_LEASE.total_seconds(),
            show_default=True,
            cls=EnvOption,
            envvar="HASTAPLE_FLEET_LEASE",
            help="Seconds one node may fetch a staple for the fleet before another takes over.",
        ),
    )):  # fmt: skip
        command = option(command)
    return command


def limits_of(timeout: float, responder_connections: int) -> Limits:
    """The fetcher's limits from ``--timeout`` and ``--responder-connections``."""
    from hastaple.engine.fetch import Limits  # noqa: PLC0415 - see fetching.fetch()

    return Limits(
        per_host=responder_connections,
        timeout=timeout,
        connect_timeout=min(timeout, Limits().connect_timeout),
    )


def check_sockets(sockets: Sequence[str]) -> None:
    """Refuse a unix socket path that is not there before asking any CA (exit 2)."""
    for socket in sockets:
        address = parse_address(socket)
        if address.path is None or address.abstract:
            continue
        path = Path(address.path)
        if not path.exists():
            raise UsageError(f"{socket}: no such HAProxy socket")
        if not path.is_socket():
            raise UsageError(f"{socket}: not a unix socket")


def fleet_settings(url: str | None, prefix: str, lease: float) -> tuple[str, str, float] | None:
    """``--fleet`` and its companions, checked before any work (exit 2)."""
    if not url:
        return None
    from hastaple.stores import redis_url  # noqa: PLC0415 - see fetching.fetch()

    redis_url.parse(url)
    try:
        config.check_fleet_prefix(prefix)
    except ValueError as exc:
        raise UsageError(f"--fleet-prefix: {exc}") from None
    return url, prefix, lease


def config_flags(command: Callable[..., None]) -> Callable[..., None]:
    """One flag per configuration key (config.FIELDS), so flags and TOML never drift."""
    for field in reversed(config.FIELDS):
        many = field.kind in {"paths", "strings"}
        kind: dict[str, Any] = {"is_flag": True} if field.kind == "bool" else {"multiple": many}
        command = click.option(
            field.flag, field.name, default=None, help=f"{field.help} [env {field.env}]", **kind
        )(command)
    return command


config_file_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    cls=EnvOption,
    envvar="HASTAPLE_CONFIG",
    help="TOML configuration file [env HASTAPLE_CONFIG].",
)
