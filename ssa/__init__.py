"""
The Secure Socket API daemon: TLS as an operating-system service.

Applications open an C{IPPROTO_TLS} socket through L{ssa.client}; the daemon
(C{twistd ssa}) does the TLS handshake, verification and policy, and hands
the application a plain local stream.
"""

__all__: list[str] = []
