"""The TOML configuration file -> validated, frozen dataclasses.

Key names follow strongSwan's swanctl.conf so its users feel at home; the
accepted keys are those of the key tables below, and docs/configuration.md
describes each.  Every problem is reported as ``FILE: KEY: reason``
(ConfigError); unknown keys are errors, with a "did you mean" hint, so that a
typo never passes silently.
"""

from __future__ import annotations

import binascii
import difflib
import ipaddress
import os
import re
import shlex
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric import rsa

from ikev1d.crypto.certs import same_public_key
from ikev1d.durations import format_duration
from ikev1d.proposals import (
    EspProposal,
    IkeProposal,
    ProposalError,
    parse_esp_proposal,
    parse_ike_proposal,
)

from .credentials import (
    Credentials,
    CredentialsError,
    PrivateKey,
    PublicKey,
    load_certificates,
    load_crls,
    load_private_key,
    load_public_key,
)
from .errors import ConfigError
from .identity import ANY, Identity
from .model import (
    DEFAULT_ESP_PROPOSALS,
    DEFAULT_IKE_PROPOSALS,
    Auth,
    AuthConfig,
    ChildConfig,
    Config,
    ConnectionConfig,
    DaemonConfig,
    Dataplane,
    DpdAction,
    Fragmentation,
    IPAddress,
    IPNetwork,
    IpsecMode,
    LogLevel,
    ModeCfg,
    PoolConfig,
    SecretConfig,
    SecretType,
    StartAction,
    TunOffload,
    Unique,
    XauthConfig,
    XauthRound,
    decode_secret,
    union,
)
from .reader import TomlReader

__all__ = ["KEY_TABLES", "load_config", "parse_config"]

T = TypeVar("T")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# The keys each table accepts ("<name>" stands for any name).  Anything else is
# an error; docs/configuration.md describes every key, and a test keeps the two
# in step.
_DAEMON_KEYS = (
    "listen", "port", "port_nat_t", "dataplane", "retransmit_timeout", "retransmit_tries",
    "half_open_per_peer", "half_open_total", "half_open_timeout", "log_level",
    "allow_insecure_algorithms", "metrics", "keylog_dir", "min_phase1_lifetime",
    "min_phase2_lifetime", "fragment_size", "tun_offload", "dataplane_workers",
)
_CONNECTION_KEYS = (
    "local_addrs", "remote_addrs", "proposals", "encap", "dpd_delay", "dpd_timeout",
    "dpd_action", "rekey_time", "reauth_time", "start_action", "vips", "pools", "modecfg",
    "fragmentation", "unique", "aggressive", "version",
    "local", "remote", "local_xauth", "remote_xauth", "children",
)
_LOCAL_KEYS = ("auth", "id", "certs", "private_key")
_REMOTE_KEYS = ("auth", "id", "cacerts", "crls", "pubkey")
_LOCAL_XAUTH_KEYS = ("auth", "xauth_id")
_REMOTE_XAUTH_KEYS = ("auth",)
_CHILD_KEYS = (
    "local_ts", "remote_ts", "esp_proposals", "mode", "rekey_time", "life_bytes",
    "start_action", "updown",
)
_SECRET_KEYS = ("type", "secret", "ids", "files")
_POOL_KEYS = ("addrs", "dns", "split_include")
_XAUTH_KEYS = ("radius", "radius_timeout", "radius_tries")
_TOP_KEYS = ("daemon", "connections", "secrets", "pools", "xauth")

KEY_TABLES: Mapping[str, tuple[str, ...]] = {
    "": _TOP_KEYS,
    "daemon": _DAEMON_KEYS,
    "connections.<name>": _CONNECTION_KEYS,
    "connections.<name>.local": _LOCAL_KEYS,
    "connections.<name>.remote": _REMOTE_KEYS,
    "connections.<name>.local_xauth": _LOCAL_XAUTH_KEYS,
    "connections.<name>.remote_xauth": _REMOTE_XAUTH_KEYS,
    "connections.<name>.children.<name>": _CHILD_KEYS,
    "secrets.<name>": _SECRET_KEYS,
    "pools.<name>": _POOL_KEYS,
    "xauth": _XAUTH_KEYS,
}


# --- sections -----------------------------------------------------------------------


