"""The TOML configuration file -> validated, frozen dataclasses.

Key names follow strongSwan's swanctl.conf so its users feel at home; the
accepted keys are exactly those in SPEC.md ("Configuration (TOML)").  Every
problem is reported as ``FILE: KEY: reason`` (ConfigError); unknown keys are
errors, with a "did you mean" hint, so that a typo never passes silently.

Seed 43.6.1 decides two lookups the engine does here:

* Phase 1 responder: the peer's proposals arrive before any ID, so the
  connection is found by (local address, remote address); connections with
  ``remote_addrs = ["%any"]`` come last and share "a common set" of proposals
  (the union of theirs).
* PSK: Main Mode encrypts the IDs with keys derived from the PSK, so the PSK
  is chosen by the peer's address (or an ID where that is unambiguous);
  dynamic peers all share the ``%any`` secret, which ``config_warnings``
  flags as the seed cautions.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ikev1d.durations import DurationError, format_duration, parse_duration
from ikev1d.errors import Ikev1dError
from ikev1d.proposals import (
    EspProposal,
    IkeProposal,
    ProposalError,
    parse_esp_proposal,
    parse_ike_proposal,
)

__all__ = [
    "DEFAULT_ESP_PROPOSALS",
    "DEFAULT_IKE_PROPOSALS",
    "AuthConfig",
    "ChildConfig",
    "Config",
    "ConfigError",
    "ConnectionConfig",
    "DaemonConfig",
    "IPNetwork",
    "PoolConfig",
    "SecretConfig",
    "classify_id",
    "config_warnings",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Modern first; one SHA-1 combination last for legacy peers (strongSwan's own
# defaults include all of these, so two default-configured ends agree).
DEFAULT_IKE_PROPOSALS: tuple[str, ...] = (
    "aes128-sha256-curve25519",
    "aes128-sha256-ecp256",
    "aes256-sha384-ecp384",
    "aes256-sha256-modp2048",
    "aes128-sha256-modp2048",
    "aes128-sha1-modp2048",
)
DEFAULT_ESP_PROPOSALS: tuple[str, ...] = (
    "aes128gcm16",
    "aes256gcm16",
    "aes128-sha256",
    "aes256-sha256",
)

ANY = "%any"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FQDN_LABEL_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_USER_RE = re.compile(r"^[^\s@]+$")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_MIN_PSK_LENGTH = 20


class ConfigError(Ikev1dError):
    """An invalid configuration; str() is ``FILE: KEY: reason``."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(source, key, reason)
        self.source = source
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        if self.key:
            return f"{self.source}: {self.key}: {self.reason}"
        return f"{self.source}: {self.reason}"


# --- the dataclasses ----------------------------------------------------------


@dataclass(frozen=True)
class DaemonConfig:
    listen: tuple[str, ...] = ("0.0.0.0",)  # noqa: S104  (a gateway listens on all by default)
    port: int = 500
    port_nat_t: int = 4500
    dataplane: str = "userspace"
    retransmit_timeout: float = 2.0
    retransmit_tries: int = 5
    half_open_per_peer: int = 8
    half_open_total: int = 1024
    half_open_timeout: float = 30.0
    log_level: str = "info"
    allow_insecure_algorithms: bool = False


@dataclass(frozen=True)
class AuthConfig:
    """One side's authentication ([connections.X.local] or [connections.X.remote]).

    ``id`` None means "the IKE address of this side", filled in at runtime.
    File names are absolute (relative ones are resolved against the config
    file's directory).
    """

    auth: str = "psk"
    id: str | None = None
    certs: tuple[str, ...] = ()
    private_key: str | None = None
    cacerts: tuple[str, ...] = ()
    pubkey: str | None = None


@dataclass(frozen=True)
class ChildConfig:
    """A Phase 2 tunnel.  Empty ``local_ts``/``remote_ts`` mean "dynamic":
    the IKE address of that side, or its Mode Config virtual IP."""

    name: str
    local_ts: tuple[IPNetwork, ...] = ()
    remote_ts: tuple[IPNetwork, ...] = ()
    esp_proposals: tuple[EspProposal, ...] = ()
    mode: str = "tunnel"
    rekey_time: float = 3600.0
    life_bytes: int = 0
    start_action: str = "none"

    def traffic_selectors(
        self, local_addr: str, remote_addr: str
    ) -> tuple[tuple[IPNetwork, ...], tuple[IPNetwork, ...]]:
        """(local_ts, remote_ts) with "dynamic" (empty) replaced by a host prefix
        (/32 or /128) of the given address: the IKE address of that side, or
        its virtual IP once Mode Config has assigned one."""
        return _or_host(self.local_ts, local_addr), _or_host(self.remote_ts, remote_addr)


