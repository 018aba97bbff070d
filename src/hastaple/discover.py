"""
Which certificates HAProxy serves, and which runtime sockets can load staples.

Theory of operation: two pure parsers (``parse_haproxy_config``,
``parse_crt_list``) turn text into values; ``discover`` reads the files, walks
``crt`` directories and checks that every certificate exists. The rules copy
HAProxy 2.6/2.8 (src/ssl_crtlist.c, src/cfgparse-ssl.c, src/tools.c
``parse_line``) and were checked against both binaries (see tests):

- ``crt <file|dir>`` and ``crt-list <file>`` may appear several times on any
  ``bind`` line (and on a ``stats socket`` line, which takes bind options).
- A relative ``crt`` and a relative crt-list *entry* are prefixed with
  ``global crt-base`` as the string ``"<crt-base>/<path>"``; the crt-list
  *file* itself never is. Without crt-base a relative path is relative to
  HAProxy's working directory, which only the caller knows: ``discover(cwd=)``,
  defaulting to our own working directory (the config file's directory would be
  wrong: HAProxy does not use it).
- HAProxy names a certificate in its runtime API exactly by that string, with
  no normalisation (``./c/a.pem`` and ``c/a.pem`` are two certificates; a
  directory's trailing ``/`` is dropped). ``CertEntry.names`` keeps it.
- A ``crt`` directory loads, in byte order and non-recursively, every regular
  file except dot-files and names ending in ``.key .ocsp .issuer .sctl``.
- A missing ``crt`` file may be a multi-certificate bundle: ``<crt>.rsa``,
  ``<crt>.ecdsa``, ``<crt>.dsa``.
- crt-list lines: ``<crtfile> [<options>] [[!]<sni> ...]``; a line is a comment
  only when it *starts* with ``#``; ``[`` and ``]`` split words anywhere; an
  unterminated ``[`` is accepted by HAProxy (the options become SNI filters)
  and so here too. ``[... ocsp-update on ...]`` marks the entry as managed by
  HAProxy 2.8's own updater. A directory in a crt-list makes HAProxy 2.6 and
  2.8 spin at start-up, so it is an error here.
- ``stats socket`` defaults to ``level operator`` (measured); only ``level
  admin`` sockets can do what hastaple needs (HAPROXY.md §0.9).
- HAProxy 3.x ``crt-store`` sections and the ``@store/name`` references to
  them: ``hastaple.haproxy.crtstore`` reads them; a reference that names a
  ``load`` line resolves to that line's files and runtime name.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from hastaple.errors import ConfigError
from hastaple.haproxy.cfgwords import SPACE, split_line
from hastaple.haproxy.crtstore import CrtStoreReader, CrtStores, StoreLoad

#: Suffixes HAProxy never loads as a certificate from a ``crt`` directory (HAPROXY.md §5.10).
RESERVED_SUFFIXES = frozenset({".key", ".ocsp", ".issuer", ".sctl"})
#: Multi-certificate bundle extensions HAProxy tries when ``<crt>`` itself is missing.
BUNDLE_SUFFIXES = (".rsa", ".ecdsa", ".dsa")

_CRT_LIST_TOKEN = re.compile(r"[\[\]]|[^\[\]" + re.escape(SPACE) + "]+")  # C isspace()
_SECTIONS = frozenset(
    {
        "global",
        "defaults",
        "frontend",
        "backend",
        "listen",
        "peers",
        "resolvers",
        "userlist",
        "mailers",
        "program",
        "http-errors",
        "ring",
        "cache",
        "fcgi-app",
        "crt-store",
        "log-forward",
        "traces",
    }
)
_CRT_KEYWORDS = frozenset({"crt", "default-crt"})
# bind / stats socket options that take one argument: skipping the argument
# keeps "name crt" from reading as a "crt" keyword.
_ARG_KEYWORDS = frozenset(
    {
        "accept-netscaler-cip",
        "alpn",
        "backlog",
        "ca-file",
        "ca-ignore-err",
        "ca-sign-file",
        "ca-sign-pass",
        "ciphers",
        "ciphersuites",
        "client-sigalgs",
        "crl-file",
        "crt-ignore-err",
        "curves",
        "ecdhe",
        "expose-fd",
        "gid",
        "group",
        "id",
        "interface",
        "label",
        "level",
        "maxconn",
        "mode",
        "mss",
        "name",
        "namespace",
        "nice",
        "npn",
        "process",
        "proto",
        "quic-cc-algo",
        "severity-output",
        "shards",
        "sigalgs",
        "ssl-max-ver",
        "ssl-min-ver",
        "tcp-ut",
        "thread",
        "tls-ticket-keys",
        "uid",
        "user",
        "verify",
    }
)


@dataclass(frozen=True, slots=True)
class CertEntry:
    """
    One certificate file HAProxy serves.

    ``path`` is absolute (for reading and for writing ``<path>.ocsp``);
    ``names`` are the spellings HAProxy's runtime API uses for it (``show ssl
    cert``), empty when unknown (a certificate given as an argument).
    ``ocsp_file`` is the file HAProxy loads the staple from when it is not
    ``<path>.ocsp`` (a crt-store ``load ... ocsp <file>``). ``ocsp_at_start``
    is False when HAProxy reads no staple file for it when it starts (a
    ``load`` line without ``ocsp``): the staple lasts only until HAProxy
    restarts unless pushed again; ``ocsp_source`` names the line that says so.
    """

    path: Path
    managed: bool = False
    source: str = ""
    names: tuple[str, ...] = ()
    ocsp_file: Path | None = None
    ocsp_at_start: bool = True
    ocsp_source: str = ""
    issuer_file: Path | None = None  # a crt-store load line's 'issuer <file>'

    @property
    def haproxy_names(self) -> tuple[str, ...]:
        """The names to use in runtime commands: ``names``, or the absolute path."""
        return self.names or (str(self.path),)


@dataclass(frozen=True, slots=True)
class Discovery:
    """Everything ``discover`` found: certificates, admin sockets, and warnings for a person."""

    certs: tuple[CertEntry, ...]
    sockets: tuple[str, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CertRef:
    """A ``crt`` or ``crt-list`` argument, as written, with the crt-base in force at that line."""

    kind: Literal["crt", "crt-list"]
    path: str
    crt_base: str | None
    source: str
    # The crt-store loads and updater settings read before this line (HAProxy 3.x).
    stores: CrtStores | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Bind:
    """A ``bind`` line: its address argument as written, whether it has ``ssl``, its references."""

    address: str
    ssl: bool
    refs: tuple[CertRef, ...]
    source: str


@dataclass(frozen=True, slots=True)
class StatsSocket:
    """A ``stats socket`` line: address as written and its access level."""

    address: str
    level: str
    source: str
    tls: bool = False


@dataclass(frozen=True, slots=True)
class HAProxyConfig:
    """What an haproxy.cfg says about certificates and runtime sockets."""

    refs: tuple[CertRef, ...] = ()
    crt_base: str | None = None
    sockets: tuple[StatsSocket, ...] = ()
    warnings: tuple[str, ...] = ()
    binds: tuple[Bind, ...] = ()

    @property
    def crts(self) -> tuple[CertRef, ...]:
        """The ``crt`` references only."""
        return tuple(r for r in self.refs if r.kind == "crt")

    @property
    def crt_lists(self) -> tuple[CertRef, ...]:
        """The ``crt-list`` references only."""
        return tuple(r for r in self.refs if r.kind == "crt-list")


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


# --------------------------------------------------------------------- crt-list


def parse_crt_list(
    text: str,
    *,
    source: str,
    crt_base: str | os.PathLike[str] | None,
    cwd: Path,
) -> list[CertEntry]:
    """
    Parse a crt-list file's text.

    Args:
        text: the file's contents.
        source: the file's name, for ``source`` fields and messages.
        crt_base: ``global crt-base`` in force where the list is referenced, or None.
        cwd: HAProxy's working directory, for relative paths.

    Returns:
        One entry per certificate line, in order (not de-duplicated).

    Raises:
        ConfigError: a line HAProxy would refuse; anything else is a bug.
    """
    base = os.fspath(crt_base) if crt_base is not None else None
    entries: list[CertEntry] = []
    for number, line in enumerate(text.split("\n"), start=1):
        where = f"{source}:{number}"
        if line.startswith("#"):  # only in column 1, as HAProxy does
            continue
        if "\0" in line:
            raise ConfigError(f"{where}: NUL character in crt-list line")
        words, options = _split_crt_list_line(line, where)
        if not words:
            continue
        name = _join_base(words[0], base)
        entries.append(
            CertEntry(
                path=cwd / name,
                managed=_ocsp_update_on(options),
                source=where,
                names=(name,),
            )
        )
    return entries


def _split_crt_list_line(line: str, where: str) -> tuple[list[str], list[str]]:
    """Split like crtlist_parse_line(): spaces, '[' and ']' end words; return (words, options)."""
    words: list[str] = []
    marks: dict[str, int] = {}
    for token in _CRT_LIST_TOKEN.findall(line):
        if token in {"[", "]"}:
            _mark_bracket(marks, token, len(words), where)
        else:
            words.append(token)
    start, end = marks.get("["), marks.get("]")
    # An unterminated '[' leaves no options: HAProxy treats the words as SNI filters.
    options = words[start:end] if start is not None and end is not None else []
    return words, options


def _mark_bracket(marks: dict[str, int], bracket: str, position: int, where: str) -> None:
    """Record where '[' or ']' stands, refusing what HAProxy refuses."""
    if bracket in marks:
        raise ConfigError(f"{where}: too many '{bracket}' in crt-list line")
    if bracket == "[" and position == 0:
        raise ConfigError(f"{where}: crt-list line must start with a certificate file, not '['")
    if bracket == "]" and "[" not in marks:
        raise ConfigError(f"{where}: ']' without '[' in crt-list line")
    marks[bracket] = position


def _ocsp_update_on(options: Sequence[str]) -> bool:
    """Whether ``ocsp-update on`` is among crt-list options (the last setting wins)."""
    managed = False
    for index, word in enumerate(options[:-1]):
        if word == "ocsp-update":
            managed = options[index + 1] == "on"
    return managed


def _join_base(path: str, crt_base: str | None) -> str:
    """HAProxy's spelling: ``"<crt-base>/<path>"`` for a relative path when crt-base is set."""
    if crt_base and not path.startswith(("/", "@")):  # "@store/name" is a crt-store's
        return f"{crt_base}/{path}"
    return path


