"""
The bytes of the SSA kernel module's generic netlink protocol, without I/O.

Every message is one C{nlmsghdr} (16 bytes), one C{genlmsghdr} (4 bytes)
and attributes (C{nlattr}: u16 length of header and payload, unpadded; u16
type; payload; zero padding to 4), all in host byte order. The module
sends requests (L{Command} 1-8) and the daemon answers with replies (9-12).

Decoding is strict: anything but a well-formed message of the expected
family, with exactly the attributes its command carries at their exact
sizes, raises L{NetlinkDecodeError}, never another exception.
"""

from __future__ import annotations

import enum
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: The family's name and version.
FAMILY_NAME = "SSA"
FAMILY_VERSION = 1

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
GENL_ID_CTRL = 0x10
CTRL_CMD_NEWFAMILY = 1
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_VERSION = 3
CTRL_ATTR_HDRSIZE = 4
CTRL_ATTR_MAXATTR = 5
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_MCAST_GRP_NAME = 1
CTRL_ATTR_MCAST_GRP_ID = 2
NLA_F_NESTED = 0x8000

_BYTE_ORDER = "<" if sys.byteorder == "little" else ">"
NLMSGHDR = struct.Struct(_BYTE_ORDER + "IHHII")
GENLMSGHDR = struct.Struct(_BYTE_ORDER + "BBH")
NLATTR = struct.Struct(_BYTE_ORDER + "HH")
_U16 = struct.Struct(_BYTE_ORDER + "H")
_U32 = struct.Struct(_BYTE_ORDER + "I")
_I32 = struct.Struct(_BYTE_ORDER + "i")
_U64 = struct.Struct(_BYTE_ORDER + "Q")

#: The largest OPTVAL: the u16 C{nla_len} less its header.
MAX_OPTVAL = 0xFFFF - NLATTR.size
#: The largest address attribute the module's policy allows.
MAX_SOCKADDR = 128


class Command(enum.IntEnum):
    """
    The family's commands (K C{netlink.h}).
    """

    SOCKET_NOTIFY = 1
    SETSOCKOPT_NOTIFY = 2
    GETSOCKOPT_NOTIFY = 3
    BIND_NOTIFY = 4
    CONNECT_NOTIFY = 5
    LISTEN_NOTIFY = 6
    ACCEPT_NOTIFY = 7
    CLOSE_NOTIFY = 8
    RETURN = 9
    LISTEN_ERR = 10
    DATA_RETURN = 11
    HANDSHAKE_RETURN = 12


class Attr(enum.IntEnum):
    """
    The family's attributes (K C{netlink.h}); 0 and 11 (PAD) are never sent.
    """

    ID = 1
    BLOCKING = 2
    FAMILY = 3
    SOCKADDR_INTERNAL = 4
    SOCKADDR_EXTERNAL = 5
    SOCKADDR_REMOTE = 6
    OPTLEVEL = 7
    OPTNAME = 8
    OPTVAL = 9
    RETURN = 10


#: Each command's attributes, in the order the module (K C{send_*}) or the
#: daemon (D C{netlink_*notify_kernel}) writes them.
LAYOUT: dict[Command, tuple[Attr, ...]] = {
    Command.SOCKET_NOTIFY: (Attr.ID, Attr.FAMILY),
    Command.SETSOCKOPT_NOTIFY: (Attr.ID, Attr.OPTLEVEL, Attr.OPTNAME, Attr.OPTVAL),
    Command.GETSOCKOPT_NOTIFY: (Attr.ID, Attr.OPTLEVEL, Attr.OPTNAME),
    Command.BIND_NOTIFY: (Attr.ID, Attr.SOCKADDR_INTERNAL, Attr.SOCKADDR_EXTERNAL),
    Command.CONNECT_NOTIFY: (Attr.ID, Attr.SOCKADDR_INTERNAL, Attr.SOCKADDR_REMOTE, Attr.BLOCKING),
    Command.LISTEN_NOTIFY: (Attr.ID, Attr.SOCKADDR_INTERNAL, Attr.SOCKADDR_EXTERNAL),
    Command.ACCEPT_NOTIFY: (Attr.ID, Attr.SOCKADDR_INTERNAL),
    Command.CLOSE_NOTIFY: (Attr.ID,),
    Command.RETURN: (Attr.ID, Attr.RETURN),
    Command.LISTEN_ERR: (Attr.ID,),
    Command.DATA_RETURN: (Attr.ID, Attr.OPTVAL),
    Command.HANDSHAKE_RETURN: (Attr.ID, Attr.RETURN),
}

