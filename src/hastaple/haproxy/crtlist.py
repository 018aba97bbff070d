"""
crt-list files read as HAProxy reads them (src/ssl_crtlist.c): a pure parser.

Lines: ``<crtfile> [<options>] [[!]<sni> ...]``; a line is a comment only
when it *starts* with ``#``; ``[`` and ``]`` split words anywhere; an
unterminated ``[`` is accepted by HAProxy (the options become SNI filters)
and so here too. ``[... ocsp-update on ...]`` marks the entry as managed by
HAProxy 2.8's own updater. A relative entry gets ``crt-base`` prepended as a
string. Pure: text in, ``CertEntry`` values out; whether the files exist is
``hastaple.sources.discover``'s business.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from hastaple.core.model import CertEntry
from hastaple.errors import ConfigError
from hastaple.haproxy.cfgfile import join_base
from hastaple.haproxy.cfgwords import SPACE

_CRT_LIST_TOKEN = re.compile(r"[\[\]]|[^\[\]" + re.escape(SPACE) + "]+")  # C isspace()


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
        name = join_base(words[0], base)
        entries.append(
            CertEntry(
                file=str(cwd / name),
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
