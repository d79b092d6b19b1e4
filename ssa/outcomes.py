"""
The log events that say how each connection came out: one line for people
and, for JSON logs (C{--log-format json}), the same fields by name
(L{outcome_fields}), so that an operator can count and filter them.
"""

from __future__ import annotations

import errno

from twisted.logger import Logger

from .constants import version_name
from .peer import PeerIdentity
from .sockets import TLSSocket
from .tlsconfig import TLSSessionInfo

log = Logger(namespace="ssa.service")


def connect_ok(sock: TLSSocket, info: TLSSessionInfo) -> None:
    """
    C{sock}'s connect succeeded with the handshake C{info}.
    """
    assert sock.remote_address is not None
    log.info(
        "connect ok: {owner} to {host}:{port} sni={sni} {version} {cipher} resumed={resumed} "
        "policy={generation}/{profile}",
        owner=sock.owner.describe(), host=sock.remote_address[0], port=sock.remote_address[1],
        sni=sock.hostname, version=version_name(info.version), cipher=info.cipher,
        resumed=info.resumed, generation=sock.policy.generation, profile=sock.policy.profile or "default",
        **outcome_fields("client", sock.owner, sock.remote_address, sock.hostname, info, "ok", "sni", "cipher",
                         "resumed"), reason=None,
    )


def connect_failed(sock: TLSSocket, err: int, reason: str) -> None:
    """
    C{sock}'s connect failed with C{err} because of C{reason}.
    """
    log.info(
        "connect failed: {owner} to {address} sni={sni}: {errname} {reason}",
        owner=sock.owner.describe(), address=sock.remote_address, sni=sock.hostname,
        errname=errno.errorcode.get(err, str(err)), reason=reason,
        **outcome_fields("client", sock.owner, sock.remote_address, sock.hostname, None, "failed", "sni"),
    )


def accept_ok(sock: TLSSocket, owner: PeerIdentity, peer: tuple[str, int], info: TLSSessionInfo) -> None:
    """
    C{owner} accepted C{sock}, a connection from C{peer}.
    """
    log.info(
        "accept ok: {owner} from {host}:{port} sni={sni} {version} {cipher} client={client}",
        owner=owner.describe(), host=peer[0], port=peer[1], sni=info.server_name,
        version=version_name(info.version), cipher=info.cipher,
        client=sock.session and sock.session.peer_chain and "certificate" or "none",
        **outcome_fields("server", owner, peer, info.server_name, info, "ok", "sni", "cipher"),
        reason=None,
    )


def outcome_fields(
    role: str, owner: PeerIdentity, remote: tuple | None, sni: str | None, info: TLSSessionInfo | None,
    outcome: str, *present: str,
) -> dict[str, object]:
    """
    The fields of a connection-outcome log event, for JSON logs
    (C{--log-format json}), but for those C{present} in the event already
    (with the same values); the event adds its C{reason} (L{None} on
    success).
    """
    fields = {
        "role": role, "outcome": outcome, "pid": owner.pid, "uid": owner.uid, "executable": owner.executable,
        "remote": None if not remote else f"{remote[0]}:{remote[1]}", "sni": sni,
        "tls_version": None if info is None else version_name(info.version),
        "cipher": None if info is None else info.cipher, "resumed": None if info is None else info.resumed,
        "group": None if info is None else info.group,
    }
    for name in present:
        del fields[name]
    return fields
