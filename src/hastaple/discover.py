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
  *file* itself never is. A path still relative is read from HAProxy's
  working directory (``-C <dir>`` included), or from the one ``global
  default-path`` selects. ``discover(cwd=)`` fixes it; without it, the
  running HAProxy's directory is taken from ``/proc/<pid>/cwd`` (the pid
  from ``show info`` on a stats socket of the configuration, the master's
  when the worker chrooted), else the configuration's directory, with a
  warning (hastaple.haproxy.process).
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
  admin`` sockets can do what hastaple needs (docs/haproxy.md).
- Lines are read through ``hastaple.haproxy.cfgread``: ``global setenv``
  and friends change the environment for later ``$VAR``s, and only the
  branches of ``.if`` blocks that HAProxy takes count; predicates only the
  binary knows are asked of ``haproxy -cc`` (or assumed false, with a warning).
- ``global ssl-load-extra-files`` and ``ssl-load-extra-del-ext`` decide which
  files HAProxy reads next to a certificate (src/cfgparse-ssl.c,
  src/ssl_ckch.c). HAProxy 2.6/2.8 load a bind line's certificates while
  parsing it, so the setting in force at that line counts. With del-ext,
  ``site.crt`` gets its extras from ``site.ocsp``, ``site.issuer``,
  ``site.key``; without ``ocsp``, no ``.ocsp`` file is read at start-up.
- HAProxy 3.x ``crt-store`` sections and the ``@store/name`` references to
  them: ``hastaple.haproxy.crtstore`` reads them; a reference that names a
  ``load`` line resolves to that line's files and runtime name.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from hastaple.errors import ConfigError
from hastaple.haproxy import cfgcond, cfgread, process
from hastaple.haproxy.cfgwords import SPACE
from hastaple.haproxy.crtstore import CrtStoreReader, CrtStores, StoreLoad

logger = logging.getLogger(__name__)

#: Suffixes HAProxy never loads as a certificate from a ``crt`` directory (docs/haproxy.md).
RESERVED_SUFFIXES = frozenset({".key", ".ocsp", ".issuer", ".sctl"})
#: Multi-certificate bundle extensions HAProxy tries when ``<crt>`` itself is missing.
BUNDLE_SUFFIXES = (".rsa", ".ecdsa", ".dsa")
#: The words of ``ssl-load-extra-files`` besides ``all`` and ``none``.
EXTRA_FILE_KINDS = frozenset({"bundle", "sctl", "ocsp", "issuer", "key"})

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
class ExtraFiles:
    """
    Which files HAProxy looks for next to a certificate, as set in ``global``.

    ``kinds``: the words of ``ssl-load-extra-files`` (default ``all``);
    ``del_ext``: ``ssl-load-extra-del-ext`` (``site.crt`` -> ``site.ocsp``);
    ``source``: the line that last set ``kinds``, for messages.
    """

    kinds: frozenset[str] = EXTRA_FILE_KINDS
    del_ext: bool = False
    source: str = ""

    def base(self, path: Path) -> Path:
        """What HAProxy appends ``.ocsp``, ``.issuer``, ``.key`` to for the file ``path``."""
        # HAProxy cuts the last extension of the path string if it is exactly ".crt".
        if self.del_ext and path.name.endswith(".crt"):
            return path.with_name(path.name.removesuffix(".crt"))
        return path


@dataclass(frozen=True, slots=True)
class CertEntry:
    """
    One certificate file HAProxy serves.

    ``path`` is absolute (for reading it); ``names`` are the spellings
    HAProxy's runtime API uses for it (``show ssl cert``), empty when unknown
    (a certificate given as an argument). ``extra_base`` is what HAProxy
    appends ``.ocsp`` and ``.issuer`` to when that is not ``path``
    (``ssl-load-extra-del-ext``). ``ocsp_file`` is the file HAProxy loads the
    staple from when it is not ``<base>.ocsp`` (a crt-store ``load ... ocsp
    <file>``). ``ocsp_at_start`` is False when HAProxy reads no staple file
    for it when it starts (``ssl-load-extra-files`` without ``ocsp``, or a
    ``load`` line without ``ocsp``): the staple lasts only until HAProxy
    restarts unless pushed again; ``ocsp_source`` names the line that says so.
    """

    path: Path
    managed: bool = False
    source: str = ""
    names: tuple[str, ...] = ()
    extra_base: Path | None = None
    ocsp_at_start: bool = True
    ocsp_source: str = ""
    ocsp_file: Path | None = None
    issuer_file: Path | None = None  # a crt-store load line's 'issuer <file>'

    @property
    def haproxy_names(self) -> tuple[str, ...]:
        """The names to use in runtime commands: ``names``, or the absolute path."""
        return self.names or (str(self.path),)

    @property
    def files_base(self) -> Path:
        """The path HAProxy appends ``.ocsp`` and ``.issuer`` to."""
        return self.extra_base or self.path