#: Requests: the module sends them. Replies: the daemon sends them.
REQUESTS = frozenset(c for c in Command if c <= Command.CLOSE_NOTIFY)
REPLIES = frozenset(Command) - REQUESTS

#: Exact payload sizes of the fixed-size attributes (K C{ssa_nl_policy}).
_FIXED = {Attr.ID: 8, Attr.BLOCKING: 4, Attr.FAMILY: 2, Attr.OPTLEVEL: 4, Attr.OPTNAME: 4, Attr.RETURN: 4}
_ADDRESSES = (Attr.SOCKADDR_INTERNAL, Attr.SOCKADDR_EXTERNAL, Attr.SOCKADDR_REMOTE)

Address = tuple[int, str, int]
"""C{(family, host, port)}: an C{AF_INET} or C{AF_INET6} socket address."""


class NetlinkDecodeError(ValueError):
    """
    Bytes that are not a well-formed message of this protocol; the
    message says what is wrong.
    """


@dataclass(frozen=True)
class Message:
    """
    One message of the SSA family, its attributes decoded.

    @ivar command: what it is.
    @ivar socket_id: the module's 64-bit socket id (attribute ID).
    @ivar family: SOCKET_NOTIFY: C{AF_INET} or C{AF_INET6}.
    @ivar internal: the application socket's loopback address (BIND,
        CONNECT, LISTEN) or, in ACCEPT_NOTIFY, its peer's.
    @ivar external: BIND: the address the application asked for; LISTEN:
        the same, or L{None} when it never called bind (zero bytes).
    @ivar remote: CONNECT: the address the application connects to.
    @ivar blocking: CONNECT: whether the application waits.
    @ivar level: SETSOCKOPT/GETSOCKOPT: the option level.
    @ivar name: SETSOCKOPT/GETSOCKOPT: the option name.
    @ivar value: SETSOCKOPT: the option value; DATA_RETURN: the result.
    @ivar result: RETURN, HANDSHAKE_RETURN: 0 or a negative errno.
    @ivar seq: the netlink sequence number.
    @ivar pid: the netlink port id in the header.
    @ivar flags: the netlink header flags.
    """

    command: Command
    socket_id: int
    family: int | None = None
    internal: Address | None = None
    external: Address | None = None
    remote: Address | None = None
    blocking: bool | None = None
    level: int | None = None
    name: int | None = None
    value: bytes | None = None
    result: int | None = None
    seq: int = 0
    pid: int = 0
    flags: int = 0


@dataclass(frozen=True)
class Ack:
    """
    An C{NLMSG_ERROR} message: the kernel's answer to a request.

    @ivar error: 0 or a negative errno.
    @ivar seq: the sequence number of the message it answers.
    """

    error: int
    seq: int


# Addresses


def encode_sockaddr(address: Address) -> bytes:
    """
    A raw C{sockaddr_in} (16 bytes) or C{sockaddr_in6} (28 bytes): family
    in host order, port and address in network order.
    """
    family, host, port = address
    if family == socket.AF_INET:
        return (struct.pack(_BYTE_ORDER + "H", family) + struct.pack("!H", port)
                + socket.inet_pton(family, host) + bytes(8))
    if family == socket.AF_INET6:
        return (struct.pack(_BYTE_ORDER + "H", family) + struct.pack("!HI", port, 0)
                + socket.inet_pton(family, host) + bytes(4))
    raise ValueError(f"address family {family} is neither AF_INET nor AF_INET6")


