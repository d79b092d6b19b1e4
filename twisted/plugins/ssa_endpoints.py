"""
The C{ssa:} endpoint strings: C{clientFromString(reactor, "ssa:host=H:port=P")}
and C{serverFromString(reactor, "ssa:8443:certKey=chain.pem:privateKey=key.pem")}
(L{ssa.endpoints}).
"""

from ssa.endpoints import ClientParser, ServerParser

ssa_client = ClientParser()
ssa_server = ServerParser()