@dataclass(frozen=True, slots=True)
class Discovery:
    """Everything ``discover`` found: certificates, admin sockets, and warnings for a person."""

    certs: tuple[CertEntry, ...]
    sockets: tuple[str, ...]
    warnings: tuple[str, ...]
    # Sockets below ``level admin``: (address, why nothing is deployed through
    # it). Kept so that a run whose HAProxy has no admin socket says so per row.
    below_admin: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CertRef:
    """A ``crt`` or ``crt-list`` argument, as written, with the crt-base in force at that line."""

    kind: Literal["crt", "crt-list"]
    path: str
    crt_base: str | None
    source: str
    extra: ExtraFiles = ExtraFiles()
    # The directory HAProxy is in while reading this line (``global default-path``),
    # relative to the one it started in; None: the one it started in.
    directory: str | None = None
    # The crt-store loads and updater settings read before this line (HAProxy 3.x).
    stores: CrtStores | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Bind:
    """A ``bind`` line: its address argument as written, whether it has ``ssl``, its references."""

    address: str
    ssl: bool
    refs: tuple[CertRef, ...]
    source: str
    accept_proxy: bool = False  # a PROXY protocol header must come first


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
    chroot: str | None = None

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
    ask: cfgcond.Ask = cfgread.never,
    why_unknown: str = "no HAProxy binary to ask",
) -> HAProxyConfig:
    """
    Parse haproxy.cfg text for certificates, crt-base and stats sockets.

    Args:
        text: the configuration.
        source: the file's name, for ``source`` fields and messages.
        environ: variables for ``"$VAR"`` / ``"${VAR}"`` inside double quotes
            (HAProxy expands them from its environment, changed by ``global
            setenv`` and friends); none when omitted, so the parser stays
            pure. ``discover`` passes ``os.environ``.
        ask: answers the ``.if`` predicates only the HAProxy binary knows
            (``feature``, ``version_atleast``...); None means unknown, which
            counts as false with a warning that says why (``why_unknown``).
        why_unknown: the reason ``ask`` cannot answer, for that warning.

    Returns:
        The references in order of appearance, the last crt-base, the sockets
        and warnings for a person.

    Raises:
        ConfigError: a line HAProxy would refuse to tokenise, or a ``crt``,
            ``crt-list`` or ``stats socket`` without its argument; anything
            else is a bug.
    """
    reader = cfgread.Reader(environ or {}, _SECTIONS, ask, why_unknown)
    refs: list[CertRef] = []
    binds: list[Bind] = []
    sockets: list[StatsSocket] = []
    warnings: list[str] = []
    state = _Global(source)
    crt_stores = CrtStoreReader()
    for line in reader.lines(text, source):
        where, section, words = line.where, line.section, line.words
        keyword = words[0]
        if keyword in _SECTIONS:
            pass
        elif section == "global" and keyword == "stats" and words[1:2] == ["socket"]:
            socket = _stats_socket(words, where)
            sockets.append(socket)
            refs.extend(state.refs(words[3:], where, crt_stores.stores()))
            warning = _socket_warning(socket)
            if warning:
                warnings.append(warning)
        elif section == "global":
            state.read(words, where)
        elif keyword == "bind":
            bind_refs = tuple(state.refs(words[2:], where, crt_stores.stores()))
            refs.extend(bind_refs)
            address = words[1] if len(words) > 1 else ""
            ssl = _has_flag(words[2:], "ssl")
            proxy = _has_flag(words[2:], "accept-proxy")
            binds.append(Bind(address, ssl=ssl, refs=bind_refs, source=where, accept_proxy=proxy))
        crt_stores.feed(section, words, where)  # crt-store sections and their global settings
    warnings.extend(reader.warnings)
    warnings.extend(_no_ocsp_warnings(refs))
    return HAProxyConfig(
        refs=tuple(refs),
        crt_base=state.crt_base,
        sockets=tuple(sockets),
        warnings=tuple(warnings),
        binds=tuple(binds),
        chroot=state.chroot,
    )


@dataclass(slots=True)
class _Global:
    """The ``global`` settings that decide how a later ``crt`` is read, as they stand."""

    source: str
    crt_base: str | None = None
    extra: ExtraFiles = ExtraFiles()
    directory: str | None = None  # default-path
    chroot: str | None = None

    def read(self, words: Sequence[str], where: str) -> None:
        """Take in one ``global`` line (other keywords are not ours)."""
        keyword, has_arg = words[0], len(words) > 1
        if keyword == "crt-base" and has_arg:
            self.crt_base = words[1]
        elif keyword == "chroot" and has_arg:
            self.chroot = words[1]
        elif keyword == "default-path":
            self.directory = _default_path(words, self.source, where)
        elif keyword == "ssl-load-extra-files":
            self.extra = ExtraFiles(_extra_file_kinds(words, where), self.extra.del_ext, where)
        elif keyword == "ssl-load-extra-del-ext":
            self.extra = ExtraFiles(self.extra.kinds, del_ext=True, source=self.extra.source)

    def refs(
        self, options: Sequence[str], where: str, stores: CrtStores | None = None
    ) -> Iterator[CertRef]:
        """The ``crt``/``crt-list`` arguments among bind options, with these settings."""
        return _bind_refs(options, self.crt_base, self.extra, self.directory, where, stores=stores)


