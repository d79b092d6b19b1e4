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
import sys
from collections.abc import Callable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python import usage

from ssa import status, systemd
from ssa.backend_choice import NoSuchBackend, load_backend
from ssa.frontends.unix import ControlFactory
from ssa.paths import daemon_socket_path
from ssa.policy import PolicyError
from ssa.policyfile import load_default, load_policy
from ssa.profiles import PolicySet
from ssa.routing import CrossWorker
from ssa.service import SocketService
from ssa.twisted_internals import listen_with_credentials, serve_inherited
from ssa.worker import WorkerProcessService
from ssa.workers import CONTROL_FD, LINK_FD, WorkerSupervisor

log = Logger()

#: The most worker processes C{--workers} allows.
MAX_WORKERS = 64


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
        ["workers", None, 1,
         f"Worker processes sharing the control socket, 1-{MAX_WORKERS} (default 1: no extra process).", int],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics on this Twisted server endpoint "
         "(e.g. tcp:9464:interface=127.0.0.1), summed over every worker."],
        ["log-format", None, None,
         "Log as 'text' or 'json' (one object per line); default: the policy's log-format, else text."],
        ["frontend", None, "unix",
         "How applications reach the daemon: unix, netlink (the SSA kernel module) or unix,netlink. "
         "With --workers, the main process alone serves netlink."],
        ["netlink-port", None, 8443,
         "The netlink port id and loopback TCP port the SSA kernel module sends to (its DAEMON_START_PORT).", int],
        ["netlink-peer", None, None,
         "Internal (tests): serve a simulated module on NETLINK_USERSOCK at this port id.", int],
        ["worker-index", None, None, "Internal: the main process starts worker K with it.", int],
        ["inherit-control-fd", None, None, "Internal: a worker's inherited control socket.", int],
        ["link-fd", None, None, "Internal: a worker's link to the main process.", int],
    ]

    def postOptions(self) -> None:
        """
        Check the worker options and fill in defaults.
        """
        if self["socket"] is None:
            self["socket"] = daemon_socket_path()
        if self["log-format"] is None:
            self["log-format"] = _policy_log_format(self["config"])
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"--log-format must be text or json, not {self['log-format']!r}")
        if self["log-format"] == "json":
            _log_json(getattr(self, "parent", None))
        frontends = self["frontend"].split(",")
        if not frontends or set(frontends) - {"unix", "netlink"} or len(set(frontends)) != len(frontends):
            raise usage.UsageError(f"--frontend must be unix, netlink or unix,netlink, not {self['frontend']!r}")
        self["frontends"] = frozenset(frontends)
        workers = self["workers"]
        if workers > 1 and "unix" not in frontends:
            raise usage.UsageError("--workers needs the unix frontend: the extra workers serve only it")
        if not 1 <= workers <= MAX_WORKERS:
            raise usage.UsageError(f"--workers must be between 1 and {MAX_WORKERS}, not {workers}")
        internal = [self[name] for name in ("worker-index", "inherit-control-fd", "link-fd")]
        if any(value is not None for value in internal):
            index = self["worker-index"]
            if None in internal or not 1 <= index < workers:
                raise usage.UsageError(
                    "--worker-index, --inherit-control-fd and --link-fd are internal: the main process "
                    "passes all three to the worker processes it starts"
                )


def _policy_log_format(config: str | None) -> str:
    """
    The policy file's C{log-format}, read while the options are parsed
    (the log is set up before the daemon is made); C{text} when the file
    cannot be read, whose errors the daemon reports when it loads it.
    """
    try:
        policies = load_policy(config) if config else load_default()
    except Exception:  # noqa: BLE001 (reported, with its line, by makeService)
        return "text"
    return policies.default.log_format


def _log_json(parent: usage.Options | None) -> None:
    """
    Make the command running the daemon (C{twist} or C{twistd}) log JSON,
    one event per line.
    """
    from twisted.logger import jsonFileLogObserver

    if parent is None:
        raise usage.UsageError("--log-format json needs twist or twistd to run the daemon")
    if "fileLogObserverFactory" in parent:  # twist
        parent["fileLogObserverFactory"] = lambda out: jsonFileLogObserver(out, recordSeparator="")
    else:  # twistd, which imports the observer's factory by name
        parent["logger"] = f"{__name__}.json_log_observer"


def json_log_observer():
    """
    JSON log events on standard output, one per line (C{twistd ssa
    --log-format json}).
    """
    from twisted.logger import jsonFileLogObserver

    return jsonFileLogObserver(sys.stdout, recordSeparator="")


