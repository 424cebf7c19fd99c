"""ISAKMP / IKEv1 / IPsec DOI registries.

Every registry is an :class:`OpenIntEnum`: a value nobody assigned a name to
still converts (``PayloadType(200)`` is the pseudo-member ``PayloadType_200``)
instead of raising, so the parser never fails on a number it does not know
(the dnspython approach). Sources: RFC 2407 (IPsec DOI), RFC 2408 (ISAKMP),
RFC 2409 (IKE), RFC 3947 (NAT-T), RFC 3706 (DPD), draft-dukes-ike-mode-cfg-02,
draft-beaulieu-ike-xauth-02 and the IANA "Internet Key Exchange (IKE)
Attributes" / "ISAKMP" registries.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import Any

__all__ = [
    "DOI",
    "AuthMethod",
    "CertEncoding",
    "DhGroup",
    "EncapsulationMode",
    "EspTransformId",
    "ExchangeType",
    "Flags",
    "IdType",
    "IkeAttr",
    "IkeEncryption",
    "IkeHash",
    "IkeTransformId",
    "IpsecAttr",
    "IpsecAuthAlg",
    "LifeType",
    "ModeCfgAttr",
    "ModeCfgType",
    "NotifyType",
    "OpenIntEnum",
    "PayloadType",
    "ProtocolId",
    "Situation",
    "XauthType",
]


class OpenIntEnum(IntEnum):
    """An IntEnum that accepts unassigned values as pseudo-members.

    ``str()`` gives the member name (``"SA"``, ``"PayloadType_200"``) rather
    than the bare number, so log lines stay readable.
    """

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        # Not cached in _value2member_map_: a peer must not be able to grow it.
        pseudo = int.__new__(cls, value)
        pseudo._name_ = f"{cls.__name__}_{value}"
        pseudo._value_ = value
        return pseudo

    @property
    def is_known(self) -> bool:
        """True for a value that has a name in the registry."""
        return int(self) in type(self)._value2member_map_

    @property
    def rfc_name(self) -> str:
        """The name as the RFCs spell it, e.g. ``NO-PROPOSAL-CHOSEN``."""
        return str(self._name_).replace("_", "-")

    def __str__(self) -> str:
        return str(self._name_)

    def __format__(self, format_spec: str) -> str:
        if format_spec:
            return int.__format__(int(self), format_spec)
        return str(self._name_)


class ExchangeType(OpenIntEnum):
    """RFC 2408 §3.1 exchange types, RFC 2409 §3.1 / draft-dukes for the others."""

    NONE = 0
    BASE = 1
    IDENTITY_PROTECTION = 2
    MAIN_MODE = 2
    AUTH_ONLY = 3
    AGGRESSIVE = 4
    INFORMATIONAL = 5
    TRANSACTION = 6  # Mode Config / XAUTH (draft-dukes-ike-mode-cfg-02 §3.1)
    QUICK_MODE = 32  # RFC 2409 §5.5
    NEW_GROUP_MODE = 33  # RFC 2409 §5.6


class PayloadType(OpenIntEnum):
    """RFC 2408 §3.1 next-payload values plus NAT-T and fragmentation."""

    NONE = 0
    SA = 1
    PROPOSAL = 2
    TRANSFORM = 3
    KE = 4
    ID = 5
    CERT = 6
    CR = 7
    HASH = 8
    SIG = 9
    NONCE = 10
    NOTIFICATION = 11
    DELETE = 12
    VENDOR_ID = 13
    ATTRIBUTE = 14  # draft-dukes-ike-mode-cfg-02 §3.2
    NAT_D = 20  # RFC 3947 §3.2
    NAT_OA = 21  # RFC 3947 §5.2
    NAT_D_DRAFT = 130  # draft-ietf-ipsec-nat-t-ike-02/03
    NAT_OA_DRAFT = 131
    FRAGMENT = 132  # Cisco / strongSwan IKEv1 fragmentation


class Flags(IntFlag):
    """RFC 2408 §3.1 header flags."""

    NONE = 0
    ENCRYPTION = 1
    COMMIT = 2
    AUTH_ONLY = 4


class NotifyType(OpenIntEnum):
    """RFC 2408 §3.14.1 error types, status types and RFC 2407 §4.6.3 DOI types."""

    INVALID_PAYLOAD_TYPE = 1
    DOI_NOT_SUPPORTED = 2
    SITUATION_NOT_SUPPORTED = 3
    INVALID_COOKIE = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_MINOR_VERSION = 6
    INVALID_EXCHANGE_TYPE = 7
    INVALID_FLAGS = 8
    INVALID_MESSAGE_ID = 9
    INVALID_PROTOCOL_ID = 10
    INVALID_SPI = 11
    INVALID_TRANSFORM_ID = 12
    ATTRIBUTES_NOT_SUPPORTED = 13
    NO_PROPOSAL_CHOSEN = 14
    BAD_PROPOSAL_SYNTAX = 15
    PAYLOAD_MALFORMED = 16
    INVALID_KEY_INFORMATION = 17
    INVALID_ID_INFORMATION = 18
    INVALID_CERT_ENCODING = 19
    INVALID_CERTIFICATE = 20
    CERT_TYPE_UNSUPPORTED = 21
    INVALID_CERT_AUTHORITY = 22
    INVALID_HASH_INFORMATION = 23
    AUTHENTICATION_FAILED = 24
    INVALID_SIGNATURE = 25
    ADDRESS_NOTIFICATION = 26
    NOTIFY_SA_LIFETIME = 27
    CERTIFICATE_UNAVAILABLE = 28
    UNSUPPORTED_EXCHANGE_TYPE = 29
    UNEQUAL_PAYLOAD_LENGTHS = 30
    CONNECTED = 16384  # RFC 2408 §3.14.1 status
    RESPONDER_LIFETIME = 24576  # RFC 2407 §4.6.3.1
    REPLAY_STATUS = 24577  # RFC 2407 §4.6.3.2
    INITIAL_CONTACT = 24578  # RFC 2407 §4.6.3.3
    R_U_THERE = 36136  # RFC 3706 §5
    R_U_THERE_ACK = 36137
    UNITY_LOAD_BALANCE = 40501  # Cisco Unity, as strongSwan names it
    UNITY_GROUP_HASH = 40503

    @property
    def is_error(self) -> bool:
        """RFC 2408 §3.14.1: types below 16384 are errors."""
        return 0 < int(self) < 16384


class DOI(OpenIntEnum):
    """RFC 2408 §3.4 / RFC 2407 §2."""

    ISAKMP = 0
    IPSEC = 1


class Situation(IntFlag):
    """RFC 2407 §4.2 situation bitmap."""

    SIT_IDENTITY_ONLY = 1
    SIT_SECRECY = 2
    SIT_INTEGRITY = 4


class ProtocolId(OpenIntEnum):
    """RFC 2407 §4.4.1."""

    RESERVED = 0
    ISAKMP = 1
    AH = 2
    ESP = 3
    IPCOMP = 4


class IkeTransformId(OpenIntEnum):
    """RFC 2407 §4.4.2."""

    RESERVED = 0
    KEY_IKE = 1


class EspTransformId(OpenIntEnum):
    """RFC 2407 §4.4.4, RFC 3686, RFC 4309, RFC 4106, RFC 4543."""

    DES_IV64 = 1
    DES = 2
    TRIPLE_DES = 3  # "ESP_3DES" in RFC 2407
    RC5 = 4
    IDEA = 5
    CAST = 6
    BLOWFISH = 7
    TRIPLE_IDEA = 8
    DES_IV32 = 9
    RC4 = 10
    NULL = 11
    AES_CBC = 12
    AES_CTR = 13
    AES_CCM_8 = 14
    AES_CCM_12 = 15
    AES_CCM_16 = 16
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    NULL_AUTH_AES_GMAC = 23
    CAMELLIA_CBC = 22


class IkeAttr(OpenIntEnum):
    """RFC 2409 Appendix A, Phase 1 SA attribute classes."""

    ENCRYPTION_ALGORITHM = 1
    HASH_ALGORITHM = 2
    AUTHENTICATION_METHOD = 3
    GROUP_DESCRIPTION = 4
    GROUP_TYPE = 5
    GROUP_PRIME = 6
    GROUP_GENERATOR_ONE = 7
    GROUP_GENERATOR_TWO = 8
    GROUP_CURVE_A = 9
    GROUP_CURVE_B = 10
    LIFE_TYPE = 11
    LIFE_DURATION = 12
    PRF = 13
    KEY_LENGTH = 14
    FIELD_SIZE = 15
    GROUP_ORDER = 16


class IkeEncryption(OpenIntEnum):
    """RFC 2409 Appendix A, Encryption Algorithm; RFC 3602 / 4132 for AES / Camellia."""

    DES_CBC = 1
    IDEA = 2
    BLOWFISH = 3
    RC5 = 4
    TRIPLE_DES_CBC = 5
    CAST = 6
    AES_CBC = 7
    CAMELLIA_CBC = 8


class IkeHash(OpenIntEnum):
    """RFC 2409 Appendix A, Hash Algorithm; RFC 4868 for SHA-2."""

    MD5 = 1
    SHA = 2
    TIGER = 3
    SHA2_256 = 4
    SHA2_384 = 5
    SHA2_512 = 6


class AuthMethod(OpenIntEnum):
    """RFC 2409 Appendix A, RFC 4754 (ECDSA), XAUTH / hybrid private values."""

    PRE_SHARED_KEY = 1
    DSS_SIG = 2
    RSA_SIG = 3
    RSA_ENC = 4
    RSA_REV_ENC = 5
    ECDSA_256 = 9
    ECDSA_384 = 10
    ECDSA_521 = 11
    HYBRID_INIT_RSA = 64221
    HYBRID_RESP_RSA = 64222
    XAUTH_INIT_PSK = 65001
    XAUTH_RESP_PSK = 65002
    XAUTH_INIT_RSA = 65005
    XAUTH_RESP_RSA = 65006


class DhGroup(OpenIntEnum):
    """IANA IKE "Group Description" (RFC 2409 §6, RFC 3526, RFC 5903, RFC 8031)."""

    NONE = 0
    MODP_768 = 1
    MODP_1024 = 2
    EC2N_155 = 3
    EC2N_185 = 4
    MODP_1536 = 5
    MODP_2048 = 14
    MODP_3072 = 15
    MODP_4096 = 16
    MODP_6144 = 17
    MODP_8192 = 18
    ECP_256 = 19
    ECP_384 = 20
    ECP_521 = 21
    MODP_1024_160 = 22
    MODP_2048_224 = 23
    MODP_2048_256 = 24
    ECP_192 = 25
    ECP_224 = 26
    ECP_224_BP = 27
    ECP_256_BP = 28
    ECP_384_BP = 29
    ECP_512_BP = 30
    CURVE25519 = 31
    CURVE448 = 32


class LifeType(OpenIntEnum):
    """RFC 2409 Appendix A / RFC 2407 §4.5 life type."""

    SECONDS = 1
    KILOBYTES = 2


class IpsecAttr(OpenIntEnum):
    """RFC 2407 §4.5 Phase 2 SA attribute classes."""

    SA_LIFE_TYPE = 1
    SA_LIFE_DURATION = 2
    GROUP_DESCRIPTION = 3
    ENCAPSULATION_MODE = 4
    AUTH_ALGORITHM = 5
    KEY_LENGTH = 6
    KEY_ROUNDS = 7
    COMP_DICT_SIZE = 8
    COMP_PRIVATE_ALG = 9
    ECN_TUNNEL = 10  # RFC 3168 §9.2
    EXT_SEQ_NUMBER = 11  # RFC 4304


class EncapsulationMode(OpenIntEnum):
    """RFC 2407 §4.5 and RFC 3947 §5 (UDP), draft values used by older peers."""

    TUNNEL = 1
    TRANSPORT = 2
    UDP_TUNNEL = 3
    UDP_TRANSPORT = 4
    UDP_TUNNEL_DRAFT = 61443
    UDP_TRANSPORT_DRAFT = 61444


class IpsecAuthAlg(OpenIntEnum):
    """RFC 2407 §4.5 Authentication Algorithm, RFC 4868, RFC 3566."""

    NONE = 0
    HMAC_MD5 = 1
    HMAC_SHA = 2
    DES_MAC = 3
    KPDK = 4
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7
    HMAC_RIPEMD = 8
    AES_XCBC_MAC = 9


class IdType(OpenIntEnum):
    """RFC 2407 §4.6.2.1 identification types."""

    RESERVED = 0
    IPV4_ADDR = 1
    FQDN = 2
    USER_FQDN = 3
    IPV4_ADDR_SUBNET = 4
    IPV6_ADDR = 5
    IPV6_ADDR_SUBNET = 6
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11


class CertEncoding(OpenIntEnum):
    """RFC 2408 §3.9 certificate encodings."""

    NONE = 0
    PKCS7_WRAPPED_X509 = 1
    PGP = 2
    DNS_SIGNED_KEY = 3
    X509_SIG = 4
    X509_KE = 5
    KERBEROS_TOKENS = 6
    CRL = 7
    ARL = 8
    SPKI = 9
    X509_ATTRIBUTE = 10


class ModeCfgType(OpenIntEnum):
    """draft-dukes-ike-mode-cfg-02 §3.2 attribute payload types."""

    RESERVED = 0
    ISAKMP_CFG_REQUEST = 1
    ISAKMP_CFG_REPLY = 2
    ISAKMP_CFG_SET = 3
    ISAKMP_CFG_ACK = 4
    REQUEST = 1
    REPLY = 2
    SET = 3
    ACK = 4


class ModeCfgAttr(OpenIntEnum):
    """draft-dukes-ike-mode-cfg-02 §3.2, draft-beaulieu-ike-xauth-02 §6, Cisco Unity."""

    INTERNAL_IP4_ADDRESS = 1
    INTERNAL_IP4_NETMASK = 2
    INTERNAL_IP4_DNS = 3
    INTERNAL_IP4_NBNS = 4
    INTERNAL_ADDRESS_EXPIRY = 5
    INTERNAL_IP4_DHCP = 6
    APPLICATION_VERSION = 7
    INTERNAL_IP6_ADDRESS = 8
    INTERNAL_IP6_NETMASK = 9
    INTERNAL_IP6_DNS = 10
    INTERNAL_IP6_NBNS = 11
    INTERNAL_IP6_DHCP = 12
    INTERNAL_IP4_SUBNET = 13
    SUPPORTED_ATTRIBUTES = 14
    INTERNAL_IP6_SUBNET = 15
    XAUTH_TYPE = 16520
    XAUTH_USER_NAME = 16521
    XAUTH_USER_PASSWORD = 16522
    XAUTH_PASSCODE = 16523
    XAUTH_MESSAGE = 16524
    XAUTH_CHALLENGE = 16525
    XAUTH_DOMAIN = 16526
    XAUTH_STATUS = 16527
    XAUTH_NEXT_PIN = 16528
    XAUTH_ANSWER = 16529
    UNITY_BANNER = 28672
    UNITY_SAVE_PASSWD = 28673
    UNITY_DEF_DOMAIN = 28674
    UNITY_SPLITDNS_NAME = 28675
    UNITY_SPLIT_INCLUDE = 28676
    UNITY_NATT_PORT = 28677
    UNITY_LOCAL_LAN = 28678
    UNITY_PFS = 28679
    UNITY_FW_TYPE = 28680
    UNITY_BACKUP_SERVERS = 28681
    UNITY_DDNS_HOSTNAME = 28682


class XauthType(OpenIntEnum):
    """draft-beaulieu-ike-xauth-02 §6.2 XAUTH-TYPE values."""

    GENERIC = 0
    RADIUS_CHAP = 1
    OTP = 2
    S_KEY = 3
