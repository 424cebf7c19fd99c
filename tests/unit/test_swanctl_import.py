"""`ikev1d import-swanctl`: the settings parser, the mapping to TOML, the command.

The syntax cases follow strongswan.conf(5) ("SYNTAX", "REFERENCING OTHER
SECTIONS", "INCLUDING FILES"); the mapping cases swanctl.conf(5).  Every
converted file must load with ikev1d's own loader, and the configurations the
interop tests give strongSwan must come out as the ikev1d configuration the
same tests write by hand.
"""

from __future__ import annotations

import os
from pathlib import PurePath
from typing import Any

import pytest

from ikev1d.swanctl import SettingsError, parse_settings

# --- the settings parser ---------------------------------------------------------------


def test_sections_keys_comments_and_blanks() -> None:
    root = parse_settings(
        "# leading comment\n"
        "a = b\n"
        "\n"
        "section-one {\n"
        "\tsomevalue = asdf   # trailing comment\n"
        "  subsection {\n"
        "    othervalue = x y  z\n"
        "  }\n"
        "  # yei, a comment { with braces }\n"
        "  yetanother = zz\n"
        "}\n"
        "section-two { x = 12 }\n"
    )
    assert root.value("a") == "b"
    one = root.sections["section-one"]
    assert one.value("somevalue") == "asdf"
    assert one.sections["subsection"].value("othervalue") == "x y  z"
    assert one.value("yetanother") == "zz"
    assert one.settings["yetanother"].line == 10
    assert root.sections["section-two"].value("x") == "12"
    assert root.sections["section-two"].settings["x"].line == 12


def test_values_run_to_the_end_of_the_line() -> None:
    root = parse_settings("proposals = aes128-sha256-modp2048, aes256-sha384-ecp384\n"
                          "empty =\nalso_empty = # nothing\nid = C=DE, O=X, CN=gw\n")
    assert root.value("proposals") == "aes128-sha256-modp2048, aes256-sha384-ecp384"
    assert root.value("empty") == ""
    assert root.value("also_empty") == ""
    assert root.value("id") == "C=DE, O=X, CN=gw"


def test_quoted_strings_and_escapes() -> None:
    root = parse_settings(
        'a = "with # hash, { braces } and = sign"\n'
        'b = "quote \\" backslash \\\\ tab \\t newline \\n"\n'
        'c = "spans \\\n'
        'two lines"\n'
        'd = "a real\n'
        'line break"\n'
        "e = 1\n"
    )
    assert root.value("a") == "with # hash, { braces } and = sign"
    assert root.value("b") == 'quote " backslash \\ tab \t newline \n'
    assert root.value("c") == "spans two lines"
    assert root.value("d") == "a real\nline break"
    assert root.settings["e"].line == 7


def test_repeated_sections_merge_and_the_last_value_wins() -> None:
    root = parse_settings("s {\n a = 1\n b = 1\n}\ns {\n a = 2\n t { c = 3 }\n}\n")
    section = root.sections["s"]
    assert section.value("a") == "2" and section.settings["a"].line == 6
    assert section.value("b") == "1"
    assert section.sections["t"].value("c") == "3"


def test_references_inherit_and_own_settings_win() -> None:
    root = parse_settings(
        "defaults {\n  a = 1\n  b = 2\n  sub { c = 3 }\n}\n"
        "connections {\n"
        "  x : defaults {\n    b = own\n  }\n"
        "  y : connections.x, other {\n  }\n"
        "}\n"
        "other { d = 4 }\n"
    )
    x = root.sections["connections"].sections["x"]
    y = root.sections["connections"].sections["y"]
    assert (x.value("a"), x.value("b")) == ("1", "own")
    assert x.sections["sub"].value("c") == "3"
    assert (y.value("a"), y.value("b"), y.value("d")) == ("1", "own", "4")
    assert root.referenced == {"defaults", "connections.x", "other"}


def _files(files: dict[str, str]) -> Any:
    def resolve(pattern: str, base: PurePath) -> list[tuple[str, str]]:
        full = os.path.normpath(base / pattern)
        if "*" in pattern:
            prefix = full.split("*", 1)[0]
            return sorted((n, t) for n, t in files.items() if n.startswith(prefix))
        if full not in files:
            raise FileNotFoundError(2, f"no such file: {full}")
        return [(full, files[full])]

    return resolve


def test_includes_are_relative_to_the_including_file_and_land_in_its_section() -> None:
    files = {
        "/etc/swanctl/conf.d/a.conf": "a {\n  v = 1\n}\n",
        "/etc/swanctl/conf.d/b.conf": "b {\n  include ../more/c.conf\n}\n",
        "/etc/swanctl/more/c.conf": "w = 2\n",
    }
    root = parse_settings(
        "connections {\n  include conf.d/*.conf\n}\ninclude = not an include\n",
        "/etc/swanctl/swanctl.conf", _files(files),
    )
    connections = root.sections["connections"]
    assert connections.sections["a"].value("v") == "1"
    w = connections.sections["b"].settings["w"]
    assert (w.value, w.source, w.line) == ("2", "/etc/swanctl/more/c.conf", 1)
    assert root.value("include") == "not an include"


def test_include_loop_is_refused() -> None:
    files = {"/x/a.conf": "include b.conf\n", "/x/b.conf": "include a.conf\n"}
    with pytest.raises(SettingsError, match=r"include loop: .*a.conf -> /x/b.conf -> /x/a.conf"):
        parse_settings("include a.conf\n", "/x/main.conf", _files(files))


def test_include_of_a_missing_file_and_without_a_resolver() -> None:
    with pytest.raises(SettingsError, match=r"^/x/main.conf:2: include nope.conf: no such"):
        parse_settings("a = 1\ninclude nope.conf\n", "/x/main.conf", _files({}))
    with pytest.raises(SettingsError, match=r"^<text>:1: include x.conf: includes need"):
        parse_settings("include x.conf\n", "<text>")


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("a {\n  b = 1\n", 1, "section 'a' is not closed with '}'"),
    ("a = 1\n}\n", 2, "'}' without a section to close"),
    ("a {\n  b\n}\n", 2, "'b' needs '= value' or '{ ... }'"),
    ("a = \"open\nstill open\n", 1, "unterminated quoted string"),
    ("a = b { c\n", 1, "'{' in a value: put the value in double quotes"),
    ('a = "x" y\n', 1, "unexpected text after the closing quote"),
    ('a = "bad \\q escape"\n', 1, "unknown escape \\q in a quoted string"),
    ("\n\nx : {\n}\n", 3, "expected the name of a section to inherit from"),
    ("x : nowhere {\n}\n", 1, "no section 'nowhere' to inherit from"),
    ("x : x {\n}\n", 1, "section 'x' inherits from itself"),
    ("a b = c\n", 1, "expected '=' or '{' after 'a'"),
    ("\"key\" = 1\n", 1, "a quoted string is only allowed as a value (after '=')"),
    ("a.b = 1\n", 1, "expected '=' or '{' after 'a'"),
])
def test_syntax_errors_name_the_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings(text, "swanctl.conf")
    assert info.value.line == line
    assert str(info.value) == f"swanctl.conf:{line}: {reason}"
