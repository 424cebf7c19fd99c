"""Vendor IDs as strongSwan 5.9.8 sends them (seen in our captures) are recognised."""

from __future__ import annotations

import logging

import pytest

from ikev1d.engine.vendor import Extension, recognise, responder_vendor_ids
from ikev1d.wire.vendor_ids import VID_NAT_T_DRAFTS, VID_NAT_T_RFC
from tests.unit.engine.test_engine import default_net, establish

STRONGSWAN_MM1_VIDS = [
    bytes.fromhex("09002689dfd6b712"),  # XAUTH
    bytes.fromhex("afcad71368a1f1c96b8696fc77570100"),  # DPD
    bytes.fromhex("4048b7d56ebce88525e7de7f00d6c2d3c0000000"),  # FRAGMENTATION + flags
    bytes.fromhex("4a131c81070358455c5728f20e95452f"),  # RFC 3947
    bytes.fromhex("90cb80913ebb696e086381b5ec427b1f"),  # draft-ietf-ipsec-nat-t-ike-02\n
]


def test_strongswan_vids_are_all_known() -> None:
    peer = recognise(STRONGSWAN_MM1_VIDS)
    assert peer.unknown == 0
    assert peer.extensions == {Extension.XAUTH, Extension.DPD, Extension.FRAGMENTATION,
                               Extension.NAT_T_RFC, Extension.NAT_T_DRAFT}
    assert peer.nat_t_rfc


def test_responder_answers_one_nat_t_flavour() -> None:
    assert VID_NAT_T_RFC in responder_vendor_ids(recognise(STRONGSWAN_MM1_VIDS))
    draft_only = recognise([VID_NAT_T_DRAFTS[0]])
    answer = responder_vendor_ids(draft_only)
    assert VID_NAT_T_RFC not in answer and VID_NAT_T_DRAFTS[0] in answer


def test_unknown_vid_is_logged_in_hex_and_ignored(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ikev1d.engine import vendor

    odd = bytes.fromhex("deadbeef00112233")
    monkeypatch.setattr(vendor, "our_vendor_ids", lambda: [odd, VID_NAT_T_RFC])
    net = default_net()
    with caplog.at_level(logging.INFO):
        establish(net)
    assert "ignoring unknown vendor ID deadbeef00112233" in caplog.text
    assert len(net.b.engine.status(net.now).to_json()["ike_sas"]) == 1
