"""`ikev1d import-swanctl`: the settings parser, the mapping to TOML, the command.

The syntax cases follow strongswan.conf(5) ("SYNTAX", "REFERENCING OTHER
SECTIONS", "INCLUDING FILES"); the mapping cases swanctl.conf(5).  Every
converted file must load with ikev1d's own loader, and the configurations the
interop tests give strongSwan must come out as the ikev1d configuration the
same tests write by hand.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path, PurePath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ikev1d.cli import main
from ikev1d.config import parse_config
from ikev1d.swanctl import Conversion, SettingsError, convert_swanctl, parse_settings
from ikev1d.swanctl.toml_out import dump_toml, toml_string
from ikev1d_lab.daemon import ikev1d_conf
from tests.interop.strongswan_configs import CASES, PSK, DefaultHosts, StrongswanCase

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


# --- TOML output -------------------------------------------------------------------------


@pytest.mark.parametrize("text", ['plain', 'quote " backslash \\', "tab\tnl\ncr\r\x00\x7f\x1b",
                                  "ünïcødé ✓", ""])
def test_toml_strings_round_trip(text: str) -> None:
    assert tomllib.loads(f"k = {toml_string(text)}")["k"] == text


def test_toml_tables_round_trip() -> None:
    table: Any = {"connections": {"a.b": {"x": ["1", "2"], "on": True, "n": 3,
                                          "children": {"c": {}}}}}
    assert tomllib.loads(dump_toml(table)) == table


# --- the mapping ---------------------------------------------------------------------------


def _convert(text: str, **kwargs: Any) -> Conversion:
    return convert_swanctl(parse_settings(text, "swanctl.conf"), **kwargs)


def _loaded(conversion: Conversion) -> dict[str, Any]:
    parse_config(conversion.toml, "<converted>")  # must load
    document: dict[str, Any] = tomllib.loads(conversion.toml)
    return document


def _notes(conversion: Conversion) -> list[str]:
    return [str(n) for n in conversion.notes]


SITE = """\
connections {
  site {
    version = 1
    local_addrs = 192.0.2.1
    remote_addrs = 192.0.2.2
    local { auth = psk }
    remote { auth = psk }
    children { net { local_ts = 10.1.0.0/24
                     remote_ts = 10.2.0.0/24 } }
    %s
  }
}
secrets { ike-site { id = 192.0.2.2
                     secret = 0x00112233445566778899aabbccddeeff0011 } }
