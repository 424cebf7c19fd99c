"""Things that load but deserve a second look (``ikev1d check-config``)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat

from ikev1d.crypto.certs import dn_text
from ikev1d.durations import format_duration

from .identity import ANY, Identity
from .model import (
    Auth,
    ChildConfig,
    Config,
    ConnectionConfig,
    Dataplane,
    DpdAction,
    IpsecMode,
    ModeCfg,
    SecretType,
    StartAction,
)

__all__ = ["config_warnings"]

_MIN_PSK_LENGTH = 20
#: A certificate that expires within this is flagged, so it can be renewed in time.
_EXPIRY_WARNING = datetime.timedelta(days=30)


def config_warnings(cfg: Config, now: datetime.datetime | None = None) -> list[str]:
    """Things that load but deserve a second look, each ``FILE: KEY: text``.

    ``now`` (default: the current time) dates the certificates.
    """
    src = cfg.source
    out = _shared_psk(cfg)
    when = now or datetime.datetime.now(datetime.UTC)
    for conn in cfg.connections.values():
        out += _certificate_warnings(src, conn, when)
    if cfg.daemon.allow_insecure_algorithms:
        out.append(f"{src}: daemon.allow_insecure_algorithms: insecure algorithms (md5, des) "
                   "are allowed")
    if cfg.daemon.metrics is not None and not ipaddress.ip_address(
        cfg.daemon.metrics[0]
    ).is_loopback:
        out.append(f"{src}: daemon.metrics: /metrics on {cfg.daemon.metrics[0]} is reachable "
                   "from the network without authentication and shows connection names, "
                   "peer identities and addresses; use a loopback or management address and "
                   "a firewall")
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
        used_pools.update(conn.pools)
        out += _connection_warnings(cfg, conn)
    for secret in cfg.secrets.values():
        if secret.type is SecretType.IKE and len(secret.value) < _MIN_PSK_LENGTH:
            out.append(f"{src}: secrets.{secret.name}.secret: the pre-shared key is only "
                       f"{len(secret.value)} characters; use at least {_MIN_PSK_LENGTH} "
                       "random characters")
    for pool in cfg.pools.values():
        if pool.name not in used_pools:
            out.append(f"{src}: pools.{pool.name}: not used by any connection")
    out += _readable_secrets(cfg)
    out.extend(cfg.notes)
    return out


def _others_may_read(path: str) -> str:
    """"group", "world", "group and world" when they may read ``path``, else ""."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""  # not a file (a configuration given as text) or gone: nothing to say
    who = [name for name, bit in (("group", stat.S_IRGRP), ("world", stat.S_IROTH))
           if mode & bit]
    return " and ".join(who)


def _readable_secrets(cfg: Config) -> list[str]:
    """Files holding secrets (the configuration with [secrets], private keys)
    that other users may read: a leaked pre-shared key lets anyone impersonate
    either side."""
    files: dict[str, str] = {}
    if cfg.secrets:
        files[cfg.source] = "secrets"
    for conn in cfg.connections.values():
        if conn.local.private_key:
            files.setdefault(conn.local.private_key,
                             f"connections.{conn.name}.local.private_key")
    out = []
    for path, key in files.items():
        who = _others_may_read(path)
        if who:
            out.append(f"{cfg.source}: {key}: {path} holds secrets and is readable by "
                       f"{who}; chmod go-rwx {path}")
    return out


def _shared_psk(cfg: Config) -> list[str]:
    """Dynamic peers share one PSK: any of them can impersonate the others, because
    Main Mode picks the PSK by address before any identity is known (RFC 2409 5.4)."""
    psk_dynamic = [
        c.name for c in cfg.connections.values() if c.dynamic_peer and c.local.auth is Auth.PSK
    ]
    any_secrets = [s.name for s in cfg.secrets.values() if any(i.is_any for i in s.ids)]
    if not psk_dynamic and not any_secrets:
        return []
    keys = [f"connections.{n}" for n in psk_dynamic] + [f"secrets.{n}" for n in any_secrets]
    who = f"connections {', '.join(psk_dynamic)}" if psk_dynamic else "connections"
    return [
        f"{cfg.source}: {', '.join(keys)}: {who} with dynamic peers (%any) share "
        "one pre-shared key: using the same pre-shared key for several peers is a "
        "security risk and is discouraged (any of them can impersonate the others); "
        "prefer authentication by certificate (auth = \"pubkey\")"
    ]


