"""
What an haproxy.cfg says about certificates and runtime sockets: values and a pure parser.

``parse_haproxy_config`` turns the text into an ``HAProxyConfig`` (the
``crt`` and ``crt-list`` references of every ``bind`` and ``stats socket``
line with the ``global`` settings in force there, the stats sockets, the
warnings for a person). The rules copy HAProxy 2.6/2.8 (src/cfgparse-ssl.c,
src/tools.c ``parse_line``) and were checked against both binaries:

- ``crt <file|dir>`` and ``crt-list <file>`` may appear several times on any
  ``bind`` line (and on a ``stats socket`` line, which takes bind options).
- A relative ``crt`` is prefixed with ``global crt-base`` as the string
  ``"<crt-base>/<path>"`` (``join_base``); the crt-list file itself never is.
  ``global default-path`` moves the directory relative paths are read from.
- ``stats socket`` defaults to ``level operator`` (measured); only ``level
  admin`` sockets can do what hastaple needs (docs/haproxy.md).
- Lines are read through ``hastaple.haproxy.cfgread``: ``global setenv``
  and friends change the environment for later ``$VAR``s, and only the
  branches of ``.if`` blocks that HAProxy takes count.
- ``global ssl-load-extra-files`` and ``ssl-load-extra-del-ext`` decide which
  files HAProxy reads next to a certificate; the setting in force at a bind
  line counts, since HAProxy loads its certificates while parsing it.
- ``global issuers-chain-path <dir>`` gives a chainless certificate the chain
  of the file in ``<dir>`` whose first certificate issued it; the one in force
  at a bind line counts, as for the extra files.
- HAProxy 3.x ``crt-store`` sections are read by ``hastaple.haproxy.crtstore``.

Pure: no file is read here and no HAProxy asked (``ask`` answers the ``.if``
predicates only the binary knows); ``hastaple.sources.discover`` does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from hastaple.errors import ConfigError
from hastaple.haproxy import cfgcond, cfgread
from hastaple.haproxy.cfgwords import ARG_KEYWORDS, CRT_KEYWORDS, EXTRA_FILE_KINDS, SECTIONS
from hastaple.haproxy.crtstore import CrtStoreReader, CrtStores


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
class ChainPath:
    """A ``global issuers-chain-path`` line: its directory as written, read from ``directory``."""

    path: str
    directory: str | None  # the default-path in force on that line; None: HAProxy's own
    source: str


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
    # The ``issuers-chain-path`` in force at this line, if any.
    issuers_chain: ChainPath | None = None


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


def join_base(path: str, crt_base: str | None) -> str:
    """HAProxy's spelling: ``"<crt-base>/<path>"`` for a relative path when crt-base is set."""
    if crt_base and not path.startswith(("/", "@")):  # "@store/name" is a crt-store's
        return f"{crt_base}/{path}"
    return path


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
    reader = cfgread.Reader(environ or {}, SECTIONS, ask, why_unknown)
    refs: list[CertRef] = []
    binds: list[Bind] = []
    sockets: list[StatsSocket] = []
    warnings: list[str] = []
    state = _Global(source)
    crt_stores = CrtStoreReader()
    for line in reader.lines(text, source):
        where, section, words = line.where, line.section, line.words
        keyword = words[0]
        if keyword in SECTIONS:
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
    issuers_chain: ChainPath | None = None

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
        elif keyword == "issuers-chain-path":
            if len(words) != 2 or not words[1]:  # noqa: PLR2004 - exactly one directory
                raise ConfigError(f"{where}: 'issuers-chain-path' expects one directory")
            self.issuers_chain = ChainPath(words[1].rstrip("/") or "/", self.directory, where)

    def refs(
        self, options: Sequence[str], where: str, stores: CrtStores | None = None
    ) -> Iterator[CertRef]:
        """The ``crt``/``crt-list`` arguments among bind options, with these settings."""
        refs = _bind_refs(options, self.crt_base, self.extra, self.directory, where, stores=stores)
        return (replace(ref, issuers_chain=self.issuers_chain) for ref in refs)


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
        takes_arg = options[index] in ARG_KEYWORDS | CRT_KEYWORDS | {"crt-list"}
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
        if word in CRT_KEYWORDS or word == "crt-list":
            if index + 1 >= len(options) or not options[index + 1]:
                raise ConfigError(f"{where}: '{word}' needs a certificate location")
            kind: Literal["crt", "crt-list"] = "crt-list" if word == "crt-list" else "crt"
            yield CertRef(kind, options[index + 1], crt_base, where, extra, directory, stores)
            index += 2
        elif word in ARG_KEYWORDS:
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
        index += 2 if word in ARG_KEYWORDS or word in CRT_KEYWORDS or word == "crt-list" else 1
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


def is_usable(socket: StatsSocket) -> bool:
    """Whether hastaple can load staples through ``socket`` (admin, plain, reachable)."""
    return _socket_warning(socket) is None
