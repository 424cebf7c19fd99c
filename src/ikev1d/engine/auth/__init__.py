"""Phase 1 authentication methods; adding one is a module and a line in REGISTRY."""

from ikev1d.engine.auth.base import Authenticator, Registry
from ikev1d.engine.auth.psk import PskAuthenticator
from ikev1d.engine.auth.pubkey import (
    Ecdsa256Authenticator,
    Ecdsa384Authenticator,
    Ecdsa521Authenticator,
    RsaSignatureAuthenticator,
)
from ikev1d.engine.auth.rsaenc import (
    RevisedRsaEncryptionAuthenticator,
    RsaEncryptionAuthenticator,
)

REGISTRY = Registry([
    PskAuthenticator,
    RsaSignatureAuthenticator,
    Ecdsa256Authenticator,
    Ecdsa384Authenticator,
    Ecdsa521Authenticator,
    RsaEncryptionAuthenticator,
    RevisedRsaEncryptionAuthenticator,
])

AUTH_NAMES = REGISTRY.names()
"""How logs and the status name a negotiated method."""

__all__ = ["AUTH_NAMES", "REGISTRY", "Authenticator", "Registry"]
