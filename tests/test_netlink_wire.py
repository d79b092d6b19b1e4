"""
The netlink codec (L{ssa.netlink.wire}) byte for byte against the module's
layouts (C{research/netlink.md} sections 2, 3 and 6), and its strictness.
"""

from __future__ import annotations

import errno
import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from ssa.netlink import wire
from ssa.netlink.transport import FamilyMissing, resolve_family
from ssa.netlink.wire import Ack, Command, Message, NetlinkDecodeError

FAMILY = 0x1D
SOCKET_ID = 0x1122334455667788
ID_ATTR = bytes.fromhex("0c000100") + struct.pack("<Q", SOCKET_ID)
LO4 = (socket.AF_INET, "127.0.0.1", 40000)
LO4_RAW = bytes.fromhex("0200 9c40 7f000001 0000000000000000")
REMOTE6 = (socket.AF_INET6, "2001:db8::1", 443)
REMOTE6_RAW = bytes.fromhex("0a00 01bb 00000000 20010db8000000000000000000000001 00000000")


def header(length: int, flags: int = 0, seq: int = 0, pid: int = 0) -> bytes:
    return struct.pack("<IHHII", length, FAMILY, flags, seq, pid)


class GoldenBytesTests(TestCase):
    """
    One message per command, in the attribute order of the module's
    C{send_*} (requests) and of the original daemon (replies).
    """

    def check(self, message: Message, expected: bytes) -> None:
        self.assertEqual(wire.encode(FAMILY, message).hex(), expected.hex())
        self.assertEqual(wire.decode_datagram(FAMILY, expected), [message])

    def test_socket_notify(self) -> None:
        """
        The 40-byte SOCKET_NOTIFY of section 2: ID then FAMILY (u16).
        """
        expected = header(40) + bytes.fromhex("01010000") + ID_ATTR + bytes.fromhex("0600 0300 0200 0000")
        self.assertEqual(len(expected), 40)
        self.check(Message(Command.SOCKET_NOTIFY, SOCKET_ID, family=socket.AF_INET), expected)

    def test_return(self) -> None:
        """
        RETURN has SOCKET_NOTIFY's size; the daemon's flags are
        REQUEST|ACK, its errno negative as an int.
        """
        expected = (header(40, 5, 7, 8443) + bytes.fromhex("09010000") + ID_ATTR
                    + bytes.fromhex("0800 0a00") + struct.pack("<i", -errno.EINPROGRESS))
        data = wire.reply(FAMILY, Command.RETURN, SOCKET_ID, result=-errno.EINPROGRESS, seq=7, pid=8443)
        self.assertEqual(data.hex(), expected.hex())
        [message] = wire.decode_datagram(FAMILY, data)
        self.assertEqual(message.result, -errno.EINPROGRESS)

    def test_setsockopt_notify(self) -> None:
        """
        ID, OPTLEVEL, OPTNAME, OPTVAL; the value is padded to 4 bytes (its
        attribute length unpadded, the message length padded).
        """
        expected = (header(60) + bytes.fromhex("02010000") + ID_ATTR + bytes.fromhex("0800 0700 cd000000")
                    + bytes.fromhex("0800 0800 55000000") + bytes.fromhex("0900 0900") + b"host\0" + bytes(3))
        self.check(Message(Command.SETSOCKOPT_NOTIFY, SOCKET_ID, level=205, name=85, value=b"host\0"),
                   expected)

    def test_getsockopt_notify(self) -> None:
        expected = (header(48) + bytes.fromhex("03010000") + ID_ATTR + bytes.fromhex("0800 0700 cd000000")
                    + bytes.fromhex("0800 0800 5d000000"))
        self.check(Message(Command.GETSOCKOPT_NOTIFY, SOCKET_ID, level=205, name=93), expected)

    def test_bind_notify(self) -> None:
        """
        INTERNAL then EXTERNAL, each the real address length (16 or 28).
        """
        expected = (header(84) + bytes.fromhex("04010000") + ID_ATTR + bytes.fromhex("1400 0400") + LO4_RAW
                    + bytes.fromhex("2000 0500") + REMOTE6_RAW)
        self.check(Message(Command.BIND_NOTIFY, SOCKET_ID, internal=LO4, external=REMOTE6), expected)

    def test_connect_notify(self) -> None:
        expected = (header(92) + bytes.fromhex("05010000") + ID_ATTR + bytes.fromhex("1400 0400") + LO4_RAW
                    + bytes.fromhex("2000 0600") + REMOTE6_RAW + bytes.fromhex("0800 0200 00000000"))
        self.check(Message(Command.CONNECT_NOTIFY, SOCKET_ID, internal=LO4, remote=REMOTE6, blocking=False),
                   expected)

    def test_listen_notify_unbound(self) -> None:
        """
        LISTEN_NOTIFY after no bind(): a zero-length EXTERNAL.
        """
        expected = (header(56) + bytes.fromhex("06010000") + ID_ATTR + bytes.fromhex("1400 0400") + LO4_RAW
                    + bytes.fromhex("0400 0500"))
        self.check(Message(Command.LISTEN_NOTIFY, SOCKET_ID, internal=LO4), expected)

    def test_accept_and_close_notify(self) -> None:
        self.check(Message(Command.ACCEPT_NOTIFY, SOCKET_ID, internal=LO4),
                   header(52) + bytes.fromhex("07010000") + ID_ATTR + bytes.fromhex("1400 0400") + LO4_RAW)
        self.check(Message(Command.CLOSE_NOTIFY, SOCKET_ID), header(32) + bytes.fromhex("08010000") + ID_ATTR)

    def test_daemon_replies(self) -> None:
        """
        DATA_RETURN (ID, OPTVAL), HANDSHAKE_RETURN (ID, RETURN), LISTEN_ERR (ID).
        """
        data = wire.reply(FAMILY, Command.DATA_RETURN, SOCKET_ID, value=b"\x01\x00\x00\x00")
        self.assertEqual(data.hex(), (header(40, 5) + bytes.fromhex("0b010000") + ID_ATTR
                                      + bytes.fromhex("0800 0900 01000000")).hex())
        data = wire.reply(FAMILY, Command.HANDSHAKE_RETURN, SOCKET_ID, result=-errno.EPROTO)
        self.assertEqual(data.hex(), (header(40, 5) + bytes.fromhex("0c010000") + ID_ATTR
                                      + bytes.fromhex("0800 0a00") + struct.pack("<i", -errno.EPROTO)).hex())
        data = wire.reply(FAMILY, Command.LISTEN_ERR, SOCKET_ID)
        self.assertEqual(data.hex(), (header(32, 5) + bytes.fromhex("0a010000") + ID_ATTR).hex())
        self.assertRaises(ValueError, wire.reply, FAMILY, Command.SOCKET_NOTIFY, SOCKET_ID)

    def test_ack(self) -> None:
        request = wire.reply(FAMILY, Command.RETURN, SOCKET_ID, result=0, seq=9)
        ack = wire.encode_ack(-errno.EINVAL, request)
        self.assertEqual(wire.decode_datagram(FAMILY, ack), [Ack(-errno.EINVAL, 9)])

    def test_two_messages_in_one_datagram(self) -> None:
        one = wire.encode(FAMILY, Message(Command.SETSOCKOPT_NOTIFY, 1, level=205, name=85, value=b"a\0"))
        two = wire.encode(FAMILY, Message(Command.CLOSE_NOTIFY, 2))
        self.assertEqual([m.command for m in wire.decode_datagram(FAMILY, one + two)],
                         [Command.SETSOCKOPT_NOTIFY, Command.CLOSE_NOTIFY])