"""


def _site(extra: str) -> tuple[dict[str, Any], list[str]]:
    conversion = _convert(SITE % extra)
    return _loaded(conversion)["connections"]["site"], _notes(conversion)


def test_a_plain_site_to_site_connection() -> None:
    conversion = _convert(SITE % "")
    doc = _loaded(conversion)
    assert doc["connections"]["site"] == {
        "local_addrs": ["192.0.2.1"], "remote_addrs": ["192.0.2.2"],
        "dpd_delay": "0s", "rekey_time": "4h",
        "local": {"auth": "psk"}, "remote": {"auth": "psk", "id": "%any"},
        "children": {"net": {"local_ts": ["10.1.0.0/24"], "remote_ts": ["10.2.0.0/24"],
                             "rekey_time": "1h"}},
    }
    assert doc["secrets"] == {"site": {"secret": "0x00112233445566778899aabbccddeeff0011",
                                       "ids": ["192.0.2.2"]}}
    assert conversion.notes == ()
    assert parse_config(conversion.toml).psk_for(None, "192.0.2.2") == \
        bytes.fromhex("00112233445566778899aabbccddeeff0011")


@pytest.mark.parametrize(("extra", "expected", "note"), [
    ("proposals = aes256-sha256-modp2048, aes128-sha1-modp2048",
     {"proposals": ["aes256-sha256-modp2048", "aes128-sha1-modp2048"]}, None),
    ("proposals = default", {}, "proposals: note: 'default' stands for ikev1d's default"),
    ("proposals = aes128-sha256-modp2048,aes128-md5-modp2048",
     {"proposals": ["aes128-sha256-modp2048"]},
     "proposals: aes128-md5-modp2048: dropped: md5 is insecure"),
    ("encap = yes", {"encap": True}, None),
    ("encap = maybe", {}, "connections.site.encap: dropped: 'maybe' is not yes or no"),
    ("dpd_delay = 30s", {"dpd_delay": "30s", "dpd_timeout": "150s", "dpd_action": "clear"},
     None),
    ("dpd_delay = 1m\ndpd_timeout = 45", {"dpd_delay": "1m", "dpd_timeout": "5m",
                                          "dpd_action": "clear"},
     "dpd_timeout: note: 45s is not longer than dpd_delay"),
    ("rekey_time = 0\nreauth_time = 0", {"rekey_time": None},
     "rekey_time: note: Phase 1 is never renewed (0)"),
    ("rekey_time = 2h\nreauth_time = 3600", {"rekey_time": "1h"},
     "reauth_time: note: IKEv1 renews Phase 1 only by reauthentication"),
    ("reauth_time = 8h", {"rekey_time": "4h"}, "rekey_time = 4h"),
    ("aggressive = yes", {}, "connections.site.aggressive: dropped: Aggressive Mode is not "
                             "supported"),
    ("aggressive = no", {}, None),
    ("fragmentation = force", {"fragmentation": "force"}, None),
    ("fragmentation = accept", {"fragmentation": "accept"}, None),
    ("fragmentation = maybe", {}, "connections.site.fragmentation: dropped: 'maybe' is not "
                                  "yes, accept, force or no"),
    ("unique = replace", {}, "connections.site.unique: dropped: ikev1d has no uniqueness"),
    ("mobike = no", {}, "connections.site.mobike: dropped: MOBIKE is IKEv2 only"),
    ("some_future_option = 1", {}, "some_future_option: dropped: not supported by ikev1d"),
    ("vips = 0.0.0.0", {"vips": ["0.0.0.0"]}, None),
    ("pull = no", {"modecfg": "push"}, None),
    ("pools = nowhere", {}, "pools: nowhere: dropped: no such pool was converted"),
])
def test_connection_options(extra: str, expected: dict[str, Any], note: str | None) -> None:
    conn, notes = _site(extra)
    for key, value in expected.items():
        assert conn.get(key) == value, (key, conn)
    if note is None:
        assert notes == []
    else:
        assert any(note in n for n in notes), notes
        assert all(re.match(r"^swanctl\.conf:\d+: connections\.site\S*( \S+)?: "
                            r"(dropped|note|skipped): ", n) for n in notes), notes


@pytest.mark.parametrize(("child_extra", "expected", "note"), [
    ("esp_proposals = aes128gcm16-modp2048, aes128-sha256",
     {"esp_proposals": ["aes128gcm16-modp2048", "aes128-sha256"]}, None),
    ("mode = transport", {"mode": "transport"}, None),
    ("rekey_time = 20m\nlife_time = 30m", {"rekey_time": "20m"},
     "net.life_time: dropped: ikev1d derives the hard lifetime"),
    ("life_bytes = 1000000", {"life_bytes": 1000000}, None),
    ("start_action = start", {"start_action": "start"}, None),
    ("start_action = trap", {"start_action": "start"},
     "start_action: note: trap policies are not supported"),
    ("start_action = none", {"start_action": None}, None),
    ("updown = /bin/true iptables", {"updown": "/bin/true iptables"}, None),
    ("updown = /nonexistent/_updown iptables", {"updown": None},
     "net.updown: dropped: '/nonexistent/_updown' is not an executable on this machine"),
    ("updown = _updown", {"updown": None}, "net.updown: dropped: '_updown' is not"),
    ("hostaccess = yes", {}, "net.hostaccess: dropped: ikev1d passes no PLUTO_HOST_ACCESS"),
    ("local_ts = 10.1.0.7/24", {"local_ts": ["10.1.0.0/24"]}, "has host bits set"),
])
def test_child_options(child_extra: str, expected: dict[str, Any], note: str | None) -> None:
    text = SITE.replace("remote_ts = 10.2.0.0/24 }", f"remote_ts = 10.2.0.0/24\n{child_extra}\n}}")
    conversion = _convert(text % "")
    child = _loaded(conversion)["connections"]["site"]["children"]["net"]
    for key, value in expected.items():
        assert child.get(key) == value, (key, child)
    notes = _notes(conversion)
    assert (notes == []) if note is None else any(note in n for n in notes), notes


@pytest.mark.parametrize(("child_extra", "reason"), [
    ("ah_proposals = sha256", "AH is not supported"),
    ("mode = pass", "mode 'pass' is not supported"),
    ("remote_ts = 10.2.0.0/24[tcp/80]", "protocol/port selectors are not supported"),
    ("remote_ts = 10.2.0.1-10.2.0.9", "ranges are not supported"),
])
def test_children_that_cannot_be_converted_are_left_out(child_extra: str, reason: str) -> None:
    text = SITE.replace("remote_ts = 10.2.0.0/24 }", f"remote_ts = 10.2.0.0/24\n{child_extra}\n}}")
    conversion = _convert(text % "")
    assert "children" not in _loaded(conversion)["connections"]["site"]
    assert any("skipped" in n and reason in n for n in _notes(conversion)), _notes(conversion)


def test_dpd_action_moves_from_the_children_to_the_connection() -> None:
    text = SITE.replace("remote_ts = 10.2.0.0/24 }", "remote_ts = 10.2.0.0/24\n"
                        "dpd_action = restart\n}\nother { dpd_action = trap }\n"
                        "third { dpd_action = restart }")
    conversion = _convert(text % "dpd_delay = 10s")
    conn = _loaded(conversion)["connections"]["site"]
    assert conn["dpd_action"] == "restart"
    notes = _notes(conversion)
    assert any("other.dpd_action: note: trap: ikev1d has no trap policies" in n for n in notes)
    assert any("other.dpd_action: dropped: ikev1d has one dpd_action per connection; keeping "
               "'restart'" in n for n in notes), notes


def test_versions() -> None:
    text = """connections {
  v2 { version = 2 }
  any { remote_addrs = 192.0.2.9
        local { auth = psk }
        remote { auth = psk } }
}
"""
    conversion = _convert(text)
    assert list(_loaded(conversion)["connections"]) == ["any"]
    assert _notes(conversion) == [
        "swanctl.conf:2: connections.v2: skipped: an IKEv2 connection (version = 2); "
        "ikev1d speaks IKEv1 only",
        "swanctl.conf:3: connections.any.version: note: version = 0 (any) converted as IKEv1; "
        "charon would initiate IKEv2",
    ]


def test_authentication_rounds() -> None:
    text = SITE.replace("remote { auth = psk }",
                        'remote { auth = psk\n id = "@peer.example.org" }\n'
                        "remote-2 { auth = xauth }")
    conversion = _convert(text % "")
    site = _loaded(conversion)["connections"]["site"]
    assert site["remote"] == {"auth": "psk", "id": "@peer.example.org"}
    assert site["remote_xauth"] == {"auth": "xauth"}


def test_xauth_client_round_and_secret() -> None:
    text = SITE.replace("local { auth = psk }",
                        "local { auth = psk }\nlocal-2 { auth = xauth\n xauth_id = alice }")
    text = (text % "") + 'secrets { xauth-alice { id = alice\n secret = "pw of alice" } }\n'
    doc = _loaded(_convert(text))
    assert doc["connections"]["site"]["local_xauth"] == {"auth": "xauth", "xauth_id": "alice"}
    assert doc["secrets"]["alice"] == {"type": "xauth", "secret": "pw of alice",
                                       "ids": ["alice"]}


@pytest.mark.parametrize(("local", "remote", "reason"), [
    ("local { auth = psk }", "remote { auth = pubkey }", "IKEv1 negotiates one method"),
    ("local { auth = eap-mschapv2 }", "remote { auth = psk }", "EAP is IKEv2 only"),
    ("local { auth = xauth-generic }", "remote { auth = psk }", "XAUTH is a second round"),
    ("", "remote { auth = psk }", "no local authentication round"),
])
def test_connections_without_a_usable_method_are_skipped(local: str, remote: str,
                                                          reason: str) -> None:
    text = SITE.replace("local { auth = psk }", local).replace("remote { auth = psk }", remote)
    conversion = _convert(text % "")
    assert "connections" not in _loaded(conversion)
    assert any("skipped" in n and reason in n for n in _notes(conversion)), _notes(conversion)


def test_pubkey_authentication_names_the_files() -> None:
    text = SITE.replace("local { auth = psk }", "local { auth = pubkey\n certs = gw.pem }") \
        .replace("remote { auth = psk }", "remote { auth = pubkey\n cacerts = ca.pem\n"
                 " id = \"C=DE, O=X, CN=peer\" }")
    base = PurePath("/etc/swanctl")
    conversion = convert_swanctl(parse_settings(text % ""), base_dir=base,
                                 private_keys=["/etc/swanctl/private/gw.key"])
    site = tomllib.loads(conversion.toml)["connections"]["site"]
    assert site["local"] == {"auth": "pubkey", "certs": ["/etc/swanctl/x509/gw.pem"],
                             "private_key": "/etc/swanctl/private/gw.key"}
    assert site["remote"] == {"auth": "pubkey", "id": "C=DE, O=X, CN=peer",
                              "cacerts": ["/etc/swanctl/x509ca/ca.pem"]}
    # Without exactly one key to choose, the connection cannot be converted.
    conversion = convert_swanctl(parse_settings(text % ""), base_dir=base, private_keys=[])
    assert "connections" not in tomllib.loads(conversion.toml)
    assert any("needs our private key's file name" in n for n in _notes(conversion))


def test_secrets() -> None:
    text = """secrets {
  ike {
    secret = "a long shared secret with \\"quotes\\""
  }
  ike-b { id-1 = gw.example.org
          id-2 = 192.0.2.7
          secret = 0sMDEyMzQ1Njc4OWFiY2RlZjAxMjM0 }
  ike-bad { id = 192.0.2.8
            secret = 0xnothex }
  eap-carol { id = carol
              secret = x }
  xauth-dave { secret = y }
  private-gw { secret = z }
}
"""
    conversion = _convert(text)
    doc = _loaded(conversion)
    assert doc["secrets"] == {
        "ike": {"secret": 'a long shared secret with "quotes"', "ids": ["%any"]},
        "b": {"secret": "0sMDEyMzQ1Njc4OWFiY2RlZjAxMjM0",
              "ids": ["gw.example.org", "192.0.2.7"]},
        "dave": {"type": "xauth", "secret": "y", "ids": ["%any"]},
    }
    notes = _notes(conversion)
    assert "swanctl.conf:2: secrets.ike.ids: note: no id: swanctl uses this key for any " \
           "peer; converted as ids = [\"%any\"]" in notes
    assert any("secrets.ike-bad.secret: skipped: invalid 0x" in n for n in notes)
    assert any("secrets.eap-carol: dropped: EAP secrets are not converted: EAP is IKEv2 "
               "only" in n for n in notes)
    assert any("secrets.private-gw: dropped:" in n for n in notes)


def test_pools() -> None:
    text = """pools {
  rw { addrs = 10.3.0.0/24
       dns = 10.3.0.1, 10.3.0.2
       split_include = 10.2.0.0/16
       nbns = 10.3.0.3 }
  range { addrs = 10.4.0.10-10.4.0.20 }
}
connections { rw { pools = rw, range
                   local { auth = psk }
                   remote { auth = psk } } }
