"""
The command line: parse flags, call the pipeline, render, exit 0/1/2.

Exit codes (the README's contract): 0 everything asked for is in order; 1 at least one
certificate failed; 2 bad usage, configuration or input, with one line on
stderr that names the file and the problem (a traceback only with --debug).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from hastaple import __version__
from hastaple.app.cli import checking, fetching, service


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

for command in (
    fetching.fetch,
    fetching.deploy_command,
    checking.check,
    checking.verify_command,
    checking.doctor_command,
    service.demo_command,
    service.run_daemon,
    service.status,
):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="hastaple")
