"""The asyncio runtime: UDP sockets, timers, the control socket and its protocol.

It feeds the sans-I/O engine and hands SAs to a data plane; it makes no
protocol decisions of its own.
"""
