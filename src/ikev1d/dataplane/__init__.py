"""ikev1d.dataplane"""