@dataclass(frozen=True)
class ConnectionConfig:
    name: str
    local_addrs: tuple[str, ...] = ()
    remote_addrs: tuple[str, ...] = ()
    proposals: tuple[IkeProposal, ...] = ()
    encap: bool = False
    dpd_delay: float = 30.0
    dpd_timeout: float = 150.0
    dpd_action: str = "restart"
    rekey_time: float = 14400.0
    reauth_time: float = 0.0
    start_action: str = "none"
    vips: tuple[str, ...] = ()
    pools: tuple[str, ...] = ()
    modecfg: str = "pull"
    local: AuthConfig = field(default_factory=AuthConfig)
    remote: AuthConfig = field(default_factory=AuthConfig)
    children: dict[str, ChildConfig] = field(default_factory=dict)

    @property
    def dynamic_peer(self) -> bool:
        """The peer may come from any address (``remote_addrs`` has ``%any``)."""
        return ANY in self.remote_addrs

    @property
    def phase1_lifetime(self) -> float:
        """Seconds an ISAKMP SA lives.  In IKEv1 renewing Phase 1 is a new Main
        Mode, i.e. always a reauthentication, so the shorter of rekey_time and
        a non-zero reauth_time applies."""
        if self.reauth_time > 0:
            return min(self.rekey_time, self.reauth_time)
        return self.rekey_time


@dataclass(frozen=True)
class SecretConfig:
    name: str
    secret: str = field(repr=False)
    ids: tuple[str, ...] = ()

    @property
    def value(self) -> bytes:
        """The key bytes: ``0x`` hex and ``0s`` base64 as in swanctl, else UTF-8."""
        return _decode_secret(self.secret)


@dataclass(frozen=True)
class PoolConfig:
    name: str
    addrs: IPNetwork
    dns: tuple[str, ...] = ()
    split_include: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    connections: dict[str, ConnectionConfig] = field(default_factory=dict)
    secrets: dict[str, SecretConfig] = field(default_factory=dict)
    pools: dict[str, PoolConfig] = field(default_factory=dict)
    source: str = "<string>"
    # Remarks made while loading (ignored tokens, keys that have no effect);
    # config_warnings() reports them.
    notes: tuple[str, ...] = ()

    def connections_for_addresses(
        self, local_addr: str, remote_addr: str
    ) -> list[ConnectionConfig]:
        """Candidate connections for a Phase 1 request, best first (seed 43.6.1).

        Connections whose ``local_addrs`` contain ``local_addr`` (or are empty)
        and whose ``remote_addrs`` name ``remote_addr`` come first (an exact
        address before a subnet containing it), then the ``%any`` ones; ties
        keep file order, a specific local address before "any local".
        """
        local = _ip_or_none(local_addr)
        remote = _ip_or_none(remote_addr)
        if local is None or remote is None:
            return []
        ranked: list[tuple[int, int, int, ConnectionConfig]] = []
        for index, conn in enumerate(self.connections.values()):
            if conn.local_addrs and not any(
                _ip_or_none(a) == local for a in conn.local_addrs
            ):
                continue
            rank = _remote_rank(conn, remote)
            if rank is None:
                continue
            ranked.append((rank, 0 if conn.local_addrs else 1, index, conn))
        ranked.sort(key=lambda item: item[:3])
        return [item[3] for item in ranked]

    def dynamic_peer_proposals(self) -> tuple[IkeProposal, ...]:
        """The common Phase 1 set for peers without a static address (seed 43.6.1):
        the union of the ``%any`` connections' proposals, in file order."""
        return _union(c.proposals for c in self.connections.values() if c.dynamic_peer)

    def psk_for(self, local_id: str | None, remote_id_or_addr: str) -> bytes | None:
        """The pre-shared key for a peer, or None (seed 43.6.1).

        A secret whose ``ids`` name the peer (its address, or its ID) wins over
        one for ``%any``; if ``local_id`` is also listed, that secret wins a
        tie.  A peer address that selects exactly one statically configured
        connection also matches secrets listing that connection's remote ID
        (the "ID where unambiguous" case).  Among equals, file order decides.
        """
        wanted = {_normalize_id(remote_id_or_addr)}
        remote_ip = _ip_or_none(remote_id_or_addr)
        if remote_ip is not None:
            static_ids = {
                _normalize_id(c.remote.id)
                for c in self.connections.values()
                if c.remote.id not in (None, ANY) and _remote_rank(c, remote_ip) in (0, 1)
            }
            if len(static_ids) == 1:
                wanted |= static_ids
        local = _normalize_id(local_id) if local_id else None
        best: SecretConfig | None = None
        best_score = 0
        for secret in self.secrets.values():
            ids = {_normalize_id(i) for i in secret.ids}
            if wanted & ids:
                score = 4
            elif ANY in ids:
                score = 2
            else:
                continue
            if local is not None and local in ids:
                score += 1
            if score > best_score:
                best, best_score = secret, score
        return best.value if best is not None else None


# --- IDs, addresses, secrets ----------------------------------------------------


