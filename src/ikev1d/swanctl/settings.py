"""strongSwan's settings syntax (swanctl.conf, strongswan.conf), read strictly.

The grammar, as strongswan.conf(5) describes it::

    settings := (section | keyvalue | include)*
    section  := name [":" name ("," name)*] "{" settings "}"
    keyvalue := key "=" value NEWLINE
    include  := "include" path NEWLINE

* ``#`` starts a comment that runs to the end of the line (outside quotes).
* A value runs from after ``=`` to the end of the line, a comment, or a ``}``
  closing the section on the same line (``vici { socket = unix://x }``), and
  is trimmed; an empty value is allowed (it clears a value).  A value in
  double quotes may hold anything, with the escapes ``\\"``, ``\\\\``,
  ``\\n``, ``\\r``, ``\\t`` and a backslash before a line break to continue
  the string on the next line.
* Section names and keys are any printable characters except
  ``. , : { } = " #`` and white space.
* A section that appears twice is one section (the second extends the
  first); a key set twice keeps its last value.
* ``include PATH`` reads other files into the section it appears in; a
  relative path is relative to the including file, and may be a shell
  pattern.  Files are read through a callback, so this module does no I/O.
* ``name : other, a.b { }`` inherits every setting and subsection of the
  referenced sections (absolute names); the section's own settings win.

Everything else (a stray ``}``, a key without ``=``, an unterminated string,
an include loop) is a :class:`SettingsError` naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath

from ikev1d.errors import Ikev1dError

__all__ = [
    "IncludeResolver",
    "Section",
    "Setting",
    "SettingsError",
    "parse_settings",
]

# (pattern, directory of the including file) -> [(file name, text)], in order.
IncludeResolver = Callable[[str, PurePath], list[tuple[str, str]]]

_NAME_RE = re.compile(r'[^\s.,:{}="#]+')
_MAX_INCLUDE_DEPTH = 32


class SettingsError(Ikev1dError):
    """A file that does not parse; str() is ``FILE:LINE: reason``."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(source, line, reason)
        self.source = source
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass
class Setting:
    """``key = value`` with where it was written."""

    key: str
    value: str
    source: str
    line: int


@dataclass
class Section:
    """A ``name { ... }`` section; the file itself is the unnamed root."""

    name: str
    source: str
    line: int
    settings: dict[str, Setting] = field(default_factory=dict)
    sections: dict[str, Section] = field(default_factory=dict)
    references: list[tuple[str, str, int]] = field(default_factory=list)
    # Absolute names of sections others inherit from (set on the root only).
    referenced: set[str] = field(default_factory=set)

    def section(self, name: str) -> Section | None:
        return self.sections.get(name)

    def value(self, key: str) -> str | None:
        setting = self.settings.get(key)
        return setting.value if setting is not None else None

    def walk(self, prefix: str = "") -> Iterator[tuple[str, Section]]:
        """(absolute name, section) for this section's subsections, depth first."""
        for name, sub in self.sections.items():
            path = f"{prefix}.{name}" if prefix else name
            yield path, sub
            yield from sub.walk(path)


# --- the lexer ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "{", "}", "=", ":", ",", ".", "value", "newline", "include"
    text: str
    line: int


