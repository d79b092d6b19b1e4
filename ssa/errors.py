"""
The failures the daemon reports to applications.

Every failure carries an errno (SPEC section 3) and a reason a person can act
on; the reason becomes the socket's C{TLS_ERROR}.
"""

import errno as _errno


class SSAError(Exception):
    """
    A failed socket operation: what the application sees as C{OSError}.

    @ivar errno: the errno the call fails with.
    @ivar reason: the human-readable cause, naming the subject.
    """

    def __init__(self, errno: int, reason: str) -> None:
        super().__init__(errno, reason)
        self.errno = errno
        self.reason = reason

    def __str__(self) -> str:
        return f"[{_errno.errorcode.get(self.errno, self.errno)}] {self.reason}"


#: What an application reads when the daemon failed where it should not.
INTERNAL_ERROR = "internal error in the SSA daemon (details are in its log)"


class TLSFailure(Exception):
    """
    A TLS handshake, certificate or identity failure (connect fails EPROTO).

    @ivar reason: the cause in words, e.g. which check failed at which depth.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TLSTruncated(Exception):
    """
    The peer closed the TCP connection without sending close_notify.
    """