class StrictDecodingTests(TestCase):
    """
    Bad input is a L{NetlinkDecodeError} naming the fault, never a crash.
    """

    def bad(self, data: bytes, words: str) -> None:
        with self.assertRaises(NetlinkDecodeError) as caught:
            wire.decode_datagram(FAMILY, data)
        self.assertIn(words, str(caught.exception))

    def good(self) -> bytes:
        return wire.encode(FAMILY, Message(Command.SOCKET_NOTIFY, SOCKET_ID, family=socket.AF_INET))

    def test_faults(self) -> None:
        good = self.good()
        self.bad(good[:10], "no netlink header")
        self.bad(struct.pack("<I", 400) + good[4:], "says 400 bytes")
        self.bad(good[:4] + struct.pack("<H", 99) + good[6:], "not the SSA family")
        self.bad(good[:17] + b"\x02" + good[18:], "version 2")
        self.bad(good[:16] + b"\x63" + good[17:], "unknown command 99")
        # FAMILY attribute as u32 (8 bytes payload): wrong size
        longer = wire.encode_message(FAMILY, 1, [(1, struct.pack("<Q", 1)), (3, struct.pack("<I", 2))])
        self.bad(longer, "FAMILY has 4 bytes, not 2")
        self.bad(wire.encode_message(FAMILY, 1, [(1, struct.pack("<Q", 1))]), "missing FAMILY")
        self.bad(wire.encode_message(FAMILY, 8, [(1, struct.pack("<Q", 1))] * 2), "ID twice")
        self.bad(wire.encode_message(FAMILY, 8, [(1, struct.pack("<Q", 1)), (11, b"")]), "unknown attribute 11")
        self.bad(wire.encode_message(FAMILY, 8, [(1, struct.pack("<Q", 1)), (2, bytes(4))]),
                 "unexpected attribute BLOCKING")
        self.bad(wire.encode_message(FAMILY, 7, [(1, struct.pack("<Q", 1)), (4, b"\x02\x00\x01")]),
                 "no sockaddr_in")
        self.bad(wire.encode_message(FAMILY, 7, [(1, struct.pack("<Q", 1)), (4, b"\x02\x00" + bytes(200))]),
                 "over 128")
        self.bad(good[:-1] + struct.pack("<I", 0)[:1] + b"\x00\x00", "trailing bytes")

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_fuzz(self, data: bytes) -> None:
        """
        Arbitrary bytes decode or raise L{NetlinkDecodeError}, nothing else.
        """
        try:
            wire.decode_datagram(FAMILY, data)
        except NetlinkDecodeError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, 39), st.integers(0, 255))
    def test_one_changed_byte(self, index: int, value: int) -> None:
        data = bytearray(self.good())
        data[index] = value
        try:
            wire.decode_datagram(FAMILY, bytes(data))
        except NetlinkDecodeError:
            pass


class FamilyResolutionTests(TestCase):
    """
    C{CTRL_CMD_GETFAMILY} against this machine's real generic netlink
    controller (no root needed).
    """

    def test_controller_resolves_itself(self) -> None:
        self.assertEqual(resolve_family("nlctrl"), (wire.GENL_ID_CTRL, 2))

    def test_missing_family(self) -> None:
        with self.assertRaises(FamilyMissing) as caught:
            resolve_family("SSA-not-loaded")
        self.assertIn("SSA-not-loaded", str(caught.exception))

    def test_newfamily_round_trip(self) -> None:
        data = wire.encode_newfamily(0x20, "SSA", 1, 11, {"notify": 0x21})
        self.assertEqual(wire.decode_family_reply(data), (0x20, 1))
        self.assertEqual(wire.getfamily_name(wire.encode_getfamily("SSA")[16:]), "SSA")
