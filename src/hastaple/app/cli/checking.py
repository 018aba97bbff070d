"""`hastaple check`, `verify` and `doctor`: looking at a response, an endpoint, a setup."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path

import click
from cryptography import x509

from hastaple import config
from hastaple.app.cli.exits import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    finish,
    parse_time,
    usage_errors,
)
from hastaple.app.cli.options import (
    haproxy_config_option,
    haproxy_option,
    json_option,
    state_dir_option,
)
from hastaple.core import issuer as issuers
from hastaple.core.model import Action, ResultRow, Status
from hastaple.core.ocsp.validate import validate
from hastaple.errors import InvalidResponse
from hastaple.sources import pem

logger = logging.getLogger("hastaple")


@click.command()
@click.argument("response", type=click.Path(path_type=Path))
@click.option("--cert", "cert_path", required=True, type=click.Path(path_type=Path))
@click.option("--issuer", "issuer_path", type=click.Path(path_type=Path))
@click.option("--at", "at", help="Judge validity at this time (RFC 3339), not now.")
@json_option
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
    with usage_errors(ctx):
        now = parse_time(at) if at else dt.datetime.now(dt.UTC)
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
    finish([row], as_json=as_json)


def _offline_issuer(
    cert_path: Path, bundle: pem.Bundle, issuer_path: Path | None
) -> x509.Certificate:
    """--issuer, else the PEM chain, else ``<cert>.issuer``; no network for ``check``."""
    if issuer_path is None:
        from hastaple.engine.issuers import local_issuer  # noqa: PLC0415 - see fetching.fetch()

        if (local := local_issuer(cert_path, bundle)) is not None:
            return local[0]
        raise UsageError(f"{cert_path}: issuer not found: no chain in the file; give --issuer")
    found = issuers.choose(bundle.leaf, issuers.parse_certificates(pem.read(issuer_path)))
    if found is None:
        raise UsageError(f"{issuer_path}: does not hold the issuer of {cert_path}")
    return found


@click.command("verify")
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
@json_option
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

    with usage_errors(ctx):
        when = parse_time(at) if at else None
        targets = verify.targets_from(addresses, servernames, configs)
    checks = verify.check(targets, timeout=timeout, at=when)
    verify.report(checks, as_json=as_json)
    sys.exit(EXIT_OK if all(c.ok for c in checks) else EXIT_FAILED)


@click.command("doctor")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@haproxy_config_option("haproxy.cfg to check: certificates, sockets, global settings.")
@haproxy_option("Runtime socket to check as well (asked read-only commands only).")
@click.option("--no-responders", is_flag=True, help="Do not send a request to any responder.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds for each socket and responder exchange.",
)
@json_option
@state_dir_option
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
    import uvloop  # noqa: PLC0415 - see fetching.fetch()

    from hastaple.app import doctor  # noqa: PLC0415
    from hastaple.app.doctor import gather  # noqa: PLC0415

    with usage_errors(ctx):
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
