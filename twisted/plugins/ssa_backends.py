"""
The TLS backends that ship with C{ssa}: cheap descriptors, imported when
backends are listed; each backend's library is imported only when chosen.
"""

from ssa.backend_choice import BUILT_IN

openssl, stdlib = BUILT_IN