def decode_sockaddr(raw: bytes, what: str = "address") -> Address:
    """
    The C{(family, host, port)} of a raw C{sockaddr_in}/C{sockaddr_in6}.

    @raise NetlinkDecodeError: another family, or the wrong size for it.
    """
    if len(raw) < 2:
        raise NetlinkDecodeError(f"{what}: {len(raw)} bytes hold no address family")
    (family,) = _U16.unpack_from(raw)
    if family == socket.AF_INET and len(raw) >= 8:
        (port,) = struct.unpack_from("!H", raw, 2)
        return family, socket.inet_ntop(family, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        (port,) = struct.unpack_from("!H", raw, 2)
        return family, socket.inet_ntop(family, raw[8:24]), port
    raise NetlinkDecodeError(f"{what}: {len(raw)} bytes are no sockaddr_in or sockaddr_in6 (family {family})")


# Framing


def _attribute(kind: int, payload: bytes) -> bytes:
    length = NLATTR.size + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"attribute {kind}: {len(payload)} bytes do not fit a netlink attribute")
    return NLATTR.pack(length, kind) + payload + bytes(-length % 4)


def encode_message(
    family_id: int, command: int, attributes: Sequence[tuple[int, bytes]], flags: int = 0, seq: int = 0,
    pid: int = 0, version: int = FAMILY_VERSION,
) -> bytes:
    """
    One generic netlink message: headers and C{attributes} as given.
    """
    body = GENLMSGHDR.pack(command, version, 0) + b"".join(_attribute(k, p) for k, p in attributes)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), family_id, flags, seq, pid) + body


def _payload(attr: Attr, message: Message) -> bytes:
    if attr is Attr.ID:
        return _U64.pack(message.socket_id)
    if attr is Attr.FAMILY:
        return _U16.pack(_required(message.family, attr))
    if attr is Attr.BLOCKING:
        return _U32.pack(1 if _required(message.blocking, attr) else 0)
    if attr is Attr.OPTLEVEL:
        return _I32.pack(_required(message.level, attr))
    if attr is Attr.OPTNAME:
        return _I32.pack(_required(message.name, attr))
    if attr is Attr.OPTVAL:
        value = _required(message.value, attr)
        if len(value) > MAX_OPTVAL:
            raise ValueError(f"OPTVAL: {len(value)} bytes, over {MAX_OPTVAL}")
        return value
    if attr is Attr.RETURN:
        return _I32.pack(_required(message.result, attr))
    address = {Attr.SOCKADDR_INTERNAL: message.internal, Attr.SOCKADDR_EXTERNAL: message.external,
               Attr.SOCKADDR_REMOTE: message.remote}[attr]
    if address is None and attr is Attr.SOCKADDR_EXTERNAL and message.command is Command.LISTEN_NOTIFY:
        return b""
    return encode_sockaddr(_required(address, attr))


def _required(value, attr: Attr):
    if value is None:
        raise ValueError(f"attribute {attr.name} is missing")
    return value


def encode(family_id: int, message: Message) -> bytes:
    """
    The bytes of C{message}, its attributes in the order its sender writes
    them.
    """
    attributes = [(attr, _payload(attr, message)) for attr in LAYOUT[message.command]]
    return encode_message(family_id, message.command, attributes, message.flags, message.seq, message.pid)


def reply(family_id: int, command: Command, socket_id: int, *, result: int | None = None,
          value: bytes | None = None, seq: int = 0, pid: int = 0) -> bytes:
    """
    A daemon-to-module reply, flagged C{NLM_F_REQUEST|NLM_F_ACK} as libnl's
    C{nl_send_auto} sends it.
    """
    if command not in REPLIES:
        raise ValueError(f"{command!r} is not a reply")
    return encode(family_id, Message(command, socket_id, result=result, value=value, seq=seq, pid=pid,
                                     flags=NLM_F_REQUEST | NLM_F_ACK))