def classify_id(text: str) -> tuple[str, str]:
    """(kind, value) of a configured IKE identity (RFC 2407 section 4.6.2.1 types).

    kind is one of ``ipv4_addr``, ``ipv6_addr``, ``fqdn``, ``user_fqdn``,
    ``der_asn1_dn`` or ``any``.  ``@name`` forces an FQDN (as in strongSwan).
    Raises ValueError with the reason for anything else.
    """
    value = text.strip()
    if value == ANY:
        return "any", value
    if not value:
        raise ValueError("empty identity")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return ("ipv4_addr" if address.version == 4 else "ipv6_addr"), str(address)
    if "=" in value:
        _check_dn(value)
        return "der_asn1_dn", value
    if value.startswith("@"):
        name = value[1:]
        if not _valid_fqdn(name):
            raise ValueError(f"{value!r} is not a valid FQDN identity")
        return "fqdn", name
    if "@" in value:
        user, _, domain = value.rpartition("@")
        if not _USER_RE.match(user) or not _valid_fqdn(domain):
            raise ValueError(f"{value!r} is not a valid user FQDN (name@domain) identity")
        return "user_fqdn", value
    if not _valid_fqdn(value):
        raise ValueError(
            f"{value!r} is not a valid identity: use an IP address, an FQDN "
            "(gw.example.org), a user FQDN (me@example.org) or a DN (\"C=DE, O=X, CN=gw\")"
        )
    return "fqdn", value


def _valid_fqdn(name: str) -> bool:
    name = name.removesuffix(".")
    if not name or len(name) > 253:
        return False
    return all(_FQDN_LABEL_RE.match(label) for label in name.split("."))


def _check_dn(value: str) -> None:
    # The engine encodes DNs with cryptography (most significant RDN first as
    # strongSwan writes them, reversed for RFC 4514); parse the same way here
    # so that what loads can also be sent.
    from cryptography import x509

    parts = [p.strip() for p in value.split(",") if p.strip()]
    for part in parts:
        key, sep, val = part.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise ValueError(f"invalid distinguished name {value!r}: {part!r} is not KEY=VALUE")
    try:
        x509.Name.from_rfc4514_string(",".join(reversed(parts)))
    except ValueError as exc:
        raise ValueError(f"invalid distinguished name {value!r}: {exc}") from exc


def _normalize_id(text: str | None) -> str:
    if text is None:
        return ""
    try:
        kind, value = classify_id(text)
    except ValueError:
        return text.strip()
    if kind == "der_asn1_dn":
        return ", ".join(
            f"{k.strip().upper()}={v.strip()}"
            for k, _, v in (p.partition("=") for p in value.split(",") if p.strip())
        )
    if kind in ("fqdn", "user_fqdn"):
        return value.lower().removesuffix(".")
    return value


def _ip_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _remote_rank(conn: ConnectionConfig, remote: IPAddress) -> int | None:
    """0: an exact address, 1: a subnet containing it, 2: %any, None: no match."""
    best: int | None = None
    for entry in conn.remote_addrs:
        if entry == ANY:
            rank = 2
        elif "/" in entry:
            net = ipaddress.ip_network(entry)
            if remote.version != net.version or remote not in net:
                continue
            rank = 1
        else:
            if ipaddress.ip_address(entry) != remote:
                continue
            rank = 0
        best = rank if best is None else min(best, rank)
    return best


def _or_host(selectors: tuple[IPNetwork, ...], address: str) -> tuple[IPNetwork, ...]:
    if selectors:
        return selectors
    return (ipaddress.ip_network(address.strip()),)


def _decode_secret(text: str) -> bytes:
    if text.startswith("0x"):
        return binascii.unhexlify(text[2:])
    if text.startswith("0s"):
        return base64.b64decode(text[2:], validate=True)
    return text.encode("utf-8")


_P = TypeVar("_P")


def _union(groups: Iterable[Iterable[_P]]) -> tuple[_P, ...]:
    seen: list[_P] = []
    for group in groups:
        for item in group:
            if item not in seen:
                seen.append(item)
    return tuple(seen)


# --- reading TOML ---------------------------------------------------------------

_T = TypeVar("_T")

_DAEMON_KEYS = (
    "listen", "port", "port_nat_t", "dataplane", "retransmit_timeout", "retransmit_tries",
    "half_open_per_peer", "half_open_total", "half_open_timeout", "log_level",
    "allow_insecure_algorithms",
)
_CONNECTION_KEYS = (
    "local_addrs", "remote_addrs", "proposals", "encap", "dpd_delay", "dpd_timeout",
    "dpd_action", "rekey_time", "reauth_time", "start_action", "vips", "pools", "modecfg",
    "local", "remote", "children",
)
_LOCAL_KEYS = ("auth", "id", "certs", "private_key")
_REMOTE_KEYS = ("auth", "id", "cacerts", "pubkey")
_CHILD_KEYS = (
    "local_ts", "remote_ts", "esp_proposals", "mode", "rekey_time", "life_bytes",
    "start_action",
)
_SECRET_KEYS = ("secret", "ids")
_POOL_KEYS = ("addrs", "dns", "split_include")
_TOP_KEYS = ("daemon", "connections", "secrets", "pools")