# ------------------------------------------------------------------ haproxy.cfg


def parse_haproxy_config(
    text: str,
    *,
    source: str,
    environ: Mapping[str, str] | None = None,
) -> HAProxyConfig:
    """
    Parse haproxy.cfg text for certificates, crt-base and stats sockets.

    Args:
        text: the configuration.
        source: the file's name, for ``source`` fields and messages.
        environ: variables for ``"$VAR"`` / ``"${VAR}"`` inside double quotes
            (HAProxy expands them from its environment); none when omitted, so
            the parser stays pure. ``discover`` passes ``os.environ``.

    Returns:
        The references in order of appearance, the last crt-base, the sockets
        and warnings for a person.

    Raises:
        ConfigError: a line HAProxy would refuse to tokenise, or a ``crt``,
            ``crt-list`` or ``stats socket`` without its argument; anything
            else is a bug.
    """
    env = environ if environ is not None else {}
    refs: list[CertRef] = []
    binds: list[Bind] = []
    sockets: list[StatsSocket] = []
    warnings: list[str] = []
    crt_base: str | None = None
    crt_stores = CrtStoreReader()
    section = ""
    for number, raw in enumerate(text.split("\n"), start=1):
        where = f"{source}:{number}"
        words = split_line(raw.lstrip(SPACE), env=env, where=where, section=section)
        if not words or words[0].startswith("."):
            # .if/.else/.endif/.diag...: conditions are not evaluated, both branches count.
            continue
        keyword = words[0]
        if keyword in _SECTIONS:
            section = keyword
        elif section == "global" and keyword == "crt-base" and len(words) > 1:
            crt_base = words[1]
        elif section == "global" and keyword == "stats" and words[1:2] == ["socket"]:
            socket = _stats_socket(words, where)
            sockets.append(socket)
            refs.extend(_bind_refs(words[3:], crt_base, where, crt_stores.stores()))
            warning = _socket_warning(socket)
            if warning:
                warnings.append(warning)
        elif keyword == "bind" and section != "global":
            bind_refs = tuple(_bind_refs(words[2:], crt_base, where, crt_stores.stores()))
            refs.extend(bind_refs)
            address = words[1] if len(words) > 1 else ""
            ssl = _has_flag(words[2:], "ssl")
            binds.append(Bind(address, ssl=ssl, refs=bind_refs, source=where))
        crt_stores.feed(section, words, where)  # crt-store sections and their global settings
    return HAProxyConfig(
        refs=tuple(refs),
        crt_base=crt_base,
        sockets=tuple(sockets),
        warnings=tuple(warnings),
        binds=tuple(binds),
    )