"""
    conversion = _convert(text)
    doc = _loaded(conversion)
    assert doc["pools"] == {
        "rw": {"addrs": "10.3.0.0/24", "dns": ["10.3.0.1", "10.3.0.2"],
               "split_include": ["10.2.0.0/16"]},
        "range": {"addrs": "10.4.0.10-10.4.0.20"},
    }
    assert doc["connections"]["rw"]["pools"] == ["rw", "range"]
    assert doc["connections"]["rw"]["remote_addrs"] == ["%any"]
    notes = _notes(conversion)
    assert any("pools.rw.nbns: dropped" in n for n in notes)


def test_unusual_names_and_addresses() -> None:
    text = """connections {
  "bad name" { }
}
"""
    with pytest.raises(SettingsError):
        _convert(text)
    text = """connections {
  gw {
    version = 1
    local_addrs = %any
    remote_addrs = vpn.example.org, 192.0.2.0/24, 192.0.2.5-192.0.2.9
    local { auth = psk }
    remote { auth = psk }
  }
  unreachable { version = 1
    remote_addrs = vpn.example.org
    local { auth = psk }
    remote { auth = psk } }
}
"""
    conversion = _convert(text)
    conn = _loaded(conversion)["connections"]["gw"]
    assert "local_addrs" not in conn and conn["remote_addrs"] == ["192.0.2.0/24"]
    notes = _notes(conversion)
    assert any("remote_addrs: vpn.example.org: dropped: host names are not resolved" in n
               for n in notes)
    assert any("remote_addrs: 192.0.2.5-192.0.2.9: dropped: address ranges" in n
               for n in notes)
    assert any("connections.unreachable.remote_addrs: skipped: no usable remote address" in n
               for n in notes)


def test_templates_and_unknown_sections() -> None:
    text = """tmpl { proposals = aes128-sha256-modp2048 }
