"""
C{requests} through the daemon: mount L{SSAAdapter} for C{https://} and
every request's TLS is the daemon's (C{pip install 'ssa[requests]'}).

    session = requests.Session()
    session.mount("https://", SSAAdapter(cafile="/etc/my-ca.pem"))
    session.get("https://example.org/")

Connections are pooled as with C{requests}' own adapter (kept alive,
reused). Verification is the daemon's, under the administrator's policy:
C{requests}' C{verify=} and C{cert=} do not reach it; the adapter's
C{cafile} sets the trust anchors. Failures come as C{requests}' own
exceptions: a failed handshake or verification as
C{requests.exceptions.SSLError}, an unreachable host or daemon as
C{requests.exceptions.ConnectionError}, whose message names the daemon's
control socket. Proxies are refused (C{ProxyError}): their TLS would not be
the daemon's.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
from typing import Any, ClassVar

from requests.adapters import HTTPAdapter
from requests.exceptions import ProxyError
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, SSLError
from urllib3.poolmanager import PoolManager

from ssa import client

__all__ = ["SSAAdapter", "SSAConnection", "SSAConnectionPool"]

# What urllib3 gives an HTTPS connection for its own TLS: not used here.
_TLS_KEYWORDS = (
    "cert_file", "key_file", "key_password", "cert_reqs", "ca_certs", "ca_cert_dir", "ca_cert_data",
    "assert_hostname", "assert_fingerprint", "ssl_version", "ssl_minimum_version",
    "ssl_maximum_version", "ssl_context", "server_hostname",
)


class SSAConnection(HTTPConnection):
    """
    An HTTP connection whose socket is an SSA socket: HTTP here, TLS in
    the daemon.
    """

    default_port = 443  # type: ignore[assignment]

    def __init__(self, *args: Any, ssa_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for name in _TLS_KEYWORDS:
            kwargs.pop(name, None)
        super().__init__(*args, **kwargs)
        self._ssa_options = ssa_options or {}

    def _new_conn(self) -> socket.socket:
        """
        Connect through the daemon (L{client.create_connection}).
        """
        try:
            sock = client.create_connection(
                (self._dns_host, self.port), self.timeout, self.source_address,  # type: ignore[arg-type]
                **self._ssa_options,
            )
        except TimeoutError as e:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out: {e}") from e
        except OSError as e:
            if e.errno == errno.EPROTO:
                raise SSLError(f"TLS with {self.host}:{self.port} failed in the SSA daemon: {e}") from e
            raise NewConnectionError(self, f"Failed to establish a new connection through SSA: {e}") from e
        self.is_verified = True
        return sock  # type: ignore[return-value]


class SSAConnectionPool(HTTPSConnectionPool):
    """
    A pool of L{SSAConnection}s to one host.
    """

    ConnectionCls = SSAConnection  # type: ignore[assignment]


class _PoolManager(PoolManager):
    def __init__(self, ssa_options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool_classes_by_scheme = {
            "https": functools.partial(SSAConnectionPool, ssa_options=ssa_options),
        }


class SSAAdapter(HTTPAdapter):
    """
    A C{requests} transport adapter sending C{https://} requests through
    the SSA daemon.
    """

    __attrs__: ClassVar[list[str]] = [*HTTPAdapter.__attrs__, "_ssa_options"]

    def __init__(
        self,
        *,
        cafile: str | bytes | os.PathLike[str] | None = None,
        alpn: str | None = None,
        path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        @param cafile: the trust anchors (PEM file, directory or inline PEM);
            by default the daemon's policy's.
        @param alpn: protocols to offer, a comma list (HTTP/1.1 is spoken).
        @param path: the daemon's control socket; by default
            L{ssa.paths.client_socket_path}.
        @param kwargs: C{HTTPAdapter}'s (C{pool_connections},
            C{pool_maxsize}, C{max_retries}, C{pool_block}).
        """
        self._ssa_options = {"cafile": cafile, "alpn": alpn, "path": path}
        super().__init__(**kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """
        Refuse: a proxy's TLS would be C{requests}' own, not the daemon's.

        @raise requests.exceptions.ProxyError: always, naming the proxy.
        """
        raise ProxyError(
            f"SSAAdapter does not go through proxies ({proxy}): the TLS would not be the SSA daemon's; "
            "remove the proxy (HTTPS_PROXY, or session.trust_env = False)"
        )

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        """
        The pool manager, making L{SSAConnectionPool}s for C{https}.
        """
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = _PoolManager(
            self._ssa_options, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )
