"""
End to end: C{ssa.client.create_connection} / C{create_server} and
C{ssa.aio} against a real daemon and real TLS peers (issue 13).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Self

from ssa import _channels, aio, client
from ssa.testing.certs import CertificateAuthority
from ssa.testing.peers import (
    StdlibTLSServer,
    echo_handler,
    free_port,
    pseudo_random_bytes,
)
from ssa.testing.tls_connection import TLSPeerConnection

from .helpers import DaemonTestCase, digest

#: A sanity bound on how long the event loop may go without running while
#: 20 connects are in flight. What proves that no connect blocks the loop
#: is L{GatedTLSServer}: it holds every handshake until all 20 arrive, so a
#: blocking connect would never finish at all. The stalls themselves are
#: printed, not judged: measured 6-12 ms for asyncio, 8-25 ms for the
#: reactor on an idle 2-core machine, and over 100 ms when four test runs
#: share it (the scheduler's, not the loop's).
MAX_LOOP_STALL = 1.0


def tls_client_context(ca: CertificateAuthority) -> ssl.SSLContext:
    """
    A stdlib client context trusting C{ca}.
    """
    return ssl.create_default_context(cadata=ca.cert_pem().decode())


class GatedTLSServer:
    """
    A TLS echo server that starts no handshake before C{gate} TCP
    connections have arrived: connects that were made one after another
    (or that blocked the loop) would never finish.
    """

    def __init__(self, context: ssl.SSLContext, gate: int) -> None:
        self._context = context
        self._gate = gate
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=gate * 2)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._workers: list[threading.Thread] = []
        self._waiting: list[socket.socket] = []

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._listener.close()
        self._thread.join(30)
        for worker in self._workers:
            worker.join(30)

    def _run(self) -> None:
        waiting = self._waiting
        while len(waiting) < self._gate:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                for raw in waiting:  # the gate never opened
                    raw.close()
                return
            waiting.append(raw)
        for raw in waiting:
            worker = threading.Thread(target=self._echo, args=(raw,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def _echo(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        try:
            with self._context.wrap_socket(raw, server_side=True) as tls:
                while data := tls.recv(65536):
                    tls.sendall(data)
                tls.unwrap()  # close_notify: without it the client reads a truncation (ECONNRESET)
        except OSError:
            pass


async def lag_probe(stop: asyncio.Event, lags: list[float]) -> None:
    """
    Record how late each 1 ms sleep wakes: the loop's stalls.
    """
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(0.001)
        lags.append(loop.time() - start - 0.001)


class CreateConnectionTests(DaemonTestCase):
    """
    C{client.create_connection} and C{client.create_server}.
    """

    def test_echo_by_name_and_errors(self) -> None:
        """
        A name connects (IPv4 and IPv6 tried, TLS_HOSTNAME the name); a
        wrong CA fails at once with EPROTO; an unreachable port with
        ECONNABORTED, naming the refusal.
        """
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            with client.create_connection(
                ("localhost", server.port), timeout=30, cafile=self.ca.cert_pem(), path=self.daemon.socket_path
            ) as sock:
                self.assertEqual(sock.getsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME), "localhost")
                self.assertEqual(sock.gettimeout(), 30)
                sock.sendall(b"hello")
                self.assertEqual(sock.recv(5), b"hello")
            other = CertificateAuthority.create()
            failure = self.assertRaises(
                OSError, client.create_connection, ("localhost", server.port),
                cafile=other.cert_pem(), path=self.daemon.socket_path,
            )
            self.assertEqual(failure.errno, errno.EPROTO, str(failure))
        failure = self.assertRaises(
            OSError, client.create_connection, ("127.0.0.1", free_port()),
            hostname="localhost", path=self.daemon.socket_path,
        )
        self.assertEqual(failure.errno, errno.ECONNABORTED, str(failure))
        self.assertIn("refused", str(failure))

    def test_create_server(self) -> None:
        """
        C{create_server} listens with a chain and key: a stdlib TLS client
        talks to it.
        """
        files = self.server_key.write(self.tmp, "server")
        listener = client.create_server(
            ("127.0.0.1", 0), certfile=files.cert, keyfile=files.key, path=self.daemon.socket_path
        )
        self.addCleanup(listener.close)
        host, port = listener.getsockname()
        self.assertEqual(host, "127.0.0.1")
        result: list[bytes] = []

        def talk() -> None:
            tls = TLSPeerConnection.client(("127.0.0.1", port), tls_client_context(self.ca), "localhost", 30)
            try:
                tls.sendall(b"ping")
                result.append(tls.recv(10))
            finally:
                tls.close()

        thread = threading.Thread(target=talk)
        thread.start()
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"pong:" + conn.recv(4))
        thread.join(30)
        self.assertEqual(result, [b"pong:ping"])


class AsyncioTests(DaemonTestCase):
    """
    C{ssa.aio} on one event loop.
    """

    def test_50_concurrent_echoes(self) -> None:
        """
        50 connections at once to a real TLS echo server, each sending its
        own 64 KiB; every echo comes back whole (checksummed).
        """
        size = 1 << 16

        async def one(port: int, i: int) -> tuple[str, str]:
            data = pseudo_random_bytes(size, seed=i)
            reader, writer = await aio.open_connection(
                "localhost", port, cafile=self.ca.cert_pem(), path=self.daemon.socket_path
            )
            writer.write(data)
            await writer.drain()
            writer.write_eof()
            echoed = await reader.readexactly(size)
            self.assertEqual(await reader.read(), b"")
            writer.close()
            await writer.wait_closed()
            return digest(data), digest(echoed)

        with StdlibTLSServer(self.server_key, echo_handler) as server:
            async def main() -> list[tuple[str, str]]:
                return await asyncio.wait_for(asyncio.gather(*(one(server.port, i) for i in range(50))), 120)

            results = asyncio.run(main())
        self.assertEqual(len(results), 50)
        for sent, echoed in results:
            self.assertEqual(sent, echoed)
        self.assertEqual(len({sent for sent, _ in results}), 50)

    def test_verification_failure_is_eproto(self) -> None:
        """
        A certificate from an untrusted CA: C{OSError} EPROTO with the
        daemon's reason; a wrong name too.
        """
        other = CertificateAuthority.create()
        with StdlibTLSServer(self.server_key, echo_handler) as server:
            async def main() -> tuple[OSError, OSError]:
                untrusted = wrong_name = None
                try:
                    await aio.open_connection(
                        "localhost", server.port, cafile=other.cert_pem(), path=self.daemon.socket_path
                    )
                except OSError as e:
                    untrusted = e
                try:
                    await aio.open_connection(
                        "127.0.0.1", server.port, hostname="wrong.example", cafile=self.ca.cert_pem(),
                        path=self.daemon.socket_path,
                    )
                except OSError as e:
                    wrong_name = e
                return untrusted, wrong_name

            untrusted, wrong_name = asyncio.run(main())
        self.assertIsNotNone(untrusted)
        self.assertEqual(untrusted.errno, errno.EPROTO, str(untrusted))
        self.assertIn("certificate", str(untrusted).lower())
        self.assertIsNotNone(wrong_name)
        self.assertEqual(wrong_name.errno, errno.EPROTO, str(wrong_name))
        self.assertIn("wrong.example", str(wrong_name))

    def test_unreachable_is_econnaborted(self) -> None:
        """
        A port nobody listens on: ECONNABORTED, the reason naming it.
        """
        async def main() -> OSError:
            try:
                await aio.open_connection("127.0.0.1", free_port(), path=self.daemon.socket_path)
            except OSError as e:
                return e
            raise AssertionError("connected to nobody")

        failure = asyncio.run(main())
        self.assertEqual(failure.errno, errno.ECONNABORTED, str(failure))
        self.assertIn("refused", str(failure))

    def test_loop_never_stalls_during_20_connects(self) -> None:
        """
        20 connects in flight together (the server holds every handshake
        until all 20 have reached it) never stall the loop for more than
        L{MAX_LOOP_STALL}, measured by a probe sleeping 1 ms at a time.
        """
        files = self.server_key.write(self.tmp, "server")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.cert, files.key)
        lags: list[float] = []

        async def one(port: int, i: int) -> bytes:
            reader, writer = await aio.open_connection(
                "localhost", port, cafile=self.ca.cert_pem(), path=self.daemon.socket_path
            )
            writer.write(b"n%d" % i)
            writer.write_eof()
            data = await reader.read()
            writer.close()
            await writer.wait_closed()
            return data

        async def main(port: int) -> list[bytes]:
            stop = asyncio.Event()
            probe = asyncio.create_task(lag_probe(stop, lags))
            try:
                return await asyncio.wait_for(asyncio.gather(*(one(port, i) for i in range(20))), 60)
            finally:
                stop.set()
                await probe

        with GatedTLSServer(context, gate=20) as server:
            started = time.monotonic()
            echoes = asyncio.run(main(server.port))
            elapsed = time.monotonic() - started
        self.assertEqual(sorted(echoes), sorted(b"n%d" % i for i in range(20)))
        self.assertGreater(len(lags), 10)
        worst = max(lags)
        print(f"\n20 concurrent connects: {elapsed * 1000:.0f} ms, {len(lags)} probes, "
              f"worst loop stall {worst * 1000:.1f} ms")
        self.assertLess(worst, MAX_LOOP_STALL)

    def test_start_server_serves_50_stdlib_clients(self) -> None:
        """
        C{start_server}: 50 stdlib TLS clients at once, each served by a
        coroutine on one loop; closing the server stops accepting.
        """
        files = self.server_key.write(self.tmp, "server")
        context = tls_client_context(self.ca)
        replies: dict[int, bytes] = {}

        def talk(port: int, i: int) -> None:
            tls = TLSPeerConnection.client(("127.0.0.1", port), context, "localhost", timeout=60)
            try:
                tls.sendall(pseudo_random_bytes(10000, seed=i))
                tls.send_close_notify()
                replies[i] = tls.recv_until_eof()
            finally:
                tls.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read()
            sni = await asyncio.to_thread(aio.ssa_socket(writer).getsockopt, client.IPPROTO_TLS, client.TLS_HOSTNAME)
            writer.write(sni.encode() + b":" + digest(data).encode())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        async def main() -> int:
            server = await aio.start_server(
                handle, "127.0.0.1", 0, certfile=files.cert, keyfile=files.key, path=self.daemon.socket_path
            )
            port = server.sockets[0].getsockname()[1]
            async with server:
                self.assertTrue(server.is_serving())
                threads = [threading.Thread(target=talk, args=(port, i)) for i in range(50)]
                for t in threads:
                    t.start()
                await asyncio.to_thread(lambda: [t.join(90) for t in threads])
            self.assertFalse(server.is_serving())
            await server.wait_closed()
            return port

        port = asyncio.run(main())
        self.assertEqual(
            replies, {i: b"localhost:" + digest(pseudo_random_bytes(10000, seed=i)).encode() for i in range(50)}
        )
        self.assertRaises(OSError, socket.create_connection, ("127.0.0.1", port), 5)


def own_descriptors() -> int:
    """
    How many descriptors this process has open.
    """
    return len(os.listdir("/proc/self/fd"))


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """
    Poll C{condition} until it holds or C{timeout} passes (for effects in
    another process, which sends no notice).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class AsyncioBreakageTests(DaemonTestCase):
    """
    C{ssa.aio} when things go wrong: cancelled connects, a killed daemon.
    """

    def test_cancelled_connects_leave_nothing_behind(self) -> None:
        """
        20 connects cancelled while their handshakes are held by the
        server: every SSA socket is closed, here and in the daemon.
        """
        files = self.server_key.write(self.tmp, "server")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.cert, files.key)
        _channels.close_idle(self.daemon.socket_path)
        gc.collect()  # earlier tests' garbage closing now would skew the count
        daemon_before, own_before = self.daemon.descriptor_count(), own_descriptors()

        async def main(port: int) -> None:
            tasks = [
                asyncio.create_task(aio.open_connection("localhost", port, cafile=self.ca.cert_pem(),
                                                        path=self.daemon.socket_path))
                for _ in range(20)
            ]
            await asyncio.sleep(0.3)  # not synchronisation: cancel at whatever step each has reached
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                self.assertIsInstance(result, asyncio.CancelledError)

        with GatedTLSServer(context, gate=1000) as server:
            asyncio.run(main(server.port))
        def settled() -> bool:
            # A pool thread still finishing a cancelled connect may close its
            # socket, and give its control connection to the idle pool, late.
            _channels.close_idle(self.daemon.socket_path)
            gc.collect()
            return own_descriptors() <= own_before and self.daemon.descriptor_count() <= daemon_before

        self.assertTrue(wait_for(settled, 60.0), f"{own_descriptors()} descriptors here, {own_before} before; "
                        f"{self.daemon.descriptor_count()} in the daemon, {daemon_before} before: "
                        f"{self.daemon.descriptors()}")

    def test_killed_daemon(self) -> None:
        """
        The daemon killed under a serving C{start_server}: the server stops
        (no spinning on a dead listener); a new connect fails naming the
        daemon.
        """
        files = self.server_key.write(self.tmp, "server")
        errors: list[dict] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        async def main() -> OSError:
            asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
            server = await aio.start_server(
                handle, "127.0.0.1", 0, certfile=files.cert, keyfile=files.key, path=self.daemon.socket_path
            )
            self.daemon.process.kill()
            await asyncio.to_thread(self.daemon.process.wait)
            await asyncio.wait_for(server.wait_closed(), 20)
            self.assertFalse(server.is_serving())
            try:
                await aio.open_connection("localhost", 443, path=self.daemon.socket_path)
            except OSError as e:
                return e
            raise AssertionError("connected without a daemon")

        failure = asyncio.run(main())
        self.assertIn("SSA daemon", str(failure))
        self.assertIn(self.daemon.socket_path, str(failure))
        self.assertLessEqual(len(errors), 1, errors)

    def test_big_reply_then_immediate_close(self) -> None:
        """
        A C{start_server} handler writes 4 MiB and closes at once: the
        client gets every byte and then a clean end.
        """
        files = self.server_key.write(self.tmp, "server")
        payload = pseudo_random_bytes(4 << 20, seed="big")
        context = tls_client_context(self.ca)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(payload)
            writer.close()

        def fetch(port: int) -> bytes:
            tls = TLSPeerConnection.client(("127.0.0.1", port), context, "localhost", timeout=60)
            try:
                return tls.recv_until_eof()
            finally:
                tls.close()

        async def main() -> list[bytes]:
            server = await aio.start_server(
                handle, "127.0.0.1", 0, certfile=files.cert, keyfile=files.key, path=self.daemon.socket_path
            )
            async with server:
                port = server.sockets[0].getsockname()[1]
                return await asyncio.gather(*(asyncio.to_thread(fetch, port) for _ in range(3)))

        for received in asyncio.run(main()):
            self.assertEqual(digest(received), digest(payload))
