"""The configuration as validated, frozen dataclasses, and the lookups the engine makes.

Two lookups are decided here because Main Mode forces them (RFC 2409 section 5):

* Phase 1 responder: the peer's proposals arrive before any ID, so the
  connection is found by (local address, remote address); connections with
  ``remote_addrs = ["%any"]`` come last and share a common set of proposals
  (the union of theirs).
* PSK: Main Mode encrypts the IDs with keys derived from the PSK (RFC 2409
  section 5.4), so the PSK is chosen by the peer's address (or an ID where
  that is unambiguous); dynamic peers all share the ``%any`` secret, which
  ``config_warnings`` flags.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from ikev1d.proposals import EspProposal, IkeProposal

from .credentials import Credentials
from .identity import ANY, Identity, IdentityError, ip_or_none

__all__ = [
    "DEFAULT_ESP_PROPOSALS",
    "DEFAULT_IKE_PROPOSALS",
    "Auth",
    "AuthConfig",
    "ChildConfig",
    "Config",
    "ConnectionConfig",
    "DaemonConfig",
    "Dataplane",
    "DpdAction",
    "Fragmentation",
    "IPAddress",
    "IPNetwork",
    "IpsecMode",
    "LogLevel",
    "ModeCfg",
    "PoolConfig",
    "SecretConfig",
    "SecretType",
    "StartAction",
    "TunOffload",
    "XauthConfig",
    "XauthRound",
    "decode_secret",
    "union",
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


# --- the choices ---------------------------------------------------------------
# StrEnums: each member is also its string, so code comparing with "restart"
# keeps working and status output shows the plain value.


class Dataplane(enum.StrEnum):
    USERSPACE = "userspace"  # TUN device and ESP in ikev1d
    KERNEL = "kernel"  # Linux XFRM
    NONE = "none"  # keying only


class TunOffload(enum.StrEnum):
    """What the userspace data plane's TUN device offloads (IFF_VNET_HDR)."""

    OFF = "off"  # one packet per read and write
    GRO = "gro"  # received TCP segments written as super-packets
    TSO = "tso"  # that, and TCP super-packets read (checksum + segmentation offload)


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Auth(enum.StrEnum):
    """Phase 1 authentication (RFC 2409 section 5): one method for both sides."""

    PSK = "psk"
    PUBKEY = "pubkey"  # signatures, RFC 2409 section 5.1
    RSA_ENCRYPTION = "rsa-encryption"  # RFC 2409 section 5.2 (auth method 4)
    RSA_ENCRYPTION_REVISED = "rsa-encryption-revised"  # RFC 2409 section 5.3 (method 5)

    @property
    def encrypts_to_peer(self) -> bool:
        """Public key encryption: the peer's public key is needed beforehand."""
        return self in (Auth.RSA_ENCRYPTION, Auth.RSA_ENCRYPTION_REVISED)


class DpdAction(enum.StrEnum):
    """What happens when DPD (RFC 3706) declares the peer dead."""

    CLEAR = "clear"
    HOLD = "hold"
    RESTART = "restart"


class StartAction(enum.StrEnum):
    NONE = "none"
    START = "start"  # initiate when loaded
    TRAP = "trap"  # negotiate when traffic for the child comes (see engine.traps)


class IpsecMode(enum.StrEnum):
    """RFC 2407 section 4.5 encapsulation mode of a child's IPsec SA."""

    TUNNEL = "tunnel"
    TRANSPORT = "transport"


class Fragmentation(enum.StrEnum):
    """IKE fragmentation of large Phase 1 messages, strongSwan's choices."""

    YES = "yes"  # announce support, fragment when needed
    ACCEPT = "accept"  # announce support, never fragment
    FORCE = "force"  # fragment from the first message on
    NO = "no"


class Unique(enum.StrEnum):
    """What a new ISAKMP SA does to older ones with the same identities (our ID,
    the peer's ID, the XAUTH user): swanctl's ``unique`` choices."""

    NO = "no"  # several may coexist; INITIAL-CONTACT still removes older ones
    NEVER = "never"  # as "no", and INITIAL-CONTACT is neither sent nor honoured
    REPLACE = "replace"  # the older ones are deleted (with Delete payloads)
    KEEP = "keep"  # the new one is refused while an older one is up


