"""ikev1d.testbed"""
