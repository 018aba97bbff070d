"""
Which certificates HAProxy serves, and which runtime sockets can load staples.

``discover`` reads the files: certificate arguments, crt-lists and haproxy.cfg
(parsed by ``hastaple.haproxy.cfgfile`` and ``crtlist``, which do no I/O),
walks ``crt`` directories and checks that every certificate exists. The rules
copy HAProxy 2.6/2.8 (src/ssl_crtlist.c, src/ssl_ckch.c) and were checked
against both binaries (see tests):

- A path still relative after ``crt-base`` is read from HAProxy's working
  directory (``-C <dir>`` included), or from the one ``global default-path``
  selects. ``discover(cwd=)`` fixes it; without it, the running HAProxy's
  directory is taken from ``/proc/<pid>/cwd`` (the pid from ``show info`` on
  a stats socket of the configuration, the master's when the worker
  chrooted), else the configuration's directory, with a warning
  (hastaple.haproxy.process).
- HAProxy names a certificate in its runtime API exactly by that string, with
  no normalisation (``./c/a.pem`` and ``c/a.pem`` are two certificates; a
  directory's trailing ``/`` is dropped). ``CertEntry.names`` keeps it.
- A ``crt`` directory loads, in byte order and non-recursively, every regular
  file except dot-files and names ending in ``.key .ocsp .issuer .sctl``.
- A missing ``crt`` file may be a multi-certificate bundle: ``<crt>.rsa``,
  ``<crt>.ecdsa``, ``<crt>.dsa``.
- A directory in a crt-list makes HAProxy 2.6 and 2.8 spin at start-up, so it
  is an error here.
- With ``ssl-load-extra-del-ext``, ``site.crt`` gets its extras from
  ``site.ocsp``, ``site.issuer``, ``site.key``; without ``ocsp`` in
  ``ssl-load-extra-files``, no ``.ocsp`` file is read at start-up.
- A HAProxy 3.x ``@store/name`` reference that names a crt-store ``load``
  line resolves to that line's files and runtime name.

Owns: finding certificate files. Must not parse configuration text itself
(haproxy/ does) nor touch staples.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from hastaple.core.model import CertEntry
from hastaple.errors import ConfigError
from hastaple.haproxy.cfgfile import (
    CertRef,
    ChainPath,
    ExtraFiles,
    StatsSocket,
    is_usable,
    join_base,
)
from hastaple.haproxy.cfgload import config_root, read_haproxy_config, socket_address
from hastaple.haproxy.crtlist import parse_crt_list
from hastaple.haproxy.crtstore import CrtStores, StoreLoad

logger = logging.getLogger(__name__)

#: Suffixes HAProxy never loads as a certificate from a ``crt`` directory (docs/haproxy.md).
RESERVED_SUFFIXES = frozenset({".key", ".ocsp", ".issuer", ".sctl"})


#: Multi-certificate bundle extensions HAProxy tries when ``<crt>`` itself is missing.
BUNDLE_SUFFIXES = (".rsa", ".ecdsa", ".dsa")


@dataclass(frozen=True, slots=True)
class Discovery:
    """Everything ``discover`` found: certificates, admin sockets, and warnings for a person."""

    certs: tuple[CertEntry, ...]
    sockets: tuple[str, ...]
    warnings: tuple[str, ...]
    # Sockets below ``level admin``: (address, why nothing is deployed through
    # it). Kept so that a run whose HAProxy has no admin socket says so per row.
    below_admin: tuple[tuple[str, str], ...] = ()


def is_certificate_file(name: str) -> bool:
    """
    Whether HAProxy loads the directory entry ``name`` as a certificate (``crt <dir>``).

    Its rule (src/ssl_crtlist.c): skip names starting with a dot and names whose
    *last* suffix is reserved; so ``x.pem.ocsp.tmp`` is loaded (and breaks a reload).
    """
    if not name or name.startswith("."):
        return False
    dot = name.rfind(".")
    return dot < 0 or name[dot:] not in RESERVED_SUFFIXES


def discover(
    paths: Sequence[Path] = (),
    crt_lists: Sequence[Path] = (),
    haproxy_configs: Sequence[Path] = (),
    *,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
    haproxy_binary: str | None = None,
) -> Discovery:
    """
    Find the certificates and admin sockets from arguments, crt-lists and configs.

    Args:
        paths: certificate files or ``crt``-style directories.
        crt_lists: crt-list files (no crt-base applies).
        haproxy_configs: haproxy.cfg files.
        cwd: HAProxy's working directory, for relative paths. By default,
            arguments are relative to ours, and a configuration's paths to
            the directory of the HAProxy that answers on one of its stats
            sockets, else to the configuration's directory (with a warning).
        environ: for ``"$VAR"`` in haproxy.cfg; default ``os.environ``.
        haproxy_binary: the HAProxy that reads the configuration, asked for
            the ``.if`` predicates only it knows; default ``haproxy`` on the
            PATH or in /usr/sbin.

    Returns:
        Certificates de-duplicated by path (first appearance wins; the HAProxy
        names of every appearance are kept; managed if any appearance is).

    Raises:
        ConfigError: a missing or unreadable file or directory, or a line
            HAProxy would refuse; anything else is a bug.
    """
    base = Path.cwd() if cwd is None else cwd
    env = os.environ if environ is None else environ
    found: list[CertEntry] = []
    sockets: list[str] = []
    warnings: list[str] = []
    below_admin: list[tuple[str, str]] = []

    for path in paths:
        full = base / path
        if stat.S_ISDIR(_stat(full, str(path)).st_mode):
            found.extend(_walk(full, name=None, source="argument"))
        else:
            found.append(CertEntry(str(full), source="argument"))

    for path in crt_lists:
        entries = parse_crt_list(
            _read(base / path, str(path)), source=str(path), crt_base=None, cwd=base
        )
        found.extend(_check_listed(entries))

    for path in haproxy_configs:
        config = read_haproxy_config(path, cwd=base, environ=env, haproxy_binary=haproxy_binary)
        warnings.extend(config.warnings)
        root = base if cwd is not None else config_root(config, path, base, warnings)
        sockets.extend(socket_address(s.address, root) for s in config.sockets if is_usable(s))
        below_admin.extend(
            (socket_address(s.address, root), _below_admin(s))
            for s in config.sockets
            if s.level != "admin" and not s.tls and not s.address.startswith(("fd@", "sockpair@"))
        )
        for ref in config.refs:
            entries = _resolve_ref(ref, root)
            found.extend(entries)
            warnings.extend(_crt_store_warnings(ref, entries))

    return Discovery(
        certs=_dedupe(found),
        sockets=tuple(dict.fromkeys(sockets)),
        warnings=tuple(dict.fromkeys(warnings)),
        below_admin=tuple(dict.fromkeys(below_admin)),
    )


def _below_admin(socket: StatsSocket) -> str:
    return (
        f"{socket.source}: stats socket has level {socket.level}, not admin: HAProxy lets "
        "no staple be loaded through it for a certificate it has not registered; "
        "add 'level admin' to that line"
    )


def resolve_ref(ref: CertRef, *, cwd: Path) -> list[CertEntry]:
    """
    One reference's certificate files, as ``discover`` finds them (for per-bind callers).

    Raises:
        ConfigError: a missing or unreadable file, directory or crt-list.
    """
    return _resolve_ref(ref, cwd)


def _resolve_ref(ref: CertRef, cwd: Path) -> list[CertEntry]:
    """Turn one haproxy.cfg reference into certificate entries, checking the files."""
    chains = None if ref.issuers_chain is None else _chain_directory(ref.issuers_chain, cwd)
    if ref.directory is not None:
        cwd = cwd / ref.directory
    files = [_with_extra(entry, ref.extra) for entry in _ref_files(ref, cwd)]
    viewed = _crt_store_view(ref, files, cwd)
    if chains is None:
        return viewed
    return [dataclasses.replace(entry, issuers_chain=chains) for entry in viewed]


def _chain_directory(chain: ChainPath, cwd: Path) -> Path:
    """The ``issuers-chain-path`` directory, which HAProxy refuses to start without."""
    full = (cwd if chain.directory is None else cwd / chain.directory) / chain.path
    info = _stat(full, f"{chain.source}: issuers-chain-path {chain.path}")
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{chain.source}: issuers-chain-path {chain.path} is not a directory")
    return full


def _crt_store_view(ref: CertRef, entries: list[CertEntry], cwd: Path) -> list[CertEntry]:
    """Entries that name a crt-store ``load`` become that load's; the global updater applies."""
    stores = ref.stores or CrtStores()
    viewed = []
    for entry in entries:
        load = stores.lookup(entry.names[0]) if entry.names else None
        if load is not None:
            entry = _store_entry(load, stores, cwd, managed=entry.managed)  # noqa: PLW2901
        elif stores.updater_default_on:  # 3.x: ocsp-update.mode on covers every certificate
            entry = replace(entry, managed=True)  # noqa: PLW2901
        viewed.append(entry)
    return viewed


