"""`hastaple fetch` and `hastaple deploy`: the commands that ask CAs and load HAProxy."""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hastaple import config
from hastaple.app.cli.exits import UsageError, finish, usage_errors
from hastaple.app.cli.options import (
    EnvOption,
    ListPath,
    check_sockets,
    fleet_options,
    fleet_settings,
    haproxy_config_option,
    haproxy_option,
    json_option,
    limits_of,
    responder_options,
    state_dir_option,
)
from hastaple.core.model import CertEntry, ResultRow
from hastaple.sources import discover

if TYPE_CHECKING:
    from hastaple.engine.fetch import Fetcher, Limits
    from hastaple.engine.pipeline import Options
    from hastaple.stores.coordinator import Coordinator

logger = logging.getLogger("hastaple")


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@haproxy_config_option(
    "haproxy.cfg: its bind lines give the certificates, its admin stats sockets the targets."
)
@click.option(
    "--crt-list",
    "crt_lists",
    multiple=True,
    type=ListPath(path_type=Path),
    cls=EnvOption,
    envvar="HASTAPLE_CRT_LISTS",
    help="An HAProxy crt-list file (repeatable).",
)
@haproxy_option("Runtime socket to load staples into: a unix path, host:port, or master.sock@1.")
@click.option("--force", is_flag=True, help="Fetch even staples that are still fresh.")
@click.option("--dry-run", is_flag=True, help="Fetch and validate, but write and push nothing.")
@responder_options
@fleet_options
@json_option
@state_dir_option
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

    from hastaple.engine.pipeline import Options  # noqa: PLC0415

    with usage_errors(ctx):
        fleet = fleet_settings(fleet_url, fleet_prefix, fleet_lease)
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
        check_sockets(options.sockets)
        limits = limits_of(timeout, responder_connections)
        bar = sys.stderr.isatty() and not ctx.obj.get("quiet")
        # Everything allocated so far (modules, the discovered entries) lives
        # until exit: keep the cyclic collector from re-scanning it on every
        # collection of a 10,000-certificate run.
        gc.freeze()
        # uvloop, not asyncio's own loop: 13% less CPU per certificate (bench/).
        rows = uvloop.run(_fetch(found.certs, options, limits, progress=bar, fleet=fleet))
    finish(rows, as_json=as_json)


@click.command("deploy")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@haproxy_option("Admin runtime socket of a running HAProxy: a unix path, host:port, master.sock@1.")
@haproxy_config_option(
    "haproxy.cfg: its admin sockets, and the crt-list or directory of a new file."
)
@responder_options
@fleet_options
@json_option
@state_dir_option
@click.pass_context
def deploy_command(
    ctx: click.Context,
    paths: tuple[Path, ...],
    sockets: tuple[str, ...],
    configs: tuple[Path, ...],
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
    Load renewed or new certificates with their staples into running HAProxy, no reload.

    For certbot's --deploy-hook and acme.sh's --reloadcmd: fetch and validate
    the staple of each CERT, store it, then load certificate and staple in one
    transaction into every HAProxy process. Exit 0 only when every process
    serves every new certificate stapled. With --fleet, a staple another node
    published is taken instead of asking the CA.
    """
    import uvloop  # noqa: PLC0415 - the HTTP stack only for the commands that fetch

    from hastaple.app import certdeploy  # noqa: PLC0415

    with usage_errors(ctx):
        fleet = fleet_settings(fleet_url, fleet_prefix, fleet_lease)
        if not paths:
            raise UsageError("nothing to do: give the certificate files to deploy")
        found = discover.discover((), (), configs)
        for warning in found.warnings:
            logger.warning("%s", warning)
        targets = tuple(dict.fromkeys((*sockets, *found.sockets)))
        if not targets:
            raise UsageError("no HAProxy to load into: give --haproxy or --haproxy-config")
        check_sockets(targets)
        chosen = certdeploy.targets(paths, found, configs)
        limits = limits_of(timeout, responder_connections)

        async def deploy(coordinator: Coordinator | None) -> list[ResultRow]:
            return await certdeploy.deploy(
                chosen,
                targets,
                state_dir=state_dir or config.default_state_dir(os.environ),
                limits=limits,
                now=dt.datetime.now(dt.UTC),
                lock_wait=wait,
                fleet=coordinator,
            )

        rows = uvloop.run(_with_fleet(fleet, deploy))
    finish(rows, as_json=as_json)


async def _with_fleet(
    fleet: tuple[str, str, float] | None,
    work: Callable[[Coordinator | None], Awaitable[list[ResultRow]]],
) -> list[ResultRow]:
    """``work``, given the fleet's coordinator while connected to it (``None``: no ``--fleet``)."""
    if fleet is None:
        return await work(None)
    from hastaple.stores.coordinator import connected  # noqa: PLC0415 - redis-py only for --fleet

    url, prefix, lease = fleet
    async with connected(url, prefix=prefix, lease=lease) as coord:
        rows = await work(coord)
        if coord.fleet.stats.outages:
            # Exit 0 all the same when every staple is good: Redis only saves work.
            click.echo(
                f"note: the fleet's Redis ({coord.fleet.address.display}) was unreachable; "
                "this node fetched its staples by itself",
                err=True,
            )
        return rows


async def _fetch(
    entries: Sequence[CertEntry],
    options: Options,
    limits: Limits,
    *,
    progress: bool,
    fleet: tuple[str, str, float] | None = None,
) -> list[ResultRow]:
    from hastaple.engine.fetch import Fetcher  # noqa: PLC0415

    async def work(coord: Coordinator | None) -> list[ResultRow]:
        async with Fetcher(limits) as fetcher:
            return await _run_fetch(entries, options, fetcher, progress=progress, fleet=coord)

    return await _with_fleet(fleet, work)


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
