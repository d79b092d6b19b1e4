"""
Test support for code that uses or tests L{ssa}.

Like C{treq.testing}, this package ships with the library so that other
projects can use it in their own tests:

  - L{ssa.testing.certs} makes certificate authorities, chains and (possibly
    deliberately broken) leaf certificates at run time with C{cryptography};
  - L{ssa.testing.peers} runs real TLS peers on 127.0.0.1: an
    C{openssl s_server} subprocess and a threaded server built on the
    standard library's C{ssl} module that controls exactly how each
    connection is closed (the latter lives in L{ssa.testing.tls_server}
    and L{ssa.testing.tls_connection}, re-exported by C{peers}).

Nothing here is imported by the daemon itself.
"""