authorities { ca { cacert = ca.pem } }
stray = 1
connections {
  gw : tmpl { remote_addrs = 192.0.2.2
              local { auth = psk }
              remote { auth = psk } }
}
"""
    conversion = _convert(text)
    assert _loaded(conversion)["connections"]["gw"]["proposals"] == ["aes128-sha256-modp2048"]
    notes = _notes(conversion)
    assert not any(n.split(": ")[1] == "tmpl" for n in notes), notes
    assert any(": authorities: dropped:" in n for n in notes)
    assert any(": stray: dropped: not a swanctl.conf section" in n for n in notes)


# --- the interop configurations ------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_interop_configurations_become_what_the_tests_write_by_hand(
    case: StrongswanCase,
) -> None:
    """The charon configuration of each interop case, converted, says what the
    hand-written ikev1d configuration for B's side would say."""
    hosts = DefaultHosts()
    conversion = _convert(case.charon_conf(hosts))
    converted = parse_config(conversion.toml)
    nets = case.child_networks(hosts)
    by_hand = parse_config(ikev1d_conf(
        "gw", hosts.addr_b, hosts.addr_a, hosts.addr_b, hosts.addr_a, PSK,
        case.their_proposals or case.proposals, case.their_esp or case.esp,
        nets[0][1], nets[0][0], encap=True, child_rekey_time=case.child_rekey_time,
        child="net" if case.children == 1 else "c0",
    ))
    ours, theirs = converted.connections["gw"], by_hand.connections["gw"]
    for key in ("local_addrs", "remote_addrs", "proposals", "encap", "local", "remote"):
        assert getattr(ours, key) == getattr(theirs, key), key
    (name,) = theirs.children
    assert ours.children[name] == theirs.children[name]
    assert len(ours.children) == case.children
    assert converted.psk_for(hosts.addr_b, hosts.addr_a) == PSK.encode()
    assert all(str(n).startswith("swanctl.conf:") for n in conversion.notes)


