"""
The TLS backends that ship with C{ssa}: cheap descriptors, imported when
backends are listed; each backend's library is imported only when chosen.
"""

from ssa.backend_choice import BackendChoice

openssl = BackendChoice(
    "openssl", "ssa.backends.openssl.OpenSSLBackend", "OpenSSL through pyOpenSSL (the default)"
)
stdlib = BackendChoice(
    "stdlib", "ssa.backends.stdlib.StdlibBackend", "OpenSSL through Python's ssl module"
)