class _Loader:
    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.notes: list[str] = []

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.source, key, reason)

    # -- generic typed getters -------------------------------------------------

    def table(self, value: object, key: str) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table ([{key}]), got {_type_name(value)}")
        return value

    def check_keys(
        self, data: Mapping[str, object], path: str, allowed: Collection[str],
        elsewhere: Mapping[str, str] | None = None,
    ) -> None:
        for key in data:
            if key in allowed:
                continue
            where = f"{path}.{key}" if path else key
            if key == "aggressive" and path.startswith("connections."):
                if data[key] is False:
                    self.notes.append(
                        f"{self.source}: {where}: Aggressive Mode is never used; "
                        "the key can be removed"
                    )
                    continue
                raise self.error(
                    where,
                    "Aggressive Mode is not supported: Phase 1 is Main Mode only, because "
                    "Aggressive Mode weakens the protection of the identities and the PSK; "
                    "remove this key",
                )
            if key == "version" and path.startswith("connections.") and path.count(".") == 1:
                if data[key] in (0, 1):
                    continue
                raise self.error(where, "ikev1d speaks IKEv1 only; use version = 1 or omit it")
            if elsewhere and key in elsewhere:
                raise self.error(where, f"unknown key; {key!r} belongs in {elsewhere[key]}")
            hint = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
            suffix = f"; did you mean {hint[0]!r}?" if hint else ""
            raise self.error(
                where, f"unknown key{suffix} (known keys: {', '.join(sorted(allowed))})"
            )

    def get_str(self, data: Mapping[str, object], path: str, key: str, default: str) -> str:
        value = data.get(key, default)
        if not isinstance(value, str):
            raise self.error(f"{path}.{key}", f"expected a string, got {_type_name(value)}")
        return value

    def get_optional_str(self, data: Mapping[str, object], path: str, key: str) -> str | None:
        if key not in data:
            return None
        value = self.get_str(data, path, key, "")
        return value if value.strip() else None

    def get_choice(
        self, data: Mapping[str, object], path: str, key: str, default: str,
        choices: Collection[str], extra: str = "",
    ) -> str:
        value = self.get_str(data, path, key, default)
        if value not in choices:
            raise self.error(
                f"{path}.{key}",
                f"invalid value {value!r}: expected one of {' | '.join(choices)}{extra}",
            )
        return value

    def get_bool(self, data: Mapping[str, object], path: str, key: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"{path}.{key}", f"expected true or false, got {_type_name(value)}")
        return value

    def get_int(
        self, data: Mapping[str, object], path: str, key: str, default: int,
        low: int, high: int | None = None,
    ) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{path}.{key}", f"expected an integer, got {_type_name(value)}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise self.error(f"{path}.{key}", f"{value} is out of range: must be {bound}")
        return value

    def get_duration(
        self, data: Mapping[str, object], path: str, key: str, default: float,
        *, allow_zero: bool = False,
    ) -> float:
        if key not in data:
            return default
        try:
            seconds = parse_duration(data[key])
        except DurationError as exc:
            raise self.error(f"{path}.{key}", str(exc)) from None
        if seconds == 0 and not allow_zero:
            raise self.error(f"{path}.{key}", "must be longer than 0s")
        return seconds

    def get_list(
        self, data: Mapping[str, object], path: str, key: str, default: Iterable[_T],
        convert: Callable[[str, str], _T], *, split_commas: bool = False,
    ) -> tuple[_T, ...]:
        """A list of strings, each converted with convert(text, key_path)."""
        if key not in data:
            return tuple(default)
        value = data[key]
        if isinstance(value, str) and split_commas:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise self.error(
                f"{path}.{key}", f"expected a list of strings, got {_type_name(value)}"
            )
        result: list[_T] = []
        for index, item in enumerate(value):
            item_key = f"{path}.{key}[{index}]"
            if not isinstance(item, str):
                raise self.error(item_key, f"expected a string, got {_type_name(item)}")
            result.append(convert(item, item_key))
        return tuple(result)

    # -- converters ---------------------------------------------------------------

    def address(self, text: str, key: str) -> str:
        try:
            return str(ipaddress.ip_address(text.strip()))
        except ValueError:
            raise self.error(key, f"{text!r} is not an IP address") from None

    def remote_address(self, text: str, key: str) -> str:
        value = text.strip()
        if value == ANY:
            return ANY
        if "/" in value:
            return str(self.network(value, key))
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise self.error(
                key,
                f"{text!r} is not an IP address, a subnet or \"%any\" (host names are not "
                "resolved; use the peer's address)",
            ) from None

    def network(self, text: str, key: str) -> IPNetwork:
        value = text.strip()
        try:
            return ipaddress.ip_network(value)
        except ValueError:
            pass
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise self.error(key, f"{text!r} is not a network (like 10.1.0.0/24)") from None
        raise self.error(key, f"{text!r} has host bits set; did you mean {str(loose)!r}?")

    def file(self, text: str, key: str) -> str:
        path = Path(text.strip()).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        if not path.is_file():
            raise self.error(key, f"file not found: {path}")
        if not os.access(path, os.R_OK):
            raise self.error(key, f"file not readable: {path}")
        return str(path)

    def identity(self, text: str, key: str, *, allow_any: bool) -> str:
        try:
            kind, _ = classify_id(text)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        if kind == "any" and not allow_any:
            raise self.error(key, "\"%any\" is only allowed for the remote side")
        return text.strip()


