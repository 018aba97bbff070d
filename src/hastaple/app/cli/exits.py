"""Exit codes 0/1/2: usage errors as one line on stderr, result rows as an exit code."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

import click

from hastaple.app import render
from hastaple.core.model import ResultRow
from hastaple.errors import HastapleError, StateBusy

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


def parse_time(text: str) -> dt.datetime:
    """An ``--at`` time (RFC 3339; UTC when it names no zone), else a usage error."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"--at {text!r}: not an RFC 3339 time") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


class usage_errors:  # noqa: N801 - used as a context manager, reads as a phrase
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


_JSON_PIECE = 64 * 1024  # characters of --json output per write


def finish(rows: Sequence[ResultRow], *, as_json: bool) -> NoReturn:
    """Print the rows, the errors on stderr, and exit with the code they add up to."""
    if as_json:
        # Written in pieces of about 64 KiB as it is made: the whole text was
        # 50 MB at 100,000 rows; one write per row would be 100,000 flushes.
        chunk: list[str] = []
        size = 0
        for piece in render.json_pieces(rows):
            chunk.append(piece)
            size += len(piece)
            if size >= _JSON_PIECE:
                click.echo("".join(chunk), nl=False)
                chunk, size = [], 0
        click.echo("".join(chunk))
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
