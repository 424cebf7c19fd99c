"""ikev1d.crypto"""
