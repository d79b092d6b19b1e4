"""
The Unix frontend's wire format, version 1, without I/O (see
C{docs/protocol.md}).

Both directions carry frames::

    u32 length   bytes that follow this field (at most MAX_FRAME)
    u8  version  1
    u8  op       the operation (a reply echoes its request's)
    u16 nfds     descriptors sent with this frame (SCM_RIGHTS)
    u32 tag      chosen by the client, echoed in the reply
    u64 socket   the socket the request is about (0 for SOCKET)
    ...          the body

A reply's body starts with an C{i32} errno (0 for success) followed by the
result, or by the reason in UTF-8 when the errno is not 0. Integers are
big-endian on this wire; option values travel as the application gave them.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

VERSION = 1
MAX_FRAME = 1 << 20
HEADER = struct.Struct("!IBBHIQ")
ERRNO = struct.Struct("!i")
ADDRESS = struct.Struct("!HHH")
SOCKET_ARGS = struct.Struct("!iii")
OPTION = struct.Struct("!ii")
CONNECT_FLAGS = struct.Struct("!B")
CONNECT_NONBLOCKING = 1
#: CONNECT flag: options to set first follow the address (L{encode_options}).
CONNECT_OPTIONS = 2
OPTION_COUNT = struct.Struct("!H")
OPTION_ENTRY = struct.Struct("!iiI")
NEW_SOCKET = struct.Struct("!Q")
BACKLOG = struct.Struct("!i")
ACCEPT_FLAGS = struct.Struct("!B")
ACCEPT_NONBLOCKING = 1


class Op(enum.IntEnum):
    """
    The operations of wire version 1.
    """

    SOCKET = 1
    BIND = 2
    CONNECT = 3
    SETSOCKOPT = 4
    GETSOCKOPT = 5
    LISTEN = 6
    ACCEPT = 7
    CLOSE = 8
    STATUS = 9


class FramingError(Exception):
    """
    The byte stream cannot be framed any more; the connection must close.
    """


@dataclass(frozen=True)
class Frame:
    """
    One decoded frame.

    @ivar op: the operation number (not necessarily a known L{Op}).
    @ivar tag: the request's tag.
    @ivar socket_id: the socket the frame is about.
    @ivar nfds: how many descriptors came with it.
    @ivar body: the rest.
    """

    op: int
    tag: int
    socket_id: int
    nfds: int
    body: bytes


def encode_frame(op: int, tag: int, socket_id: int, body: bytes, nfds: int = 0) -> bytes:
    """
    Encode one frame.
    """
    length = HEADER.size - 4 + len(body)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes exceeds the limit of {MAX_FRAME}")
    return HEADER.pack(length, VERSION, op, nfds, tag, socket_id) + body


def encode_frames(frames: list[Frame]) -> bytes:
    """
    Encode decoded frames again, exactly as they arrived.
    """
    return b"".join(encode_frame(f.op, f.tag, f.socket_id, f.body, f.nfds) for f in frames)


def encode_reply(
    request: Frame, errno: int, payload: bytes = b"", nfds: int = 0
) -> bytes:
    """
    Encode the reply to C{request}: its errno, then result or reason.
    """
    return encode_frame(
        request.op, request.tag, request.socket_id, ERRNO.pack(errno) + payload, nfds
    )


def decode_reply_body(body: bytes) -> tuple[int, bytes]:
    """
    Split a reply body into errno and payload.
    """
    if len(body) < ERRNO.size:
        raise FramingError("reply too short to hold an errno")
    (errno,) = ERRNO.unpack_from(body)
    return errno, body[ERRNO.size :]


class FrameDecoder:
    """
    Cut a byte stream into L{Frame}s.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def feed(self, data: bytes) -> list[Frame]:
        """
        Add received bytes.

        @return: the frames completed by them, in order.
        @raise FramingError: a frame is oversized, undersized or of an
            unknown version; nothing after it can be trusted.
        """
        self._buffer += data
        frames = []
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= 4:
            (length,) = struct.unpack_from("!I", buffer, offset)
            if length > self._max_frame:
                raise FramingError(
                    f"frame of {length} bytes exceeds the limit of {self._max_frame}"
                )
            if length < HEADER.size - 4:
                raise FramingError(f"frame of {length} bytes is shorter than a header")
            if len(buffer) - offset < 4 + length:
                if len(buffer) - offset >= HEADER.size:
                    self._check_version(buffer[offset + 4])
                break
            _, version, op, nfds, tag, socket_id = HEADER.unpack_from(buffer, offset)
            self._check_version(version)
            body = bytes(buffer[offset + HEADER.size : offset + 4 + length])
            frames.append(Frame(op, tag, socket_id, nfds, body))
            offset += 4 + length
        if offset:
            del buffer[:offset]
        return frames

    @staticmethod
    def _check_version(version: int) -> None:
        if version != VERSION:
            raise FramingError(f"unsupported wire version {version} (this daemon speaks {VERSION})")

    def take_buffered(self) -> bytes:
        """
        Remove and return the bytes of an incomplete frame (when the
        connection moves elsewhere and they must go with it).
        """
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    @property
    def pending(self) -> int:
        """
        How many bytes of an incomplete frame are buffered.
        """
        return len(self._buffer)


def encode_address(family: int, host: str, port: int) -> bytes:
    """
    Encode a socket address: family, port, then the host as UTF-8 text (an
    IP literal, or a name for C{AF_HOSTNAME}).
    """
    raw = host.encode("utf-8")
    return ADDRESS.pack(family, port, len(raw)) + raw


def decode_address(data: bytes) -> tuple[tuple[int, str, int], bytes]:
    """
    Decode an address made by L{encode_address}.

    @return: C{((family, host, port), rest)}.
    @raise ValueError: the bytes do not hold an address.
    """
    if len(data) < ADDRESS.size:
        raise ValueError("truncated address")
    family, port, size = ADDRESS.unpack_from(data)
    end = ADDRESS.size + size
    if len(data) < end:
        raise ValueError("truncated address")
    host = data[ADDRESS.size : end].decode("utf-8")
    return (family, host, port), data[end:]


def encode_options(options: list[tuple[int, int, bytes]]) -> bytes:
    """
    Encode C{(level, name, value)} options for a CONNECT that carries them:
    a count, then each option's level, name, value length and value.
    """
    parts = [OPTION_COUNT.pack(len(options))]
    for level, name, value in options:
        parts.append(OPTION_ENTRY.pack(level, name, len(value)))
        parts.append(value)
    return b"".join(parts)


def decode_options(data: bytes) -> list[tuple[int, int, bytes]]:
    """
    Decode what L{encode_options} made, all of it.

    @raise ValueError: the bytes do not hold exactly that.
    """
    if len(data) < OPTION_COUNT.size:
        raise ValueError("truncated options")
    (count,) = OPTION_COUNT.unpack_from(data)
    offset = OPTION_COUNT.size
    options = []
    for _ in range(count):
        if len(data) < offset + OPTION_ENTRY.size:
            raise ValueError("truncated options")
        level, name, size = OPTION_ENTRY.unpack_from(data, offset)
        offset += OPTION_ENTRY.size
        if len(data) < offset + size:
            raise ValueError("truncated option value")
        options.append((level, name, data[offset : offset + size]))
        offset += size
    if offset != len(data):
        raise ValueError("bytes after the options")
    return options

