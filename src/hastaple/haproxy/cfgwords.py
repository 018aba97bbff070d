"""
haproxy.cfg lines split into words exactly as HAProxy's parse_line() does (src/tools.c).

Also the keyword tables the readers share (sections, bind options that take
an argument). Pure: text and an environment mapping in, words out, no I/O.
Used by ``hastaple.haproxy.cfgfile`` and ``crtlist``; checked against HAProxy
2.6 and 2.8 (tests/test_discover.py). Must not read files or run HAProxy.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

from hastaple.errors import ConfigError

#: C isspace(), what HAProxy splits on.
SPACE = " \t\n\v\f\r"

#: The words of ``ssl-load-extra-files`` besides ``all`` and ``none``.
EXTRA_FILE_KINDS = frozenset({"bundle", "sctl", "ocsp", "issuer", "key"})


#: The section keywords: a line starting with one opens that section.
SECTIONS = frozenset(
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


#: Bind options that name a certificate file or directory.
CRT_KEYWORDS = frozenset({"crt", "default-crt"})


# bind / stats socket options that take one argument: skipping the argument
# keeps "name crt" from reading as a "crt" keyword.
ARG_KEYWORDS = frozenset(
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


class _Line:
    r"""
    One haproxy.cfg line, split into words like HAProxy's parse_line() (src/tools.c).

    Quotes: '...' is literal; "..." expands $VAR, ${VAR}, ${VAR-default} and
    ${VAR[*]} (one word per value word). A backslash (not inside '') escapes
    space, backslash, #, quotes, \t \n \r \xHH, and $ inside "...". An
    unquoted # starts a comment.
    """

    def __init__(self, text: str, *, env: Mapping[str, str], where: str, section: str) -> None:
        self.text = text
        self.env = env
        self.where = where
        self.section = section
        self.pos = 0
        self.words: list[str] = []
        self.word: list[str] = []
        self.started = False
        self.squote = False
        self.dquote = False

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def split(self) -> list[str]:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            quoted = self.squote or self.dquote
            if char in "\0\r\n" or (char == "#" and not quoted):
                break
            if char == '"' and not self.squote:
                self.dquote = not self.dquote
                self._take("")
            elif char == "'" and not self.dquote:
                self.squote = not self.squote
                self._take("")
            elif char == "\\" and not self.squote:
                self.word.append(_escape(self, dquote=self.dquote))
                self.started = True
            elif char in SPACE and not quoted:
                self._space()
            elif char == "$" and self.dquote:
                self._variable()
            else:
                self._take(char)
        if self.squote or self.dquote:
            raise ConfigError(f"{self.where}: unmatched quote")
        if self.started:
            self.words.append("".join(self.word))
        return self.words

    def _take(self, char: str) -> None:
        self.word.append(char)
        self.started = True
        self.pos += 1

    def _space(self) -> None:
        while self.peek() and self.peek() in SPACE:
            self.pos += 1
        if self.started:
            self.words.append("".join(self.word))
        self.word, self.started = [], False

    def _variable(self) -> None:
        values = _expand(self)
        self.word.append(values[0])
        for extra in values[1:]:  # ${VAR[*]}: each value word is its own argument
            self.words.append("".join(self.word))
            self.word = [extra]
        self.started = True


def split_line(text: str, *, env: Mapping[str, str], where: str, section: str) -> list[str]:
    r"""
    Split one haproxy.cfg line into words, as HAProxy does.

    ``where`` ("<file>:<line>") names the line in errors and gives ``.FILE``/``.LINE``;
    ``section`` gives ``.SECTION``.

    Raises:
        ConfigError: a line HAProxy would refuse to tokenise (unmatched quote,
            bad ``\x`` escape, bad variable name or brace).
    """
    return _Line(text, env=env, where=where, section=section).split()


def _escape(cur: _Line, *, dquote: bool) -> str:
    """Decode the backslash sequence at the cursor and step over it."""
    following = cur.peek(1)
    simple = {" ": " ", "\\": "\\", "#": "#", "'": "'", '"': '"', "t": "\t", "n": "\n", "r": "\r"}
    if following in simple and following:
        cur.pos += 2
        return simple[following]
    if following == "$" and dquote:
        cur.pos += 2
        return "$"
    if following == "x":
        digits = cur.peek(2) + cur.peek(3)
        if len(digits) != 2 or any(c not in string.hexdigits for c in digits):  # noqa: PLR2004
            raise ConfigError(f"{cur.where}: invalid '\\x' escape, two hex digits expected")
        cur.pos += 4
        value = int(digits, 16)
        # A raw byte: keep it the way os.fsdecode() would (surrogateescape).
        return chr(value) if value < 0x80 else chr(0xDC00 + value)  # noqa: PLR2004
    cur.pos += 1  # other backslashes are kept, the next character is read normally
    return "\\"


def _expand(cur: _Line) -> list[str]:
    """Expand the variable at the cursor ('$' inside double quotes); return its word(s)."""
    cur.pos += 1
    brace = cur.peek() == "{"
    if brace:
        cur.pos += 1
    value = _lookup(cur, _variable_name(cur))
    expand_words = brace and cur.peek() == "["
    if expand_words:
        if cur.peek(1) != "*" or cur.peek(2) != "]":
            raise ConfigError(f"{cur.where}: only '[*]' may follow a variable name")
        cur.pos += 3
    if brace:
        value = _close_brace(cur, value)
    if value is None:
        return [""]
    return (value.split() or [""]) if expand_words else [value]


def _variable_name(cur: _Line) -> str:
    """Read a variable name: [A-Za-z_.][A-Za-z0-9_]* (a leading '.' is a pseudo-variable)."""
    start = cur.pos
    first = cur.peek()
    if not (first.isascii() and (first.isalpha() or first in "_.")) or not first:
        raise ConfigError(f"{cur.where}: invalid environment variable name after '$'")
    cur.pos += 1
    while cur.peek() and cur.peek().isascii() and (cur.peek().isalnum() or cur.peek() == "_"):
        cur.pos += 1
    return cur.text[start : cur.pos]


def _lookup(cur: _Line, name: str) -> str | None:
    """A variable's value: HAProxy's pseudo-variables, or the environment."""
    if not name.startswith("."):
        return cur.env.get(name)
    line = cur.where.rsplit(":", 1)
    pseudo = {".LINE": line[-1], ".FILE": line[0], ".SECTION": cur.section}
    if name not in pseudo:
        raise ConfigError(f"{cur.where}: unknown pseudo-variable '{name}'")
    return pseudo[name]


def _close_brace(cur: _Line, value: str | None) -> str | None:
    """Read ``-default}`` or ``}`` after a braced name; the default applies when unset."""
    if cur.peek() == "-":
        end = cur.text.find("}", cur.pos)
        if end < 0:
            raise ConfigError(f"{cur.where}: unmatched '{{' in variable")
        if value is None:
            value = cur.text[cur.pos + 1 : end]
        cur.pos = end
    if cur.peek() != "}":
        raise ConfigError(f"{cur.where}: unmatched '{{' in variable")
    cur.pos += 1
    return value