# --- the command -----------------------------------------------------------------------------


def test_command_prints_toml_and_notes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "swanctl.conf"
    (tmp_path / "conf.d").mkdir()
    conf.write_text("connections {\n  include conf.d/*.conf\n}\n"
                    "secrets { ike-x { id = 192.0.2.2\n secret = 0123456789abcdefghij } }\n")
    (tmp_path / "conf.d" / "gw.conf").write_text(
        "gw { version = 1\n remote_addrs = 192.0.2.2\n aggressive = yes\n"
        " local { auth = psk }\n remote { auth = psk }\n"
        " children { net { remote_ts = 10.2.0.0/24 } } }\n")
    assert main(["import-swanctl", str(conf)]) == 0
    out, err = capsys.readouterr()
    assert parse_config(out).connections["gw"].remote_addrs == ("192.0.2.2",)
    assert err.splitlines() == [
        f"{tmp_path}/conf.d/gw.conf:3: connections.gw.aggressive: dropped: Aggressive Mode is "
        "not supported: ikev1d uses Main Mode only, which protects the identities",
    ]
    toml = tmp_path / "ikev1d.toml"
    toml.write_text(out)
    assert main(["check-config", str(toml)]) == 0


def test_command_refuses_a_file_that_does_not_parse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text("connections {\n  gw {\n    version = 1\n")
    assert main(["import-swanctl", str(conf)]) == 1
    out, err = capsys.readouterr()
    assert "[connections" not in out
    assert out == ""
    assert err == f"ikev1d: {conf}:2: section 'gw' is not closed with '}}'\n"
    assert main(["import-swanctl", str(tmp_path / "missing.conf")]) == 1
    assert "No such file" in capsys.readouterr().err


def test_command_says_when_nothing_was_converted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text("connections {\n  v2 {\n    version = 2\n  }\n}\n")
    assert main(["import-swanctl", str(conf)]) == 1
    out, err = capsys.readouterr()
    assert "[connections" not in out
    assert out == ""
    assert err.splitlines() == [
        f"{conf}:2: connections.v2: skipped: an IKEv2 connection (version = 2); ikev1d "
        "speaks IKEv1 only",
        f"ikev1d: {conf}: nothing to convert (no IKEv1 connection, IKE secret or pool)",
    ]


