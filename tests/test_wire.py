"""
The Unix frontend's framing, without I/O.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from ssa import wire
from ssa.wire import Frame, FrameDecoder, FramingError, Op


class FramingTests(SynchronousTestCase):
    """
    Frames survive any split and bad framing is refused.
    """

    def test_round_trip_any_split(self) -> None:
        """
        Two frames fed byte by byte decode to what was encoded.
        """
        data = wire.encode_frame(Op.SOCKET, 7, 0, b"abc") + wire.encode_frame(Op.CONNECT, 8, 99, b"", nfds=1)
        decoder = FrameDecoder()
        frames = []
        for i in range(len(data)):
            frames += decoder.feed(data[i : i + 1])
        self.assertEqual(frames, [Frame(Op.SOCKET, 7, 0, 0, b"abc"), Frame(Op.CONNECT, 8, 99, 1, b"")])
        self.assertEqual(decoder.pending, 0)

    def test_oversized(self) -> None:
        """
        A length over the limit is a framing error at once.
        """
        decoder = FrameDecoder(max_frame=100)
        self.assertRaises(FramingError, decoder.feed, (101).to_bytes(4, "big"))
        self.assertRaises(ValueError, wire.encode_frame, Op.SOCKET, 1, 0, bytes(wire.MAX_FRAME))

    def test_undersized_and_bad_version(self) -> None:
        """
        A length shorter than a header, or another version, is refused.
        """
        self.assertRaises(FramingError, FrameDecoder().feed, (3).to_bytes(4, "big") + b"abc")
        frame = bytearray(wire.encode_frame(Op.SOCKET, 1, 0, b"x" * 10))
        frame[4] = 9
        self.assertRaises(FramingError, FrameDecoder().feed, bytes(frame[:20]))

    def test_reply(self) -> None:
        """
        A reply echoes the request and carries errno then payload.
        """
        request = Frame(Op.GETSOCKOPT, 5, 42, 0, b"")
        (reply,) = FrameDecoder().feed(wire.encode_reply(request, 71, b"why"))
        self.assertEqual((reply.op, reply.tag, reply.socket_id), (Op.GETSOCKOPT, 5, 42))
        self.assertEqual(wire.decode_reply_body(reply.body), (71, b"why"))
        self.assertRaises(FramingError, wire.decode_reply_body, b"\0")

    def test_address(self) -> None:
        """
        Addresses round-trip; truncated ones are refused.
        """
        encoded = wire.encode_address(socket.AF_INET6, "::1", 443) + b"rest"
        self.assertEqual(wire.decode_address(encoded), ((socket.AF_INET6, "::1", 443), b"rest"))
        self.assertRaises(ValueError, wire.decode_address, encoded[:5])
        self.assertRaises(ValueError, wire.decode_address, encoded[:8])


class CarriedOptionsTests(SynchronousTestCase):
    """
    The options a CONNECT carries: L{wire.encode_options} and
    L{wire.decode_options}.
    """

    def test_round_trip(self) -> None:
        """
        Options come back in order, empty values and none at all included.
        """
        for options in ([], [(205, 85, b"example.com\0")], [(6, 1, b"\1\0\0\0"), (205, 90, b""), (205, 87, b"x" * 70000)]):
            self.assertEqual(wire.decode_options(wire.encode_options(options)), options)

    def test_malformed(self) -> None:
        """
        A cut count, entry or value, or bytes after the last option, are
        refused with ValueError.
        """
        whole = wire.encode_options([(205, 85, b"example.com\0"), (6, 1, b"\1\0\0\0")])
        for data in (b"", b"\0", whole[:3], whole[:-1], whole + b"\0", wire.encode_options([]) + b"x"):
            self.assertRaises(ValueError, wire.decode_options, data)