class SecretType(enum.StrEnum):
    IKE = "ike"  # a pre-shared key for Phase 1
    XAUTH = "xauth"  # a user's XAUTH password
    PRIVATE_KEY = "private_key"  # the passphrase of encrypted private key files
    RADIUS = "radius"  # the secret shared with the [xauth] RADIUS server (RFC 2865 §3)


class ModeCfg(enum.StrEnum):
    """Who starts Mode Config (draft-dukes-ike-mode-cfg-02 section 3.2)."""

    PULL = "pull"
    PUSH = "push"


# --- the dataclasses ----------------------------------------------------------


@dataclass(frozen=True)
class DaemonConfig:
    listen: tuple[str, ...] = ("0.0.0.0",)  # noqa: S104  (a gateway listens on all by default)
    port: int = 500
    port_nat_t: int = 4500
    dataplane: Dataplane = Dataplane.USERSPACE
    retransmit_timeout: float = 2.0
    retransmit_tries: int = 5
    half_open_per_peer: int = 8
    half_open_total: int = 1024
    fragment_size: int = 1280
    """Largest IP datagram, headers included, of a fragmented IKE message (what
    strongSwan calls ``charon.fragment_size``)."""
    half_open_timeout: float = 30.0
    log_level: LogLevel = LogLevel.INFO
    allow_insecure_algorithms: bool = False
    metrics: tuple[str, int] | None = None
    """(address, TCP port) of the Prometheus ``/metrics`` listener; None: off."""
    keylog_dir: str = ""
    """Where Wireshark's key files go (absolute path); "" writes none."""
    min_phase1_lifetime: float = 300.0
    """A shorter Phase 1 lifetime proposed by a peer is raised to this (no rekey storms)."""
    min_phase2_lifetime: float = 60.0
    """The same for IPsec SAs."""
    tun_offload: TunOffload = TunOffload.GRO
    """What the userspace data plane's TUN device offloads (when the kernel can)."""
    dataplane_workers: int = 1
    """Processes of the userspace data plane: 1 (all in the daemon) or 2 (sealing in a
    worker process)."""


@dataclass(frozen=True)
class AuthConfig:
    """One side's authentication ([connections.X.local] or [connections.X.remote]).

    ``id`` None means "the IKE address of this side", filled in at runtime.
    File names are absolute (relative ones are resolved against the config
    file's directory).
    """

    auth: Auth = Auth.PSK
    id: Identity | None = None
    certs: tuple[str, ...] = ()
    private_key: str | None = None
    cacerts: tuple[str, ...] = ()
    pubkey: str | None = None
    crls: tuple[str, ...] = ()
    #: What the files above hold, read when the configuration loads.
    credentials: Credentials = field(default_factory=Credentials, compare=False, repr=False)


@dataclass(frozen=True)
class ChildConfig:
    """A Phase 2 tunnel.  Empty ``local_ts``/``remote_ts`` mean "dynamic":
    the IKE address of that side, or its Mode Config virtual IP."""

    name: str
    local_ts: tuple[IPNetwork, ...] = ()
    remote_ts: tuple[IPNetwork, ...] = ()
    esp_proposals: tuple[EspProposal, ...] = ()
    mode: IpsecMode = IpsecMode.TUNNEL
    rekey_time: float = 3600.0
    life_bytes: int = 0
    start_action: StartAction = StartAction.NONE
    updown: tuple[str, ...] = ()
    """The command run when an IPsec SA of this child comes up or goes down (argv);
    empty: none."""

    def traffic_selectors(
        self, local_addr: str, remote_addr: str
    ) -> tuple[tuple[IPNetwork, ...], tuple[IPNetwork, ...]]:
        """(local_ts, remote_ts) with "dynamic" (empty) replaced by a host prefix
        (/32 or /128) of the given address: the IKE address of that side, or
        its virtual IP once Mode Config has assigned one."""
        return _or_host(self.local_ts, local_addr), _or_host(self.remote_ts, remote_addr)


@dataclass(frozen=True)
class XauthRound:
    """A second authentication round after Phase 1, swanctl's local-2/remote-2:
    XAUTH (draft-beaulieu-ike-xauth-02). ``xauth_id`` is the user name a
    client logs in with; a server's round has none."""

    xauth_id: str | None = None


