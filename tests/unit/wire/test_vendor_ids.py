"""ikev1d.wire.vendor_ids against the values their documents print and strongSwan sends."""

from __future__ import annotations

from ikev1d.wire import vendor_ids as v
from ikev1d.wire.describe import vendor_id_name


def test_values_as_published() -> None:
    assert v.VID_NAT_T_RFC.hex() == "4a131c81070358455c5728f20e95452f"  # RFC 3947 §3.1
    assert v.VID_DPD.hex() == "afcad71368a1f1c96b8696fc77570100"  # RFC 3706 §5
    # strongSwan 5.9.8's Main Mode message 1 (tests/vectors/strongswan/*.json)
    assert v.VID_XAUTH.hex() == "09002689dfd6b712"
    assert v.VID_FRAGMENTATION.hex() == "4048b7d56ebce88525e7de7f00d6c2d3"
    assert v.VID_NAT_T_DRAFTS[0].hex() == "90cb80913ebb696e086381b5ec427b1f"


def test_every_known_value_is_named_once() -> None:
    values = [value for value, _ in v.KNOWN_VENDOR_IDS]
    assert len(set(values)) == len(values)
    for value, name in v.KNOWN_VENDOR_IDS:
        assert vendor_id_name(value) == name
    # fragmentation is announced with four flag octets after the hash
    assert vendor_id_name(v.VID_FRAGMENTATION + bytes.fromhex("80000000")) == "IKE fragmentation"
