"""
The messages worker processes send each other over their links, without
I/O: a control connection handed to the worker that serves the socket its
first request names (L{Handoff}), a NEW socket moved with its control
connection to the worker that serves the C{TLS_CONTEXT} it asked for
(L{Migration}), and a worker saying it is ready (L{Ready}).

A link is a C{SOCK_SEQPACKET} socketpair between a worker and the main
process, which relays between workers. A message is encoded as::

    u8 kind, u8 target, u8 source, u8 nfds, then JSON (bytes in base64)

and cut into fragments of at most L{FRAGMENT} bytes, each led by one byte:
1 if more fragments of the message follow, 0 for the last one. The
descriptors (C{SCM_RIGHTS}) ride with the first fragment. A link keeps
message order, so fragments of one message arrive together.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from dataclasses import dataclass, field

from .constants import IPPROTO_TLS, TLS_CONTEXT
from .options import U64

#: The largest fragment's payload: well below the smallest usual socket
#: send buffer, so that one fragment always fits.
FRAGMENT = 60000
#: The largest message a link accepts (a replay log holds certificate
#: chains and keys, and a pending request may be a 1 MiB frame).
MAX_MESSAGE = 16 << 20
#: The most descriptors one message carries.
MAX_FDS = 4

_HEAD = struct.Struct("!BBBB")
_MORE, _LAST = b"\x01", b"\x00"


class LinkError(Exception):
    """
    A link carried something that is not a message; the message is dropped
    (and its descriptors closed).
    """


@dataclass
class Ready:
    """
    A worker process is serving (sent by the worker to the main process).
    """

    source: int
    target: int = 0
    fds: list[int] = field(default_factory=list)


@dataclass
class Handoff:
    """
    A control connection whose first request names a socket of C{target}.

    @ivar pending: every byte read from the connection so far, unanswered.
    @ivar fds: the connection's descriptor.
    @ivar sender: C{(pid, uid, gid)} of the process that wrote C{pending},
        as the kernel said, or L{None} if unknown.
    """

    source: int
    target: int
    pending: bytes
    fds: list[int] = field(default_factory=list)
    sender: tuple[int, int, int] | None = None


@dataclass
class Migration:
    """
    A NEW socket and its control connection, moving to the worker that
    serves the C{TLS_CONTEXT} handle the socket asked for.

    @ivar socket_id: the socket's id, kept.
    @ivar family: its address family.
    @ivar replay: the successful C{setsockopt}s that made its settings.
    @ivar last_error: its C{TLS_ERROR}.
    @ivar pending: the unanswered request bytes, starting with the
        C{TLS_CONTEXT} request.
    @ivar fds: the control connection, the socket's C{app_end} and
        C{daemon_end}, and its bound network socket if it was bound.
    @ivar sender: who wrote C{pending} (as in L{Handoff}).
    @ivar owner: C{(pid, uid, gid, executable)} of the process that
        created the socket: the socket keeps its profile wherever it goes.
    """

    source: int
    target: int
    socket_id: int
    family: int
    replay: list[tuple[int, int, bytes]]
    last_error: str | None
    pending: bytes
    fds: list[int] = field(default_factory=list)
    sender: tuple[int, int, int] | None = None
    owner: tuple[int, int, int, str | None] | None = None


@dataclass
class Query:
    """
    A request for a worker's report (L{ssa.status.local_report}): its
    sockets and counters, for C{ssa status} and C{/metrics}.

    @ivar query: the asker's number for it, echoed in the L{Answer}.
    @ivar uid: show only sockets of this user; L{None} for all.
    """

    source: int
    target: int
    query: int
    uid: int | None
    fds: list[int] = field(default_factory=list)


@dataclass
class Answer:
    """
    A worker's report, answering the L{Query} numbered C{query}.
    """

    source: int
    target: int
    query: int
    report: dict
    fds: list[int] = field(default_factory=list)


Message = Ready | Handoff | Migration | Query | Answer
_KINDS: dict[int, type] = {1: Ready, 2: Handoff, 3: Migration, 4: Query, 5: Answer}
_KIND_OF = {kind: number for number, kind in _KINDS.items()}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode(message: Message) -> bytes:
    """
    The bytes of a message (its descriptors travel beside them).
    """
    if isinstance(message, Handoff):
        fields: dict = {"pending": _b64(message.pending), "sender": message.sender}
    elif isinstance(message, Migration):
        fields = {
            "pending": _b64(message.pending),
            "socket_id": message.socket_id,
            "family": message.family,
            "replay": [[level, name, _b64(value)] for level, name, value in message.replay],
            "last_error": message.last_error,
            "sender": message.sender,
            "owner": message.owner,
        }
    elif isinstance(message, Query):
        fields = {"query": message.query, "uid": message.uid}
    elif isinstance(message, Answer):
        fields = {"query": message.query, "report": message.report}
    else:
        fields = {}
    head = _HEAD.pack(_KIND_OF[type(message)], message.target, message.source, len(message.fds))
    return head + json.dumps(fields).encode("utf-8")


def decode(data: bytes, fds: list[int]) -> Message:
    """
    A message from its bytes and the descriptors that came with it.

    @raise LinkError: not a message, or not as many descriptors as it says.
    """
    try:
        kind, target, source, nfds = _HEAD.unpack_from(data)
        fields = json.loads(data[_HEAD.size :].decode("utf-8"))
        if nfds != len(fds) or kind not in _KINDS:
            raise LinkError(f"a message of kind {kind} with {len(fds)} descriptors (announced {nfds})")
        if kind == 1:
            return Ready(source, target, fds)
        if kind == 4:
            uid = fields["uid"]
            return Query(source, target, int(fields["query"]), None if uid is None else int(uid), fds)
        if kind == 5:
            if not isinstance(fields["report"], dict):
                raise LinkError("a report that is not an object")
            return Answer(source, target, int(fields["query"]), fields["report"], fds)
        pending = base64.b64decode(fields["pending"], validate=True)
        sender = _credentials(fields.get("sender"))
        if kind == 2:
            return Handoff(source, target, pending, fds, sender)
        replay = [
            (int(level), int(name), base64.b64decode(value, validate=True))
            for level, name, value in fields["replay"]
        ]
        last_error = fields["last_error"]
        owner = fields.get("owner")
        if owner is not None:
            pid, uid, gid, exe = owner
            owner = (int(pid), int(uid), int(gid), None if exe is None else str(exe))
        return Migration(
            source, target, int(fields["socket_id"]), int(fields["family"]), replay,
            None if last_error is None else str(last_error), pending, fds, sender, owner,
        )
    except LinkError:
        raise
    except (struct.error, ValueError, KeyError, TypeError) as e:
        raise LinkError(f"a malformed link message: {e}") from None


def _credentials(value: object) -> tuple[int, int, int] | None:
    if value is None:
        return None
    pid, uid, gid = value  # type: ignore[misc]
    return int(pid), int(uid), int(gid)


def fragments(data: bytes) -> list[bytes]:
    """
    Cut a message's bytes into link packets.
    """
    pieces = [data[offset : offset + FRAGMENT] for offset in range(0, len(data), FRAGMENT)] or [b""]
    return [_MORE + piece for piece in pieces[:-1]] + [_LAST + pieces[-1]]


class Reassembler:
    """
    Joins link packets into messages.
    """

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._fds: list[int] = []

    def feed(self, packet: bytes, fds: list[int]) -> Message | None:
        """
        Add one packet and the descriptors that came with it.

        @return: the message it completes, if any.
        @raise LinkError: the packet is malformed, descriptors came with
            a packet that is not a message's first, or the message is too
            big; what was gathered is dropped and its descriptors closed.
        """
        if fds and self._parts:
            close_all(fds)
            self.reset()
            raise LinkError("descriptors arrived in the middle of a message")
        self._fds.extend(fds)
        if not packet or packet[:1] not in (_MORE, _LAST):
            self.reset()
            raise LinkError("a link packet without a fragment flag")
        self._parts.append(packet[1:])
        self._size += len(packet) - 1
        if self._size > self._limit:
            self.reset()
            raise LinkError(f"a link message over {self._limit} bytes")
        if packet[:1] == _MORE:
            return None
        data, fds = b"".join(self._parts), self._fds
        self._parts, self._size, self._fds = [], 0, []
        try:
            return decode(data, fds)
        except LinkError:
            close_all(fds)
            raise

    def reset(self) -> None:
        """
        Drop a partly gathered message and close its descriptors.
        """
        close_all(self._fds)
        self._parts, self._size, self._fds = [], 0, []


def close_all(fds: list[int]) -> None:
    """
    Close descriptors, ignoring those already closed.
    """
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class ReplayLog:
    """
    For each socket of this worker, the successful C{setsockopt} requests
    that made its settings, so that another worker can make the same
    socket. A C{TLS_CONTEXT} that copied another socket's settings is
    kept as that socket's log (which makes the same settings).
    """

    def __init__(self) -> None:
        self._logs: dict[int, list[tuple[int, int, bytes]]] = {}

    def record(self, socket_id: int, level: int, name: int, value: bytes) -> None:
        """
        C{setsockopt(level, name, value)} succeeded on C{socket_id}.
        """
        if (level, name) == (IPPROTO_TLS, TLS_CONTEXT) and len(value) == U64.size:
            (handle,) = U64.unpack(value)
            self._logs[socket_id] = list(self._logs.get(handle, ()))
        else:
            self._logs.setdefault(socket_id, []).append((level, name, value))

    def get(self, socket_id: int) -> list[tuple[int, int, bytes]]:
        """
        The log of C{socket_id} (empty if nothing was set).
        """
        return list(self._logs.get(socket_id, ()))

    def replace(self, socket_id: int, log: list[tuple[int, int, bytes]]) -> None:
        """
        Take the log of a socket that moved here.
        """
        self._logs[socket_id] = list(log)

    def forget(self, socket_id: int) -> None:
        """
        The socket is closed or gone to another worker.
        """
        self._logs.pop(socket_id, None)