@dataclass(frozen=True)
class ConnectionConfig:
    name: str
    local_addrs: tuple[str, ...] = ()
    remote_addrs: tuple[str, ...] = ()
    proposals: tuple[IkeProposal, ...] = ()
    encap: bool = False
    dpd_delay: float = 30.0
    dpd_timeout: float = 150.0
    dpd_action: DpdAction = DpdAction.RESTART
    rekey_time: float = 14400.0
    reauth_time: float = 0.0
    start_action: StartAction = StartAction.NONE
    vips: tuple[str, ...] = ()
    pools: tuple[str, ...] = ()
    modecfg: ModeCfg = ModeCfg.PULL
    fragmentation: Fragmentation = Fragmentation.YES
    unique: Unique = Unique.NO
    local: AuthConfig = field(default_factory=AuthConfig)
    remote: AuthConfig = field(default_factory=AuthConfig)
    children: dict[str, ChildConfig] = field(default_factory=dict)
    local_xauth: XauthRound | None = None
    """We are the XAUTH client after Phase 1 ([connections.X.local_xauth])."""
    remote_xauth: XauthRound | None = None
    """We are the XAUTH server after Phase 1 ([connections.X.remote_xauth])."""

    @functools.cached_property
    def remote_id_key(self) -> object:
        """What the peer's proven ID is compared with (``Identity.compare_key``); None
        when the remote ID accepts any peer (none configured, or ``%any``)."""
        remote_id = _static_id(self)
        return None if remote_id is None else remote_id.compare_key

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
    ids: tuple[Identity, ...] = ()
    type: SecretType = SecretType.IKE
    #: With type "private_key": the key files (absolute) the passphrase unlocks.
    files: tuple[str, ...] = ()

    @property
    def value(self) -> bytes:
        """The key bytes: ``0x`` hex and ``0s`` base64 as in swanctl, else UTF-8."""
        return decode_secret(self.secret)


@dataclass(frozen=True)
class PoolConfig:
    """An address pool for Mode Config servers: ``first`` to ``last`` inclusive
    (a subnet without its network and broadcast addresses, or a range)."""

    name: str
    addrs: str
    first: IPAddress
    last: IPAddress
    prefix: int
    """The netmask announced with an address (the subnet's; a range: a host prefix)."""
    dns: tuple[IPAddress, ...] = ()
    split_include: tuple[IPNetwork, ...] = ()

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1