def _default_path(words: Sequence[str], source: str, where: str) -> str | None:
    """
    Where ``default-path`` makes HAProxy read relative paths from (src/cfgparse.c).

    ``current``: where it started (None); ``config``: the configuration file's
    directory as named on its command line; ``parent``: that directory's
    parent; ``origin <dir>``: ``<dir>``. Relative results are relative to
    where it started.
    """
    mode = words[1] if len(words) > 1 else ""
    folder = source[: source.rfind("/")] if "/" in source else ""
    if mode == "current":
        return None
    if mode == "config":
        return folder or None
    if mode == "parent":
        return f"{folder}/.." if folder else ".."
    if mode == "origin":
        if len(words) < 3 or not words[2]:  # noqa: PLR2004 - "default-path origin <dir>"
            raise ConfigError(f"{where}: 'default-path origin' expects a directory")
        return words[2]
    raise ConfigError(
        f"{where}: {'unsupported' if mode else 'missing'} default-path mode '{mode}' "
        "(current, config, parent or origin <dir>)"
    )


def _extra_file_kinds(words: Sequence[str], where: str) -> frozenset[str]:
    """Read ``ssl-load-extra-files <word>...``, refusing what HAProxy refuses."""
    args = words[1:]
    if not args or not args[0]:
        raise ConfigError(
            f"{where}: 'ssl-load-extra-files' expects one or more of "
            "none, all, bundle, sctl, ocsp, issuer, key"
        )
    if args[0] in {"none", "all"} or any(w in {"none", "all"} for w in args):
        if len(args) > 1:
            raise ConfigError(f"{where}: 'ssl-load-extra-files': 'none' and 'all' stand alone")
        return frozenset() if args[0] == "none" else EXTRA_FILE_KINDS
    unknown = [w for w in args if w not in EXTRA_FILE_KINDS]
    if unknown:
        raise ConfigError(f"{where}: 'ssl-load-extra-files': unknown word {unknown[0]!r}")
    return frozenset(args)