def _connection_warnings(cfg: Config, conn: ConnectionConfig) -> list[str]:
    src = cfg.source
    path = f"connections.{conn.name}"
    out: list[str] = []
    for proposal in conn.proposals:
        if proposal.weak:
            out.append(f"{src}: {path}.proposals: {proposal.render()}: "
                       f"{'; '.join(proposal.weaknesses)}")
    if conn.local.auth is Auth.PSK and _no_secret(cfg, conn):
        out.append(f"{src}: {path}: auth = \"psk\" but no [secrets.*] entry lists the "
                   f"peer ({', '.join(conn.remote_addrs)} / {conn.remote.id}) or \"%any\"")
    if conn.dynamic_peer and conn.dpd_action is not DpdAction.CLEAR and conn.dpd_delay > 0:
        out.append(f"{src}: {path}.dpd_action: \"{conn.dpd_action}\" cannot re-initiate to a "
                   "dynamic peer (%any); \"clear\" is the usual choice for responders")
    traps = conn.dpd_action is DpdAction.HOLD or conn.start_action is StartAction.TRAP or any(
        c.start_action is StartAction.TRAP for c in conn.children.values())
    if traps and cfg.daemon.dataplane is Dataplane.NONE:
        out.append(f"{src}: {path}: trap policies (start_action = \"trap\", dpd_action = "
                   "\"hold\") need a data plane to catch traffic; with dataplane = \"none\" "
                   "only \"ikev1d up\" starts the connection")
    if not conn.children:
        out.append(f"{src}: {path}.children: no children: Phase 1 only, no traffic "
                   "will be protected")
    if conn.modecfg is ModeCfg.PUSH and not conn.vips and not conn.pools:
        out.append(f"{src}: {path}.modecfg: \"push\" has no effect without vips (client) "
                   "or pools (server)")
    if conn.pools and conn.children and all(c.remote_ts for c in conn.children.values()):
        out.append(f"{src}: {path}.pools: every child sets remote_ts, so no tunnel uses "
                   "the leased address; omit remote_ts to make it the client's virtual IP")
    if conn.local.auth is Auth.RSA_ENCRYPTION_REVISED and conn.remote.credentials.pubkey is None:
        initiates = conn.start_action is not StartAction.NONE \
            or (conn.dpd_delay > 0 and conn.dpd_action is not DpdAction.CLEAR) or any(
                c.start_action is not StartAction.NONE for c in conn.children.values())
        if initiates:
            # RFC 2409 section 5.3: message 3 is encrypted to the responder's key.
            out.append(f"{src}: {path}.remote.pubkey: not set, so with auth = "
                       "\"rsa-encryption-revised\" this connection can only respond "
                       "(cacerts verify the initiator's certificate); it cannot start, "
                       "trap or restart")
    for child in conn.children.values():
        out += _child_warnings(src, conn, child, f"{path}.children.{child.name}")
    return out


def _child_warnings(src: str, conn: ConnectionConfig, child: ChildConfig, cpath: str) -> list[str]:
    out: list[str] = []
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
    if child.mode is IpsecMode.TUNNEL and not conn.vips and not conn.pools and (
        not child.local_ts or not child.remote_ts
    ):
        out.append(f"{src}: {cpath}: local_ts/remote_ts not set: the tunnel covers "
                   "only the two gateway addresses")
    return out


def _no_secret(cfg: Config, conn: ConnectionConfig) -> bool:
    candidates: list[Identity | str] = [
        a for a in conn.remote_addrs if a != ANY and "/" not in a
    ]
    if conn.remote.id is not None:
        candidates.append(conn.remote.id)
    if conn.dynamic_peer:
        candidates.append(ANY)
    return all(cfg.psk_for(conn.local.id, c) is None for c in candidates)


def _certificate_warnings(src: str, conn: ConnectionConfig, now: datetime.datetime) -> list[str]:
    """Certificates and CAs that have expired or expire soon: the peer (or we)
    will refuse them at authentication."""
    path = f"connections.{conn.name}"
    local, remote = conn.local.credentials, conn.remote.credentials
    pinned = (remote.pinned_cert,) if remote.pinned_cert is not None else ()
    out: list[str] = []
    for key, certs in ((f"{path}.local.certs", local.certs),
                       (f"{path}.remote.cacerts", remote.cacerts),
                       (f"{path}.remote.pubkey", pinned)):
        for cert in certs:
            end = cert.not_valid_after_utc
            subject = dn_text(cert.subject)
            if end < now:
                out.append(f'{src}: {key}: certificate "{subject}" expired on '
                           f"{end:%Y-%m-%d %H:%M:%S} UTC: authentication with it fails")
            elif end - now < _EXPIRY_WARNING:
                out.append(f'{src}: {key}: certificate "{subject}" expires on '
                           f"{end:%Y-%m-%d %H:%M:%S} UTC, in {(end - now).days} days")
            elif cert.not_valid_before_utc > now:
                out.append(f'{src}: {key}: certificate "{subject}" is not valid before '
                           f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    return out