@dataclass(frozen=True)
class XauthConfig:
    """[xauth]: where an XAUTH server checks user names and passwords."""

    radius: str = ""  # "host:port" of a RADIUS server; empty: [secrets] of type xauth
    radius_timeout: float = 3.0
    radius_tries: int = 3


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
    xauth: XauthConfig = field(default_factory=XauthConfig)

    def build_indexes(self) -> None:
        """Build the lookup indexes now (connections by address, IKE and XAUTH secrets
        by identity) rather than at the first request that needs them: the daemon does
        it with the loading, away from its event loop on a reload."""
        _ = self._address_index, self._ike_secrets, self._xauth_passwords

    def xauth_secret(self, user: str) -> bytes | None:
        """The XAUTH password of ``user``: the first secret of type xauth naming it in ids."""
        return self._xauth_passwords.get(user)

    @functools.cached_property
    def _xauth_passwords(self) -> dict[str, bytes]:
        # An index built once: a server with thousands of users looks one up for every
        # XAUTH reply, and a scan over all secrets made each login cost O(users).
        passwords: dict[str, bytes] = {}
        for secret in self.secrets.values():
            if secret.type is SecretType.XAUTH:
                for i in secret.ids:
                    passwords.setdefault(str(i), secret.value)
        return passwords

    def connections_for_addresses(
        self, local_addr: str, remote_addr: str
    ) -> list[ConnectionConfig]:
        """Candidate connections for a Phase 1 request, best first.

        Main Mode's first message carries proposals but no identity (RFC 2409
        section 5), so the responder can only go by addresses here.

        Connections whose ``local_addrs`` contain ``local_addr`` (or are empty)
        and whose ``remote_addrs`` name ``remote_addr`` come first (an exact
        address before a subnet containing it), then the ``%any`` ones; ties
        keep file order, a specific local address before "any local".
        """
        return [item[3] for item in self._ranked(local_addr, remote_addr)]

    def responder_candidates(self, local_addr: str, remote_addr: str) -> list[ConnectionConfig]:
        """What a Main Mode request from ``remote_addr`` to ``local_addr`` may be for: the
        connections that name that very address (an exact entry, however it is spelt:
        ``2001:DB8::1`` names ``2001:db8::1``) when any do, else all that
        :meth:`connections_for_addresses` gives, best first."""
        ranked = self._ranked(local_addr, remote_addr)
        exact = [item[3] for item in ranked if item[0] == 0]
        return exact or [item[3] for item in ranked]

    def _ranked(self, local_addr: str, remote_addr: str
                ) -> list[tuple[int, int, int, ConnectionConfig]]:
        """(how the connection names the remote address, 0 for a specific local address,
        file position, connection), sorted: see :meth:`connections_for_addresses`."""
        local = ip_or_none(local_addr)
        remote = ip_or_none(remote_addr)
        if local is None or remote is None:
            return []
        index = self._address_index
        ranked: list[tuple[int, int, int, ConnectionConfig]] = []
        for position, rank in index.ranks(remote).items():
            conn = index.connections[position]
            locals_ = index.local_addrs[position]
            if locals_ is not None and local not in locals_:
                continue
            ranked.append((rank, 0 if locals_ is not None else 1, position, conn))
        ranked.sort(key=lambda item: item[:3])
        return ranked

    @functools.cached_property
    def _address_index(self) -> _AddressIndex:
        # Built once per configuration: a gateway with thousands of static peers looks
        # up connections and pre-shared keys by address for every new handshake, and
        # a scan over every connection, parsing its addresses, cost O(connections)
        # each time (70 ms per handshake with 4,000 peers).
        return _AddressIndex(tuple(self.connections.values()))

    @functools.cached_property
    def _ike_secrets(self) -> _SecretIndex:
        return _SecretIndex(self.secrets.values())

    def dynamic_peer_proposals(self) -> tuple[IkeProposal, ...]:
        """The common Phase 1 set for peers without a static address: the union
        of the ``%any`` connections' proposals, in file order (before any
        identity arrives such peers cannot be told apart)."""
        return union(c.proposals for c in self.connections.values() if c.dynamic_peer)

    def psk_for(
        self, local_id: Identity | str | None, remote_id_or_addr: Identity | str
    ) -> bytes | None:
        """The pre-shared key for a peer, or None.

        A secret whose ``ids`` name the peer (its address, or its ID) wins over
        one for ``%any``; if ``local_id`` is also listed, that secret wins a
        tie.  A peer address that selects exactly one statically configured
        connection also matches secrets listing that connection's remote ID
        (the "ID where unambiguous" case: Main Mode needs the key before the
        encrypted IDs arrive, RFC 2409 section 5.4).  Among equals, file
        order decides.
        """
        remote = _as_identity(remote_id_or_addr)
        wanted = {remote} if remote is not None else set()
        remote_ip = remote.address if remote is not None else None
        if remote_ip is not None:
            static_ids = self._address_index.static_remote_ids(remote_ip)
            if len(static_ids) == 1:
                wanted |= static_ids
        local = _as_identity(local_id) if local_id else None
        best = self._ike_secrets.best(wanted, local)
        return best.value if best is not None else None