def _store_entry(load: StoreLoad, stores: CrtStores, cwd: Path, *, managed: bool) -> CertEntry:
    """A crt-store certificate: its PEM, runtime name, and the staple file HAProxy reads."""
    # A missing 'ocsp' file is not an error here: HAProxy cannot start without it,
    # and writing it is exactly what hastaple is about to do.
    if _stat_or_none(cwd / load.crt) is None:
        raise ConfigError(f"{load.source}: crt {load.crt}: No such file or directory")
    return CertEntry(
        file=str(cwd / load.crt),
        managed=managed or stores.managed(load),
        source=load.source,
        names=(load.name,),
        ocsp_file=None if load.ocsp is None else cwd / load.ocsp,
        issuer_file=None if load.issuer is None else cwd / load.issuer,
        ocsp_at_start=load.ocsp is not None,
        ocsp_source=load.source,
    )


def _crt_store_warnings(ref: CertRef, entries: Sequence[CertEntry]) -> Iterator[str]:
    """One warning per load line without 'ocsp': HAProxy will not reload its staple."""
    for entry in entries:
        load = ref.stores.lookup(entry.names[0]) if ref.stores and entry.names else None
        if load is not None and load.ocsp is None and not entry.managed:
            yield (
                f"{load.source}: HAProxy reads no staple file for {load.name} when it starts "
                "or reloads (its load line names no 'ocsp <file>'), so the staple lasts only "
                "until then; hastaple run pushes it again after a restart. Add "
                f"'ocsp {entry.path}.ocsp' to that load line to keep it across reloads"
            )


