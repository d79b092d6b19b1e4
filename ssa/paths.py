"""
Where the Unix frontend's control socket lives (SPEC section 6).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

SYSTEM_SOCKET = "/run/ssa/ssa.sock"
ENVIRONMENT_VARIABLE = "SSA_SOCKET"


def user_socket_path(env: Mapping[str, str], uid: int) -> str:
    """
    The control socket of a daemon run by an ordinary user.
    """
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "ssa", "ssa.sock")
    return f"/tmp/ssa-{uid}/ssa.sock"


def daemon_socket_path(
    env: Mapping[str, str] | None = None, uid: int | None = None
) -> str:
    """
    The path the daemon listens on when C{--socket} is not given:
    C{$SSA_SOCKET}, else L{SYSTEM_SOCKET} as root, else the user's own.
    """
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    if env.get(ENVIRONMENT_VARIABLE):
        return env[ENVIRONMENT_VARIABLE]
    if uid == 0:
        return SYSTEM_SOCKET
    return user_socket_path(env, uid)


def client_socket_path(
    env: Mapping[str, str] | None = None, uid: int | None = None
) -> str:
    """
    The path an application connects to: C{$SSA_SOCKET}; else a daemon of
    the user's own if its socket exists; else the system daemon's.
    """
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    if env.get(ENVIRONMENT_VARIABLE):
        return env[ENVIRONMENT_VARIABLE]
    if uid != 0:
        own = user_socket_path(env, uid)
        if os.path.exists(own):
            return own
    return SYSTEM_SOCKET