def _type_name(value: object) -> str:
    names = {
        bool: "a boolean", int: "an integer", float: "a float", str: "a string",
        list: "a list", dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


# --- sections -----------------------------------------------------------------------


def _load_daemon(ld: _Loader, raw: object) -> DaemonConfig:
    data = ld.table(raw, "daemon")
    path = "daemon"
    ld.check_keys(data, path, _DAEMON_KEYS)
    d = DaemonConfig()
    listen = ld.get_list(data, path, "listen", d.listen, ld.address)
    if not listen:
        raise ld.error("daemon.listen", "needs at least one address (\"0.0.0.0\" for all)")
    port = ld.get_int(data, path, "port", d.port, 1, 65535)
    port_nat_t = ld.get_int(data, path, "port_nat_t", d.port_nat_t, 1, 65535)
    if port == port_nat_t:
        raise ld.error("daemon.port_nat_t", f"must differ from daemon.port ({port})")
    return DaemonConfig(
        listen=listen,
        port=port,
        port_nat_t=port_nat_t,
        dataplane=ld.get_choice(data, path, "dataplane", d.dataplane,
                                ("userspace", "kernel", "none")),
        retransmit_timeout=ld.get_duration(data, path, "retransmit_timeout",
                                           d.retransmit_timeout),
        retransmit_tries=ld.get_int(data, path, "retransmit_tries", d.retransmit_tries, 0, 100),
        half_open_per_peer=ld.get_int(data, path, "half_open_per_peer", d.half_open_per_peer, 1),
        half_open_total=ld.get_int(data, path, "half_open_total", d.half_open_total, 1),
        half_open_timeout=ld.get_duration(data, path, "half_open_timeout", d.half_open_timeout),
        log_level=ld.get_choice(data, path, "log_level", d.log_level, _LOG_LEVELS),
        allow_insecure_algorithms=ld.get_bool(data, path, "allow_insecure_algorithms",
                                              d.allow_insecure_algorithms),
    )


def _ike_proposals(
    ld: _Loader, data: Mapping[str, object], path: str, allow_insecure: bool
) -> tuple[IkeProposal, ...]:
    def convert(text: str, key: str) -> list[IkeProposal]:
        try:
            return parse_ike_proposal(text, allow_insecure=allow_insecure, notes=notes)
        except ProposalError as exc:
            raise ld.error(key, str(exc)) from None

    notes: list[str] = []
    groups = ld.get_list(data, path, "proposals", [], convert, split_commas=True)
    ld.notes.extend(f"{ld.source}: {path}.proposals: {n}" for n in notes)
    if "proposals" in data and not groups:
        raise ld.error(f"{path}.proposals", "must not be empty (omit it for the defaults)")
    if not groups:
        groups = tuple(parse_ike_proposal(t) for t in DEFAULT_IKE_PROPOSALS)
    return _union(groups)


def _esp_proposals(
    ld: _Loader, data: Mapping[str, object], path: str, allow_insecure: bool
) -> tuple[EspProposal, ...]:
    def convert(text: str, key: str) -> list[EspProposal]:
        try:
            return parse_esp_proposal(text, allow_insecure=allow_insecure)
        except ProposalError as exc:
            raise ld.error(key, str(exc)) from None

    groups = ld.get_list(data, path, "esp_proposals", [], convert, split_commas=True)
    if "esp_proposals" in data and not groups:
        raise ld.error(f"{path}.esp_proposals", "must not be empty (omit it for the defaults)")
    if not groups:
        groups = tuple(parse_esp_proposal(t) for t in DEFAULT_ESP_PROPOSALS)
    return _union(groups)


def _load_auth(
    ld: _Loader, raw: object, path: str, *, remote: bool, default_id: str | None
) -> AuthConfig:
    data = ld.table(raw if raw is not None else {}, path)
    conn_path = path.rpartition(".")[0]
    if remote:
        elsewhere = {k: f"[{conn_path}.local]" for k in _LOCAL_KEYS}
        ld.check_keys(data, path, _REMOTE_KEYS, elsewhere)
    else:
        elsewhere = {k: f"[{conn_path}.remote]" for k in _REMOTE_KEYS}
        ld.check_keys(data, path, _LOCAL_KEYS, elsewhere)
    auth = ld.get_choice(data, path, "auth", "psk", ("psk", "pubkey", "rsa-encryption"))
    id_text = ld.get_optional_str(data, path, "id")
    identity = (
        ld.identity(id_text, f"{path}.id", allow_any=remote) if id_text is not None
        else default_id
    )
    certs = ld.get_list(data, path, "certs", (), ld.file)
    cacerts = ld.get_list(data, path, "cacerts", (), ld.file)
    private_key = ld.get_optional_str(data, path, "private_key")
    pubkey = ld.get_optional_str(data, path, "pubkey")
    if private_key is not None:
        private_key = ld.file(private_key, f"{path}.private_key")
    if pubkey is not None:
        pubkey = ld.file(pubkey, f"{path}.pubkey")
    return AuthConfig(auth, identity, certs, private_key, cacerts, pubkey)


def _check_auth_files(ld: _Loader, a: AuthConfig, path: str, *, remote: bool) -> None:
    if a.auth == "psk":
        for key, present in (("certs", a.certs), ("private_key", a.private_key),
                             ("cacerts", a.cacerts), ("pubkey", a.pubkey)):
            if present:
                raise ld.error(f"{path}.{key}", "only used with auth = \"pubkey\" or "
                               "\"rsa-encryption\", not with auth = \"psk\"")
        return
    if not remote:
        if a.auth == "pubkey" and not a.certs:
            raise ld.error(f"{path}.certs", "auth = \"pubkey\" needs our certificate "
                           "(a PEM file)")
        if a.private_key is None:
            raise ld.error(f"{path}.private_key",
                           f"auth = \"{a.auth}\" needs our private key (a PEM file)")
        return
    if a.auth == "pubkey" and not a.cacerts and a.pubkey is None:
        raise ld.error(f"{path}.cacerts", "auth = \"pubkey\" needs trust anchors (cacerts) "
                       "or the peer's certificate (pubkey) to verify the peer")
    if a.auth == "rsa-encryption" and a.pubkey is None:
        raise ld.error(
            f"{path}.pubkey",
            "auth = \"rsa-encryption\" needs the peer's public key or certificate beforehand "
            "(RFC 2409 section 5.2: the nonce is encrypted with it)",
        )


def _load_child(
    ld: _Loader, name: str, raw: object, path: str, allow_insecure: bool
) -> ChildConfig:
    data = ld.table(raw, path)
    ld.check_keys(data, path, _CHILD_KEYS)
    d = ChildConfig(name)

    def traffic_selector(text: str, key: str) -> IPNetwork | None:
        if text.strip() == "dynamic":
            return None
        return ld.network(text, key)

    selectors: dict[str, tuple[IPNetwork, ...]] = {}
    for key in ("local_ts", "remote_ts"):
        items = ld.get_list(data, path, key, (), traffic_selector)
        if None in items and len(items) > 1:
            raise ld.error(f"{path}.{key}", "\"dynamic\" cannot be combined with networks")
        selectors[key] = tuple(n for n in items if n is not None)
    return ChildConfig(
        name=name,
        local_ts=selectors["local_ts"],
        remote_ts=selectors["remote_ts"],
        esp_proposals=_esp_proposals(ld, data, path, allow_insecure),
        mode=ld.get_choice(data, path, "mode", d.mode, ("tunnel", "transport")),
        rekey_time=ld.get_duration(data, path, "rekey_time", d.rekey_time),
        life_bytes=ld.get_int(data, path, "life_bytes", d.life_bytes, 0),
        start_action=ld.get_choice(data, path, "start_action", d.start_action,
                                   ("none", "start")),
    )


def _load_connection(
    ld: _Loader, name: str, raw: object, allow_insecure: bool, pool_names: Collection[str]
) -> ConnectionConfig:
    path = f"connections.{name}"
    _check_name(ld, name, path)
    data = ld.table(raw, path)
    ld.check_keys(data, path, _CONNECTION_KEYS)
    d = ConnectionConfig(name)

    local_addrs = ld.get_list(data, path, "local_addrs", (), ld.address)
    remote_addrs = ld.get_list(data, path, "remote_addrs", (), ld.remote_address)
    if not remote_addrs:
        raise ld.error(f"{path}.remote_addrs",
                       "required: the peer's address, or [\"%any\"] for dynamic peers")
    if ANY in remote_addrs and len(remote_addrs) > 1:
        raise ld.error(f"{path}.remote_addrs", "\"%any\" cannot be combined with addresses")

    # Defaults (swanctl): our ID is our address; the peer's is its address when
    # there is exactly one, otherwise any ID that authenticates.
    local_default = local_addrs[0] if local_addrs else None
    remote_default = remote_addrs[0] if len(remote_addrs) == 1 and "/" not in remote_addrs[0] \
        and remote_addrs[0] != ANY else ANY
    local = _load_auth(ld, data.get("local"), f"{path}.local", remote=False,
                       default_id=local_default)
    remote = _load_auth(ld, data.get("remote"), f"{path}.remote", remote=True,
                        default_id=remote_default)
    if local.auth != remote.auth:
        raise ld.error(
            f"{path}.remote.auth",
            f"is {remote.auth!r} but local.auth is {local.auth!r}: IKEv1 negotiates one "
            "authentication method for both sides (RFC 2409 section 5)",
        )
    _check_auth_files(ld, local, f"{path}.local", remote=False)
    _check_auth_files(ld, remote, f"{path}.remote", remote=True)

    dpd_delay = ld.get_duration(data, path, "dpd_delay", d.dpd_delay, allow_zero=True)
    dpd_timeout = ld.get_duration(data, path, "dpd_timeout", d.dpd_timeout)
    if dpd_delay > 0 and dpd_timeout <= dpd_delay:
        raise ld.error(f"{path}.dpd_timeout",
                       f"must be longer than dpd_delay ({format_duration(dpd_delay)})")

    def vip(text: str, key: str) -> str:
        return ld.address(text, key)

    def pool(text: str, key: str) -> str:
        if text not in pool_names:
            hint = difflib.get_close_matches(text, list(pool_names), n=1)
            suffix = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ld.error(key, f"no pool {text!r} is defined in [pools]{suffix}")
        return text

    vips = ld.get_list(data, path, "vips", (), vip)
    pools = ld.get_list(data, path, "pools", (), pool)
    if vips and pools:
        raise ld.error(f"{path}.pools", "a connection is either a Mode Config client (vips) "
                       "or a server (pools), not both")

    start_action = ld.get_choice(data, path, "start_action", d.start_action, ("none", "start"))
    children_raw = ld.table(data.get("children", {}), f"{path}.children")
    children: dict[str, ChildConfig] = {}
    for child_name, child_raw in children_raw.items():
        child_path = f"{path}.children.{child_name}"
        _check_name(ld, child_name, child_path)
        children[child_name] = _load_child(ld, child_name, child_raw, child_path, allow_insecure)

    if ANY in remote_addrs:
        if start_action == "start":
            raise ld.error(f"{path}.start_action",
                           "cannot initiate to \"%any\": set remote_addrs to the peer's address")
        for child in children.values():
            if child.start_action == "start":
                raise ld.error(f"{path}.children.{child.name}.start_action",
                               "cannot initiate to \"%any\": set remote_addrs to the "
                               "peer's address")

    return ConnectionConfig(
        name=name,
        local_addrs=local_addrs,
        remote_addrs=remote_addrs,
        proposals=_ike_proposals(ld, data, path, allow_insecure),
        encap=ld.get_bool(data, path, "encap", d.encap),
        dpd_delay=dpd_delay,
        dpd_timeout=dpd_timeout,
        dpd_action=ld.get_choice(data, path, "dpd_action", d.dpd_action,
                                 ("clear", "hold", "restart")),
        rekey_time=ld.get_duration(data, path, "rekey_time", d.rekey_time),
        reauth_time=ld.get_duration(data, path, "reauth_time", d.reauth_time, allow_zero=True),
        start_action=start_action,
        vips=vips,
        pools=pools,
        modecfg=ld.get_choice(data, path, "modecfg", d.modecfg, ("pull", "push")),
        local=local,
        remote=remote,
        children=children,
    )


def _load_secret(ld: _Loader, name: str, raw: object) -> SecretConfig:
    path = f"secrets.{name}"
    _check_name(ld, name, path)
    data = ld.table(raw, path)
    ld.check_keys(data, path, _SECRET_KEYS)
    if "secret" not in data:
        raise ld.error(f"{path}.secret", "required")
    secret = ld.get_str(data, path, "secret", "")
    if not secret:
        raise ld.error(f"{path}.secret", "must not be empty")
    try:
        value = _decode_secret(secret)
    except (binascii.Error, ValueError):
        raise ld.error(f"{path}.secret", "invalid 0x (hex) or 0s (base64) encoding") from None
    if not value:
        raise ld.error(f"{path}.secret", "must not be empty")
    ids = ld.get_list(data, path, "ids", (),
                      lambda t, k: ld.identity(t, k, allow_any=True))
    if not ids:
        raise ld.error(f"{path}.ids", "required: the peer addresses or IDs this secret is "
                       "for, or [\"%any\"] for dynamic peers")
    return SecretConfig(name, secret, ids)


def _load_pool(ld: _Loader, name: str, raw: object) -> PoolConfig:
    path = f"pools.{name}"
    _check_name(ld, name, path)
    data = ld.table(raw, path)
    ld.check_keys(data, path, _POOL_KEYS)
    if "addrs" not in data:
        raise ld.error(f"{path}.addrs", "required: the address range as a subnet "
                       "(\"10.3.0.0/24\")")
    addrs = ld.network(ld.get_str(data, path, "addrs", ""), f"{path}.addrs")
    if addrs.num_addresses < 2:
        raise ld.error(f"{path}.addrs", "the pool has no addresses to hand out")
    return PoolConfig(
        name=name,
        addrs=addrs,
        dns=ld.get_list(data, path, "dns", (), ld.address),
        split_include=ld.get_list(data, path, "split_include", (), ld.network),
    )


def _check_name(ld: _Loader, name: str, path: str) -> None:
    if not _NAME_RE.match(name):
        raise ld.error(path, f"invalid name {name!r}: use letters, digits, '-', '_' and '.'")


# --- entry points ------------------------------------------------------------------


def parse_config(text: str, source: str = "<string>", base_dir: str | Path | None = None) -> Config:
    """Validate a TOML configuration; relative file names are resolved against
    ``base_dir`` (default: the current directory)."""
    ld = _Loader(source, Path(base_dir) if base_dir is not None else Path.cwd())
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    ld.check_keys(data, "", _TOP_KEYS)
    daemon = _load_daemon(ld, data.get("daemon", {}))
    allow_insecure = daemon.allow_insecure_algorithms

    pools = {
        name: _load_pool(ld, name, raw)
        for name, raw in ld.table(data.get("pools", {}), "pools").items()
    }
    connections = {
        name: _load_connection(ld, name, raw, allow_insecure, pools)
        for name, raw in ld.table(data.get("connections", {}), "connections").items()
    }
    secrets = {
        name: _load_secret(ld, name, raw)
        for name, raw in ld.table(data.get("secrets", {}), "secrets").items()
    }
    return Config(daemon, connections, secrets, pools, source, tuple(ld.notes))


def load_config(path: str | Path) -> Config:
    """Read and validate a configuration file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "", "not UTF-8 text") from None
    return parse_config(text, str(path), file.resolve().parent)


# --- warnings (check-config) ---------------------------------------------------------


def config_warnings(cfg: Config) -> list[str]:
    """Things that load but deserve a second look, each ``FILE: KEY: text``."""
    src = cfg.source
    out: list[str] = []

    # Seed 43.6.1 caution: dynamic peers share one PSK.
    psk_dynamic = [
        c.name for c in cfg.connections.values() if c.dynamic_peer and c.local.auth == "psk"
    ]
    any_secrets = [s.name for s in cfg.secrets.values() if ANY in s.ids]
    if psk_dynamic or any_secrets:
        keys = [f"connections.{n}" for n in psk_dynamic] + [f"secrets.{n}" for n in any_secrets]
        who = f"connections {', '.join(psk_dynamic)}" if psk_dynamic else "connections"
        out.append(
            f"{src}: {', '.join(keys)}: {who} with dynamic peers (%any) share "
            "one pre-shared key: using the same pre-shared key for several peers is a "
            "security risk and is discouraged (any of them can impersonate the others); "
            "prefer authentication by certificate (auth = \"pubkey\")"
        )

    if cfg.daemon.allow_insecure_algorithms:
        out.append(f"{src}: daemon.allow_insecure_algorithms: insecure algorithms (md5, des) "
                   "are allowed")

    dynamic_sets = {
        c.name: c.proposals for c in cfg.connections.values() if c.dynamic_peer
    }
    if len(set(dynamic_sets.values())) > 1:
        out.append(
            f"{src}: connections: the dynamic-peer connections "
            f"{', '.join(dynamic_sets)} have different proposals; a responder cannot tell "
            "them apart before authentication, so it accepts the union of them for all"
        )

    used_pools: set[str] = set()
    for conn in cfg.connections.values():
        path = f"connections.{conn.name}"
        used_pools.update(conn.pools)
        for proposal in conn.proposals:
            if proposal.weak:
                out.append(f"{src}: {path}.proposals: {proposal.render()}: "
                           f"{'; '.join(proposal.weaknesses)}")
        if conn.local.auth == "psk" and _no_secret(cfg, conn):
            out.append(f"{src}: {path}: auth = \"psk\" but no [secrets.*] entry lists the "
                       f"peer ({', '.join(conn.remote_addrs)} / {conn.remote.id}) or \"%any\"")
        if conn.dynamic_peer and conn.dpd_action == "restart" and conn.dpd_delay > 0:
            out.append(f"{src}: {path}.dpd_action: \"restart\" cannot re-initiate to a dynamic "
                       "peer (%any); \"clear\" is the usual choice for responders")
        if not conn.children:
            out.append(f"{src}: {path}.children: no children: Phase 1 only, no traffic "
                       "will be protected")
        for child in conn.children.values():
            cpath = f"{path}.children.{child.name}"
            for esp in child.esp_proposals:
                if esp.weak:
                    out.append(f"{src}: {cpath}.esp_proposals: {esp.render()}: "
                               f"{'; '.join(esp.weaknesses)}")
            if child.rekey_time > conn.phase1_lifetime:
                out.append(
                    f"{src}: {cpath}.rekey_time: Phase 2 lifetime "
                    f"({format_duration(child.rekey_time)}) is longer than Phase 1's "
                    f"({format_duration(conn.phase1_lifetime)}); usually Phase 1 lives longer"
                )
            if child.mode == "tunnel" and not conn.vips and not conn.pools and (
                not child.local_ts or not child.remote_ts
            ):
                out.append(f"{src}: {cpath}: local_ts/remote_ts not set: the tunnel covers "
                           "only the two gateway addresses")

    for secret in cfg.secrets.values():
        if len(secret.value) < _MIN_PSK_LENGTH:
            out.append(f"{src}: secrets.{secret.name}.secret: the pre-shared key is only "
                       f"{len(secret.value)} characters; use at least {_MIN_PSK_LENGTH} "
                       "random characters")
    for pool in cfg.pools.values():
        if pool.name not in used_pools:
            out.append(f"{src}: pools.{pool.name}: not used by any connection")
    out.extend(cfg.notes)
    return out


def _no_secret(cfg: Config, conn: ConnectionConfig) -> bool:
    candidates = [a for a in conn.remote_addrs if a != ANY and "/" not in a]
    if conn.remote.id is not None:
        candidates.append(conn.remote.id)
    if conn.dynamic_peer:
        candidates.append(ANY)
    return all(cfg.psk_for(conn.local.id, c) is None for c in candidates)