def _has_flag(options: Sequence[str], flag: str) -> bool:
    """Whether ``flag`` is among bind options as a keyword, not as another option's argument."""
    index = 0
    while index < len(options):
        if options[index] == flag:
            return True
        takes_arg = options[index] in _ARG_KEYWORDS | _CRT_KEYWORDS | {"crt-list"}
        index += 2 if takes_arg else 1
    return False


def _bind_refs(
    options: Sequence[str], crt_base: str | None, where: str, stores: CrtStores | None = None
) -> Iterator[CertRef]:
    """The ``crt``/``crt-list`` arguments among bind options."""
    index = 0
    while index < len(options):
        word = options[index]
        if word in _CRT_KEYWORDS or word == "crt-list":
            if index + 1 >= len(options) or not options[index + 1]:
                raise ConfigError(f"{where}: '{word}' needs a certificate location")
            kind: Literal["crt", "crt-list"] = "crt-list" if word == "crt-list" else "crt"
            yield CertRef(
                kind=kind, path=options[index + 1], crt_base=crt_base, source=where, stores=stores
            )
            index += 2
        elif word in _ARG_KEYWORDS:
            index += 2
        else:
            index += 1


def _stats_socket(words: Sequence[str], where: str) -> StatsSocket:
    """Read ``stats socket <address> [param*]``; the level defaults to operator (measured)."""
    if len(words) < 3 or not words[2]:  # noqa: PLR2004 - "stats socket <address>"
        raise ConfigError(f"{where}: 'stats socket' needs an address")
    level = "operator"
    tls = False
    params = words[3:]
    index = 0
    while index < len(params):
        word = params[index]
        if word == "level" and index + 1 < len(params):
            level = params[index + 1]
        if word == "ssl":
            tls = True
        index += 2 if word in _ARG_KEYWORDS or word in _CRT_KEYWORDS or word == "crt-list" else 1
    return StatsSocket(address=words[2], level=level, source=where, tls=tls)


