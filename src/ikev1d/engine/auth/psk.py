"""Authentication with pre-shared keys (RFC 2409 section 5.4).

    SKEYID = prf(pre-shared-key, Ni_b | Nr_b)
    HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b)
    HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b)

Messages 5 and 6 carry the sender's ID and HASH_I or HASH_R. In Main Mode the
key must be found before the peer's identity is known (it is encrypted under
a key derived from it), so the responder looks it up by the peer's address.
"""

from __future__ import annotations

import hmac
import logging

from ikev1d.config import Identity
from ikev1d.crypto import skeyid_psk
from ikev1d.engine.auth.base import Authenticator, our_id
from ikev1d.engine.ike_sa import Parsed, ProtocolFailure, first
from ikev1d.wire import (
    AuthMethod,
    HashPayload,
    IdPayload,
    NotifyType,
    Payload,
    PayloadType,
)

log = logging.getLogger("ikev1d.engine")


class PskAuthenticator(Authenticator):
    method = AuthMethod.PRE_SHARED_KEY
    name = "psk"
    config_name = "psk"

    def _lookup(self, local_id: Identity | None, remote: Identity | str) -> bytes | None:
        ctx = self.sa.ctx
        return ctx.credentials.get(
            ("psk", local_id, remote), lambda: ctx.config.psk_for(local_id, remote)
        )

    def _key(self) -> bytes:
        sa = self.sa
        conn = sa.conn
        local_id = conn.local.id if conn is not None else None
        if not sa.initiator:
            psk = self._lookup(local_id, sa.remote[0])
            if psk is None:
                sa.ctx.logs.log(log, logging.WARNING, "no-psk", sa.ctx.logs.now,
                                "authentication failed: no pre-shared key for peer %s",
                                sa.remote[0], extra=sa.log_extra)
                raise ProtocolFailure("authentication failed: no pre-shared key",
                                      NotifyType.AUTHENTICATION_FAILED)
            return psk
        # The secret may name the peer's identity or its address.
        remote_id = conn.remote.id if conn is not None else None
        psk = None
        if remote_id is not None and not remote_id.is_any:
            psk = self._lookup(local_id, remote_id)
        if psk is None:
            psk = self._lookup(local_id, sa.remote[0])
        if psk is None:
            raise ProtocolFailure(f"authentication failed: no pre-shared key for {sa.remote[0]}")
        return psk

    def skeyid(self) -> bytes:
        m = self.material
        return skeyid_psk(self.sa.hash_alg, self._key(), m.ni, m.nr)

    def proof_payloads(self) -> list[Payload]:
        own = our_id(self.sa)
        return [own, HashPayload(self.proof_hash(self.sa.initiator, own.encode_body()))]

    def verify_proof(self, parsed: Parsed, notify: NotifyType | None) -> IdPayload:
        payloads = parsed.payloads
        peer_id = first(payloads, IdPayload)
        received = first(payloads, HashPayload).data
        of_initiator = not self.sa.initiator
        expected = self.proof_hash(of_initiator, parsed.body_of(PayloadType.ID))
        if not hmac.compare_digest(expected, received):
            which = "HASH_I" if of_initiator else "HASH_R"
            raise ProtocolFailure(
                f"authentication failed: {which} does not verify (wrong pre-shared key?)",
                notify,
            )
        return peer_id

    def unreadable_message(self, number: int, error: ProtocolFailure) -> str:
        return (f"authentication failed: cannot read message {number} ({error}); "
                "different pre-shared keys?")

    def no_answer(self) -> str:
        return "authentication failed: peer did not answer our ID/HASH (wrong pre-shared key?)"

    def unreadable_answer(self) -> str:
        # strongSwan answers a message 5 it cannot decrypt with an Informational
        # exchange under the keys it derived: with another key, we cannot read it.
        return ("authentication failed: the peer's encrypted answer to our ID/HASH cannot be "
                "read (different pre-shared keys?)")
