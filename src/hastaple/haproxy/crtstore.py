"""
HAProxy 3.x ``crt-store`` sections: which certificate files they load, and by which name.

Pure: configuration words in, values out, no I/O. ``hastaple.sources.discover`` feeds
every line of haproxy.cfg to a ``CrtStoreReader`` and looks ``crt`` arguments
and crt-list entries up in the resulting ``CrtStores``.

The rules, as HAProxy 3.0 applies them (src/ssl_ckch.c) and as measured on 3.0.11:

- ``crt-store [<name>]`` opens a section. It starts with the ``crt-base`` and
  ``key-base`` of ``global``; its own ``crt-base``/``key-base`` lines replace
  them, but only before its first ``load`` line.
- ``load`` takes keyword/value pairs: ``crt`` (mandatory), ``key``, ``ocsp``,
  ``issuer``, ``sctl``, ``alias`` and ``ocsp-update on|off``; a repeated
  keyword keeps the last value. A relative ``key`` is prefixed with the
  section's key-base, every other relative file with its crt-base.
- HAProxy loads exactly the files named there. In particular it does not read
  ``<crt>.ocsp`` next to the PEM: only the ``ocsp <file>`` of the line, and a
  named file that does not exist stops HAProxy from starting.
- The runtime name (``show ssl cert``, ``set ssl cert``, a bind's ``crt``):
  ``@<store>/<alias>`` with an alias (``@/<alias>`` in a section without a
  name); otherwise ``@<store>/<crt as written>`` in a named section; otherwise
  the ``crt`` as written, prefixed with ``global`` crt-base when relative
  (the section's own crt-base does not count for the name). Two loads with
  one name are an error.
- A bind ``crt`` or a crt-list entry that names a loaded certificate uses it
  (crt-base is not prepended to names that start with ``@``).
- HAProxy's own OCSP updater owns a certificate when its ``load`` line says
  ``ocsp-update on``, or says nothing and ``global`` has ``ocsp-update.mode on``;
  ``ocsp-update.disable on`` turns the updater off altogether.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from hastaple.errors import ConfigError

#: ``load`` keywords naming a file, and the base (crt or key) a relative one is joined to.
_FILE_KEYWORDS = {"crt": "crt", "key": "key", "ocsp": "crt", "issuer": "crt", "sctl": "crt"}
_SWITCHES = {"on": True, "off": False}


@dataclass(frozen=True, slots=True)
class StoreLoad:
    """
    One ``load`` line: its runtime name and the files HAProxy opens for it.

    Files are spelled as HAProxy opens them (section base applied, relative to
    HAProxy's working directory when still relative). ``ocsp_update`` is the
    line's setting, None when it leaves it to ``global ocsp-update.mode``.
    """

    name: str
    crt: str
    source: str
    key: str | None = None
    ocsp: str | None = None
    issuer: str | None = None
    sctl: str | None = None
    ocsp_update: bool | None = None


@dataclass(frozen=True, slots=True)
class CrtStores:
    """Every ``load`` line read so far, by runtime name, and the global updater switches."""

    loads: Mapping[str, StoreLoad] = field(default_factory=lambda: MappingProxyType({}))
    update_mode: bool = False
    update_disabled: bool = False

    def lookup(self, name: str) -> StoreLoad | None:
        """The certificate a bind ``crt`` or crt-list entry ``name`` refers to, if a store's."""
        return self.loads.get(name)

    def managed(self, load: StoreLoad) -> bool:
        """Whether HAProxy's own OCSP updater owns this certificate."""
        if self.update_disabled:
            return False
        return load.ocsp_update if load.ocsp_update is not None else self.update_mode

    @property
    def updater_default_on(self) -> bool:
        """Whether ``global ocsp-update.mode on`` puts every certificate under the updater."""
        return self.update_mode and not self.update_disabled


class CrtStoreReader:
    """Fed each haproxy.cfg line in order; keeps the crt-store state HAProxy keeps."""

    def __init__(self) -> None:
        self._loads: dict[str, StoreLoad] = {}
        self._global_crt_base: str | None = None
        self._global_key_base: str | None = None
        self._update_mode = False
        self._update_disabled = False
        self._store = ""
        self._crt_base: str | None = None
        self._key_base: str | None = None
        self._loaded = False
        self._snapshot: CrtStores | None = None

    def feed(self, section: str, words: Sequence[str], where: str) -> None:
        """
        Take one configuration line, split into words; ``section`` is the one it is in.

        Raises:
            ConfigError: a crt-store line HAProxy refuses.
        """
        if not words:
            return
        keyword = words[0]
        if keyword == "crt-store":
            self._open(words, where)
        elif section == "global":
            self._global(words, where)
        elif section == "crt-store":
            self._store_line(words, where)

    def stores(self) -> CrtStores:
        """What has been read so far (the same value until something changes)."""
        if self._snapshot is None:
            self._snapshot = CrtStores(
                loads=MappingProxyType(dict(self._loads)),
                update_mode=self._update_mode,
                update_disabled=self._update_disabled,
            )
        return self._snapshot

    def _open(self, words: Sequence[str], where: str) -> None:
        if len(words) > 2:  # noqa: PLR2004 - "crt-store <name>"
            raise ConfigError(f"{where}: 'crt-store' takes at most one name")
        self._store = words[1] if len(words) > 1 else ""
        self._crt_base, self._key_base = self._global_crt_base, self._global_key_base
        self._loaded = False

    def _global(self, words: Sequence[str], where: str) -> None:
        keyword, value = words[0], words[1] if len(words) > 1 else ""
        if keyword == "crt-base" and value:
            self._global_crt_base = value
        elif keyword == "key-base" and value:
            self._global_key_base = value
        elif keyword in {"ocsp-update.mode", "ocsp-update.disable"}:
            if value not in _SWITCHES:
                raise ConfigError(f"{where}: '{keyword}' expects on or off, not '{value}'")
            if keyword == "ocsp-update.mode":
                self._update_mode = _SWITCHES[value]
            else:
                self._update_disabled = _SWITCHES[value]
            self._snapshot = None

    def _store_line(self, words: Sequence[str], where: str) -> None:
        keyword = words[0]
        if keyword in {"crt-base", "key-base"}:
            if len(words) < 2 or not words[1]:  # noqa: PLR2004 - "<keyword> <path>"
                raise ConfigError(f"{where}: '{keyword}' needs a path")
            if self._loaded:
                raise ConfigError(
                    f"{where}: '{keyword}' must come before the first 'load' line of its crt-store"
                )
            if keyword == "crt-base":
                self._crt_base = words[1]
            else:
                self._key_base = words[1]
        elif keyword == "load":
            load = self._load(words[1:], where)
            if load.name in self._loads:
                raise ConfigError(
                    f"{where}: certificate '{load.name}' is already loaded "
                    f"({self._loads[load.name].source})"
                )
            self._loads[load.name] = load
            self._loaded = True
            self._snapshot = None
        else:
            raise ConfigError(f"{where}: unknown keyword '{keyword}' in a crt-store section")

    def _load(self, args: Sequence[str], where: str) -> StoreLoad:
        """Read a ``load`` line's keyword/value pairs into a StoreLoad."""
        files: dict[str, str] = {}
        alias: str | None = None
        update: bool | None = None
        for index in range(0, len(args), 2):
            keyword = args[index]
            value = args[index + 1] if index + 1 < len(args) else ""
            if keyword not in {*_FILE_KEYWORDS, "alias", "ocsp-update"}:
                raise ConfigError(f"{where}: unknown keyword '{keyword}' on a 'load' line")
            if not value:
                raise ConfigError(f"{where}: '{keyword}' on a 'load' line needs a value")
            if keyword == "alias":
                if value.startswith("/"):
                    raise ConfigError(f"{where}: an alias cannot start with '/': '{value}'")
                alias = value
            elif keyword == "ocsp-update":
                if value not in _SWITCHES:
                    raise ConfigError(f"{where}: 'ocsp-update' expects on or off, not '{value}'")
                update = _SWITCHES[value]
            else:
                files[keyword] = value
        crt = files.get("crt")
        if crt is None:
            raise ConfigError(f"{where}: a 'load' line needs 'crt <file>'")
        joined = {kw: self._join(kw, path) for kw, path in files.items()}
        return StoreLoad(
            name=self._name(crt, alias),
            crt=joined["crt"],
            source=where,
            key=joined.get("key"),
            ocsp=joined.get("ocsp"),
            issuer=joined.get("issuer"),
            sctl=joined.get("sctl"),
            ocsp_update=update,
        )

    def _join(self, keyword: str, path: str) -> str:
        base = self._key_base if _FILE_KEYWORDS[keyword] == "key" else self._crt_base
        return f"{base}/{path}" if base and not path.startswith("/") else path

    def _name(self, crt: str, alias: str | None) -> str:
        if alias is not None:
            return f"@{self._store}/{alias}"
        if self._store:
            return f"@{self._store}{'' if crt.startswith('/') else '/'}{crt}"
        if self._global_crt_base and not crt.startswith("/"):
            return f"{self._global_crt_base}/{crt}"
        return crt