def _load_daemon(ld: TomlReader, raw: object) -> DaemonConfig:
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
    dataplane = ld.get_choice(data, path, "dataplane", d.dataplane, Dataplane)
    tun_offload = ld.get_choice(data, path, "tun_offload", d.tun_offload, TunOffload)
    workers = ld.get_int(data, path, "dataplane_workers", d.dataplane_workers, 1, 2)
    if workers > 1 and dataplane != Dataplane.USERSPACE:
        raise ld.error("daemon.dataplane_workers",
                       f"{workers} workers need dataplane = \"userspace\" (the {dataplane.value} "
                       "data plane has no worker processes)")
    if workers > 1 and tun_offload == TunOffload.TSO:
        raise ld.error("daemon.dataplane_workers",
                       f"{workers} workers do not support tun_offload = \"tso\" yet "
                       "(use \"gro\" or \"off\")")
    return DaemonConfig(
        listen=listen,
        port=port,
        port_nat_t=port_nat_t,
        dataplane=dataplane,
        retransmit_timeout=ld.get_duration(data, path, "retransmit_timeout",
                                           d.retransmit_timeout),
        retransmit_tries=ld.get_int(data, path, "retransmit_tries", d.retransmit_tries, 0, 100),
        half_open_per_peer=ld.get_int(data, path, "half_open_per_peer", d.half_open_per_peer, 1),
        half_open_total=ld.get_int(data, path, "half_open_total", d.half_open_total, 1),
        fragment_size=ld.get_int(data, path, "fragment_size", d.fragment_size, 576, 65535),
        half_open_timeout=ld.get_duration(data, path, "half_open_timeout", d.half_open_timeout),
        log_level=ld.get_choice(data, path, "log_level", d.log_level, LogLevel),
        allow_insecure_algorithms=ld.get_bool(data, path, "allow_insecure_algorithms",
                                              d.allow_insecure_algorithms),
        metrics=_listener(ld, ld.get_str(data, path, "metrics", ""), "daemon.metrics"),
        keylog_dir=_keylog_dir(ld, data, path),
        min_phase1_lifetime=ld.get_duration(data, path, "min_phase1_lifetime",
                                            d.min_phase1_lifetime, allow_zero=True),
        min_phase2_lifetime=ld.get_duration(data, path, "min_phase2_lifetime",
                                            d.min_phase2_lifetime, allow_zero=True),
        tun_offload=tun_offload,
        dataplane_workers=workers,
    )


def _listener(ld: TomlReader, text: str, key: str) -> tuple[str, int] | None:
    """``"127.0.0.1:9616"`` or ``"[::1]:9616"`` as (address, port); ``""``: None.

    An address, not a host name: the daemon resolves nothing at start."""
    value = text.strip()
    if not value:
        return None
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ld.error(key, f"{text!r}: write an IPv6 address in brackets, like \"[::1]:9616\"")
    if not sep or not host or not port_text.isdigit() or not port_text.isascii():
        raise ld.error(key, f"{text!r} is not ADDRESS:PORT (like \"127.0.0.1:9616\")")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ld.error(key, f"{text!r}: port {port} is not in 1-65535")
    return ld.address(host, key), port


def _keylog_dir(ld: TomlReader, data: Mapping[str, object], path: str) -> str:
    """An absolute directory (relative to the config file's), or "" for none."""
    text = ld.get_str(data, path, "keylog_dir", "").strip()
    if not text:
        return ""
    directory = Path(text).expanduser()
    if not directory.is_absolute():
        directory = ld.base_dir / directory
    if directory.exists() and not directory.is_dir():
        raise ld.error(f"{path}.keylog_dir", f"not a directory: {directory}")
    return str(directory)


def _updown(ld: TomlReader, data: Mapping[str, object], path: str) -> tuple[str, ...]:
    """The script's command line, split like a shell would but never run by one:
    an absolute path to an executable, then its arguments ("" for none)."""
    key = f"{path}.updown"
    text = ld.get_str(data, path, "updown", "").strip()
    if not text:
        return ()
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise ld.error(key, f"cannot split {text!r}: {exc}") from None
    program = Path(argv[0])
    if not program.is_absolute():
        raise ld.error(key, f"needs an absolute path, not {argv[0]!r}")
    if not program.is_file() or not os.access(program, os.X_OK):
        raise ld.error(key, f"not an executable file: {program}")
    return argv