def split(datagram: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """
    The netlink messages of one datagram: C{(type, flags, seq, pid, body)}.

    @raise NetlinkDecodeError: a header's length is impossible.
    """
    messages = []
    offset = 0
    while offset < len(datagram):
        if len(datagram) - offset < NLMSGHDR.size:
            raise NetlinkDecodeError(f"{len(datagram) - offset} trailing bytes hold no netlink header")
        length, kind, flags, seq, pid = NLMSGHDR.unpack_from(datagram, offset)
        if length < NLMSGHDR.size or offset + length > len(datagram):
            raise NetlinkDecodeError(
                f"netlink header says {length} bytes, {len(datagram) - offset} are there"
            )
        messages.append((kind, flags, seq, pid, datagram[offset + NLMSGHDR.size:offset + length]))
        offset += (length + 3) & ~3
    return messages


def attributes(body: bytes, what: str = "message") -> list[tuple[int, bytes]]:
    """
    The C{(type, payload)} attributes of C{body}, in order.

    @raise NetlinkDecodeError: an attribute's length runs out of C{body},
        or trailing bytes hold no attribute.
    """
    found = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < NLATTR.size:
            raise NetlinkDecodeError(f"{what}: {len(body) - offset} trailing bytes hold no attribute")
        length, kind = NLATTR.unpack_from(body, offset)
        if length < NLATTR.size or offset + length > len(body):
            raise NetlinkDecodeError(f"{what}: attribute {kind} says {length} bytes, "
                                     f"{len(body) - offset} are there")
        found.append((kind, body[offset + NLATTR.size:offset + length]))
        offset += (length + 3) & ~3
    return found


def decode(family_id: int, kind: int, flags: int, seq: int, pid: int, body: bytes) -> Message | Ack:
    """
    Decode one message split off a datagram by L{split}: a message of the
    SSA family with id C{family_id}, or an C{NLMSG_ERROR} ack.

    @raise NetlinkDecodeError: anything else, or anything malformed.
    """
    if kind == NLMSG_ERROR:
        if len(body) < _I32.size + NLMSGHDR.size:
            raise NetlinkDecodeError(f"NLMSG_ERROR of {len(body)} bytes is too short")
        (error,) = _I32.unpack_from(body)
        acked_seq = NLMSGHDR.unpack_from(body, _I32.size)[3]
        return Ack(error, acked_seq)
    if kind != family_id:
        raise NetlinkDecodeError(f"message type {kind} is not the SSA family ({family_id})")
    if len(body) < GENLMSGHDR.size:
        raise NetlinkDecodeError(f"{len(body)} bytes hold no generic netlink header")
    command, version, _ = GENLMSGHDR.unpack_from(body)
    if version != FAMILY_VERSION:
        raise NetlinkDecodeError(f"version {version}, not {FAMILY_VERSION}")
    try:
        cmd = Command(command)
    except ValueError:
        raise NetlinkDecodeError(f"unknown command {command}") from None
    values: dict[Attr, bytes] = {}
    for attr_kind, payload in attributes(body[GENLMSGHDR.size:], cmd.name):
        try:
            attr = Attr(attr_kind)
        except ValueError:
            raise NetlinkDecodeError(f"{cmd.name}: unknown attribute {attr_kind}") from None
        if attr not in LAYOUT[cmd]:
            raise NetlinkDecodeError(f"{cmd.name}: unexpected attribute {attr.name}")
        if attr in values:
            raise NetlinkDecodeError(f"{cmd.name}: attribute {attr.name} twice")
        size = _FIXED.get(attr)
        if size is not None and len(payload) != size:
            raise NetlinkDecodeError(f"{cmd.name}: {attr.name} has {len(payload)} bytes, not {size}")
        if attr in _ADDRESSES and len(payload) > MAX_SOCKADDR:
            raise NetlinkDecodeError(f"{cmd.name}: {attr.name} has {len(payload)} bytes, over {MAX_SOCKADDR}")
        values[attr] = payload
    missing = [a.name for a in LAYOUT[cmd] if a not in values]
    if missing:
        raise NetlinkDecodeError(f"{cmd.name}: missing {', '.join(missing)}")
    return _message(cmd, values, seq, pid, flags)


def _message(cmd: Command, values: dict[Attr, bytes], seq: int, pid: int, flags: int) -> Message:
    fields: dict[str, Any] = {}
    for attr, raw in values.items():
        if attr is Attr.FAMILY:
            fields["family"] = _U16.unpack(raw)[0]
        elif attr is Attr.BLOCKING:
            fields["blocking"] = _U32.unpack(raw)[0] != 0
        elif attr is Attr.OPTLEVEL:
            fields["level"] = _I32.unpack(raw)[0]
        elif attr is Attr.OPTNAME:
            fields["name"] = _I32.unpack(raw)[0]
        elif attr is Attr.OPTVAL:
            fields["value"] = raw
        elif attr is Attr.RETURN:
            fields["result"] = _I32.unpack(raw)[0]
        elif attr in _ADDRESSES:
            if not raw and attr is Attr.SOCKADDR_EXTERNAL and cmd is Command.LISTEN_NOTIFY:
                continue  # listen() without bind()
            key = attr.name.removeprefix("SOCKADDR_").lower()
            fields[key] = decode_sockaddr(raw, f"{cmd.name} {attr.name}")
    return Message(cmd, _U64.unpack(values[Attr.ID])[0], seq=seq, pid=pid, flags=flags, **fields)


def decode_datagram(family_id: int, datagram: bytes) -> list[Message | Ack]:
    """
    Every message of a datagram; one bad message spoils the datagram.

    @raise NetlinkDecodeError: as L{decode}.
    """
    return [decode(family_id, *parts) for parts in split(datagram)]


# Acks and family discovery


def encode_ack(error: int, acked: bytes, pid: int = 0) -> bytes:
    """
    The C{NLMSG_ERROR} the kernel answers C{acked} (one message) with.
    """
    seq = NLMSGHDR.unpack_from(acked)[3]
    payload = _I32.pack(error) + acked[:NLMSGHDR.size]
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), NLMSG_ERROR, 0, seq, pid) + payload