def _ref_files(ref: CertRef, cwd: Path) -> list[CertEntry]:
    """The certificate entries one reference names, before crt-store lookups."""
    bundles = "bundle" in ref.extra.kinds
    if ref.kind == "crt-list":
        listed = cwd / ref.path  # HAProxy never applies crt-base to the list file itself
        text = _read(listed, f"{ref.source}: crt-list {ref.path}")
        entries = parse_crt_list(text, source=str(listed), crt_base=ref.crt_base, cwd=cwd)
        stores = ref.stores or CrtStores()
        checked: list[CertEntry] = []
        for entry in entries:  # a crt-store's certificate is checked as the store's
            checked.extend(
                [entry]
                if stores.lookup(entry.names[0])
                else _check_listed([entry], bundles=bundles)
            )
        return checked
    name = join_base(ref.path, ref.crt_base)
    if ref.stores is not None and ref.stores.lookup(name) is not None:
        return [CertEntry(str(cwd / name), source=ref.source, names=(name,))]
    if name.startswith("@"):
        raise ConfigError(f"{ref.source}: {name} names no certificate of a crt-store section above")
    full = cwd / name
    info = _stat_or_none(full)
    if info is not None and stat.S_ISDIR(info.st_mode):
        return _walk(full, name=name.rstrip("/"), source=ref.source)
    if info is not None:
        return [CertEntry(str(full), source=ref.source, names=(name,))]
    bundle = _bundle_paths(full, name, ref.source) if bundles else []
    if not bundle:
        raise ConfigError(f"{ref.source}: certificate {name}: No such file or directory")
    return bundle


