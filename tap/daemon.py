"""
C{twistd ssa}: options and wiring of the SSA daemon.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import resource
import signal
import socket
from collections.abc import Callable

from twisted.application.service import MultiService, Service
from twisted.logger import Logger
from twisted.python import usage

from ssa.backend_choice import NoSuchBackend, load_backend
from ssa.frontends.unix import ControlFactory
from ssa.paths import daemon_socket_path
from ssa.policy import PolicyError
from ssa.policyfile import load_default, load_policy
from ssa.profiles import PolicySet
from ssa.service import SocketService

log = Logger()


class Options(usage.Options):
    """
    Command-line options of C{twistd ssa}.
    """

    synopsis = "[options]"
    longdesc = (
        "Run the Secure Socket API daemon: applications open IPPROTO_TLS sockets "
        "through its Unix control socket and it does TLS for them."
    )
    optParameters = [
        ["socket", "s", None,
         "Path of the control socket (default: $SSA_SOCKET, /run/ssa/ssa.sock as root, "
         "else $XDG_RUNTIME_DIR/ssa/ssa.sock)."],
        ["config", "c", None,
         "The administrator's policy file (default: /etc/ssa/config.yml if it exists, else "
         "the built-in secure defaults). SIGHUP reloads it."],
        ["backend", "b", None, "TLS backend to use (default: the policy's backend:, else openssl)."],
        ["connect-timeout", None, None, "Seconds a TCP connect may take (default 15).", float],
        ["handshake-timeout", None, None, "Seconds a TLS handshake may take (default 30).", float],
    ]

    def postOptions(self) -> None:
        """
        Fill in defaults.
        """
        if self["socket"] is None:
            self["socket"] = daemon_socket_path()


class UnixFrontendService(Service):
    """
    Listens on the control socket, safely: the directory is made private
    to the daemon's user unless it is the system one, a stale socket file is
    replaced, a live one is not.
    """

    def __init__(self, reactor, path: str, sockets: SocketService) -> None:
        self.reactor = reactor
        self.path = path
        self.sockets = sockets
        self.port = None

    def startService(self) -> None:
        """
        Bind the control socket.
        """
        super().startService()
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755 if os.getuid() == 0 else 0o700, exist_ok=True)
        _remove_stale(self.path)
        self.port = self.reactor.listenUNIX(self.path, ControlFactory(self.sockets), mode=0o666, backlog=128)
        log.info("SSA daemon listening on {path} with the {backend} backend",
                 path=self.path, backend=self.sockets.backend.name)

    def stopService(self):
        """
        Close every socket and the control socket.
        """
        super().stopService()
        self.sockets.close_all()
        if self.port is not None:
            return self.port.stopListening()


def _remove_stale(path: str) -> None:
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOTSOCK, errno.ENOENT):
            os.unlink(path)
            return
        raise
    finally:
        probe.close()
    raise SystemExit(f"another SSA daemon is already listening on {path}")


def _raise_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class PolicyReloader(Service):
    """
    Reloads the policy file on SIGHUP: new sockets get the new policy, live
    ones keep theirs; a broken file is refused with a log line and the old
    policy stays.
    """

    def __init__(self, reactor, sockets: SocketService, load: Callable[[], PolicySet]) -> None:
        self.reactor = reactor
        self.sockets = sockets
        self.load = load
        self._previous = None

    def startService(self) -> None:
        """
        Install the SIGHUP handler.
        """
        super().startService()
        self._previous = signal.signal(
            signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(self.reload)
        )

    def stopService(self) -> None:
        """
        Restore the previous SIGHUP handler.
        """
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)

    def reload(self) -> None:
        """
        Load the file again and adopt it if it is valid.
        """
        try:
            policies = self.load()
        except PolicyError as e:
            log.error("policy reload refused, keeping generation {generation}: {error}",
                      generation=self.sockets.policies.default.generation, error=str(e))
            return
        generation = self.sockets.reload(policies)
        log.info("policy reloaded from {source}: generation {generation}",
                 source=policies.source, generation=generation)


def _loader(options: Options) -> Callable[[], PolicySet]:
    overrides = {
        key: options[flag]
        for key, flag in [("connect_timeout", "connect-timeout"), ("handshake_timeout", "handshake-timeout")]
        if options[flag] is not None
    }

    def load() -> PolicySet:
        policies = load_policy(options["config"]) if options["config"] else load_default()
        if not overrides:
            return policies
        return dataclasses.replace(
            policies,
            default=dataclasses.replace(policies.default, **overrides),
            profiles=tuple(
                dataclasses.replace(p, policy=dataclasses.replace(p.policy, **overrides))
                for p in policies.profiles
            ),
        )

    return load


def makeService(options: Options, reactor=None) -> MultiService:
    """
    Wire the daemon from its options; a wrong policy file stops it here,
    naming the file, line, key and reason.
    """
    if reactor is None:
        from twisted.internet import reactor
    load = _loader(options)
    try:
        policies = load()
    except PolicyError as e:
        raise SystemExit(f"ssa: {e}")
    policy = policies.default
    name = options["backend"] or policy.backend
    try:
        backend = load_backend(name)
    except NoSuchBackend as e:
        raise SystemExit(str(e.args[0]))
    _raise_descriptor_limit()
    top = MultiService()
    sockets = SocketService(reactor, backend, policies)
    UnixFrontendService(reactor, options["socket"], sockets).setServiceParent(top)
    PolicyReloader(reactor, sockets, load).setServiceParent(top)
    return top
