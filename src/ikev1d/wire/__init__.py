"""ikev1d.wire"""
