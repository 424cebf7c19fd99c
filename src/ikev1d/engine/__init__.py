"""The IKEv1 protocol engine, without I/O: bytes, time and randomness in; bytes, timers and
events out."""

from ikev1d.engine.api import EngineError
from ikev1d.engine.engine import Engine

__all__ = ["Engine", "EngineError"]
