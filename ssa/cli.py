"""
The C{ssa} command: tools for people around the SSA daemon.

Subcommands register themselves in L{COMMANDS} with the L{command}
decorator on the function that runs them (it gets the parsed arguments and
returns the exit status), naming a one-line help, a description and the
function that adds their arguments.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import selectors
import socket as _socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from ssa import client

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Command:
    """
    One subcommand of C{ssa}.

    @ivar name: what follows C{ssa} on the command line.
    @ivar help: one line saying what it does (shown by C{ssa --help}).
    @ivar description: the longer text of C{ssa NAME --help}.
    @ivar configure: adds the subcommand's arguments to its parser.
    @ivar run: does the work with the parsed arguments; returns the exit
        status.
    """

    name: str
    help: str
    description: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    help: str,
    description: str = "",
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """
    Register the decorated function as the subcommand C{name}; it receives
    the parsed arguments and returns the exit status. C{arguments} adds the
    subcommand's own arguments to its parser.
    """

    def register(run: Callable[..., int]) -> Callable[..., int]:
        COMMANDS[name] = Command(
            name, help, description or help, arguments or (lambda parser: None), run
        )
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    """
    The parser of C{ssa} and all its registered subcommands.
    """
    parser = argparse.ArgumentParser(
        prog="ssa",
        description="Tools for the Secure Socket API daemon (TLS as an operating-system service).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in COMMANDS.values():
        sub = subparsers.add_parser(
            entry.name, help=entry.help, description=entry.description
        )
        entry.configure(sub)
        sub.set_defaults(run=entry.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run C{ssa}; return the exit status (2 for usage errors, which argparse
    reports by raising C{SystemExit}).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 128 + 2


# ssa connect


def parse_host_port(text: str) -> tuple[str, int]:
    """
    Split C{HOST:PORT} (C{[v6]:PORT} for IPv6 literals).

    @raise ValueError: not of that shape.
    """
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not [HOST]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{text!r} is not HOST:PORT (write IPv6 addresses as [ADDRESS]:PORT)")
    if not host:
        raise ValueError(f"{text!r} has no host")
    if not port.isdigit() or not 0 < int(port) <= 0xFFFF:
        raise ValueError(f"{port!r} is not a port number")
    return host, int(port)


def _host_port_argument(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _connect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address", metavar="HOST:PORT", type=_host_port_argument,
        help="where to connect; an IPv6 address is written [ADDRESS]:PORT",
    )
    parser.add_argument(
        "--servername", metavar="NAME",
        help="the name to ask for (SNI) and verify; default: HOST when it is a name",
    )
    parser.add_argument(
        "--cafile", metavar="PATH",
        help="PEM file or directory of the certificates to trust instead of the system's",
    )
    parser.add_argument(
        "--socket", metavar="PATH", dest="socket_path",
        help="the daemon's control socket (default: $SSA_SOCKET, then the usual places)",
    )


@command(
    "connect",
    "open a TLS connection through the daemon and copy stdin/stdout over it",
    "Connect to HOST:PORT through the SSA daemon (which does the handshake and "
    "the verification under the administrator's policy), report the peer and "
    "the negotiated parameters on stderr, then copy stdin to the connection and "
    "the connection to stdout, like 'openssl s_client -quiet'. Exits 0 at the "
    "peer's clean end, 1 on a failure.",
    arguments=_connect_arguments,
)
def run_connect(
    args: argparse.Namespace,
    stdin: int = 0,
    stdout: int = 1,
    stderr: TextIO | None = None,
) -> int:
    """
    C{ssa connect}: connect, report, then relay between the descriptors
    C{stdin}/C{stdout} and the connection.
    """
    err = sys.stderr if stderr is None else stderr
    host, port = args.address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        sock = _connect(host, port, args.servername, args.cafile, args.socket_path)
    except OSError as e:
        print(f"ssa: cannot connect to {shown}: {_reason(e)}", file=err)
        return EXIT_FAILURE
    with sock:
        print(f"ssa: connected to {shown}, {_describe(sock)}", file=err, flush=True)
        return _relay(sock, stdin, stdout, err, shown)


def _connect(
    host: str, port: int, servername: str | None, cafile: str | None, path: str | None
) -> client.SSASocket:
    """
    Resolve, open an SSA socket of the address's family, set it up and
    connect it.
    """
    try:
        family = _socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else _socket.AF_INET
        target = host
        is_name = False
    except ValueError:
        try:
            info = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)[0]
        except _socket.gaierror as e:
            raise OSError(e.errno, f"cannot resolve {host}: {e.strerror}") from None
        family, target, is_name = info[0], info[4][0], True
    sock = client.socket(family, _socket.SOCK_STREAM, client.IPPROTO_TLS, path=path)
    try:
        name = servername or (host if is_name else None)
        if name:
            sock.setsockopt(client.IPPROTO_TLS, client.TLS_HOSTNAME, name)
        if cafile:
            sock.setsockopt(client.IPPROTO_TLS, client.TLS_TRUSTED_PEER_CERTIFICATES, cafile)
        sock.connect((target, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _describe(sock: client.SSASocket) -> str:
    """
    C{peer /CN=..., TLS 1.3, CIPHER}, with C{?} for what cannot be had.
    """
    try:
        info = sock.tls_info()
    except OSError:
        return "peer ?, TLS ?, cipher ?"
    peer = info["peer"] or "(no certificate)"
    return f"peer {peer}, {info['version']}, {info['cipher']}"


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _relay(sock: client.SSASocket, stdin: int, stdout: int, err: TextIO, shown: str) -> int:
    """
    Copy C{stdin} to the connection and the connection to C{stdout} until
    the peer ends; C{stdin}'s end half-closes the connection.
    """
    conn = sock.fileno()
    # poll, not epoll: stdin may be a regular file.
    with selectors.PollSelector() as selector:
        selector.register(stdin, selectors.EVENT_READ)
        selector.register(conn, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fd == conn:
                    try:
                        data = os.read(conn, 65536)
                    except OSError as e:
                        return _failed(sock, err, shown, e)
                    if not data:
                        return EXIT_OK
                    try:
                        _write_all(stdout, data)
                    except BrokenPipeError:
                        return EXIT_OK
                else:
                    try:
                        data = os.read(stdin, 65536)
                    except OSError as e:
                        print(f"ssa: cannot read stdin: {_reason(e)}", file=err)
                        return EXIT_FAILURE
                    try:
                        if data:
                            _write_all(conn, data)
                        else:
                            selector.unregister(stdin)
                            sock.shutdown(client.SHUT_WR)
                    except OSError as e:
                        return _failed(sock, err, shown, e)


def _failed(sock: client.SSASocket, err: TextIO, shown: str, e: OSError) -> int:
    why = _reason(e)
    if e.errno == errno.ECONNRESET:
        why += " (the peer ended the connection without close_notify)"
    try:
        detail = sock.get_error()
    except OSError:
        detail = None
    if detail:
        why += f": {detail}"
    print(f"ssa: connection to {shown} failed: {why}", file=err)
    return EXIT_FAILURE


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ssa check-config


def _check_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", metavar="FILE", nargs="?",
        help="the policy file (default: /etc/ssa/config.yml; if that does not exist, "
        "the built-in defaults are shown)",
    )
    parser.add_argument(
        "--explain", metavar="PID|EXE",
        help="say which profile applies to a running process (PID: its executable and "
        "effective uid/gid from /proc) or to a program run by you (EXE: a path) "
        "and show the settings it gets",
    )


@command(
    "check-config",
    "validate the policy file and show the effective policy",
    "Check the administrator's policy file the way the daemon does at start-up "
    "and on SIGHUP, without starting anything. Prints the effective policy, one "
    "'key: value' per line with the file's key names (profiles follow as "
    "comments), or the error as FILE:LINE: KEY: reason. Exits 0 if the file is "
    "valid, 1 if not.",
    arguments=_check_config_arguments,
)
def run_check_config(args: argparse.Namespace) -> int:
    """
    C{ssa check-config [FILE] [--explain PID|EXE]}.
    """
    from ssa import policyfile, profiles
    from ssa.peer import PeerIdentity

    out = sys.stdout
    path = policyfile.DEFAULT_PATH if args.file is None else args.file
    try:
        if args.file is None and not os.path.lexists(path):
            policies = policyfile.PolicySet()
            print(f"# {path} does not exist: the daemon would use the built-in defaults", file=out)
        else:
            policies = policyfile.load_policy(path)
            print(f"# {path}: valid", file=out)
    except policyfile.PolicyError as e:
        print(str(e), file=sys.stderr)
        return EXIT_FAILURE
    if args.explain is None:
        lines = policyfile.describe(policies)
    else:
        if args.explain.isdigit():
            try:
                peer = profiles.read_proc_identity(int(args.explain))
            except (OSError, KeyError, IndexError, ValueError) as e:
                print(f"ssa: cannot read process {args.explain}: {getattr(e, 'strerror', None) or e}",
                      file=sys.stderr)
                return EXIT_FAILURE
        else:
            peer = PeerIdentity(os.getpid(), os.geteuid(), os.getegid(), os.path.abspath(args.explain))
        lines = policyfile.explain(policies, peer)
    for line in lines:
        print(line, file=out)
    return EXIT_OK


@command(
    "backends",
    "list the installed TLS backends",
    "List the TLS backends installed as plugins (built-in and third-party), "
    "marking the default; choose one with 'twistd ssa --backend NAME' or "
    "'backend:' in the policy file.",
)
def run_backends(args: argparse.Namespace) -> int:
    """
    C{ssa backends}.
    """
    from ssa.backend_choice import DEFAULT_BACKEND, available

    for name, choice in sorted(available().items()):
        mark = " (default)" if name == DEFAULT_BACKEND else ""
        print(f"{name}{mark}: {choice.description}")
    return EXIT_OK


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the daemon's reply as JSON")
    parser.add_argument(
        "--socket", metavar="PATH",
        help="the daemon's control socket (default: $SSA_SOCKET, your own daemon's, else the system one)",
    )


@command(
    "status",
    "show the daemon's live sockets and counters",
    "Ask the running daemon for its live sockets (id, pid, uid, executable, state, remote address, "
    "SNI, TLS version, cipher, resumed, bytes in and out, age) and its counters (connections by role "
    "and outcome, failures by reason, handshakes, resumptions, active connections), over every worker "
    "process. Root sees every socket; another user sees only its own. Exits 1 if the daemon cannot "
    "be reached.",
    arguments=_status_arguments,
)
def run_status(args: argparse.Namespace) -> int:
    """
    C{ssa status [--json] [--socket PATH]}.
    """
    import json

    from ssa import status, wire
    from ssa._control import ControlChannel
    from ssa.paths import client_socket_path

    path = args.socket or client_socket_path()
    try:
        channel = ControlChannel(path)
        try:
            code, payload, _ = channel.request(wire.Op.STATUS, 0, b"", timeout=30)
        finally:
            channel.close()
    except (OSError, TimeoutError) as e:
        print(f"ssa: {e.strerror if isinstance(e, OSError) and e.strerror else e}", file=sys.stderr)
        return EXIT_FAILURE
    if code:
        print(f"ssa: the daemon refused: {errno.errorcode.get(code, code)} {payload.decode(errors='replace')}",
              file=sys.stderr)
        return EXIT_FAILURE
    report = json.loads(payload)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        sys.stdout.write(status.format_text(report))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())


# ssa run


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--print-path", action="store_true",
        help="print the preload library's path (for setting LD_PRELOAD yourself) and exit",
    )
    parser.add_argument("--socket", help="the daemon's control socket (sets SSA_SOCKET)")
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")


@command(
    "run",
    "run a program with the SSA preload library (its IPPROTO_TLS sockets use the daemon)",
    "Run COMMAND with libssa-preload.so in LD_PRELOAD, like torsocks: every "
    "socket(..., IPPROTO_TLS) of a dynamically linked program, and every later call "
    "on it, goes through the SSA daemon. SSA_SOCKET is kept (or set by --socket).",
    _run_arguments,
)
def run_program(args: argparse.Namespace) -> int:
    """
    Exec the command with the preload library, or print its path.
    """
    from ssa import preload

    try:
        library = preload.library_path()
    except FileNotFoundError as e:
        print(f"ssa run: {e}", file=sys.stderr)
        return EXIT_FAILURE
    if args.print_path:
        print(library)
        return EXIT_OK
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        print("ssa run: no command given (ssa run -- COMMAND [ARGS...])", file=sys.stderr)
        return EXIT_USAGE
    env = preload.preload_environment(os.environ, library, args.socket)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        print(f"ssa run: cannot run {argv[0]}: {e.strerror}", file=sys.stderr)
        return 127 if e.errno == errno.ENOENT else 126
    return EXIT_FAILURE  # not reached
