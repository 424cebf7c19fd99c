"""swanctl.conf (parsed) -> ikev1d's TOML, with a note for everything left behind.

ikev1d's keys follow swanctl.conf's names on purpose, so most options carry
over as they are.  What differs, and why:

* IKEv1 only: ``version = 2`` connections are skipped; ``version = 0`` (any,
  swanctl's default) is converted as IKEv1, with a note, since charon would
  initiate those with IKEv2.
* IKEv1 renews Phase 1 only by a new Main Mode, i.e. a reauthentication
  (RFC 2409 section 4.5 lifetimes are a Phase 1 SA's whole life), so
  swanctl's ``rekey_time`` and ``reauth_time`` become one ``rekey_time``.
* ``dpd_action`` is a child option in swanctl and a connection option in
  ikev1d (DPD runs over the ISAKMP SA, RFC 3706 section 5).
* Defaults that differ are written out: swanctl has DPD off
  (``dpd_delay = 0s``) and expects any remote ID (``%any``) unless told.
* Aggressive Mode, AH, XAUTH/EAP rounds, trap policies and the many
  strongSwan-only knobs are dropped, each with a note saying why.

Each note is ``FILE:LINE: connections.X.option: dropped: reason``; the
conversion never does I/O (included files come through the parser's
resolver, private key file names from the caller).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from ikev1d.config import ConfigError, Identity, parse_config
from ikev1d.durations import DurationError, format_duration, parse_duration
from ikev1d.proposals import ProposalError, parse_esp_proposal, parse_ike_proposal
from ikev1d.swanctl.settings import Section, Setting
from ikev1d.swanctl.toml_out import TomlTable, dump_toml

__all__ = ["Conversion", "Note", "convert_swanctl"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ANY = "%any"
# swanctl.conf(5) defaults that ikev1d does not share.
_SWANCTL_DPD_TIMEOUT = 150.0
_SWANCTL_REKEY_TIME = 4 * 3600.0
_SWANCTL_CHILD_REKEY_TIME = 3600.0

_TRUE = ("yes", "true", "enabled", "1")
_FALSE = ("no", "false", "disabled", "0")

# Options dropped with a fixed reason; anything else unknown is "not supported".
_CONNECTION_DROPS = {
    "local_port": "ikev1d uses [daemon] port and port_nat_t for every connection",
    "remote_port": "ikev1d talks to the peer on port 500 (4500 after NAT detection)",
    "over_time": "ikev1d derives the hard Phase 1 lifetime from rekey_time",
    "rand_time": "ikev1d renews with its own jitter",
    "unique": "ikev1d has no uniqueness policy",
    "send_certreq": "ikev1d sends certificate requests itself with auth = \"pubkey\"",
    "send_cert": "ikev1d sends its certificate with auth = \"pubkey\"",
    "keyingtries": "ikev1d retries as [daemon] retransmit_timeout/retransmit_tries say",
    "mobike": "MOBIKE is IKEv2 only",
    "childless": "childless IKE SAs are IKEv2 only",
    "ppk_id": "postquantum preshared keys are IKEv2 only",
    "ppk_required": "postquantum preshared keys are IKEv2 only",
    "close_action": "ikev1d has no close_action; dpd_action covers a vanished peer",
    "if_id_in": "XFRM interface IDs are not supported",
    "if_id_out": "XFRM interface IDs are not supported",
    "dscp": "not supported",
    "mediation": "mediation is not supported",
    "mediated_by": "mediation is not supported",
    "mediation_peer": "mediation is not supported",
}
_AUTH_DROPS = {
    "revocation": "revocation policy is not configurable; use remote.crls",
    "groups": "group membership is not checked",
    "cert_policy": "certificate policies are not checked",
    "ca_id": "not supported",
    "eap_id": "EAP is IKEv2 only",
    "aaa_id": "EAP is IKEv2 only",
    "xauth_id": "the XAUTH user name belongs in a second round (local-2)",
}
_CHILD_DROPS = {
    "life_time": "ikev1d derives the hard lifetime from rekey_time",
    "rand_time": "ikev1d renews with its own jitter",
    "rekey_bytes": "ikev1d renews at 85-90 % of life_bytes",
    "rekey_packets": "ikev1d renews by time and volume, not by packets",
    "life_packets": "packet limits are not supported",
    "rand_bytes": "ikev1d varies the volume renewal point itself (85-90 % of life_bytes)",
    "rand_packets": "ikev1d renews by time and volume, not by packets",
    "hostaccess": "ikev1d passes no PLUTO_HOST_ACCESS to updown scripts",
    "close_action": "ikev1d has no close_action; dpd_action covers a vanished peer",
    "ipcomp": "IPComp is not supported",
    "inactivity": "inactivity timeouts are not supported",
    "reqid": "ikev1d chooses request IDs itself",
    "priority": "ikev1d chooses policy priorities itself",
    "interface": "policies apply to all interfaces",
    "replay_window": "ikev1d uses a fixed anti-replay window",
    "hw_offload": "not supported",
    "policies": "ikev1d always installs policies",
    "policies_fwd_out": "not supported",
    "sha256_96": "ikev1d uses 128-bit truncation for HMAC-SHA-256 (RFC 4868 section 2.1)",
}


@dataclass(frozen=True)
class Note:
    """One remark: where, which option, what happened (dropped, note, skipped), why."""

    source: str
    line: int
    path: str
    action: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.path}: {self.action}: {self.reason}"


@dataclass(frozen=True)
class Conversion:
    toml: str
    notes: tuple[Note, ...]
    connections: tuple[str, ...]
    secrets: tuple[str, ...]
    pools: tuple[str, ...]

    @property
    def converted(self) -> bool:
        """Whether anything at all was converted."""
        return bool(self.connections or self.secrets or self.pools)


@dataclass
class _Converter:
    base_dir: PurePath | None
    private_keys: Sequence[str]
    key_for_certificate: Callable[[str], str | None] | None = None
    notes: list[Note] = field(default_factory=list)

    # -- notes ------------------------------------------------------------------

    def note(self, item: Setting | Section, path: str, action: str, reason: str) -> None:
        self.notes.append(Note(item.source, item.line, path, action, reason))

    def dropped(self, item: Setting | Section, path: str, reason: str) -> None:
        self.note(item, path, "dropped", reason)

    def drop_rest(self, section: Section, path: str, handled: Sequence[str],
                  reasons: dict[str, str], subsections: Sequence[str] | None = ()) -> None:
        """Drop (with a note) every setting not in ``handled`` and every subsection
        not in ``subsections`` (None: all subsections are handled)."""
        for key, setting in section.settings.items():
            if key not in handled:
                self.dropped(setting, f"{path}.{key}", reasons.get(key, "not supported by ikev1d"))
        for name, sub in section.sections.items():
            if subsections is not None and name not in subsections:
                self.dropped(sub, f"{path}.{name}", "not supported by ikev1d")

    # -- value readers ------------------------------------------------------------

    def boolean(self, setting: Setting, path: str) -> bool | None:
        value = setting.value.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        self.dropped(setting, path, f"{setting.value!r} is not yes or no")
        return None

    def duration(self, setting: Setting, path: str) -> float | None:
        try:
            return parse_duration(setting.value)
        except DurationError as exc:
            self.dropped(setting, path, str(exc))
            return None

    def proposals(self, setting: Setting, path: str, *, esp: bool) -> list[str]:
        kept: list[str] = []
        for text in _split_list(setting.value):
            if text.lower() == "default":
                self.note(setting, path, "note",
                          "'default' stands for ikev1d's default proposals here")
                continue
            try:
                if esp:
                    parse_esp_proposal(text)
                else:
                    parse_ike_proposal(text)
            except ProposalError as exc:
                self.dropped(setting, f"{path}: {text}", str(exc))
                continue
            kept.append(text)
        return kept

    def identity(self, setting: Setting, path: str, *, allow_any: bool) -> str | None:
        value = setting.value.strip()
        try:
            identity = Identity.parse(value)
        except ValueError as exc:
            self.dropped(setting, path, str(exc))
            return None
        if identity.is_any and not allow_any:
            self.dropped(setting, path, "%any is only meaningful for the remote side")
            return None
        return value

    def files(self, setting: Setting, folder: str) -> list[str]:
        # swanctl looks up relative names in its credential folders beside swanctl.conf.
        out = []
        for name in _split_list(setting.value):
            path = PurePath(name)
            if not path.is_absolute():
                path = PurePath(folder) / path
                if self.base_dir is not None:
                    path = self.base_dir / path
            out.append(str(path))
        return out

    # -- sections ------------------------------------------------------------------

    def convert(self, root: Section) -> tuple[TomlTable, list[str], list[str], list[str]]:
        out: TomlTable = {}
        for key, setting in root.settings.items():
            self.dropped(setting, key, "not a swanctl.conf section")
        pools: TomlTable = {}
        pools_section = root.section("pools")
        if pools_section is not None:
            self.drop_rest(pools_section, "pools", (), {}, None)
            for name, sub in pools_section.sections.items():
                pool = self.pool(name, sub)
                if pool is not None:
                    pools[name] = pool
        connections: TomlTable = {}
        connections_section = root.section("connections")
        if connections_section is not None:
            self.drop_rest(connections_section, "connections", (), {}, None)
            for name, sub in connections_section.sections.items():
                conn = self.connection(name, sub, set(pools))
                if conn is not None:
                    connections[name] = conn
        secrets: TomlTable = {}
        secrets_section = root.section("secrets")
        if secrets_section is not None:
            self.drop_rest(secrets_section, "secrets", (), {}, None)
            for name, sub in secrets_section.sections.items():
                converted = self.secret(name, sub, set(secrets))
                if converted is not None:
                    secrets[converted[0]] = converted[1]
        for name, sub in root.sections.items():
            if name == "authorities":
                self.dropped(sub, name, "certification authorities are configured per "
                             "connection in ikev1d (remote.cacerts)")
            elif name not in ("connections", "secrets", "pools") \
                    and name not in root.referenced:  # templates for inheritance
                self.dropped(sub, name, "not a swanctl.conf section")
        if connections:
            out["connections"] = connections
        if secrets:
            out["secrets"] = secrets
        if pools:
            out["pools"] = pools
        return out, list(connections), list(secrets), list(pools)

    def connection(self, name: str, sec: Section, pool_names: set[str]) -> TomlTable | None:
        path = f"connections.{name}"
        if not self.convertible(name, sec, path):
            return None
        conn: TomlTable = {}
        s = sec.settings
        local_addrs = self.local_addrs(s.get("local_addrs"), f"{path}.local_addrs")
        remote_addrs = self.remote_addrs(s.get("remote_addrs"), f"{path}.remote_addrs")
        if not remote_addrs:
            self.note(s.get("remote_addrs") or sec, f"{path}.remote_addrs", "skipped",
                      "no usable remote address: the connection is left out")
            return None
        if local_addrs:
            conn["local_addrs"] = local_addrs
        conn["remote_addrs"] = remote_addrs
        self.phase1(sec, path, conn)
        self.mode_config(sec, path, conn, pool_names)
        if not self.authentication(sec, path, conn, remote_addrs):
            return None
        self.children(sec, path, conn, dynamic=remote_addrs == [_ANY])
        handled = ("version", "local_addrs", "remote_addrs", "proposals", "encap",
                   "dpd_delay", "dpd_timeout", "rekey_time", "reauth_time", "aggressive",
                   "vips", "pools", "pull", "fragmentation")
        auth_sections = [n for n in sec.sections if _is_round(n, "local")
                         or _is_round(n, "remote")]
        self.drop_rest(sec, path, handled, _CONNECTION_DROPS, (*auth_sections, "children"))
        return conn

    def convertible(self, name: str, sec: Section, path: str) -> bool:
        """An IKEv1 connection (version 1, or 0 meaning any) with a name ikev1d takes."""
        version = sec.settings.get("version")
        version_value = version.value.strip() if version is not None else "0"
        if version_value == "2":
            self.note(sec, path, "skipped", "an IKEv2 connection (version = 2); "
                      "ikev1d speaks IKEv1 only")
            return False
        if version_value not in ("0", "1"):
            self.note(version or sec, f"{path}.version", "skipped",
                      f"unknown IKE version {version_value!r}")
            return False
        if version_value == "0":
            self.note(version or sec, f"{path}.version", "note",
                      "version = 0 (any) converted as IKEv1; charon would initiate IKEv2")
        if not _NAME_RE.match(name):
            self.note(sec, path, "skipped", f"the name {name!r} is not valid in ikev1d: "
                      "use letters, digits, '-', '_' and '.'")
            return False
        return True

    def phase1(self, sec: Section, path: str, conn: TomlTable) -> None:
        """Proposals, encapsulation, DPD, lifetime; Aggressive Mode refused."""
        s = sec.settings
        if "proposals" in s:
            kept = self.proposals(s["proposals"], f"{path}.proposals", esp=False)
            if kept:
                conn["proposals"] = kept
        if "encap" in s:
            encap = self.boolean(s["encap"], f"{path}.encap")
            if encap is not None:
                conn["encap"] = encap
        self.dpd(sec, path, conn)
        self.lifetime(sec, path, conn)
        if "fragmentation" in s:
            # Same four values and meanings as swanctl.conf.
            value = s["fragmentation"].value.strip().lower()
            if value in ("yes", "accept", "force", "no"):
                conn["fragmentation"] = value
            else:
                self.dropped(s["fragmentation"], f"{path}.fragmentation",
                             f"{s['fragmentation'].value!r} is not yes, accept, force or no")
        if "aggressive" in s:
            aggressive = self.boolean(s["aggressive"], f"{path}.aggressive")
            if aggressive:
                self.dropped(s["aggressive"], f"{path}.aggressive",
                             "Aggressive Mode is not supported: ikev1d uses Main Mode only, "
                             "which protects the identities")

    def mode_config(self, sec: Section, path: str, conn: TomlTable, pool_names: set[str]) -> None:
        """vips (client) or pools (server), and pull/push."""
        s = sec.settings
        vips: list[str] = []
        if "vips" in s:
            for text in _split_list(s["vips"].value):
                try:
                    vips.append(str(ipaddress.ip_address(text)))
                except ValueError:
                    self.dropped(s["vips"], f"{path}.vips: {text}", "not an IP address")
        pools: list[str] = []
        if "pools" in s:
            for text in _split_list(s["pools"].value):
                if text in pool_names:
                    pools.append(text)
                else:
                    self.dropped(s["pools"], f"{path}.pools: {text}",
                                 "no such pool was converted (only [pools] sections are)")
        if vips and pools:
            self.dropped(s["pools"], f"{path}.pools",
                         "a connection is either a Mode Config client (vips) or a server "
                         "(pools) in ikev1d")
            pools = []
        if vips:
            conn["vips"] = vips
        if pools:
            conn["pools"] = pools
        if "pull" in s and self.boolean(s["pull"], f"{path}.pull") is False:
            conn["modecfg"] = "push"

    def children(self, sec: Section, path: str, conn: TomlTable, *, dynamic: bool) -> None:
        children: TomlTable = {}
        children_section = sec.section("children")
        dpd_actions: list[tuple[Setting, str]] = []
        if children_section is not None:
            self.drop_rest(children_section, f"{path}.children", (), {}, None)
            for child_name, child_sec in children_section.sections.items():
                child = self.child(child_name, child_sec, f"{path}.children.{child_name}",
                                   dynamic, dpd_actions)
                if child is not None:
                    children[child_name] = child
        self.dpd_action(dpd_actions, conn)
        if children:
            conn["children"] = children

    def local_addrs(self, setting: Setting | None, path: str) -> list[str]:
        if setting is None:
            return []
        out: list[str] = []
        for text in _split_list(setting.value):
            if text.startswith(_ANY):
                return []  # any local address: ikev1d's default
            try:
                out.append(str(ipaddress.ip_address(text)))
            except ValueError:
                self.dropped(setting, f"{path}: {text}",
                             "ikev1d needs IP addresses here (no names, subnets or ranges)")
        return out

    def remote_addrs(self, setting: Setting | None, path: str) -> list[str]:
        if setting is None:
            return [_ANY]  # swanctl's default
        out: list[str] = []
        for text in _split_list(setting.value):
            if text.startswith(_ANY):
                if len(_split_list(setting.value)) > 1:
                    self.note(setting, path, "note",
                              f"{text} with other addresses: any peer address is accepted")
                return [_ANY]
            try:
                out.append(str(ipaddress.ip_address(text)))
                continue
            except ValueError:
                pass
            try:
                out.append(str(ipaddress.ip_network(text)))
                continue
            except ValueError:
                pass
            reason = ("address ranges are not supported; use a subnet" if "-" in text
                      and all(_is_ip(p) for p in text.split("-", 1))
                      else "host names are not resolved; use the peer's address")
            self.dropped(setting, f"{path}: {text}", reason)
        return out

    def dpd(self, sec: Section, path: str, conn: TomlTable) -> None:
        s = sec.settings
        delay = 0.0
        if "dpd_delay" in s:
            parsed = self.duration(s["dpd_delay"], f"{path}.dpd_delay")
            delay = parsed if parsed is not None else 0.0
        # swanctl's DPD is off unless dpd_delay is set; ikev1d's default is on.
        conn["dpd_delay"] = format_duration(delay)
        timeout: float | None = None
        if "dpd_timeout" in s:
            timeout = self.duration(s["dpd_timeout"], f"{path}.dpd_timeout")
        if delay > 0:
            effective = timeout if timeout is not None else _SWANCTL_DPD_TIMEOUT
            if effective <= delay:
                where = s.get("dpd_timeout") or s["dpd_delay"]
                self.note(where, f"{path}.dpd_timeout", "note",
                          f"{format_duration(effective)} is not longer than dpd_delay; "
                          f"ikev1d needs it longer: using {format_duration(delay * 5)}")
                effective = delay * 5
            conn["dpd_timeout"] = format_duration(effective)

    def dpd_action(self, actions: list[tuple[Setting, str]], conn: TomlTable) -> None:
        chosen: str | None = None
        for setting, action in actions:
            if chosen is None:
                chosen = action
            elif action != chosen:
                self.dropped(setting, setting.key,
                             f"ikev1d has one dpd_action per connection; keeping {chosen!r}")
        if chosen is None and conn.get("dpd_delay") != "0s":
            chosen = "clear"  # swanctl's "none": the SAs are gone, nothing more is done
        if chosen is not None:
            conn["dpd_action"] = chosen

    def lifetime(self, sec: Section, path: str, conn: TomlTable) -> None:
        s = sec.settings
        rekey = _SWANCTL_REKEY_TIME
        if "rekey_time" in s:
            parsed = self.duration(s["rekey_time"], f"{path}.rekey_time")
            rekey = parsed if parsed is not None else rekey
        reauth = 0.0
        if "reauth_time" in s:
            parsed = self.duration(s["reauth_time"], f"{path}.reauth_time")
            reauth = parsed if parsed is not None else 0.0
        candidates = [t for t in (rekey, reauth) if t > 0]
        where: Setting | Section = s.get("reauth_time") or s.get("rekey_time") or sec
        if not candidates:
            self.note(where, f"{path}.rekey_time", "note",
                      "Phase 1 is never renewed (0) in swanctl; ikev1d always sets a Phase 1 "
                      "lifetime: its default applies")
            return
        lifetime = min(candidates)
        if reauth > 0:
            self.note(where, f"{path}.reauth_time", "note",
                      "IKEv1 renews Phase 1 only by reauthentication: rekey_time and "
                      f"reauth_time combined as rekey_time = {format_duration(lifetime)}")
        conn["rekey_time"] = format_duration(lifetime)

    def authentication(self, sec: Section, path: str, conn: TomlTable,
                       remote_addrs: list[str]) -> bool:
        """Convert the first local and remote rounds into conn; False skips it."""
        sides: dict[str, TomlTable] = {}
        methods: dict[str, str] = {}
        xauth: dict[str, TomlTable] = {}
        for side in ("local", "remote"):
            rounds = _rounds(sec, side)
            if not rounds:
                self.note(sec, f"{path}.{side}", "skipped",
                          f"no {side} authentication round: the connection is left out")
                return False
            first_name, first = rounds[0]
            for later_name, later in rounds[1:]:
                method = (later.value("auth") or "").strip().lower()
                if method.startswith("xauth") and side not in xauth:
                    # swanctl's second round (local-2 / remote-2) with XAUTH.
                    table_x: TomlTable = {"auth": "xauth"}
                    xauth_id = (later.value("xauth_id") or "").strip()
                    if side == "local" and xauth_id:
                        table_x["xauth_id"] = xauth_id
                    if method != "xauth" and method != "xauth-generic":
                        self.note(later, f"{path}.{later_name}.auth", "note",
                                  f"{method}: converted as the generic XAUTH (user name and "
                                  "password)")
                    xauth[side] = table_x
                else:
                    self.dropped(later, f"{path}.{later_name}",
                                 "IKEv1 has one authentication round (plus XAUTH)")
            table = self.auth_round(first, f"{path}.{first_name}", side)
            if table is None:
                return False
            methods[side] = str(table["auth"])
            sides[side] = table
        if methods["local"] != methods["remote"]:
            self.note(sec, f"{path}.remote.auth", "skipped",
                      f"local auth {methods['local']!r} and remote auth "
                      f"{methods['remote']!r}: IKEv1 negotiates one method for both sides "
                      "(RFC 2409 section 5); the connection is left out")
            return False
        if "id" not in sides["remote"]:
            # swanctl accepts any authenticated remote ID unless told; ikev1d would
            # expect the peer's address.
            sides["remote"]["id"] = _ANY
        if methods["local"] == "pubkey" and not self.private_key(sec, path, sides["local"]):
            return False
        conn["local"] = sides["local"]
        conn["remote"] = sides["remote"]
        for side, table_x in xauth.items():
            conn[f"{side}_xauth"] = table_x
        return True

    def auth_round(self, sec: Section, path: str, side: str) -> TomlTable | None:
        s = sec.settings
        table: TomlTable = {}
        method_setting = s.get("auth")
        method = method_setting.value.strip().lower() if method_setting else "pubkey"
        if method_setting is None:
            self.note(sec, f"{path}.auth", "note", "not set: swanctl's default is pubkey")
        if method == "psk":
            table["auth"] = "psk"
        elif method in ("pubkey", "rsa", "ecdsa") or method.startswith(
                ("pubkey-", "rsa-", "ecdsa-", "rsa/", "ecdsa/")):
            table["auth"] = "pubkey"
            if method not in ("pubkey", "rsa", "ecdsa"):
                self.note(method_setting or sec, f"{path}.auth", "note",
                          f"{method}: converted as pubkey, without its signature constraints")
        else:
            reason = ("XAUTH is a second round after psk or pubkey (local-2/remote-2)"
                      if method.startswith("xauth")
                      else "EAP is IKEv2 only" if method.startswith("eap")
                      else f"auth = {method!r} is not supported")
            self.note(method_setting or sec, f"{path}.auth", "skipped",
                      f"{reason}: the connection is left out")
            return None
        handled = ["auth", "id", "round"]
        if "id" in s:
            identity = self.identity(s["id"], f"{path}.id", allow_any=side == "remote")
            if identity is not None:
                table["id"] = identity
        pubkey = table["auth"] == "pubkey"
        credentials = (("certs", "x509", "local"), ("cacerts", "x509ca", "remote"),
                       ("pubkeys", "pubkey", "remote"))
        for key, folder, where in credentials:
            if key not in s:
                continue
            handled.append(key)
            if not pubkey:
                self.dropped(s[key], f"{path}.{key}", "only used with auth = pubkey")
                continue
            if side != where:
                self.dropped(s[key], f"{path}.{key}", f"ikev1d reads {key} only in {where}")
                continue
            files = self.files(s[key], folder)
            if key == "pubkeys":
                if len(files) > 1:
                    self.dropped(s[key], f"{path}.{key}",
                                 f"ikev1d pins one key: keeping {files[0]}")
                table["pubkey"] = files[0]
            else:
                table[key] = files
        self.drop_rest(sec, path, handled, _AUTH_DROPS)
        return table

    def private_key(self, sec: Section, path: str, local: TomlTable) -> bool:
        certs = local.get("certs")
        if isinstance(certs, list) and certs and self.key_for_certificate is not None:
            key = self.key_for_certificate(certs[0])
            if key is not None:
                local["private_key"] = key
                self.note(sec, f"{path}.local", "note",
                          f"private_key = {key}: the key matching {certs[0]}, as swanctl "
                          "finds it")
                return True
        if len(self.private_keys) == 1:
            local["private_key"] = self.private_keys[0]
            self.note(sec, f"{path}.local", "note",
                      f"private_key = {self.private_keys[0]}: the only key found beside "
                      "swanctl.conf (swanctl picks the key matching the certificate)")
            return True
        found = "several" if self.private_keys else "no"
        self.note(sec, f"{path}.local", "skipped",
                  f"auth = pubkey needs our private key's file name; {found} keys were found "
                  "in private/, rsa/, ecdsa/ and pkcs8/: the connection is left out")
        return False

    def child(self, name: str, sec: Section, path: str, dynamic: bool,
              dpd_actions: list[tuple[Setting, str]]) -> TomlTable | None:
        if not _NAME_RE.match(name):
            self.note(sec, path, "skipped", f"the name {name!r} is not valid in ikev1d")
            return None
        s = sec.settings
        child: TomlTable = {}
        for key in ("local_ts", "remote_ts"):
            if key not in s:
                continue
            selectors = self.selectors(s[key], f"{path}.{key}")
            if selectors is None:
                return None
            if selectors:
                child[key] = selectors
        if "ah_proposals" in s:
            self.note(s["ah_proposals"], f"{path}.ah_proposals", "skipped",
                      "AH is not supported (ESP only): the child is left out")
            return None
        if "esp_proposals" in s:
            kept = self.proposals(s["esp_proposals"], f"{path}.esp_proposals", esp=True)
            if kept:
                child["esp_proposals"] = kept
        if "mode" in s:
            mode = s["mode"].value.strip().lower()
            if mode not in ("tunnel", "transport"):
                self.note(s["mode"], f"{path}.mode", "skipped",
                          f"mode {mode!r} is not supported (tunnel or transport): "
                          "the child is left out")
                return None
            child["mode"] = mode
        self.child_lifetime(s, path, child)
        if "start_action" in s:
            self.start_action(s["start_action"], f"{path}.start_action", dynamic, child)
        if "updown" in s:
            self.updown(s["updown"], f"{path}.updown", child)
        if "dpd_action" in s:
            self.child_dpd_action(s["dpd_action"], path, dpd_actions)
        handled = ("local_ts", "remote_ts", "esp_proposals", "mode", "rekey_time",
                   "life_bytes", "start_action", "dpd_action", "updown")
        self.drop_rest(sec, path, handled, _CHILD_DROPS)
        return child

    def child_lifetime(self, s: dict[str, Setting], path: str, child: TomlTable) -> None:
        """rekey_time (swanctl's default when absent) and life_bytes."""
        rekey = _SWANCTL_CHILD_REKEY_TIME
        if "rekey_time" in s:
            parsed = self.duration(s["rekey_time"], f"{path}.rekey_time")
            rekey = parsed if parsed is not None else rekey
            if rekey == 0:
                self.note(s["rekey_time"], f"{path}.rekey_time", "note",
                          "never renewed (0) in swanctl; ikev1d always sets a lifetime: "
                          "its default applies")
        if rekey > 0:
            child["rekey_time"] = format_duration(rekey)
        if "life_bytes" in s:
            text = s["life_bytes"].value.strip()
            if text.isdigit():
                if int(text):
                    child["life_bytes"] = int(text)
            else:
                self.dropped(s["life_bytes"], f"{path}.life_bytes",
                             f"{text!r} is not a number of bytes")

    def child_dpd_action(self, setting: Setting, path: str,
                         dpd_actions: list[tuple[Setting, str]]) -> None:
        """swanctl's per-child dpd_action, gathered for the connection (ikev1d's is per
        connection)."""
        key = f"{path}.dpd_action"
        action = setting.value.strip().lower()
        mapped = {"clear": "clear", "restart": "restart", "none": "clear",
                  "trap": "hold", "hold": "hold"}.get(action)
        if mapped is None:
            self.dropped(setting, key, f"unknown action {action!r}")
            return
        if action == "trap":
            self.note(setting, key, "note",
                      "trap: ikev1d has no trap policies; converted as hold (the SAs "
                      "are deleted and nothing is re-initiated)")
        dpd_actions.append((Setting(key, setting.value, setting.source, setting.line), mapped))

    def updown(self, setting: Setting, path: str, child: TomlTable) -> None:
        """The same command line (strongSwan runs it through a shell, ikev1d splits it
        itself); kept only when it names an executable that exists here."""
        text = setting.value.strip()
        try:
            program = shlex.split(text)[0] if text else ""
        except ValueError as exc:
            self.dropped(setting, path, f"cannot split {text!r}: {exc}")
            return
        if not os.path.isabs(program) or not os.access(program, os.X_OK):
            self.dropped(setting, path, f"{program!r} is not an executable on this machine")
            return
        child["updown"] = text

    def start_action(self, setting: Setting, path: str, dynamic: bool,
                     child: TomlTable) -> None:
        actions = {a.strip().lower() for a in setting.value.split("|") if a.strip()}
        if not actions or actions == {"none"}:
            return
        unknown = actions - {"none", "trap", "start"}
        if unknown:
            self.dropped(setting, path, f"unknown action {sorted(unknown)[0]!r}")
            return
        if dynamic:
            self.dropped(setting, path, "cannot initiate to a peer at %any")
            return
        if "trap" in actions:
            self.note(setting, path, "note", "trap policies are not supported: converted "
                      "as start (the tunnel is set up when loaded, not on first traffic)")
        child["start_action"] = "start"

    def selectors(self, setting: Setting, path: str) -> list[str] | None:
        """Networks, [] for "dynamic", None when the child must be left out."""
        out: list[str] = []
        items = _split_list(setting.value)
        for text in items:
            if text == "dynamic":
                if len(items) > 1:
                    self.note(setting, path, "skipped", "\"dynamic\" combined with networks "
                              "is not supported: the child is left out")
                    return None
                return []
            if "[" in text:
                self.note(setting, path, "skipped", f"{text}: protocol/port selectors are "
                          "not supported: the child is left out")
                return None
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                self.note(setting, path, "skipped", f"{text}: not a subnet or address "
                          "(ranges are not supported): the child is left out")
                return None
            if str(network) != text and "/" in text:
                self.note(setting, path, "note", f"{text} has host bits set: "
                          f"converted as {network}")
            out.append(str(network))
        return out

    def secret(self, name: str, sec: Section, taken: set[str]) -> tuple[str, TomlTable] | None:
        path = f"secrets.{name}"
        kind, _, suffix = name.partition("-")
        kind = kind.lower()
        if kind in ("eap", "ntlm"):
            self.note(sec, path, "dropped", f"{kind.upper()} secrets are not converted: "
                      "EAP is IKEv2 only")
            return None
        if kind not in ("ike", "xauth"):
            self.dropped(sec, path, "only pre-shared keys and XAUTH passwords (ike and xauth "
                         "sections) are converted; "
                         "ikev1d reads keys from the files the connections name")
            return None
        s = sec.settings
        if "secret" not in s or not s["secret"].value:
            self.note(sec, path, "skipped", "no secret: left out")
            return None
        value = s["secret"].value
        if not _valid_secret(value):
            self.note(s["secret"], f"{path}.secret", "skipped",
                      "invalid 0x (hex) or 0s (base64) encoding: left out")
            return None
        ids: list[str] = []
        handled = ["secret"]
        for key, setting in s.items():
            if key == "id" or key.startswith("id-"):
                handled.append(key)
                for text in _split_list(setting.value):
                    fake = Setting(key, text, setting.source, setting.line)
                    identity = self.identity(fake, f"{path}.{key}", allow_any=True)
                    if identity is not None and identity not in ids:
                        ids.append(identity)
        if not ids:
            self.note(sec, f"{path}.ids", "note",
                      "no id: swanctl uses this key for any peer; converted as ids = [\"%any\"]")
            ids = [_ANY]
        self.drop_rest(sec, path, handled, {})
        base = suffix or name
        out_name = re.sub(r"[^A-Za-z0-9_.-]", "-", base).lstrip("-_.") or "ike"
        unique, counter = out_name, 2
        while unique in taken:
            unique, counter = f"{out_name}-{counter}", counter + 1
        if kind == "xauth":
            return unique, {"type": "xauth", "secret": value, "ids": ids}
        return unique, {"secret": value, "ids": ids}

    def pool(self, name: str, sec: Section) -> TomlTable | None:
        path = f"pools.{name}"
        if not _NAME_RE.match(name):
            self.note(sec, path, "skipped", f"the name {name!r} is not valid in ikev1d")
            return None
        s = sec.settings
        if "addrs" not in s:
            self.note(sec, path, "skipped", "no addrs: left out")
            return None
        text = s["addrs"].value.strip()
        try:
            if "-" in text:
                low, _, high = text.partition("-")
                addrs_text = (f"{ipaddress.ip_address(low.strip())}-"
                              f"{ipaddress.ip_address(high.strip())}")
            else:
                addrs = ipaddress.ip_network(text, strict=False)
                if addrs.num_addresses < 4:
                    self.note(s["addrs"], f"{path}.addrs", "skipped",
                              "no addresses to hand out")
                    return None
                addrs_text = str(addrs)
        except ValueError:
            self.note(s["addrs"], f"{path}.addrs", "skipped",
                      f"{text}: neither a subnet nor a range of addresses: left out")
            return None
        pool: TomlTable = {"addrs": addrs_text}
        for key in ("dns", "split_include"):
            if key not in s:
                continue
            values: list[str] = []
            for item in _split_list(s[key].value):
                try:
                    values.append(str(ipaddress.ip_address(item)) if key == "dns"
                                  else str(ipaddress.ip_network(item, strict=False)))
                except ValueError:
                    self.dropped(s[key], f"{path}.{key}: {item}", "not an address/subnet")
            if values:
                pool[key] = values
        self.drop_rest(sec, path, ("addrs", "dns", "split_include"),
                       {"nbns": "NBNS is not sent", "dhcp": "not sent", "netmask": "not sent",
                        "server": "not sent", "subnet": "use split_include",
                        "split_exclude": "not sent"})
        return pool


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        return False
    return True


def _is_round(name: str, side: str) -> bool:
    return name == side or name.startswith(f"{side}-")


def _rounds(sec: Section, side: str) -> list[tuple[str, Section]]:
    """A side's authentication rounds in order: by ``round``, then file order."""
    found = [(n, sub) for n, sub in sec.sections.items() if _is_round(n, side)]

    def order(item: tuple[int, tuple[str, Section]]) -> tuple[int, int]:
        index, (_, sub) = item
        value = (sub.value("round") or "").strip()
        return (int(value) if value.isdigit() else 0, index)

    return [pair for _, pair in sorted(enumerate(found), key=order)]


def _valid_secret(text: str) -> bool:
    try:
        if text.startswith("0x"):
            return bool(binascii.unhexlify(text[2:]))
        if text.startswith("0s"):
            return bool(base64.b64decode(text[2:], validate=True))
    except (binascii.Error, ValueError):
        return False
    return True


def convert_swanctl(
    root: Section, *, base_dir: PurePath | None = None, private_keys: Sequence[str] = (),
    key_for_certificate: Callable[[str], str | None] | None = None,
    source: str = "swanctl.conf",
) -> Conversion:
    """Convert a parsed swanctl.conf.

    ``base_dir`` (the file's folder) resolves the credential file names swanctl
    looks up in x509/, x509ca/ and pubkey/.  For auth = pubkey, ikev1d needs the
    private key's file name, which swanctl finds by matching the certificate:
    ``key_for_certificate(cert_file)`` does that match, and failing it the only
    file in ``private_keys`` (the key files found beside swanctl.conf) is taken.
    """
    converter = _Converter(base_dir, private_keys, key_for_certificate)
    table, connections, secrets, pools = converter.convert(root)
    _drop_not_implemented(root, table, converter, base_dir)
    connections, secrets, pools = (
        [name for name in names if name in _table_at(table, key)]
        for key, names in (("connections", connections), ("secrets", secrets), ("pools", pools))
    )
    header = (f"# Converted from {source} by ikev1d import-swanctl; "
              "review it, then check it with `ikev1d check-config`.\n\n")
    body = dump_toml(table) if table else ""
    notes = sorted(converter.notes, key=lambda n: (n.source != source, n.source, n.line))
    return Conversion(header + body, tuple(notes), tuple(connections),
                      tuple(secrets), tuple(pools))


_NOT_IMPLEMENTED = "not implemented yet"


def _drop_not_implemented(
    root: Section, table: TomlTable, converter: _Converter, base_dir: PurePath | None
) -> None:
    """Drop, with a note, what ikev1d's loader refuses as not implemented yet.

    The loader is the one judge of which features exist, so this asks it rather
    than keeping a second list here: load, drop the key it names, load again."""
    for _ in range(1000):
        try:
            parse_config(dump_toml(table), "<converted>",
                         str(base_dir) if base_dir is not None else None)
        except ConfigError as exc:
            if not exc.reason.startswith(_NOT_IMPLEMENTED):
                return  # another problem: the command reports it when it checks the result
            # Leaving out how a peer authenticates would weaken the connection (the
            # loader's default is a pre-shared key): such a connection goes whole.
            conn = _authentication_of(exc.key)
            path, action = (conn, "skipped") if conn else (exc.key, "dropped")
            if not _pop_path(table, path):
                return
            converter.note(_origin(root, exc.key), exc.key, action, f"{exc.reason} in ikev1d")
        else:
            return


def _table_at(table: TomlTable, key: str) -> TomlTable:
    value = table.get(key)
    return value if isinstance(value, dict) else {}


_AUTH_SECTIONS = ("local", "remote", "local_xauth", "remote_xauth")


def _authentication_of(dotted: str) -> str | None:
    """``connections.NAME`` when the key path lies in one of its authentication
    rounds, else None."""
    parts = dotted.split(".")
    for i, part in enumerate(parts[2:], start=2):
        if part in _AUTH_SECTIONS and parts[0] == "connections":
            return ".".join(parts[:i])
    return None


def _pop_path(table: TomlTable, dotted: str) -> bool:
    """Remove the value at a dotted key path (names may themselves hold dots), and
    the tables that this leaves empty."""
    parts = dotted.split(".")
    trail: list[tuple[dict[str, object], str]] = []
    node: object = table
    i = 0
    while i < len(parts) and isinstance(node, dict):
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if key in node:
                trail.append((node, key))
                node, i = node[key], j
                break
        else:
            return False
    if i < len(parts) or not trail:
        return False
    parent, key = trail.pop()
    del parent[key]
    while trail and not parent:
        parent, key = trail.pop()
        del parent[key]
    return True


def _origin(root: Section, dotted: str) -> Section | Setting:
    """The deepest swanctl.conf section or setting along a key path, for its line."""
    item: Section | Setting = root
    parts = dotted.split(".")
    i = 0
    while i < len(parts) and isinstance(item, Section):
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            found = item.sections.get(key) or item.settings.get(key)
            if found is not None:
                item, i = found, j
                break
        else:
            break
    return item
