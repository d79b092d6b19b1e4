"""
The C{twistd ssa} plugin: the SSA daemon as a twistd application.
"""

from twisted.application.service import ServiceMaker

ssa_daemon = ServiceMaker(
    "SSA daemon",
    "ssa.tap.daemon",
    "The Secure Socket API daemon: TLS as an operating-system service.",
    "ssa",
)
