"""
haproxy.cfg lines as HAProxy's parser sees them: environment and conditional blocks applied.

What HAProxy does before a keyword reaches its section (src/cfgparse.c
``readcfgfile``, src/cfgparse-global.c), and so what this reader does:

- Every line is split into words first (``cfgwords.split_line``), with
  ``$VAR`` expanded from the environment *as it is at that line*; a split
  error stops HAProxy even inside a block that is not taken.
- ``setenv``, ``presetenv``, ``unsetenv`` and ``resetenv`` in ``global``
  change that environment for the lines after them, in order.
- ``.if`` / ``.elif`` / ``.else`` / ``.endif`` select lines; a condition is
  evaluated only when its branch could still be taken (``hastaple.haproxy.cfgcond``).
  Lines of a branch not taken are not read at all.
- In a taken branch, ``.alert`` stops HAProxy; ``.warning``, ``.notice`` and
  ``.diag`` only print (one argument each); any other ``.word`` is an error.
- A line starting with ``[`` is a 2.8+ scope marker, not a keyword.

Pure: text, an environment and a predicate callback in; lines and warnings out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field

from hastaple.errors import ConfigError
from hastaple.haproxy import cfgcond
from hastaple.haproxy.cfgwords import SPACE, split_line

#: HAProxy refuses deeper nesting (MAXNESTEDCONDS).
MAX_NESTED = 100
_ENV_KEYWORDS = frozenset({"setenv", "presetenv", "unsetenv", "resetenv"})
_MESSAGES = frozenset({".alert", ".warning", ".notice", ".diag"})


@dataclass(frozen=True, slots=True)
class Line:
    """One line that HAProxy hands to a section parser: where it is, its section, its words."""

    where: str
    section: str
    words: list[str]


@dataclass(slots=True)
class _Block:
    """One open ``.if``: whether its current branch is read, and whether one already was."""

    reading: bool
    decided: bool  # a branch was taken, or the parent block is not read
    had_else: bool = False


def never(_name: str, _args: tuple[str, ...]) -> bool | None:
    """A predicate callback that knows nothing (no HAProxy binary to ask)."""
    return None


@dataclass
class Reader:
    """
    Reads haproxy.cfg files in order, keeping the environment between them.

    ``environ``: the process environment HAProxy starts with; ``ask``: answers
    binary predicates (``feature``, ``version_atleast``...), None when unknown;
    ``sections``: the keywords that open a section.
    """

    environ: Mapping[str, str]
    sections: Collection[str]
    ask: cfgcond.Ask = never
    why_unknown: str = "no HAProxy binary to ask"
    env: dict[str, str] = field(init=False)
    warnings: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.env = dict(self.environ)

    def lines(self, text: str, source: str) -> Iterator[Line]:
        """
        The lines of ``text`` that HAProxy reads, in order.

        Raises:
            ConfigError: a line or a block structure HAProxy would refuse.
        """
        blocks: list[_Block] = []
        section = ""
        where = source
        for number, raw in enumerate(text.split("\n"), start=1):
            where = f"{source}:{number}"
            stripped = raw.lstrip(SPACE)
            if stripped.startswith("["):
                continue
            words = split_line(stripped, env=self.env, where=where, section=section)
            if not words:
                continue
            if words[0] in {".if", ".elif", ".else", ".endif"}:
                self._block(blocks, words, where)
                continue
            if blocks and not blocks[-1].reading:
                continue
            if words[0].startswith("."):
                self._message(words, where)
                continue
            if words[0] in self.sections:
                section = words[0]
            elif section == "global" and words[0] in _ENV_KEYWORDS:
                self._environment(words, where)
            yield Line(where, section, words)
        if blocks:
            raise ConfigError(f"{where}: '.if' block not closed with '.endif'")

    # -- conditional blocks ------------------------------------------------

    def _block(self, blocks: list[_Block], words: list[str], where: str) -> None:
        keyword = words[0]
        if keyword == ".if":
            if len(blocks) + 1 >= MAX_NESTED:
                raise ConfigError(f"{where}: too many nested '.if' (at most {MAX_NESTED - 1})")
            if blocks and not blocks[-1].reading:
                blocks.append(_Block(reading=False, decided=True))
                return
            taken = self._condition(words, where)
            blocks.append(_Block(reading=taken, decided=taken))
            return
        if keyword in {".else", ".endif"} and len(words) > 1:
            raise ConfigError(f"{where}: unexpected argument '{words[1]}' for '{keyword}'")
        if not blocks:
            raise ConfigError(f"{where}: '{keyword}' without a matching '.if'")
        block = blocks[-1]
        if keyword == ".endif":
            blocks.pop()
            return
        if block.had_else:
            raise ConfigError(f"{where}: '{keyword}' after '.else' is not permitted")
        if block.decided:
            block.reading = False
        elif keyword == ".else":
            block.reading = block.decided = True
        else:
            block.reading = block.decided = self._condition(words, where)
        block.had_else = keyword == ".else"

    def _condition(self, words: list[str], where: str) -> bool:
        text = " ".join(words[1:])  # HAProxy joins the words back with single spaces
        outcome = cfgcond.evaluate(cfgcond.parse(text, where), self.env, self.ask)
        if outcome.unknown:
            unknown = ", ".join(str(p) for p in outcome.unknown)
            taken = "taken" if outcome.value else "not taken"
            self.warnings.append(
                f"{where}: cannot evaluate {unknown} ({self.why_unknown}); assumed false, "
                f"so this '{words[0]}' branch was {taken}"
            )
        return outcome.value

    # -- the rest ----------------------------------------------------------

    @staticmethod
    def _message(words: list[str], where: str) -> None:
        keyword = words[0]
        if keyword not in _MESSAGES:
            raise ConfigError(f"{where}: unknown directive '{keyword}'")
        if len(words) > 2:  # noqa: PLR2004 - the directive and one message
            raise ConfigError(
                f"{where}: unexpected argument '{words[2]}' for '{keyword}' "
                "(quote the message if it contains spaces)"
            )
        if keyword == ".alert":
            message = words[1] if len(words) > 1 else ""
            raise ConfigError(f"{where}: .alert '{message}': HAProxy refuses this configuration")

    def _environment(self, words: list[str], where: str) -> None:
        """Apply ``setenv``/``presetenv``/``unsetenv``/``resetenv`` as HAProxy does."""
        keyword, args = words[0], words[1:]
        if keyword in {"setenv", "presetenv"}:
            if len(args) > 3:  # noqa: PLR2004 - HAProxy tolerates one extra word
                raise ConfigError(f"{where}: too many arguments for '{keyword}'")
            if len(args) < 2 or not args[1]:  # noqa: PLR2004
                raise ConfigError(f"{where}: '{keyword}' expects a name and a value")
            _check_name(args[0], keyword, where)
            if keyword == "setenv" or args[0] not in self.env:
                self.env[args[0]] = args[1]
        elif keyword == "unsetenv":
            if not args:
                raise ConfigError(f"{where}: 'unsetenv' expects at least one variable name")
            for name in args:
                _check_name(name, keyword, where)
                self.env.pop(name, None)
        else:  # resetenv: keep only the names given
            self.env = {k: v for k, v in self.env.items() if k in args}


def _check_name(name: str, keyword: str, where: str) -> None:
    """setenv(3) and unsetenv(3) refuse an empty name or one with '='."""
    if not name or "=" in name:
        raise ConfigError(f"{where}: '{keyword}' failed on variable '{name}': Invalid argument")