def encode_getfamily(name: str, seq: int = 1, pid: int = 0) -> bytes:
    """
    C{CTRL_CMD_GETFAMILY} for the family called C{name}.
    """
    return encode_message(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, [(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")],
                          NLM_F_REQUEST | NLM_F_ACK, seq, pid, version=1)


def encode_newfamily(family_id: int, name: str, version: int, maxattr: int, groups: dict[str, int],
                     seq: int = 0) -> bytes:
    """
    The kernel's C{CTRL_CMD_NEWFAMILY} answer (the attributes discovery
    reads, and the multicast groups).
    """
    nested = b"".join(
        _attribute(NLA_F_NESTED | index, _attribute(CTRL_ATTR_MCAST_GRP_ID, _U32.pack(group_id))
                   + _attribute(CTRL_ATTR_MCAST_GRP_NAME, group.encode() + b"\0"))
        for index, (group, group_id) in enumerate(groups.items(), start=1)
    )
    return encode_message(GENL_ID_CTRL, CTRL_CMD_NEWFAMILY, [
        (CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"), (CTRL_ATTR_FAMILY_ID, _U16.pack(family_id)),
        (CTRL_ATTR_VERSION, _U32.pack(version)), (CTRL_ATTR_HDRSIZE, _U32.pack(0)),
        (CTRL_ATTR_MAXATTR, _U32.pack(maxattr)), (NLA_F_NESTED | CTRL_ATTR_MCAST_GROUPS, nested),
    ], seq=seq, version=2)


def decode_family_reply(datagram: bytes) -> tuple[int, int]:
    """
    The family id and version of a C{CTRL_CMD_NEWFAMILY} answer.

    @raise LookupError: the answer is an error (C{ENOENT}: no such family).
    @raise NetlinkDecodeError: it is neither.
    """
    for kind, _, _, _, body in split(datagram):
        if kind == NLMSG_ERROR:
            (error,) = _I32.unpack_from(body) if len(body) >= 4 else (-1,)
            if error:
                raise LookupError(-error)
            continue
        if kind != GENL_ID_CTRL or len(body) < GENLMSGHDR.size:
            raise NetlinkDecodeError(f"message type {kind} is no family answer")
        found = dict(attributes(body[GENLMSGHDR.size:], "family answer"))
        try:
            (family_id,) = _U16.unpack(found[CTRL_ATTR_FAMILY_ID])
            (version,) = _U32.unpack(found[CTRL_ATTR_VERSION])
        except (KeyError, struct.error):
            raise NetlinkDecodeError("family answer without a family id and version") from None
        return family_id, version
    raise NetlinkDecodeError("no family answer in the datagram")


def getfamily_name(body: bytes) -> str | None:
    """
    The family name a C{CTRL_CMD_GETFAMILY} body asks for, or L{None}.
    """
    if len(body) < GENLMSGHDR.size or body[0] != CTRL_CMD_GETFAMILY:
        return None
    try:
        found = dict(attributes(body[GENLMSGHDR.size:], "family request"))
    except NetlinkDecodeError:
        return None
    name = found.get(CTRL_ATTR_FAMILY_NAME)
    return None if name is None else name.rstrip(b"\0").decode("ascii", "replace")
