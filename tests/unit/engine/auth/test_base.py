"""Phase 1 authentication: the registry picks one authenticator per negotiated
method and refuses the methods it has none for."""

from __future__ import annotations

import logging
import random

import pytest

from ikev1d.config import parse_config
from ikev1d.engine import Engine
from ikev1d.engine.auth import REGISTRY
from ikev1d.engine.auth.base import (
    Phase1Material,
    Registry,
    UnknownAuthMethod,
    XauthRole,
    resolve,
)
from ikev1d.engine.auth.psk import PskAuthenticator
from ikev1d.engine.auth.pubkey import RsaSignatureAuthenticator
from ikev1d.engine.auth.rsaenc import (
    RevisedRsaEncryptionAuthenticator,
    RsaEncryptionAuthenticator,
)
from ikev1d.engine.ike_sa import IkeSa
from ikev1d.engine.sa_proposals import ike_sa_payload
from ikev1d.wire import (
    AuthMethod,
    ExchangeType,
    Header,
    NotifyPayload,
    NotifyType,
    decode_message,
    encode_header,
    encode_payloads,
)
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, config_text


def _engine() -> Engine:
    text = config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24")
    return Engine(parse_config(text), random_bytes=random.Random(5).randbytes)


def _sa(engine: Engine) -> IkeSa:
    conn = engine.config.connections["gw"]
    return IkeSa(engine, initiator=False, local=(B_ADDR, 500), remote=(A_ADDR, 500),
                 conn=conn, candidates=[conn], now=0.0)


def test_pre_shared_keys_and_signatures_are_the_methods_accepted() -> None:
    assert REGISTRY.accepted() == {AuthMethod.PRE_SHARED_KEY, AuthMethod.RSA_SIG,
                                   AuthMethod.ECDSA_256, AuthMethod.ECDSA_384,
                                   AuthMethod.ECDSA_521, AuthMethod.RSA_ENC,
                                   AuthMethod.RSA_REV_ENC}
    assert REGISTRY.names() == {AuthMethod.PRE_SHARED_KEY: "psk", AuthMethod.RSA_SIG: "pubkey-rsa",
                                AuthMethod.ECDSA_256: "pubkey-ecdsa",
                                AuthMethod.ECDSA_384: "pubkey-ecdsa",
                                AuthMethod.ECDSA_521: "pubkey-ecdsa",
                                AuthMethod.RSA_ENC: "rsa-encryption",
                                AuthMethod.RSA_REV_ENC: "rsa-encryption-revised",
                                AuthMethod.XAUTH_INIT_PSK: "psk+xauth",
                                AuthMethod.XAUTH_RESP_PSK: "psk+xauth",
                                AuthMethod.XAUTH_INIT_RSA: "pubkey-rsa+xauth",
                                AuthMethod.XAUTH_RESP_RSA: "pubkey-rsa+xauth"}
    assert REGISTRY.for_config("psk") is PskAuthenticator
    assert REGISTRY.for_config("pubkey") is RsaSignatureAuthenticator
    assert REGISTRY.for_config("rsa-encryption") is RsaEncryptionAuthenticator
    assert REGISTRY.for_config("rsa-encryption-revised") is RevisedRsaEncryptionAuthenticator
    assert REGISTRY.to_offer("psk") is PskAuthenticator


def test_a_psk_connection_accepts_only_psk() -> None:
    engine = _engine()
    assert REGISTRY.accepted([engine.config.connections["gw"]]) == {AuthMethod.PRE_SHARED_KEY}


@pytest.mark.parametrize("method", [AuthMethod.DSS_SIG, 250])
def test_unknown_method_is_refused(method: int) -> None:
    engine = _engine()
    with pytest.raises(UnknownAuthMethod) as raised:
        REGISTRY.create(method, _sa(engine), Phase1Material())
    assert raised.value.notify == NotifyType.NO_PROPOSAL_CHOSEN


@pytest.mark.parametrize(("wire", "base", "role"), [
    (AuthMethod.PRE_SHARED_KEY, AuthMethod.PRE_SHARED_KEY, XauthRole.NONE),
    (AuthMethod.XAUTH_INIT_PSK, AuthMethod.PRE_SHARED_KEY, XauthRole.INITIATOR_IS_CLIENT),
    (AuthMethod.XAUTH_RESP_PSK, AuthMethod.PRE_SHARED_KEY, XauthRole.RESPONDER_IS_CLIENT),
    (AuthMethod.XAUTH_INIT_RSA, AuthMethod.RSA_SIG, XauthRole.INITIATOR_IS_CLIENT),
    (AuthMethod.XAUTH_RESP_RSA, AuthMethod.RSA_SIG, XauthRole.RESPONDER_IS_CLIENT),
])
def test_xauth_methods_resolve_to_their_base_method(wire: int, base: int, role: XauthRole) -> None:
    method = resolve(wire)
    assert (method.base, method.xauth) == (base, role)


def test_xauth_with_psk_gets_the_psk_authenticator_and_records_the_role() -> None:
    engine = _engine()
    auth = REGISTRY.create(AuthMethod.XAUTH_RESP_PSK, _sa(engine), Phase1Material())
    assert isinstance(auth, PskAuthenticator) and auth.xauth is XauthRole.RESPONDER_IS_CLIENT


def test_a_new_method_is_a_class_in_the_registry() -> None:
    class Signatures(PskAuthenticator):
        method = AuthMethod.RSA_SIG
        name = "pubkey"
        config_name = "pubkey"

    registry = Registry([PskAuthenticator, Signatures])
    engine = _engine()
    assert isinstance(registry.create(AuthMethod.RSA_SIG, _sa(engine), Phase1Material()),
                      Signatures)
    assert registry.accepted() == {AuthMethod.PRE_SHARED_KEY, AuthMethod.RSA_SIG}


def test_responder_answers_an_unsupported_method_with_no_proposal_chosen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = _engine()
    conn = engine.config.connections["gw"]
    offer = ike_sa_payload(conn.proposals, AuthMethod.RSA_SIG, 3600)
    body = encode_payloads([offer])
    header = Header(initiator_cookie=b"\x22" * 8, responder_cookie=bytes(8),
                    next_payload=offer.payload_type,
                    exchange_type=ExchangeType.IDENTITY_PROTECTION, flags=0, message_id=0)
    with caplog.at_level(logging.INFO):
        engine.receive_datagram(encode_header(header, len(body)) + body,
                                (B_ADDR, 500), (A_ADDR, 500), 0.0)
    (reply,) = engine.datagrams_to_send()
    message = decode_message(reply.data)
    assert message.header.exchange_type == ExchangeType.INFORMATIONAL
    (notify,) = message.payloads
    assert isinstance(notify, NotifyPayload)
    assert notify.notify_type == NotifyType.NO_PROPOSAL_CHOSEN
    assert "NO-PROPOSAL-CHOSEN" in caplog.text
    assert engine.ike_sa_count() == 0