class _Lexer:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.pos = 0
        self.line = 1

    def error(self, reason: str, line: int | None = None) -> SettingsError:
        return SettingsError(self.source, line if line is not None else self.line, reason)

    def _skip_blanks(self) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r":
                self.pos += 1
            elif char == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def tokens(self) -> Iterator[_Token]:
        text = self.text
        after_equals = False
        at_line_start = True
        while True:
            self._skip_blanks()
            if self.pos >= len(text):
                return
            char = text[self.pos]
            if after_equals:
                after_equals = False
                yield self._value()
                continue
            if char == "\n":
                yield _Token("newline", "\n", self.line)
                self.pos += 1
                self.line += 1
                at_line_start = True
                continue
            if char in "{}=:,.":
                yield _Token(char, char, self.line)
                self.pos += 1
                after_equals = char == "="
                at_line_start = char in "{}"
                continue
            if char == '"':
                raise self.error("a quoted string is only allowed as a value (after '=')")
            match = _NAME_RE.match(text, self.pos)
            if match is None:
                raise self.error(f"unexpected character {char!r}")
            word = match.group()
            self.pos = match.end()
            if word == "include" and at_line_start and self._peek_not_separator():
                yield _Token("include", self._rest_of_line(), self.line)
                continue
            at_line_start = False
            yield _Token("name", word, self.line)

    def _peek_not_separator(self) -> bool:
        # "include = x" is a key named include; "include path" is the statement.
        rest = self.text[self.pos:]
        stripped = rest.lstrip(" \t")
        return bool(stripped) and stripped[0] not in "={\n:#" and len(stripped) < len(rest)

    def _rest_of_line(self) -> str:
        self._skip_blanks()
        if self.pos < len(self.text) and self.text[self.pos] == '"':
            path = self._quoted()
        else:
            end = self.pos
            while end < len(self.text) and self.text[end] not in "\n#":
                end += 1
            path = self.text[self.pos:end].strip()
            self.pos = end
        self._skip_blanks()
        if self.pos < len(self.text) and self.text[self.pos] != "\n":
            raise self.error("unexpected text after the include path")
        if not path:
            raise self.error("include without a file name")
        return path

    def _value(self) -> _Token:
        line = self.line
        text = self.text
        if text[self.pos] == '"':
            value = self._quoted()
            self._skip_blanks()
            if self.pos < len(text) and text[self.pos] not in "\n}":
                raise self.error("unexpected text after the closing quote", line)
            return _Token("value", value, line)
        end = self.pos
        while end < len(text) and text[end] not in "\n#}":
            if text[end] in '{"':
                raise self.error(
                    f"{text[end]!r} in a value: put the value in double quotes", line
                )
            end += 1
        value = text[self.pos:end].strip()
        self.pos = end
        return _Token("value", value, line)

    def _quoted(self) -> str:
        start_line = self.line
        text = self.text
        self.pos += 1  # the opening quote
        out: list[str] = []
        escapes = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
        while True:
            if self.pos >= len(text):
                raise self.error("unterminated quoted string", start_line)
            char = text[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(out)
            if char == "\\":
                following = text[self.pos + 1:self.pos + 2]
                if following == "\n":
                    self.pos += 2
                    self.line += 1
                    continue
                if following == "\r" and text[self.pos + 2:self.pos + 3] == "\n":
                    self.pos += 3
                    self.line += 1
                    continue
                if following in escapes and following:
                    out.append(escapes[following])
                    self.pos += 2
                    continue
                raise self.error(f"unknown escape \\{following} in a quoted string")
            if char == "\n":
                self.line += 1
            out.append(char)
            self.pos += 1


# --- the parser -------------------------------------------------------------------------


class _Parser:
    def __init__(self, resolve: IncludeResolver | None) -> None:
        self.resolve = resolve
        self.stack: list[str] = []

    def parse_file(self, text: str, source: str, into: Section) -> None:
        if source in self.stack:
            chain = " -> ".join([*self.stack, source])
            raise SettingsError(source, 1, f"include loop: {chain}")
        if len(self.stack) >= _MAX_INCLUDE_DEPTH:
            raise SettingsError(source, 1, f"includes nested deeper than {_MAX_INCLUDE_DEPTH}")
        self.stack.append(source)
        try:
            lexer = _Lexer(text, source)
            tokens = list(lexer.tokens())
            end = self._body(tokens, 0, into, lexer, top=True)
            if end != len(tokens):  # pragma: no cover - _body consumes all at top level
                raise lexer.error("unexpected '}'", tokens[end].line)
        finally:
            self.stack.pop()

    def _body(self, tokens: list[_Token], index: int, section: Section, lexer: _Lexer,
              *, top: bool) -> int:
        """Parse settings into ``section`` until its closing ``}``; return the index
        after it (or the end, at the top level)."""
        while index < len(tokens):
            token = tokens[index]
            if token.kind == "newline":
                index += 1
                continue
            if token.kind == "}":
                if top:
                    raise lexer.error("'}' without a section to close", token.line)
                return index + 1
            if token.kind == "include":
                self._include(token, section, lexer)
                index += 1
                continue
            if token.kind != "name":
                raise lexer.error(f"expected a key or a section name, found {token.text!r}",
                                  token.line)
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            if following is None or following.kind == "newline":
                raise lexer.error(f"{token.text!r} needs '= value' or '{{ ... }}'",
                                  token.line)
            if following.kind == "=":
                value_token = tokens[index + 2] if index + 2 < len(tokens) else None
                value = value_token.text if value_token is not None \
                    and value_token.kind == "value" else ""
                section.settings[token.text] = Setting(token.text, value, lexer.source,
                                                       token.line)
                index += 3 if value_token is not None and value_token.kind == "value" else 2
                continue
            refs: list[tuple[str, str, int]] = []
            index += 1
            if following.kind == ":":
                index, refs = self._references(tokens, index + 1, lexer)
            brace = tokens[index] if index < len(tokens) else None
            if brace is None or brace.kind != "{":
                raise lexer.error(f"expected '=' or '{{' after {token.text!r}", token.line)
            sub = section.sections.get(token.text)
            if sub is None:
                sub = Section(token.text, lexer.source, token.line)
                section.sections[token.text] = sub
            sub.references.extend(refs)
            index = self._body(tokens, index + 1, sub, lexer, top=False)
        if not top:
            raise lexer.error(f"section {section.name!r} is not closed with '}}'", section.line)
        return index

    def _references(self, tokens: list[_Token], index: int,
                    lexer: _Lexer) -> tuple[int, list[tuple[str, str, int]]]:
        refs: list[tuple[str, str, int]] = []
        while True:
            parts: list[str] = []
            while index < len(tokens) and tokens[index].kind == "name":
                parts.append(tokens[index].text)
                index += 1
                if index < len(tokens) and tokens[index].kind == ".":
                    index += 1
                    continue
                break
            line = tokens[index].line if index < len(tokens) else lexer.line
            if not parts or tokens[index - 1].kind == ".":
                raise lexer.error("expected the name of a section to inherit from", line)
            refs.append((".".join(parts), lexer.source, line))
            if index < len(tokens) and tokens[index].kind == ",":
                index += 1
                continue
            return index, refs

    def _include(self, token: _Token, section: Section, lexer: _Lexer) -> None:
        if self.resolve is None:
            raise lexer.error(f"include {token.text}: includes need the file to be read "
                              "from disk", token.line)
        base = PurePath(lexer.source).parent
        try:
            files = self.resolve(token.text, base)
        except OSError as exc:
            raise lexer.error(f"include {token.text}: {exc.strerror or exc}",
                              token.line) from None
        for name, text in files:
            self.parse_file(text, name, section)


def _resolve_references(root: Section) -> None:
    index = {path: sub for path, sub in root.walk()}

    def merge(target: Section, source: Section) -> None:
        for key, setting in source.settings.items():
            target.settings.setdefault(key, setting)
        for name, sub in source.sections.items():
            mine = target.sections.get(name)
            if mine is None:
                mine = Section(name, sub.source, sub.line)
                target.sections[name] = mine
            merge(mine, sub)

    def apply(section: Section, seen: tuple[str, ...]) -> None:
        for name, source, line in section.references:
            referenced = index.get(name)
            if referenced is None:
                raise SettingsError(source, line, f"no section {name!r} to inherit from")
            if name in seen:
                raise SettingsError(source, line, f"section {name!r} inherits from itself")
            apply(referenced, (*seen, name))
            merge(section, referenced)
            root.referenced.add(name)
        section.references.clear()

    # The own settings of a section are merged first (setdefault keeps them), so
    # they override inherited ones, as strongswan.conf(5) says.
    for path, sub in list(index.items()):
        apply(sub, (path,))


def parse_settings(text: str, source: str = "swanctl.conf",
                   resolve: IncludeResolver | None = None) -> Section:
    """Parse settings text into its root :class:`Section` (raises SettingsError).

    ``resolve`` reads included files; without it an ``include`` is an error.
    """
    root = Section("", source, 1)
    _Parser(resolve).parse_file(text, source, root)
    _resolve_references(root)
    return root