def _socket_warning(socket: StatsSocket) -> str | None:
    """Why a socket cannot be used, or None when it can."""
    if socket.address.startswith(("fd@", "sockpair@")):
        return (
            f"{socket.source}: stats socket {socket.address} is an inherited file descriptor "
            "that another process cannot reach; ignored"
        )
    if socket.tls:
        return (
            f"{socket.source}: stats socket {socket.address} uses TLS, "
            "which hastaple's runtime client does not speak; ignored"
        )
    if socket.level != "admin":
        return (
            f"{socket.source}: stats socket {socket.address} has level {socket.level}, "
            "not admin, so it cannot load staples for certificates HAProxy has not "
            "registered (HAPROXY.md §0.9); ignored"
        )
    return None


def _usable(socket: StatsSocket) -> bool:
    return _socket_warning(socket) is None


# ------------------------------------------------------------------------- I/O


def discover(
    paths: Sequence[Path] = (),
    crt_lists: Sequence[Path] = (),
    haproxy_configs: Sequence[Path] = (),
    *,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Discovery:
    """
    Find the certificates and admin sockets from arguments, crt-lists and configs.

    Args:
        paths: certificate files or ``crt``-style directories.
        crt_lists: crt-list files (no crt-base applies).
        haproxy_configs: haproxy.cfg files.
        cwd: HAProxy's working directory, for relative paths; default: ours.
        environ: for ``"$VAR"`` in haproxy.cfg; default ``os.environ``.

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

    for path in paths:
        full = base / path
        if stat.S_ISDIR(_stat(full, str(path)).st_mode):
            found.extend(_walk(full, name=None, source="argument"))
        else:
            found.append(CertEntry(path=full, source="argument"))

    for path in crt_lists:
        entries = parse_crt_list(
            _read(base / path, str(path)), source=str(path), crt_base=None, cwd=base
        )
        found.extend(_check_listed(entries))

    for path in haproxy_configs:
        config = read_haproxy_config(path, cwd=base, environ=env)
        warnings.extend(config.warnings)
        sockets.extend(_socket_address(s.address, base) for s in config.sockets if _usable(s))
        for ref in config.refs:
            entries = _resolve_ref(ref, base)
            found.extend(entries)
            warnings.extend(_crt_store_warnings(ref, entries))

    return Discovery(
        certs=_dedupe(found),
        sockets=tuple(dict.fromkeys(sockets)),
        warnings=tuple(dict.fromkeys(warnings)),
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
    return _crt_store_view(ref, _resolve_files(ref, cwd), cwd)


# ---- crt-store (HAProxy 3.x): what a reference means when a crt-store defines it
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
        path=cwd / load.crt,
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


# ---- end of crt-store


def _resolve_files(ref: CertRef, cwd: Path) -> list[CertEntry]:
    """The certificate entries one reference names, before crt-store lookups."""
    if ref.kind == "crt-list":
        listed = cwd / ref.path  # HAProxy never applies crt-base to the list file itself
        text = _read(listed, f"{ref.source}: crt-list {ref.path}")
        entries = parse_crt_list(text, source=str(listed), crt_base=ref.crt_base, cwd=cwd)
        stores = ref.stores or CrtStores()
        checked: list[CertEntry] = []
        for entry in entries:  # a crt-store's certificate is checked as the store's
            checked.extend([entry] if stores.lookup(entry.names[0]) else _check_listed([entry]))
        return checked
    name = _join_base(ref.path, ref.crt_base)
    if ref.stores is not None and ref.stores.lookup(name) is not None:
        return [CertEntry(path=cwd / name, source=ref.source, names=(name,))]
    if name.startswith("@"):
        raise ConfigError(f"{ref.source}: {name} names no certificate of a crt-store section above")
    full = cwd / name
    info = _stat_or_none(full)
    if info is not None and stat.S_ISDIR(info.st_mode):
        return _walk(full, name=name.rstrip("/"), source=ref.source)
    if info is not None:
        return [CertEntry(path=full, source=ref.source, names=(name,))]
    bundle = _bundle_paths(full, name, ref.source)
    if not bundle:
        raise ConfigError(f"{ref.source}: certificate {name}: No such file or directory")
    return bundle


def _check_listed(entries: Sequence[CertEntry]) -> list[CertEntry]:
    """Check crt-list entries exist and are files (a directory makes HAProxy spin)."""
    checked: list[CertEntry] = []
    for entry in entries:
        info = _stat_or_none(entry.path)
        name = entry.haproxy_names[0]
        if info is None:
            bundle = _bundle_paths(entry.path, name, entry.source, managed=entry.managed)
            if not bundle:
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
        CertEntry(
            path=Path(f"{full}{suffix}"), managed=managed, source=source, names=(f"{name}{suffix}",)
        )
        for suffix in BUNDLE_SUFFIXES
        if _stat_or_none(Path(f"{full}{suffix}")) is not None
    ]


def _walk(directory: Path, *, name: str | None, source: str) -> list[CertEntry]:
    """List a ``crt`` directory as HAProxy does: sorted, regular files only, not recursive."""
    try:
        children = sorted(os.listdir(directory))  # noqa: PTH208 - names, as scandir(3) gives them
    except OSError as exc:
        raise ConfigError(f"{directory}: {exc.strerror or exc}") from exc
    entries: list[CertEntry] = []
    for child in children:
        if not is_certificate_file(child):
            continue
        full = directory / child
        info = _stat(full, str(full))  # follows symlinks; a dangling one stops HAProxy too
        if stat.S_ISREG(info.st_mode):
            names = (f"{name}/{child}",) if name is not None else ()
            entries.append(CertEntry(path=full, source=source, names=names))
    return entries


def _dedupe(entries: Sequence[CertEntry]) -> tuple[CertEntry, ...]:
    """One entry per path, in order of first appearance, merging names and ``managed``."""
    merged: dict[Path, CertEntry] = {}
    for entry in entries:
        seen = merged.get(entry.path)
        if seen is None:
            merged[entry.path] = entry
        else:
            names = tuple(dict.fromkeys(seen.names + entry.names))
            merged[entry.path] = replace(
                seen,
                managed=seen.managed or entry.managed,
                names=names,
                ocsp_file=seen.ocsp_file or entry.ocsp_file,
                ocsp_at_start=seen.ocsp_at_start and entry.ocsp_at_start,
                ocsp_source=seen.ocsp_source or entry.ocsp_source,
            )
    return tuple(merged.values())


def _socket_address(address: str, cwd: Path) -> str:
    """Keep the address as written, but anchor a relative ``unix@`` path at HAProxy's cwd."""
    if address.startswith("unix@") and not address[5:].startswith("/"):
        return f"unix@{cwd / address[5:]}"
    return address


def read_haproxy_config(path: Path, *, cwd: Path, environ: Mapping[str, str]) -> HAProxyConfig:
    """
    Read and parse the haproxy.cfg at ``path`` (relative to ``cwd``).

    Raises:
        ConfigError: the file cannot be read, or HAProxy would refuse it.
    """
    return parse_haproxy_config(_read(cwd / path, str(path)), source=str(path), environ=environ)


def _read(path: Path, label: str) -> str:
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise ConfigError(f"{label}: {exc.strerror or exc}") from exc


def _stat(path: Path, label: str) -> os.stat_result:
    try:
        return path.stat()
    except OSError as exc:
        raise ConfigError(f"{label}: {exc.strerror or exc}") from exc


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None
