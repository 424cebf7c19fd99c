"""ikev1d: an IKEv1 IPsec VPN gateway (Main Mode, Quick Mode, ESP data plane)."""

__version__ = "0.1.0"
