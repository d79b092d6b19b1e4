"""
What the daemon does for systemd: socket activation (C{LISTEN_FDS}) and
C{sd_notify} (C{READY=1}, C{RELOADING=1}, C{STOPPING=1}).

This module imports nothing of Twisted: L{main}, the C{ssa-daemon} command
the units run, takes the inherited descriptors out of the environment
I{before} Twisted starts, because importing
C{twisted.internet.endpoints} (which C{twist} does) removes
C{LISTEN_PID} and C{LISTEN_FDS} from C{os.environ}.
"""

from __future__ import annotations

import os
import runpy
import socket
import sys
import time
from collections.abc import MutableMapping, Sequence

#: The first descriptor systemd passes (C{SD_LISTEN_FDS_START}).
LISTEN_FDS_START = 3

#: The listening sockets this process inherited (set by L{main}).
INHERITED: list[int] = []


def take_listen_fds(environ: MutableMapping[str, str] | None = None) -> list[int]:
    """
    The descriptors systemd passed to this process, made nonblocking and
    close-on-exec; C{LISTEN_PID}, C{LISTEN_FDS} and C{LISTEN_FDNAMES} are
    removed from C{environ} (so that no child takes them too).

    @return: the descriptors, C{[]} if none were passed to this process.
    """
    environ = os.environ if environ is None else environ
    pid = environ.pop("LISTEN_PID", None)
    count = environ.pop("LISTEN_FDS", None)
    environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None or pid != str(os.getpid()):
        return []
    try:
        fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))
    except ValueError:
        return []
    for fd in fds:
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
    return fds


class Notifier:
    """
    Sends C{sd_notify} states to the service manager, if it asked for
    them (C{NOTIFY_SOCKET}); otherwise does nothing.
    """

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        """
        Take C{NOTIFY_SOCKET} out of C{environ} (worker processes must not
        notify).
        """
        environ = os.environ if environ is None else environ
        address = environ.pop("NOTIFY_SOCKET", None)
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None

    def notify(self, *states: str) -> bool:
        """
        Send C{states} (C{"READY=1"}, C{"STATUS=..."}) in one datagram.

        @return: whether it was sent.
        """
        if self.address is None:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.sendto("\n".join(states).encode("utf-8"), self.address)
        except OSError:
            return False
        finally:
            sock.close()
        return True

    def reloading(self) -> bool:
        """
        C{RELOADING=1}, with the C{MONOTONIC_USEC} systemd wants with it.
        """
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def main(argv: Sequence[str] | None = None) -> None:
    """
    C{ssa-daemon [TWIST OPTIONS] ssa [OPTIONS]}: C{twist} (C{python -m
    twisted}) with the descriptors systemd passed taken first.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    INHERITED[:] = take_listen_fds()
    sys.argv = ["twist", *argv]
    runpy.run_module("twisted", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # Run as the module the daemon imports, so that it sees INHERITED.
    from ssa import systemd

    systemd.main()
