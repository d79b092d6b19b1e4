"""
The daemon's client-side TLS session cache, without I/O (SPEC section 4:
C{TLS_SESSION_REUSE}, C{TLS_SESSION_TTL}, C{TLS_RESUMED_SESSION}).

Sessions are opaque objects made by a backend's engine. They are keyed by
the application's identity (uid and executable), the server (host, port
and SNI name) and the whole L{ssa.tlsconfig.ClientTLSConfig}, so a session
never crosses to another application or to different TLS settings (other
trust anchors, versions or ciphers).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from .peer import PeerIdentity
from .sockets import ConnectPlan

DEFAULT_SIZE = 10_000


def session_key(owner: PeerIdentity, plan: ConnectPlan) -> Hashable:
    """
    The cache key of a connection C{owner} makes according to C{plan}.
    """
    return (owner.uid, owner.executable, plan.host, plan.port, plan.server_hostname, plan.config)


class SessionCache:
    """
    A bounded least-recently-used map from keys to sessions, each with its
    own expiry time.
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        """
        @param size: the most sessions kept; the least recently used go first.
        """
        self._size = size
        self._entries: OrderedDict[Hashable, tuple[object, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, now: float) -> object | None:
        """
        The session stored under C{key}, or L{None} if there is none or it
        expired by C{now}.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        session, expires = entry
        if now >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return session

    def put(self, key: Hashable, session: object | None, now: float, ttl: float) -> None:
        """
        Store C{session} under C{key} until C{now + ttl}, replacing any
        earlier one; a L{None} session or a TTL of 0 or less stores nothing.
        """
        if session is None or ttl <= 0:
            return
        self._entries[key] = (session, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
