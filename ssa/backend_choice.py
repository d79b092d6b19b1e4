"""
Choosing the TLS backend by name.
"""

from __future__ import annotations

from .interfaces import ITLSBackend


class NoSuchBackend(KeyError):
    """
    No installed backend has that name.
    """


def load_backend(name: str) -> ITLSBackend:
    """
    Make the backend called C{name}; its library is imported only now.
    """
    if name == "openssl":
        from ssa.backends.openssl import OpenSSLBackend

        return OpenSSLBackend()
    raise NoSuchBackend(f"no TLS backend called {name!r} (installed: openssl)")
