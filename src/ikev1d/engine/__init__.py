"""ikev1d.engine"""
