"""
Bounds that keep one user from exhausting the daemon for the others (SPEC
section 5): sockets per process and per uid, a reserve of descriptors that
no user can take, and, per uid, control connections and the bytes of
unfinished requests the daemon buffers. Pure bookkeeping: callers say what
opens and closes.
"""

from __future__ import annotations

import errno
import resource
from collections import Counter

from .errors import SSAError

#: Descriptors one socket may hold in the daemon: both ends of the
#: plaintext pair and the TCP connection.
DESCRIPTORS_PER_SOCKET = 3
#: Descriptors kept for the daemon itself (control connections, logs,
#: listeners, the reactor) whatever its sockets use.
RESERVED_DESCRIPTORS = 128
#: One uid may hold at most this fraction of the sockets the daemon's
#: descriptors allow, whatever its policy says.
USER_SHARE = 4
#: Control connections a uid may hold beyond its sockets (a connection
#: per socket, plus the client library's idle ones).
EXTRA_CONNECTIONS = 16


def open_file_limit() -> int:
    """
    How many descriptors this process may have open.
    """
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def socket_capacity(descriptor_limit: int) -> int:
    """
    How many sockets the daemon can hold with C{descriptor_limit}
    descriptors, keeping its reserve.
    """
    return max(16, (descriptor_limit - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_SOCKET)


def user_socket_bound(policy_bound: int, descriptor_limit: int) -> int:
    """
    The sockets one uid may hold: its policy's C{max-sockets-per-user},
    and never more than its share of the daemon's capacity.
    """
    return max(1, min(policy_bound, socket_capacity(descriptor_limit) // USER_SHARE))


class SocketCounts:
    """
    Live sockets per process, per uid and in all.
    """

    def __init__(self) -> None:
        self.per_process: Counter[int] = Counter()
        self.per_user: Counter[int] = Counter()
        self.total = 0

    def admit(self, pid: int, uid: int, per_process: int, per_user: int, descriptor_limit: int) -> None:
        """
        Check that one more socket for C{pid} of C{uid} is within bounds.

        @raise SSAError: EMFILE over a process's or a user's bound (the
            message names the policy key), ENOBUFS when the daemon's
            descriptors are used up.
        """
        if self.per_process[pid] >= per_process:
            raise SSAError(errno.EMFILE, f"the policy's max-sockets-per-client ({per_process}) is reached")
        bound = user_socket_bound(per_user, descriptor_limit)
        if self.per_user[uid] >= bound:
            why = "the policy's max-sockets-per-user" if bound == per_user else (
                f"uid {uid}'s share of the daemon's descriptors (1/{USER_SHARE}; max-sockets-per-user is {per_user})"
            )
            raise SSAError(errno.EMFILE, f"{why} ({bound} sockets) is reached")
        capacity = socket_capacity(descriptor_limit)
        if self.total >= capacity:
            raise SSAError(
                errno.ENOBUFS, f"the daemon holds {self.total} sockets, all its descriptors allow; try again later"
            )

    def add(self, pid: int, uid: int) -> None:
        """
        A socket of C{pid} and C{uid} exists.
        """
        self.per_process[pid] += 1
        self.per_user[uid] += 1
        self.total += 1

    def remove(self, pid: int, uid: int) -> None:
        """
        A socket of C{pid} and C{uid} is gone.
        """
        for counter, key in ((self.per_process, pid), (self.per_user, uid)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
        self.total -= 1


class RequestBudget:
    """
    Per uid: open control connections, and bytes buffered for requests not
    yet complete.
    """

    def __init__(self) -> None:
        self.connections: Counter[int] = Counter()
        self.buffered: Counter[int] = Counter()

    def open_connection(self, uid: int, bound: int) -> bool:
        """
        Count a new control connection of C{uid}, if it has fewer than
        C{bound}; say whether it was counted.
        """
        if self.connections[uid] >= bound:
            return False
        self.connections[uid] += 1
        return True

    def close_connection(self, uid: int, buffered: int) -> None:
        """
        A counted connection of C{uid}, holding C{buffered} bytes, is gone.
        """
        self.change_buffered(uid, -buffered)
        self.connections[uid] -= 1
        if self.connections[uid] <= 0:
            del self.connections[uid]

    def change_buffered(self, uid: int, delta: int) -> int:
        """
        Add C{delta} (maybe negative) to what C{uid}'s connections buffer.

        @return: the new total.
        """
        self.buffered[uid] += delta
        total = self.buffered[uid]
        if total <= 0:
            del self.buffered[uid]
        return total