def _no_ocsp_warnings(refs: Sequence[CertRef]) -> list[str]:
    """One warning per ``ssl-load-extra-files`` line without ``ocsp`` that certificates follow."""
    lines = dict.fromkeys(r.extra.source for r in refs if "ocsp" not in r.extra.kinds)
    return [
        f"{line}: ssl-load-extra-files without 'ocsp': HAProxy does not read <crt>.ocsp "
        "when it starts, so a staple lasts only until HAProxy restarts unless it is "
        "loaded again (hastaple run does that; add 'ocsp' to keep staples across restarts)"
        for line in lines
    ]


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
    options: Sequence[str],
    crt_base: str | None,
    extra: ExtraFiles,
    directory: str | None,
    where: str,
    *,
    stores: CrtStores | None = None,
) -> Iterator[CertRef]:
    """The ``crt``/``crt-list`` arguments among bind options."""
    index = 0
    while index < len(options):
        word = options[index]
        if word in _CRT_KEYWORDS or word == "crt-list":
            if index + 1 >= len(options) or not options[index + 1]:
                raise ConfigError(f"{where}: '{word}' needs a certificate location")
            kind: Literal["crt", "crt-list"] = "crt-list" if word == "crt-list" else "crt"
            yield CertRef(kind, options[index + 1], crt_base, where, extra, directory, stores)
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
            "registered (docs/haproxy.md); ignored"
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
            found.append(CertEntry(path=full, source="argument"))

    for path in crt_lists:
        entries = parse_crt_list(
            _read(base / path, str(path)), source=str(path), crt_base=None, cwd=base
        )
        found.extend(_check_listed(entries))

    for path in haproxy_configs:
        config = read_haproxy_config(path, cwd=base, environ=env, haproxy_binary=haproxy_binary)
        warnings.extend(config.warnings)
        root = base if cwd is not None else config_root(config, path, base, warnings)
        sockets.extend(_socket_address(s.address, root) for s in config.sockets if _usable(s))
        below_admin.extend(
            (_socket_address(s.address, root), _below_admin(s))
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


def config_root(config: HAProxyConfig, path: Path, base: Path, warnings: list[str]) -> Path:
    """
    The directory HAProxy reads this configuration's relative paths from (pass it to resolve_ref).

    ``path``: the configuration as read, relative to ``base`` (our directory);
    a warning is appended to ``warnings`` when the directory is a guess.

    Asked only when there are relative paths: the running HAProxy's working
    directory when one of its sockets answers on this host, else the
    configuration's own directory, said in a warning.
    """
    if not any(_is_relative(ref, base) for ref in config.refs):
        return base
    addresses = [s.address for s in config.sockets if not s.address.startswith(("fd@", "sock"))]
    running = process.working_directory(addresses, chroot=config.chroot is not None)
    if running is not None:
        logger.info("%s: relative paths read from %s (%s)", path, running.path, running.how)
        return running.path
    folder = (base / path).parent
    warnings.append(
        f"{path}: relative certificate paths read from {folder}, the configuration's "
        "directory: no HAProxy answered on a stats socket of this configuration on "
        "this host, so its working directory is unknown (absolute paths or an "
        "absolute crt-base avoid the guess)"
    )
    return folder


def _is_relative(ref: CertRef, base: Path) -> bool:
    """Whether resolving ``ref`` depends on HAProxy's starting directory."""
    if ref.directory is not None:
        return not ref.directory.startswith("/")
    if ref.kind == "crt":
        return not _join_base(ref.path, ref.crt_base).startswith("/")
    if not ref.path.startswith("/"):
        return True
    try:
        text = (base / ref.path).read_bytes().decode("utf-8", "surrogateescape")
        entries = parse_crt_list(text, source=ref.path, crt_base=ref.crt_base, cwd=base)
    except (OSError, ConfigError):
        return False  # resolving it says what is wrong
    return any(not name.startswith("/") for e in entries for name in e.names)


def resolve_ref(ref: CertRef, *, cwd: Path) -> list[CertEntry]:
    """
    One reference's certificate files, as ``discover`` finds them (for per-bind callers).

    Raises:
        ConfigError: a missing or unreadable file, directory or crt-list.
    """
    return _resolve_ref(ref, cwd)


def _resolve_ref(ref: CertRef, cwd: Path) -> list[CertEntry]:
    """Turn one haproxy.cfg reference into certificate entries, checking the files."""
    if ref.directory is not None:
        cwd = cwd / ref.directory
    files = [_with_extra(entry, ref.extra) for entry in _ref_files(ref, cwd)]
    return _crt_store_view(ref, files, cwd)


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
    bundle = _bundle_paths(full, name, ref.source) if bundles else []
    if not bundle:
        raise ConfigError(f"{ref.source}: certificate {name}: No such file or directory")
    return bundle


def _with_extra(entry: CertEntry, extra: ExtraFiles) -> CertEntry:
    """The entry with the files HAProxy reads beside it under ``extra``."""
    base = extra.base(entry.path)
    return dataclasses.replace(
        entry,
        extra_base=base if base != entry.path else None,
        ocsp_at_start="ocsp" in extra.kinds,
        ocsp_source="" if "ocsp" in extra.kinds else extra.source,
    )


def _check_listed(entries: Sequence[CertEntry], *, bundles: bool = True) -> list[CertEntry]:
    """Check crt-list entries exist and are files (a directory makes HAProxy spin)."""
    checked: list[CertEntry] = []
    for entry in entries:
        info = _stat_or_none(entry.path)
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
            merged[entry.path] = dataclasses.replace(
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


def read_haproxy_config(
    path: Path, *, cwd: Path, environ: Mapping[str, str], haproxy_binary: str | None = None
) -> HAProxyConfig:
    """
    Read and parse the haproxy.cfg at ``path`` (relative to ``cwd``).

    ``haproxy_binary`` answers ``.if feature(...)``, ``version_atleast(...)``
    and the like. By default, when the configuration asks such a question:
    the running HAProxy's own executable (found through a stats socket of
    the configuration on this host), else ``haproxy`` on the PATH or in /usr/sbin.

    Raises:
        ConfigError: the file cannot be read, or HAProxy would refuse it.
    """
    text = _read(cwd / path, str(path))
    # HAProxy sets this one before it reads the configuration (the host name, or -L).
    env = {**environ, "HAPROXY_LOCALPEER": socket.gethostname()}
    if haproxy_binary is None:
        asked: list[str] = []

        def record(name: str, _args: tuple[str, ...]) -> None:  # a first pass, to find sockets
            asked.append(name)

        first = parse_haproxy_config(text, source=str(path), environ=env, ask=record)
        if asked:
            haproxy_binary = process.running_binary(s.address for s in first.sockets)
            logger.info("%s: .if predicates asked of %s", path, haproxy_binary or "haproxy")
    ask, why = process.condition_oracle(haproxy_binary)
    return parse_haproxy_config(text, source=str(path), environ=env, ask=ask, why_unknown=why)


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