def _write_key_and_cert(key_path: Path, cert_path: Path | None, name: str) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    if cert_path is None:
        return
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_command_pairs_the_certificate_with_its_private_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Like swanctl --load-creds: certificates in x509/ and x509ca/, keys in private/ or
    # ecdsa/, paired by public key.
    _write_key_and_cert(tmp_path / "private" / "a-other.pem", None, "other")
    _write_key_and_cert(tmp_path / "ecdsa" / "b-gw.pem", tmp_path / "x509" / "gw.pem", "gw")
    _write_key_and_cert(tmp_path / "private" / "c-ca.pem", tmp_path / "x509ca" / "ca.pem", "ca")
    conf = tmp_path / "swanctl.conf"
    conf.write_text(
        "connections { gw { version = 1\n remote_addrs = 192.0.2.2\n"
        " local { auth = pubkey\n certs = gw.pem\n id = \"CN=gw\" }\n"
        " remote { auth = pubkey\n cacerts = ca.pem\n id = \"CN=peer\" } } }\n")
    # The pairing is done and said, and the connection converted.
    assert main(["import-swanctl", str(conf)]) == 0
    out, err = capsys.readouterr()
    assert "[connections.gw.local]" in out
    assert f"private_key = {tmp_path}/ecdsa/b-gw.pem: the key matching" in err


# --- any input -------------------------------------------------------------------------------

_WORDS = st.sampled_from([
    "connections", "secrets", "pools", "children", "local", "remote", "remote-2", "net", "gw",
    "ike-gw", "eap-x", "rw", "version", "auth", "id", "secret", "remote_addrs", "local_addrs",
    "proposals", "esp_proposals", "local_ts", "remote_ts", "dpd_delay", "dpd_timeout",
    "dpd_action", "start_action", "rekey_time", "reauth_time", "mode", "encap", "vips",
    "pools", "addrs", "dns", "aggressive", "pull", "life_bytes", "certs", "include",
    "fragmentation",
])
_VALUES = st.sampled_from([
    "1", "0", "2", "psk", "pubkey", "xauth", "192.0.2.2", "%any", "10.1.0.0/24",
    "10.1.0.1/24", "10.2.0.0/24[tcp]", "dynamic", "aes128-sha256-modp2048", "aes128gcm16",
    "default", "30s", "0", "4h", "yes", "no", "trap", "start", "restart", "tunnel", "pass",
    "0x3132", "0sMTIz", "0xzz", "a-secret", "@gw.example.org", "C=DE, CN=x", "rw",
    "10.3.0.0/24", "10.3.0.1", "", "x y", '"quoted # value"', "hold",
])
_LINES = st.one_of(
    st.tuples(_WORDS, _VALUES).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    _WORDS.map(lambda w: f"{w} {{"),
    st.just("}"),
    st.just("# comment"),
    st.text(alphabet='ab {}=#":,.\\\n', max_size=8),
)


@given(st.lists(_LINES, max_size=40))
@settings(max_examples=200, deadline=None)
def test_any_input_parses_or_fails_cleanly_and_what_converts_loads(lines: list[str]) -> None:
    """The parser raises only SettingsError; whatever parses converts to TOML
    that loads (the converter drops rather than passes on what the loader refuses)."""
    try:
        root = parse_settings("\n".join(lines) + "\n", "swanctl.conf")
    except SettingsError:
        return
    conversion = convert_swanctl(root)
    parse_config(conversion.toml, "<converted>")


def _block(name: str, body: st.SearchStrategy[list[str]]) -> st.SearchStrategy[str]:
    return body.map(lambda lines: f"{name} {{\n" + "".join(f"{line}\n" for line in lines)
                    + "}")


_SETTINGS = st.lists(st.tuples(_WORDS, _VALUES).map(lambda kv: f"{kv[0]} = {kv[1]}"),
                     max_size=6)

# Mostly what converts (psk on both sides, a subnet pool), then random settings that
# may spoil it.
_PSK = st.lists(_SETTINGS, min_size=0, max_size=1).map(
    lambda extra: ["auth = psk", *(extra[0] if extra else [])])
_CONNECTION = st.tuples(
    _SETTINGS, _block("local", _PSK), _block("remote", _PSK),
    _block("children", st.lists(_block("net", _SETTINGS), max_size=2)),
).map(lambda parts: [*parts[0], parts[1], parts[2], parts[3]])
_DOCUMENT = st.tuples(
    _block("connections", st.lists(_block("gw", _CONNECTION), max_size=1)),
    _block("secrets", st.lists(_block("ike-gw", _SETTINGS.map(
        lambda lines: ["secret = 0x3132", *lines])), max_size=1)),
    _block("pools", st.lists(_block("rw", _SETTINGS.map(
        lambda lines: ["addrs = 10.3.0.0/24", *lines])), max_size=1)),
).map("\n".join)


@given(_DOCUMENT)
@settings(max_examples=200, deadline=None)
def test_any_swanctl_shaped_file_converts_to_toml_that_loads(text: str) -> None:
    conversion = convert_swanctl(parse_settings(text, "swanctl.conf"))
    parse_config(conversion.toml, "<converted>")