def _ike_proposals(
    ld: TomlReader, data: Mapping[str, object], path: str, allow_insecure: bool
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
    return union(groups)


def _esp_proposals(
    ld: TomlReader, data: Mapping[str, object], path: str, allow_insecure: bool
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
    return union(groups)


def _load_auth(
    ld: TomlReader, raw: object, path: str, *, remote: bool, default_id: Identity | None
) -> AuthConfig:
    data = ld.table(raw if raw is not None else {}, path)
    conn_path = path.rpartition(".")[0]
    if remote:
        elsewhere = {k: f"[{conn_path}.local]" for k in _LOCAL_KEYS}
        ld.check_keys(data, path, _REMOTE_KEYS, elsewhere)
    else:
        elsewhere = {k: f"[{conn_path}.remote]" for k in _REMOTE_KEYS}
        ld.check_keys(data, path, _LOCAL_KEYS, elsewhere)
    auth = ld.get_choice(data, path, "auth", Auth.PSK, Auth)
    id_text = ld.get_optional_str(data, path, "id")
    identity = (
        ld.identity(id_text, f"{path}.id", allow_any=remote) if id_text is not None
        else default_id
    )
    certs = ld.get_list(data, path, "certs", (), ld.file)
    cacerts = ld.get_list(data, path, "cacerts", (), ld.file)
    crls = ld.get_list(data, path, "crls", (), ld.file)
    private_key = ld.get_optional_str(data, path, "private_key")
    pubkey = ld.get_optional_str(data, path, "pubkey")
    if private_key is not None:
        private_key = ld.file(private_key, f"{path}.private_key")
    if pubkey is not None:
        pubkey = ld.file(pubkey, f"{path}.pubkey")
    files = AuthConfig(auth, identity, certs, private_key, cacerts, pubkey, crls)
    credentials = _read_credentials(ld, files, path)
    if not remote and auth is Auth.PUBKEY and credentials.certs:
        vouched = Identity.of_certificate(credentials.certs[0])
        if id_text is None:
            # swanctl's default: with a certificate, our identity is its subject.
            identity = vouched[0]
        elif identity not in vouched:
            raise ld.error(f"{path}.id", f"{identity} is neither the subject nor a "
                           f"subjectAltName of {certs[0]} (it holds: "
                           f"{', '.join(str(i) for i in vouched)})")
    return replace(files, id=identity, credentials=credentials)


def _read_credentials(ld: TomlReader, a: AuthConfig, path: str) -> Credentials:
    """Parse the files now, so that a bad one is a configuration error."""
    def each(key: str, files: tuple[str, ...], read: Callable[[str], tuple[T, ...]]
             ) -> tuple[T, ...]:
        out: list[T] = []
        for file in files:
            try:
                out += read(file)
            except CredentialsError as exc:
                raise ld.error(f"{path}.{key}", str(exc)) from None
        return tuple(out)

    certs = each("certs", a.certs, load_certificates)
    cacerts = each("cacerts", a.cacerts, load_certificates)
    crls = each("crls", a.crls, load_crls)
    private_key: PrivateKey | None = None
    if a.private_key is not None:
        try:
            private_key = load_private_key(a.private_key,
                                           ld.passphrases.get(a.private_key))
        except CredentialsError as exc:
            raise ld.error(f"{path}.private_key", str(exc)) from None
        if certs and not same_public_key(private_key, certs[0]):
            raise ld.error(f"{path}.private_key", f"{a.private_key} does not match the "
                           f"certificate {a.certs[0]} (certs: end entity first)")
    pubkey: PublicKey | None = None
    pinned = None
    if a.pubkey is not None:
        try:
            pubkey, pinned = load_public_key(a.pubkey)
        except CredentialsError as exc:
            raise ld.error(f"{path}.pubkey", str(exc)) from None
    return Credentials(certs, private_key, cacerts, crls, pubkey, pinned)


def _check_auth_files(ld: TomlReader, a: AuthConfig, path: str, *, remote: bool) -> None:
    if a.auth is Auth.PSK:
        for key, present in (("certs", a.certs), ("private_key", a.private_key),
                             ("cacerts", a.cacerts), ("crls", a.crls), ("pubkey", a.pubkey)):
            if present:
                raise ld.error(f"{path}.{key}", "only used with auth = \"pubkey\" or "
                               "\"rsa-encryption[-revised]\", not with auth = \"psk\"")
        return
    if a.auth.encrypts_to_peer:
        _check_rsa_encryption(ld, a, path, remote=remote)
    if not remote:
        if a.auth is Auth.PUBKEY and not a.certs:
            raise ld.error(f"{path}.certs", "auth = \"pubkey\" needs our certificate "
                           "(a PEM file)")
        if a.private_key is None:
            raise ld.error(f"{path}.private_key",
                           f"auth = \"{a.auth}\" needs our private key (a PEM file)")
        return
    if a.auth is Auth.PUBKEY and not a.cacerts and a.pubkey is None:
        raise ld.error(f"{path}.cacerts", "auth = \"pubkey\" needs trust anchors (cacerts) "
                       "or the peer's certificate (pubkey) to verify the peer")


def _check_rsa_encryption(ld: TomlReader, a: AuthConfig, path: str, *, remote: bool) -> None:
    """Public key encryption (RFC 2409 sections 5.2, 5.3) encrypts with RSA only,
    and needs the peer's key before the exchange: the nonce is encrypted with it.
    In the revised mode (section 5.3) the initiator may send its certificate in
    message 3, so a responder can verify it with ``cacerts`` instead."""
    key: object = a.credentials.pubkey if remote else a.credentials.private_key
    name = "pubkey" if remote else "private_key"
    revised = a.auth is Auth.RSA_ENCRYPTION_REVISED
    if remote and a.pubkey is None and not (revised and a.cacerts):
        raise ld.error(
            f"{path}.pubkey",
            f"auth = \"{a.auth}\" needs the peer's public key or certificate beforehand "
            "(RFC 2409 section 5.2: the nonce is encrypted with it)"
            + ("; as responder, cacerts can verify the certificate the initiator "
               "sends in message 3 instead (RFC 2409 section 5.3)" if revised else
               "; section 5.2 has no certificate payload in message 3: only "
               "auth = \"rsa-encryption-revised\" can use cacerts"),
        )
    if key is not None and not isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        raise ld.error(f"{path}.{name}", f"auth = \"{a.auth}\" needs an RSA key "
                       "(RFC 2409 section 5.2 encrypts with it)")
    if revised:
        if remote and a.crls and not a.cacerts:
            raise ld.error(f"{path}.crls", "crls are checked along the chain to cacerts, "
                           "which are not set")
        return
    for option, present in (("cacerts", a.cacerts), ("crls", a.crls)):
        if present:
            raise ld.error(f"{path}.{option}", f"not used with auth = \"{a.auth}\": "
                           "RFC 2409 section 5.2 has no certificate payload in message 3, "
                           "the peer's key is pinned with pubkey (auth = "
                           "\"rsa-encryption-revised\" can verify a certificate)")


def _load_child(
    ld: TomlReader, name: str, raw: object, path: str, allow_insecure: bool
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
        mode=ld.get_choice(data, path, "mode", d.mode, IpsecMode),
        rekey_time=ld.get_duration(data, path, "rekey_time", d.rekey_time),
        life_bytes=ld.get_int(data, path, "life_bytes", d.life_bytes, 0),
        start_action=ld.get_choice(data, path, "start_action", d.start_action, StartAction),
        updown=_updown(ld, data, path),
    )


def _load_connection(
    ld: TomlReader, name: str, raw: object, allow_insecure: bool, pool_names: Collection[str]
) -> ConnectionConfig:
    path = f"connections.{name}"
    _check_name(ld, name, path)
    data = ld.table(raw, path)
    ld.check_keys(data, path, _CONNECTION_KEYS)
    _check_main_mode_only(ld, data, path)
    d = ConnectionConfig(name)
    local_addrs, remote_addrs = _connection_addresses(ld, data, path)
    local, remote = _connection_auth(ld, data, path, local_addrs, remote_addrs)
    local_xauth, remote_xauth = _connection_xauth(ld, data, path, local)
    dpd_delay, dpd_timeout = _connection_dpd(ld, data, path, d)
    vips, pools = _connection_mode_config(ld, data, path, pool_names)
    start_action = ld.get_choice(data, path, "start_action", d.start_action, StartAction)
    children = _connection_children(ld, data, path, allow_insecure)
    if ANY in remote_addrs:
        _check_no_initiation(ld, path, start_action, children)
    return ConnectionConfig(
        name=name,
        local_addrs=local_addrs,
        remote_addrs=remote_addrs,
        proposals=_ike_proposals(ld, data, path, allow_insecure),
        encap=ld.get_bool(data, path, "encap", d.encap),
        dpd_delay=dpd_delay,
        dpd_timeout=dpd_timeout,
        dpd_action=ld.get_choice(data, path, "dpd_action", d.dpd_action, DpdAction),
        rekey_time=ld.get_duration(data, path, "rekey_time", d.rekey_time),
        reauth_time=_reauth_time(ld, data, path),
        start_action=start_action,
        vips=vips,
        pools=pools,
        modecfg=ld.get_choice(data, path, "modecfg", d.modecfg, ModeCfg),
        fragmentation=ld.get_choice(data, path, "fragmentation", d.fragmentation,
                                    Fragmentation),
        unique=ld.get_choice(data, path, "unique", d.unique, Unique),
        local=local,
        remote=remote,
        children=children,
        local_xauth=local_xauth,
        remote_xauth=remote_xauth,
    )


def _check_main_mode_only(ld: TomlReader, data: Mapping[str, object], path: str) -> None:
    """swanctl's ``aggressive`` and ``version`` load where they ask for what ikev1d does."""
    if "aggressive" in data:
        if data["aggressive"] is not False:
            raise ld.error(
                f"{path}.aggressive",
                "Aggressive Mode is not supported: Phase 1 is Main Mode only, because "
                "Aggressive Mode weakens the protection of the identities and the PSK "
                "(RFC 2409 section 5.4); remove this key",
            )
        ld.notes.append(f"{ld.source}: {path}.aggressive: Aggressive Mode is never used; "
                        "the key can be removed")
    version = data.get("version", 1)
    if isinstance(version, bool) or version not in (0, 1):
        raise ld.error(f"{path}.version", "ikev1d speaks IKEv1 only; use version = 1 or omit it")


def _connection_xauth(
    ld: TomlReader, data: Mapping[str, object], path: str, local: AuthConfig
) -> tuple[XauthRound | None, XauthRound | None]:
    """The second rounds, swanctl's local-2/remote-2: XAUTH (draft-beaulieu-ike-xauth-02)
    after a Phase 1 by pre-shared key or RSA signature, the only methods it has
    variants of (65001/65002, 65005/65006)."""
    rounds: dict[str, XauthRound | None] = {"local_xauth": None, "remote_xauth": None}
    for section, keys in (("local_xauth", _LOCAL_XAUTH_KEYS),
                          ("remote_xauth", _REMOTE_XAUTH_KEYS)):
        if section not in data:
            continue
        spath = f"{path}.{section}"
        table = ld.table(data[section], spath)
        ld.check_keys(table, spath, keys)
        if not any(table.values()):
            continue  # an empty section (or empty values) asks for no round
        if "auth" not in table:
            raise ld.error(f"{spath}.auth", "required: \"xauth\"")
        auth = ld.get_str(table, spath, "auth", "")
        if auth != "xauth":
            raise ld.error(f"{spath}.auth", f"invalid value {auth!r}: expected xauth")
        xauth_id: str | None = None
        if section == "local_xauth":
            xauth_id = ld.get_str(table, spath, "xauth_id", "").strip()
            if not xauth_id:
                raise ld.error(f"{spath}.xauth_id", "required: the user name we log in with")
            if len(xauth_id.encode()) > 255 or not xauth_id.isprintable():
                raise ld.error(f"{spath}.xauth_id", "must be printable and at most 255 bytes")
        rounds[section] = XauthRound(xauth_id)
    if rounds["local_xauth"] is not None and rounds["remote_xauth"] is not None:
        raise ld.error(f"{path}.remote_xauth", "a connection is either XAUTH client "
                       "(local_xauth) or server (remote_xauth), not both")
    xauth = rounds["local_xauth"] or rounds["remote_xauth"]
    if xauth and (local.auth not in (Auth.PSK, Auth.PUBKEY) or (
            local.auth is Auth.PUBKEY
            and not isinstance(local.credentials.private_key, rsa.RSAPrivateKey))):
        raise ld.error(f"{path}.local.auth", "XAUTH follows a Phase 1 with auth = \"psk\" "
                       "or \"pubkey\" with an RSA key, the methods it has variants of "
                       "(draft-beaulieu-ike-xauth-02 section 7.2; none for ECDSA)")
    return rounds["local_xauth"], rounds["remote_xauth"]


def _reauth_time(ld: TomlReader, data: Mapping[str, object], path: str) -> float:
    # The engine renews Phase 1 at rekey_time, and in IKEv1 every renewal of
    # Phase 1 is a new Main Mode, i.e. a reauthentication; a separate
    # reauth_time is not applied yet.
    seconds = ld.get_duration(data, path, "reauth_time", 0.0, allow_zero=True)
    if seconds:
        raise ld.not_implemented(f"{path}.reauth_time", "only 0 (renew at rekey_time)")
    return seconds


def _connection_addresses(
    ld: TomlReader, data: Mapping[str, object], path: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    local_addrs = ld.get_list(data, path, "local_addrs", (), ld.address)
    remote_addrs = ld.get_list(data, path, "remote_addrs", (), ld.remote_address)
    if not remote_addrs:
        raise ld.error(f"{path}.remote_addrs",
                       "required: the peer's address, or [\"%any\"] for dynamic peers")
    if ANY in remote_addrs and len(remote_addrs) > 1:
        raise ld.error(f"{path}.remote_addrs", "\"%any\" cannot be combined with addresses")
    return local_addrs, remote_addrs


def _connection_auth(
    ld: TomlReader, data: Mapping[str, object], path: str,
    local_addrs: tuple[str, ...], remote_addrs: tuple[str, ...],
) -> tuple[AuthConfig, AuthConfig]:
    # Defaults (swanctl): our ID is our address; the peer's is its address when
    # there is exactly one, otherwise any ID that authenticates.
    local_default = Identity.from_address(local_addrs[0]) if local_addrs else None
    single_peer = len(remote_addrs) == 1 and "/" not in remote_addrs[0] \
        and remote_addrs[0] != ANY
    remote_default = Identity.parse(remote_addrs[0] if single_peer else ANY)
    local = _load_auth(ld, data.get("local"), f"{path}.local", remote=False,
                       default_id=local_default)
    remote = _load_auth(ld, data.get("remote"), f"{path}.remote", remote=True,
                        default_id=remote_default)
    if local.auth != remote.auth:
        raise ld.error(
            f"{path}.remote.auth",
            f"is {remote.auth.value!r} but local.auth is {local.auth.value!r}: IKEv1 "
            "negotiates one authentication method for both sides (RFC 2409 section 5)",
        )
    _check_auth_files(ld, local, f"{path}.local", remote=False)
    _check_auth_files(ld, remote, f"{path}.remote", remote=True)
    return local, remote


def _connection_dpd(
    ld: TomlReader, data: Mapping[str, object], path: str, d: ConnectionConfig
) -> tuple[float, float]:
    dpd_delay = ld.get_duration(data, path, "dpd_delay", d.dpd_delay, allow_zero=True)
    dpd_timeout = ld.get_duration(data, path, "dpd_timeout", d.dpd_timeout)
    if dpd_delay > 0 and dpd_timeout <= dpd_delay:
        raise ld.error(f"{path}.dpd_timeout",
                       f"must be longer than dpd_delay ({format_duration(dpd_delay)})")
    return dpd_delay, dpd_timeout


def _connection_mode_config(
    ld: TomlReader, data: Mapping[str, object], path: str, pool_names: Collection[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    def pool(text: str, key: str) -> str:
        if text not in pool_names:
            hint = difflib.get_close_matches(text, list(pool_names), n=1)
            suffix = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ld.error(key, f"no pool {text!r} is defined in [pools]{suffix}")
        return text

    vips = ld.get_list(data, path, "vips", (), ld.address)
    pools = ld.get_list(data, path, "pools", (), pool)
    if vips and pools:
        raise ld.error(f"{path}.pools", "a connection is either a Mode Config client (vips) "
                       "or a server (pools), not both")
    return vips, pools


def _connection_children(
    ld: TomlReader, data: Mapping[str, object], path: str, allow_insecure: bool
) -> dict[str, ChildConfig]:
    children_raw = ld.table(data.get("children", {}), f"{path}.children")
    children: dict[str, ChildConfig] = {}
    for child_name, child_raw in children_raw.items():
        child_path = f"{path}.children.{child_name}"
        _check_name(ld, child_name, child_path)
        children[child_name] = _load_child(ld, child_name, child_raw, child_path, allow_insecure)
    return children


def _check_no_initiation(
    ld: TomlReader, path: str, start_action: StartAction, children: Mapping[str, ChildConfig]
) -> None:
    """A ``%any`` peer has no address to initiate to (nor to trap traffic for)."""
    initiating = (StartAction.START, StartAction.TRAP)
    if start_action in initiating:
        raise ld.error(f"{path}.start_action",
                       "cannot initiate to \"%any\": set remote_addrs to the peer's address")
    for child in children.values():
        if child.start_action in initiating:
            raise ld.error(f"{path}.children.{child.name}.start_action",
                           "cannot initiate to \"%any\": set remote_addrs to the "
                           "peer's address")


def _load_secret(ld: TomlReader, name: str, raw: object) -> SecretConfig:
    path = f"secrets.{name}"
    _check_name(ld, name, path)
    data = ld.table(raw, path)
    ld.check_keys(data, path, _SECRET_KEYS)
    kind = ld.get_choice(data, path, "type", SecretType.IKE, SecretType)
    if "secret" not in data:
        raise ld.error(f"{path}.secret", "required")
    secret = ld.get_str(data, path, "secret", "")
    if not secret:
        raise ld.error(f"{path}.secret", "must not be empty")
    try:
        value = decode_secret(secret)
    except (binascii.Error, ValueError):
        raise ld.error(f"{path}.secret", "invalid 0x (hex) or 0s (base64) encoding") from None
    if not value:
        raise ld.error(f"{path}.secret", "must not be empty")
    if kind is SecretType.PRIVATE_KEY:
        if "ids" in data:
            raise ld.error(f"{path}.ids", "a private key passphrase names its key files "
                           "in \"files\", not ids")
        files = ld.get_list(data, path, "files", (), ld.file)
        if not files:
            raise ld.error(f"{path}.files", "required: the encrypted private key files "
                           "this passphrase unlocks")
        return SecretConfig(name, secret, (), kind, files)
    if "files" in data:
        raise ld.error(f"{path}.files", "only used with type = \"private_key\"")
    if kind is SecretType.RADIUS:
        if "ids" in data:
            raise ld.error(f"{path}.ids", "a RADIUS secret is for the [xauth] radius server, "
                           "not for peers: no ids")
        return SecretConfig(name, secret, (), kind)
    ids = ld.get_list(data, path, "ids", (),
                      lambda t, k: ld.identity(t, k, allow_any=True))
    if not ids:
        raise ld.error(f"{path}.ids", "required: the peer addresses or IDs this secret is "
                       "for, or [\"%any\"] for dynamic peers")
    return SecretConfig(name, secret, ids, kind)


def _load_pool(ld: TomlReader, name: str, raw: object) -> PoolConfig:
    path = f"pools.{name}"
    _check_name(ld, name, path)
    data = ld.table(raw, path)
    ld.check_keys(data, path, _POOL_KEYS)
    if "addrs" not in data:
        raise ld.error(f"{path}.addrs", "required: the addresses as a subnet "
                       "(\"10.3.0.0/24\") or a range (\"10.3.0.10-10.3.0.200\")")
    text = ld.get_str(data, path, "addrs", "").strip()
    first, last, prefix = _pool_range(ld, text, f"{path}.addrs")
    return PoolConfig(
        name=name,
        addrs=text,
        first=first,
        last=last,
        prefix=prefix,
        dns=tuple(ipaddress.ip_address(a)
                  for a in ld.get_list(data, path, "dns", (), ld.address)),
        split_include=ld.get_list(data, path, "split_include", (), ld.network),
    )


def _load_xauth(ld: TomlReader, raw: object, secrets: Mapping[str, SecretConfig]) -> XauthConfig:
    data = ld.table(raw, "xauth")
    path = "xauth"
    ld.check_keys(data, path, _XAUTH_KEYS)
    default = XauthConfig()
    server = _listener(ld, ld.get_str(data, path, "radius", ""), "xauth.radius")
    timeout = ld.get_duration(data, path, "radius_timeout", default.radius_timeout)
    tries = ld.get_int(data, path, "radius_tries", default.radius_tries, 1, 10)
    if server is None:
        return XauthConfig("", timeout, tries)
    if not any(s.type is SecretType.RADIUS for s in secrets.values()):
        raise ld.error("xauth.radius", "needs the secret shared with the server: "
                       "[secrets.NAME] with type = \"radius\"")
    host, port = server
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return XauthConfig(text, timeout, tries)


def _pool_range(ld: TomlReader, text: str, key: str) -> tuple[IPAddress, IPAddress, int]:
    """(first, last, prefix) of ``"10.3.0.0/24"`` (without the network and
    broadcast addresses, which no client should get) or ``"10.3.0.10-10.3.0.200"``."""
    if "-" in text:
        low, _, high = text.partition("-")
        first = ipaddress.ip_address(ld.address(low, key))
        last = ipaddress.ip_address(ld.address(high, key))
        if first.version != last.version:
            raise ld.error(key, f"{text!r} mixes IPv4 and IPv6")
        if int(last) < int(first):
            raise ld.error(key, f"{text!r}: the range ends before it starts")
        if int(last) - int(first) >= 1 << 24:
            raise ld.error(key, f"{text!r}: at most 2^24 addresses in a pool")
        return first, last, first.max_prefixlen
    net = ld.network(text, key)
    if (net.num_addresses < 4 and net.version == 4) or net.num_addresses < 2:
        raise ld.error(key, f"{text!r} has no addresses to hand out beside its network "
                       "and broadcast addresses; use a range (\"a-b\") for fewer")
    if net.prefixlen < net.max_prefixlen - 24:
        raise ld.error(key, f"{text!r}: at most 2^24 addresses in a pool")
    first = net.network_address + 1
    last = net.broadcast_address - 1 if net.version == 4 else net.broadcast_address
    return first, last, net.prefixlen


def _check_xauth_secrets(ld: TomlReader, connections: Mapping[str, ConnectionConfig],
                         secrets: Mapping[str, SecretConfig], *, radius: bool) -> None:
    """An XAUTH client needs its password; a server without a user (or RADIUS) is
    worth a warning."""
    users = {str(i) for s in secrets.values() if s.type is SecretType.XAUTH for i in s.ids}
    for conn in connections.values():
        client = conn.local_xauth
        if client is not None and client.xauth_id not in users:
            raise ld.error(f"connections.{conn.name}.local_xauth.xauth_id",
                           f"no [secrets] of type = \"xauth\" has ids = [\"{client.xauth_id}\"]"
                           " (the password to log in with)")
        if conn.remote_xauth is not None and not users and not radius:
            ld.notes.append(f"{ld.source}: connections.{conn.name}.remote_xauth: no [secrets] "
                            "of type = \"xauth\" holds a user's password: every XAUTH login "
                            "will fail")


def _check_name(ld: TomlReader, name: str, path: str) -> None:
    if not _NAME_RE.match(name):
        raise ld.error(path, f"invalid name {name!r}: use letters, digits, '-', '_' and '.'")


# --- entry points ------------------------------------------------------------------


def parse_config(text: str, source: str = "<string>", base_dir: str | Path | None = None) -> Config:
    """Validate a TOML configuration; relative file names are resolved against
    ``base_dir`` (default: the current directory)."""
    ld = TomlReader(source, Path(base_dir) if base_dir is not None else Path.cwd())
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    ld.check_keys(data, "", _TOP_KEYS)
    daemon = _load_daemon(ld, data.get("daemon", {}))
    allow_insecure = daemon.allow_insecure_algorithms

    pool_tables = ld.table(data.get("pools", {}), "pools")
    pools = {name: _load_pool(ld, name, raw) for name, raw in pool_tables.items()}
    secrets = {
        name: _load_secret(ld, name, raw)
        for name, raw in ld.table(data.get("secrets", {}), "secrets").items()
    }
    ld.passphrases = {
        file: secret.value for secret in secrets.values() for file in secret.files
    }
    xauth = _load_xauth(ld, data.get("xauth", {}), secrets)
    connections = {
        name: _load_connection(ld, name, raw, allow_insecure, pools)
        for name, raw in ld.table(data.get("connections", {}), "connections").items()
    }
    _check_xauth_secrets(ld, connections, secrets, radius=bool(xauth.radius))
    return Config(daemon, connections, secrets, pools, source, tuple(ld.notes), xauth)


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


