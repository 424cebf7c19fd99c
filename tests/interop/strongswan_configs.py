"""The strongSwan configurations the interop tests load, as data.

In test_negotiation_strongswan and test_dataplane_strongswan a charon on host
B loads one swanctl.conf connection (rendered by ``swanctl_conf``) against
ikev1d on host A.  Each :class:`StrongswanCase` here is one of those
parameter sets that establishes: :meth:`charon_conf` is the text B's charon
loads, :meth:`peer_conf` the same connection seen from A (the peer that
configuration was written for).  The cases that are meant to fail (wrong
PSK, no proposal chosen, mismatched selectors, Aggressive Mode) are not here:
their configurations are written not to establish.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ikev1d_lab.strongswan import swanctl_conf

PSK = "interop-psk-0123456789abcdef"

# Phase 1 / Phase 2 pairs both negotiation directions are tested with.
ALGORITHMS = [
    ("aes128-sha256-modp2048", "aes128-sha256"),
    ("aes128-sha256-ecp256", "aes128gcm16"),
    ("aes256-sha256-curve25519", "aes256-sha256"),
    ("3des-sha1-modp1024", "3des-sha1"),
]
# ESP algorithms traffic is carried with against kernel-libipsec.
DATAPLANE_ESP = ["aes128gcm16", "aes256-sha256", "3des-sha1"]
# Three proposals, of which the other side accepts only the second.
THREE_PROPOSALS = ["aes256-sha512-modp4096", "aes128-sha256-ecp256", "aes256-sha256-modp2048"]
ONLY_THE_SECOND = ["aes192-sha384-modp3072", "aes128-sha256-ecp256"]
TWO_PROPOSALS = ["aes256-sha256-modp2048", "aes128-sha256-ecp256"]


class Hosts(Protocol):
    """The addresses of a two-host topology (ikev1d_lab.netns.Topology has them)."""

    @property
    def addr_a(self) -> str: ...
    @property
    def addr_b(self) -> str: ...
    @property
    def inner_net_a(self) -> str: ...
    @property
    def inner_net_b(self) -> str: ...


@dataclass(frozen=True)
class DefaultHosts:
    """The addresses ikev1d_lab.netns.two_hosts() gives, for tests without namespaces."""

    addr_a: str = "192.0.2.1"
    addr_b: str = "192.0.2.2"
    inner_net_a: str = "10.1.0.0/24"
    inner_net_b: str = "10.2.0.0/24"


@dataclass(frozen=True)
class StrongswanCase:
    """One connection: ``proposals``/``esp`` are A's, ``their_*`` B's (default: A's)."""

    id: str
    proposals: Sequence[str]
    esp: Sequence[str]
    their_proposals: Sequence[str] | None = None
    their_esp: Sequence[str] | None = None
    child_rekey_time: str = "1h"
    life_time: str | None = None
    extra_child: str = ""
    children: int = 1
    traffic: bool = False

    def child_networks(self, hosts: Hosts) -> list[tuple[str, str]]:
        """(A's network, B's network) per child; child i > 0 uses 10.1.i.0/24-10.2.i.0/24."""
        nets = [(hosts.inner_net_a, hosts.inner_net_b)]
        nets += [(f"10.1.{i}.0/24", f"10.2.{i}.0/24") for i in range(1, self.children)]
        return nets

    def charon_conf(self, hosts: Hosts) -> str:
        """What the charon on B loads against the peer on A."""
        return self._conf(hosts, b_side=True)

    def peer_conf(self, hosts: Hosts) -> str:
        """The same connection from A's side."""
        return self._conf(hosts, b_side=False)

    def _conf(self, hosts: Hosts, *, b_side: bool) -> str:
        nets = self.child_networks(hosts)
        if b_side:
            me, peer = hosts.addr_b, hosts.addr_a
            pairs = [(b, a) for a, b in nets]
            proposals = self.their_proposals or self.proposals
            esp = self.their_esp or self.esp
        else:
            me, peer = hosts.addr_a, hosts.addr_b
            pairs = nets
            proposals, esp = self.proposals, self.esp
        child = "net" if self.children == 1 else "c0"
        text = swanctl_conf(
            "gw", me, peer, me, peer, PSK, proposals, esp, pairs[0][0], pairs[0][1],
            child=child, child_rekey_time=self.child_rekey_time, life_time=self.life_time,
            extra_child=self.extra_child,
        )
        extra = "".join(
            f"      c{i} {{\n        local_ts = {local}\n        remote_ts = {remote}\n"
            f"        esp_proposals = {','.join(esp)}\n      }}\n"
            for i, (local, remote) in enumerate(pairs[1:], 1))
        return text.replace("    children {\n", "    children {\n" + extra, 1)


CASES: list[StrongswanCase] = [
    # test_negotiation_strongswan: test_ikev1d_initiates / test_strongswan_initiates
    *(StrongswanCase(f"{ike}+{esp}", [ike], [esp]) for ike, esp in ALGORITHMS),
    # test_three_proposals_peer_accepts_only_the_second
    StrongswanCase("peer-accepts-the-second", THREE_PROPOSALS, ["aes128-sha256"],
                   their_proposals=ONLY_THE_SECOND),
    # test_three_proposals_from_strongswan_we_take_the_second
    StrongswanCase("three-proposals", TWO_PROPOSALS, ["aes128-sha256"],
                   their_proposals=THREE_PROPOSALS),
    # test_pfs
    StrongswanCase("pfs", ["aes128-sha256-modp2048"], ["aes128-sha256-modp2048"]),
    # test_strongswan_renews_the_ipsec_sa
    StrongswanCase("child-renewal", ["aes128-sha256-modp2048"], ["aes128-sha256"],
                   child_rekey_time="8s", life_time="30s",
                   extra_child="        rand_time = 2s"),
    # test_five_children_come_up_one_quick_mode_after_another
    StrongswanCase("five-children", ["aes128-sha256-modp2048"], ["aes128gcm16"], children=5),
    # test_dataplane_strongswan: test_traffic_with_strongswan
    *(StrongswanCase(f"traffic-{esp}", ["aes128-sha256-modp2048"], [esp], traffic=True)
      for esp in DATAPLANE_ESP),
]