def _with_extra(entry: CertEntry, extra: ExtraFiles) -> CertEntry:
    """The entry with the files HAProxy reads beside it under ``extra``."""
    path = entry.path
    base = extra.base(path)
    return dataclasses.replace(
        entry,
        extra_base=base if base != path else None,
        ocsp_at_start="ocsp" in extra.kinds,
        ocsp_source="" if "ocsp" in extra.kinds else extra.source,
    )


def _check_listed(entries: Sequence[CertEntry], *, bundles: bool = True) -> list[CertEntry]:
    """Check crt-list entries exist and are files (a directory makes HAProxy spin)."""
    checked: list[CertEntry] = []
    for entry in entries:
        info = _stat_or_none(entry.file)
        name = entry.haproxy_names[0]
        if info is None:
            bundle = _bundle_paths(entry.path, name, entry.source, managed=entry.managed)
            if not bundle or not bundles:
                raise ConfigError(f"{entry.source}: certificate {name}: No such file or directory")
            checked.extend(bundle)
        elif stat.S_ISDIR(info.st_mode):
            raise ConfigError(
                f"{entry.source}: {name} is a directory, which a crt-list cannot name "
                "(HAProxy 2.6 and 2.8 hang at start-up on it)"
            )
        else:
            checked.append(entry)
    return checked


def _bundle_paths(full: Path, name: str, source: str, *, managed: bool = False) -> list[CertEntry]:
    """The ``<crt>.rsa/.ecdsa/.dsa`` files of a multi-certificate bundle that exist."""
    return [
        CertEntry(f"{full}{suffix}", managed=managed, source=source, names=(f"{name}{suffix}",))
        for suffix in BUNDLE_SUFFIXES
        if _stat_or_none(f"{full}{suffix}") is not None
    ]


def _walk(directory: Path, *, name: str | None, source: str) -> list[CertEntry]:
    """List a ``crt`` directory as HAProxy does: sorted, regular files only, not recursive."""
    try:
        children = sorted(os.listdir(directory))  # noqa: PTH208 - names, as scandir(3) gives them
    except OSError as exc:
        raise ConfigError(f"{directory}: {exc.strerror or exc}") from exc
    entries: list[CertEntry] = []
    parent = str(directory)
    for child in children:
        if not is_certificate_file(child):
            continue
        full = os.path.join(parent, child)  # noqa: PTH118 - text, no Path per certificate
        info = _stat(full, full)  # follows symlinks; a dangling one stops HAProxy too
        if stat.S_ISREG(info.st_mode):
            names = (f"{name}/{child}",) if name is not None else ()
            entries.append(CertEntry(full, source=source, names=names))
    return entries


def _dedupe(entries: Sequence[CertEntry]) -> tuple[CertEntry, ...]:
    """One entry per path, in order of first appearance, merging names and ``managed``."""
    merged: dict[str, CertEntry] = {}
    for entry in entries:
        seen = merged.get(entry.file)
        if seen is None:
            merged[entry.file] = entry
        else:
            names = tuple(dict.fromkeys(seen.names + entry.names))
            merged[entry.file] = dataclasses.replace(
                seen,
                managed=seen.managed or entry.managed,
                names=names,
                ocsp_file=seen.ocsp_file or entry.ocsp_file,
                ocsp_at_start=seen.ocsp_at_start and entry.ocsp_at_start,
                ocsp_source=seen.ocsp_source or entry.ocsp_source,
            )
    return tuple(merged.values())


def _read(path: Path, label: str) -> str:
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise ConfigError(f"{label}: {exc.strerror or exc}") from exc


def _stat(path: str | Path, label: str) -> os.stat_result:
    try:
        return os.stat(path)  # noqa: PTH116 - a path as text or a Path
    except OSError as exc:
        raise ConfigError(f"{label}: {exc.strerror or exc}") from exc


def _stat_or_none(path: str | Path) -> os.stat_result | None:
    try:
        return os.stat(path)  # noqa: PTH116 - a path as text or a Path
    except OSError:
        return None