class _AddressIndex:
    """The connections by the remote addresses they name, and their local addresses
    parsed: what :meth:`Config.connections_for_addresses` and :meth:`Config.psk_for`
    ask, answered without visiting every connection."""

    def __init__(self, connections: tuple[ConnectionConfig, ...]) -> None:
        self.connections = connections
        self.exact: dict[IPAddress, list[int]] = {}
        self.subnets: list[tuple[IPNetwork, int]] = []
        self.anys: list[int] = []
        self.local_addrs: list[frozenset[IPAddress] | None] = []
        """Per connection, the local addresses it may use; None: any."""
        for position, conn in enumerate(connections):
            for entry in conn.remote_addrs:
                if entry == ANY:
                    self.anys.append(position)
                elif "/" in entry:
                    self.subnets.append((ipaddress.ip_network(entry), position))
                else:
                    self.exact.setdefault(ipaddress.ip_address(entry), []).append(position)
            self.local_addrs.append(
                frozenset(a for a in map(ip_or_none, conn.local_addrs) if a is not None)
                if conn.local_addrs else None)
        self.exact_ids: dict[IPAddress, frozenset[Identity]] = {
            address: frozenset(ids) for address, positions in self.exact.items()
            if (ids := {i for p in positions if (i := _static_id(connections[p])) is not None})
        }
        """Per address named exactly, the remote IDs (not ``%any``) of its connections."""

    def static_remote_ids(self, remote: IPAddress) -> frozenset[Identity]:
        """The remote IDs (not ``%any``) of the connections naming ``remote`` exactly or
        by a subnet: what ``psk_for`` may look a key up by before the IDs arrive."""
        ids = self.exact_ids.get(remote, frozenset())
        more = {i for net, position in self.subnets
                if net.version == remote.version and remote in net
                and (i := _static_id(self.connections[position])) is not None}
        return ids | more if more else ids

    def ranks(self, remote: IPAddress) -> dict[int, int]:
        """Connection position -> how it names ``remote``: 0 an exact address, 1 a
        subnet containing it, 2 ``%any`` (the best of its entries); others absent."""
        found: dict[int, int] = {}
        for position in self.exact.get(remote, ()):
            found[position] = 0
        for net, position in self.subnets:
            if net.version == remote.version and remote in net and found.get(position, 2) > 1:
                found[position] = 1
        for position in self.anys:
            found.setdefault(position, 2)
        return found


def _static_id(conn: ConnectionConfig) -> Identity | None:
    remote_id = conn.remote.id
    return remote_id if remote_id is not None and not remote_id.is_any else None


class _SecretIndex:
    """The IKE secrets by the identities they list, in file order."""

    def __init__(self, secrets: Iterable[SecretConfig]) -> None:
        self.by_id: dict[Identity, list[int]] = {}
        self.anys: list[int] = []
        self.secrets: list[SecretConfig] = []
        self.ids: list[frozenset[Identity]] = []
        for secret in secrets:
            if secret.type is not SecretType.IKE:
                continue
            order = len(self.secrets)
            self.secrets.append(secret)
            ids = frozenset(secret.ids)
            self.ids.append(ids)
            for i in ids:
                self.by_id.setdefault(i, []).append(order)
            if any(i.is_any for i in ids):
                self.anys.append(order)

    def best(self, wanted: set[Identity], local: Identity | None) -> SecretConfig | None:
        """A secret listing one of ``wanted`` (4) before one for ``%any`` (2), one that
        also lists ``local`` winning a tie (+1); among equals the first in the file."""
        scores: dict[int, int] = {}
        for identity in wanted:
            for order in self.by_id.get(identity, ()):
                scores[order] = 4
        for order in self.anys:
            scores.setdefault(order, 2)
        best: tuple[int, int] | None = None
        for order, score in scores.items():
            if local is not None and local in self.ids[order]:
                score += 1
            if best is None or (score, -order) > (best[0], -best[1]):
                best = (score, order)
        return self.secrets[best[1]] if best is not None else None


def _as_identity(value: Identity | str) -> Identity | None:
    """An identity, or an address or ID as text; text that is neither names no one."""
    if isinstance(value, Identity):
        return value
    try:
        return Identity.parse(value)
    except IdentityError:
        return None


def _or_host(selectors: tuple[IPNetwork, ...], address: str) -> tuple[IPNetwork, ...]:
    if selectors:
        return selectors
    return (ipaddress.ip_network(address.strip()),)


def decode_secret(text: str) -> bytes:
    if text.startswith("0x"):
        return binascii.unhexlify(text[2:])
    if text.startswith("0s"):
        return base64.b64decode(text[2:], validate=True)
    return text.encode("utf-8")


_P = TypeVar("_P")


def union(groups: Iterable[Iterable[_P]]) -> tuple[_P, ...]:
    seen: list[_P] = []
    for group in groups:
        for item in group:
            if item not in seen:
                seen.append(item)
    return tuple(seen)


