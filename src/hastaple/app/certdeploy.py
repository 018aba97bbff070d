"""
``hastaple deploy``: an ACME client's hook that replaces "reload haproxy".

For each certificate file just written (certbot's ``--deploy-hook``, acme.sh's
``--reloadcmd``): fetch and validate the staple for the certificate now on
disk and store it atomically (the ``fetch`` pipeline, no push), then load
certificate, key, issuer and staple in one transaction into every running
HAProxy process (``certpush``). A process that does not serve the file yet
gets it added to the crt-list or directory the configuration names it from.

When the CA cannot be reached the certificate is still loaded, unstapled,
unless it is must-staple (then the old one stays); either way the row fails:
exit 0 means every process serves every new certificate with its staple.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hastaple.config import LOCK_WAIT
from hastaple.core.model import Action, CertEntry, ResultRow, Status
from hastaple.engine.fetch import Fetcher, Limits
from hastaple.engine.pipeline import Options, run
from hastaple.errors import CertificateError, ConfigError
from hastaple.haproxy import certpush
from hastaple.sources import certfiles, discover
from hastaple.sources.certfiles import Target, target_of

if TYPE_CHECKING:
    from hastaple.stores.coordinator import Coordinator

ALIAS = "alias"


def targets(
    paths: Sequence[Path], found: discover.Discovery, configs: Sequence[Path]
) -> list[Target]:
    """
    The files to deploy: each path, with its HAProxy name and crt-list when a config names it.

    Raises:
        ConfigError: a path is not a file.
    """
    by_path = {entry.path.resolve(): entry for entry in found.certs}
    config_files = {path.resolve() for path in configs}
    result = []
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"{path}: not a certificate file")
        entry = by_path.get(path.resolve())
        if entry is None:
            result.append(Target(CertEntry(str(path.resolve()), source="argument")))
            continue
        result.append(target_of(entry, config_files))
    return result


async def deploy(
    chosen: Sequence[Target],
    sockets: Sequence[str],
    *,
    state_dir: Path | None,
    limits: Limits,
    now: dt.datetime,
    lock_wait: float = LOCK_WAIT,
    fleet: Coordinator | None = None,
) -> list[ResultRow]:
    """
    Fetch + store each staple, then load certificate and staple into every process.

    With ``fleet``, a valid staple another node published is taken instead of
    asking the CA, and one fetched here is published, as ``fetch --fleet`` does.
    """
    entries = [target.entry for target in chosen]
    options = Options(state_dir=state_dir, lock_wait=lock_wait)
    async with Fetcher(limits) as fetcher:
        rows = await run(entries, options, fetcher=fetcher, now=now, fleet=fleet)
    wanted: list[certpush.Wanted | None] = []
    problems: list[str | None] = []
    for target in chosen:
        name = target.entry.haproxy_names[0]
        try:
            entry = target.entry
            read = certfiles.read(
                entry.path, name, now=now, base=entry.files_base, chains=entry.issuers_chain
            )
        except CertificateError as exc:
            wanted.append(None)
            problems.append(str(exc))
            continue
        wanted.append(certpush.Wanted(read.files, target.crt_list, target.line))
        problems.append(read.staple_problem)
    loadable = [w for w in wanted if w is not None]
    results = await certpush.load(sockets, loadable) if loadable else {}
    out = []
    k = 0
    for row, want, problem in zip(rows, wanted, problems, strict=True):
        outcomes: dict[str, certpush.Outcome | str] = {}
        if want is not None:
            for socket, result in results.items():
                outcomes[socket] = result if isinstance(result, str) else result[k]
            k += 1
        out.append(_row(row, want, problem, outcomes))
    return out


def _row(
    row: ResultRow,
    want: certpush.Wanted | None,
    problem: str | None,
    outcomes: dict[str, certpush.Outcome | str],
) -> ResultRow:
    """The fetch row, with what each process now serves; failed unless served stapled everywhere."""
    haproxy: dict[str, str] = {}
    aliases: dict[str, str] = {}
    errors = [row.error] if row.error and row.action is Action.FAILED else []
    for socket, outcome in outcomes.items():
        if isinstance(outcome, str):
            if outcome.startswith("alias of "):
                haproxy[socket], aliases[socket] = ALIAS, outcome.removeprefix("alias of ")
                continue
            haproxy[socket] = "error"
            errors.append(f"haproxy {socket}: {outcome}")
        elif not outcome.ok:
            haproxy[socket] = "error"
            errors.append(f"haproxy {socket}: {outcome.error}")
        elif not outcome.stapled:
            haproxy[socket] = f"{outcome.action}-unstapled"
            errors.append(
                f"haproxy {socket}: serves the new certificate without a staple ({problem})"
            )
        else:
            haproxy[socket] = outcome.action
    if want is None and problem:
        errors.append(problem)
    if not outcomes and want is not None:
        errors.append("no HAProxy process was reached")
    must = want.files.must_staple if want is not None else row.must_staple
    if errors:
        status = row.status if row.status is not Status.GOOD or not problem else Status.ERROR
        error = "; ".join(dict.fromkeys(errors))
        return dataclasses.replace(
            row, status=status, action=Action.FAILED, error=error, haproxy=haproxy,
            aliases=aliases, must_staple=must,
        )  # fmt: skip
    return dataclasses.replace(
        row, action=Action.DEPLOYED, error=None, haproxy=haproxy, aliases=aliases, must_staple=must
    )
