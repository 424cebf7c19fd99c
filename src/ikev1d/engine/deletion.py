"""Deleting IPsec and ISAKMP SAs: ours, with a Delete to the peer when it can
still be told, and the peer's (RFC 2408 section 3.15, RFC 2409 section 5.7)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ikev1d.engine.api import ChildSaDeleted, ConnectionFailed, IkeSaDeleted
from ikev1d.engine.ike_sa import ChildSa, IkeSa, IkeState
from ikev1d.wire import DeletePayload, ProtocolId

if TYPE_CHECKING:
    from ikev1d.engine.engine import Engine

log = logging.getLogger("ikev1d.engine")


def same_peer(one: IkeSa, other: IkeSa) -> bool:
    """Both ISAKMP SAs authenticated the same peer identity for the same connection:
    the same IDs and, with XAUTH, the same user (road warriors sharing a group ID
    are told apart by it)."""
    return (one.name == other.name and bool(one.remote_id)
            and one.remote_id == other.remote_id and one.local_id == other.local_id
            and one.xauth_user == other.xauth_user)


class Deletion:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def delete_child(self, sa: IkeSa, child: ChildSa, reason: str, *, send: bool) -> None:
        if child not in sa.children:
            return
        sa.children.remove(child)
        self.engine.forget_child(sa, child)
        for timer in (child.expiry, child.rekey):
            if timer is not None:
                timer.cancel()
        if send and sa.usable:
            sa.send_informational([DeletePayload(protocol_id=ProtocolId.ESP, spis=(child.spi_in,))])
        self.engine.release_spi(child.spi_in)
        log.info("IPsec SA deleted: child %s, SPIs %s_i %s_o (%s)", child.config.name,
                 child.spi_in.hex(), child.spi_out.hex(), reason, extra=sa.log_extra)
        self.engine.emit(ChildSaDeleted(
            conn=sa.name, child=child.config.name, ike_id=sa.ike_id, child_id=child.child_id,
            spi_in=int.from_bytes(child.spi_in, "big"),
            spi_out=int.from_bytes(child.spi_out, "big"), reason=reason,
        ))

    def delete_sa(self, sa: IkeSa, reason: str, *, send: bool, children: bool = True) -> None:
        if children:
            for child in list(sa.children):
                self.delete_child(sa, child, reason, send=send)
        established = sa.usable
        if send and established:
            sa.send_informational([DeletePayload(
                protocol_id=ProtocolId.ISAKMP, spis=(sa.cky_i + sa.cky_r,),
            )])
        sa.state = IkeState.DELETING
        if established:
            log.info("ISAKMP SA deleted (%s)", reason, extra=sa.log_extra)
            self.engine.emit(IkeSaDeleted(conn=sa.name, ike_id=sa.ike_id, reason=reason))
        elif sa.initiator:
            self.engine.emit(ConnectionFailed(sa.name, None, reason))
        if not children and sa.children:
            # IPsec SAs outlive their ISAKMP SA (RFC 2409 allows it). A successor with
            # the same peer takes them (the peer may still keep them on this ISAKMP SA
            # and send on them: our renewal of Phase 1 moved them on our side only, or
            # the peer renewed Phase 2 over this SA meanwhile); without one we have no
            # way left to delete them cleanly: drop them with it.
            if not self._hand_to_successor(sa):
                for child in list(sa.children):
                    self.delete_child(sa, child, reason, send=False)
        self.engine.drop_sa(sa)

    def _hand_to_successor(self, sa: IkeSa) -> bool:
        """Move ``sa``'s IPsec SAs to a usable ISAKMP SA of the same authenticated
        peer, if there is one (True)."""
        successor = next(
            (o for o in reversed(self.engine.same_identity(sa))  # the newest first
             if o.usable and same_peer(o, sa)),
            None)
        if successor is None:
            return False
        successor.children.extend(sa.children)
        self.engine.adopt_children(successor, sa.children)
        sa.children.clear()
        return True

    def peer_deleted(self, sa: IkeSa, delete: DeletePayload) -> None:
        """The peer's Delete, in an Informational exchange of ``sa``."""
        if delete.protocol_id == ProtocolId.ISAKMP:
            for spi in delete.spis:
                if spi == sa.cky_i + sa.cky_r:
                    self._isakmp_deleted(sa)
            return
        if delete.protocol_id != ProtocolId.ESP:
            return
        # The peer names an IPsec SA by the SPI it receives on (our spi_out); charon
        # names one it failed to install by ours. Look in every ISAKMP SA with this
        # peer, since the Delete may come through a newer one; but "this peer" is
        # the authenticated identity on the same connection, not the address: two
        # peers behind one NAT share an address and must not delete each other's.
        # Only ISAKMP SAs that authenticated that identity can own IPsec SAs, and the
        # engine indexes those by it: no walk over every SA for each Delete.
        peers = [sa, *(o for o in self.engine.same_identity(sa) if same_peer(o, sa))]
        for spi in delete.spis:
            found = [(o, c) for o in peers for c in o.children if c.spi_out == spi] or [
                (o, c) for o in peers for c in o.children if c.spi_in == spi]
            for owner, child in found:
                self.delete_child(owner, child, "deleted by peer", send=False)
            if not found:
                log.info("peer deleted an unknown IPsec SA %s", spi.hex(), extra=sa.log_extra)

    def _isakmp_deleted(self, sa: IkeSa) -> None:
        log.info("peer deleted the ISAKMP SA", extra=sa.log_extra)
        # The peer renewed Phase 1: its IPsec SAs live on (RFC 2409 ties them to no
        # ISAKMP SA); the new one can delete them.
        self._hand_to_successor(sa)
        self.delete_sa(sa, "deleted by peer", send=False)
