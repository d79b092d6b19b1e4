"""
The messages between worker processes (L{ssa.handoff}) and the link that
carries them (L{ssa.link}) over a real C{SOCK_SEQPACKET} socketpair.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ssa import handoff
from ssa.constants import IPPROTO_TLS, TLS_CONTEXT, TLS_HOSTNAME, TLS_SESSION_TTL
from ssa.handoff import Handoff, LinkError, Migration, Ready, Reassembler, ReplayLog
from ssa.link import Link
from ssa.options import U64


def _pipe_fds(test: SynchronousTestCase) -> list[int]:
    """
    Two descriptors (a pipe's ends), closed at cleanup if still open.
    """
    fds = list(os.pipe())
    test.addCleanup(handoff.close_all, fds)
    return fds


class MessageTests(SynchronousTestCase):
    """
    Encoding, fragments and reassembly.
    """

    def roundtrip(self, message: handoff.Message) -> handoff.Message:
        """
        Encode, cut, and join again.
        """
        reassembler = Reassembler()
        packets = handoff.fragments(handoff.encode(message))
        for number, packet in enumerate(packets):
            self.assertLessEqual(len(packet), handoff.FRAGMENT + 1)
            result = reassembler.feed(packet, message.fds if number == 0 else [])
            if number < len(packets) - 1:
                self.assertIsNone(result)
        return result

    def test_every_kind(self) -> None:
        """
        Each kind of message comes back equal, a big migration (a replay
        log with a chain of some hundred KiB) included.
        """
        fds = _pipe_fds(self)
        chain = b"-----BEGIN CERTIFICATE-----\n" + os.urandom(300000)
        for message in [
            Ready(3),
            Handoff(1, 0, b"\x00\x01 pending", fds[:1]),
            Migration(2, 1, 0x0123456789ABCDEF, socket.AF_INET6,
                      [(IPPROTO_TLS, 88, chain), (6, 1, b"\x01\0\0\0")], None, b"frames", fds),
            Migration(0, 1, 7, socket.AF_INET, [], "TLS_CONTEXT: no", b"", fds),
        ]:
            self.assertEqual(self.roundtrip(message), message)

    def test_malformed(self) -> None:
        """
        A packet without its flag, a message with the wrong number of
        descriptors, or descriptors in the middle of a message: dropped,
        descriptors closed.
        """
        reassembler = Reassembler()
        self.assertRaises(LinkError, reassembler.feed, b"", [])
        self.assertRaises(LinkError, reassembler.feed, b"\x07junk", [])
        fds = list(os.pipe())
        packet = handoff.fragments(handoff.encode(Handoff(1, 0, b"x", [])))[0]
        self.assertRaises(LinkError, reassembler.feed, packet, fds)
        self.assertRaises(OSError, os.fstat, fds[0])
        big = handoff.fragments(handoff.encode(Handoff(1, 0, os.urandom(100000), [])))
        reassembler.feed(big[0], [])
        fds = list(os.pipe())
        self.assertRaises(LinkError, reassembler.feed, big[1], fds)
        self.assertRaises(OSError, os.fstat, fds[1])

    def test_size_limit(self) -> None:
        """
        A message over the limit is refused.
        """
        reassembler = Reassembler(limit=100000)
        packets = handoff.fragments(handoff.encode(Handoff(1, 0, os.urandom(200000), [])))
        with self.assertRaises(LinkError):
            for packet in packets:
                reassembler.feed(packet, [])


class ReplayLogTests(SynchronousTestCase):
    """
    The successful setsockopts of a worker's sockets.
    """

    def test_record_and_context(self) -> None:
        """
        Options are kept in order; a TLS_CONTEXT takes the log of the
        socket it copied; a forgotten socket has none.
        """
        log = ReplayLog()
        log.record(1, IPPROTO_TLS, TLS_HOSTNAME, b"a\0")
        log.record(1, IPPROTO_TLS, TLS_SESSION_TTL, b"\x05\0\0\0")
        log.record(2, IPPROTO_TLS, TLS_SESSION_TTL, b"\x09\0\0\0")
        log.record(2, IPPROTO_TLS, TLS_CONTEXT, U64.pack(1))
        self.assertEqual(log.get(2), log.get(1))
        self.assertEqual([name for _, name, _ in log.get(1)], [TLS_HOSTNAME, TLS_SESSION_TTL])
        log.forget(1)
        self.assertEqual(log.get(1), [])
        self.assertEqual(len(log.get(2)), 2)


class LinkTests(TestCase):
    """
    Two links on a real socketpair.
    """

    def test_big_message_with_descriptors(self) -> None:
        """
        A message of many fragments arrives whole, with working copies of
        its descriptors; the sender's own copies are closed once sent.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        received: Deferred = Deferred()
        sender = Link(reactor, ours, "receiver", lambda message: None)
        receiver = Link(reactor, theirs, "sender", received.callback)
        self.addCleanup(sender.close)
        self.addCleanup(receiver.close)
        read_end, write_end = os.pipe()
        self.addCleanup(handoff.close_all, [read_end])
        pending = os.urandom(500000)
        sender.send(Handoff(1, 0, pending, [write_end]))

        def check(message: Handoff) -> None:
            self.assertEqual(message.pending, pending)
            [copy] = message.fds
            os.write(copy, b"through the copy")
            os.close(copy)
            self.assertEqual(os.read(read_end, 100), b"through the copy")
            self.assertRaises(OSError, os.fstat, write_end)

        return received.addCallback(check)

    def test_lost_link(self) -> None:
        """
        When the other end closes, the link says so, and a message sent
        after has its descriptors closed.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        lost: Deferred = Deferred()
        link = Link(reactor, ours, "gone", lambda message: None, lambda: lost.callback(None))
        theirs.close()

        def check(_: object) -> None:
            self.assertFalse(link.connected)
            fds = list(os.pipe())
            link.send(Handoff(1, 0, b"", fds[:1]))
            self.assertRaises(OSError, os.fstat, fds[0])
            os.close(fds[1])

        return lost.addCallback(check)
