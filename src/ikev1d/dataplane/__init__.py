"""ikev1d.dataplane: ESP processing (``esp``, ``replay``, ``packet``) and the backends.

``base`` is the daemon's interface to a backend; the pure ESP code has no I/O.
"""
