"""ikev1d.io"""