class UnixFrontendService(Service):
    """
    Listens on the control socket, safely: the directory is made private
    to the daemon's user unless it is the system one, a stale socket file is
    replaced, a live one is not.
    """

    def __init__(
        self, reactor, path: str, sockets: SocketService, workers: CrossWorker | None = None,
        inherited: int | None = None,
    ) -> None:
        """
        @param inherited: a listening socket to serve instead of binding
            C{path} (socket activation); the path is then the service
            manager's, left alone.
        """
        self.reactor = reactor
        self.inherited = inherited
        self.path = path
        self.sockets = sockets
        self.workers = workers
        self.port = None

    def startService(self) -> None:
        """
        Bind the control socket.
        """
        super().startService()
        factory = ControlFactory(self.sockets, self.workers)
        if self.workers is not None:
            self.workers.factory = factory  # it makes the protocols of connections other workers pass here
        if self.inherited is not None:
            fd, self.inherited = self.inherited, None
            self.port = serve_inherited(self.reactor, fd, factory)
            log.info("SSA daemon serving the control socket passed by the service manager with the "
                     "{backend} backend", backend=self.sockets.backend.name)
            return
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755 if os.getuid() == 0 else 0o700, exist_ok=True)
        _remove_stale(self.path)
        self.port = listen_with_credentials(self.reactor, self.path, factory)
        log.info("SSA daemon listening on {path} with the {backend} backend",
                 path=self.path, backend=self.sockets.backend.name)

    def fileno(self) -> int:
        """
        The listening control socket's descriptor (for worker processes).
        """
        assert self.port is not None
        return self.port.fileno()

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

    def __init__(
        self, reactor, sockets: SocketService, load: Callable[[], PolicySet],
        forward: Callable[[], None] = lambda: None, notifier: systemd.Notifier | None = None,
    ) -> None:
        """
        @param forward: called after each SIGHUP's reload (the main process
            of several workers passes the signal on to them).
        @param notifier: tells systemd C{RELOADING=1} before a reload and
            C{READY=1} after it.
        """
        self.notifier = notifier
        self.reactor = reactor
        self.sockets = sockets
        self.load = load
        self.forward = forward
        self._previous = None

    def startService(self) -> None:
        """
        Install the SIGHUP handler.
        """
        super().startService()
        self._previous = signal.signal(
            signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(self._hangup)
        )

    def _hangup(self) -> None:
        if self.notifier is not None:
            self.notifier.reloading()
        self.reload()
        self.forward()
        if self.notifier is not None:
            self.notifier.notify("READY=1", "STATUS=serving")

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


class ReadinessService(Service):
    """
    Tells systemd (C{sd_notify}) that the daemon serves once the reactor
    runs, and that it stops.
    """

    def __init__(self, reactor, notifier: systemd.Notifier) -> None:
        self.reactor = reactor
        self.notifier = notifier

    def startService(self) -> None:
        """
        C{READY=1} once the reactor runs (the control socket is open).
        """
        super().startService()
        self.reactor.callWhenRunning(self.notifier.notify, "READY=1", "STATUS=serving", f"MAINPID={os.getpid()}")

    def stopService(self) -> None:
        """
        C{STOPPING=1}.
        """
        super().stopService()
        self.notifier.notify("STOPPING=1")


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
        raise SystemExit(f"ssa: {e}") from None
    policy = policies.default
    name = options["backend"] or policy.backend
    try:
        backend = load_backend(name)
    except NoSuchBackend as e:
        raise SystemExit(str(e.args[0])) from None
    _raise_descriptor_limit()
    top = MultiService()
    count, index = options["workers"], options["worker-index"] or 0
    sockets = SocketService(reactor, backend, policies, worker_index=index)
    notifier = systemd.Notifier()
    # First of all: SIGHUP must be handled before any socket listens, or one
    # sent as soon as the control socket answers would kill the daemon.
    reloader = PolicyReloader(reactor, sockets, load)
    reloader.setServiceParent(top)
    inherited = systemd.INHERITED[0] if systemd.INHERITED and not index else None
    if not index:
        _serve_netlink(reactor, options, sockets, top)
        ReadinessService(reactor, notifier).setServiceParent(top)
    if count == 1:
        if "unix" in options["frontends"]:
            UnixFrontendService(reactor, options["socket"], sockets, inherited=inherited).setServiceParent(top)
        reloader.notifier = notifier
        _serve_metrics(reactor, options, sockets, None, top)
        return top
    workers = CrossWorker(reactor, sockets, count)
    if index:
        WorkerProcessService(
            reactor, sockets, workers, options["inherit-control-fd"], options["link-fd"]
        ).setServiceParent(top)
        return top
    frontend = UnixFrontendService(reactor, options["socket"], sockets, workers, inherited)
    frontend.setServiceParent(top)
    supervisor = WorkerSupervisor(
        reactor, count, lambda k: _worker_arguments(options, k), frontend.fileno, workers.receive
    )
    workers.send = supervisor.route
    supervisor.setServiceParent(top)
    reloader.forward = lambda: supervisor.signal_all(signal.SIGHUP)
    reloader.notifier = notifier
    _serve_metrics(reactor, options, sockets, workers, top)
    return top


def _serve_netlink(reactor, options: Options, sockets: SocketService, top: MultiService) -> None:
    """
    With C{--frontend} naming netlink, serve the SSA kernel module from
    this (the main) process; a missing module stops the daemon unless the
    Unix frontend runs too.
    """
    if "netlink" not in options["frontends"]:
        return
    from ssa.frontends.netlink import netlink_service

    service = netlink_service(reactor, sockets, options["netlink-port"], options["netlink-peer"],
                              required="unix" not in options["frontends"])
    if service is not None:
        service.setServiceParent(top)


def _serve_metrics(
    reactor, options: Options, sockets: SocketService, workers: CrossWorker | None, top: MultiService
) -> None:
    """
    With C{--metrics}, serve C{/metrics} from the main process.
    """
    if options["metrics"] is None:
        return
    from ssa.metricsweb import metrics_service

    def reports() -> Deferred:
        return succeed([status.local_report(sockets, None)]) if workers is None else workers.reports(None)

    metrics_service(reactor, options["metrics"], reports).setServiceParent(top)


def _worker_arguments(options: Options, index: int) -> list[str]:
    """
    The command line (after the interpreter) of worker C{index}: the main
    process's options, and where its inherited descriptors are. It logs
    to its standard output, which the main process reads.
    """
    arguments = ["-m", "twisted", "--log-format", options["log-format"], "ssa", "--socket", options["socket"]]
    for name in ("config", "backend", "connect-timeout", "handshake-timeout"):
        if options[name] is not None:
            value = options[name]
            arguments += [f"--{name}", os.path.abspath(value) if name == "config" else str(value)]
    return arguments + [
        "--workers", str(options["workers"]), "--worker-index", str(index),
        "--inherit-control-fd", str(CONTROL_FD), "--link-fd", str(LINK_FD),
    ]
