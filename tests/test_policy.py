"""
The administrator's policy file (SPEC section 5): schema, errors with their
line, the trust store, profiles, and C{ssa check-config}.
"""

from __future__ import annotations

import dataclasses
import datetime
import grp
import io
import os
import pwd
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ssa import cli, policyfile
from ssa.constants import TLS_1_2, TLS_1_3
from ssa.crls import crl_set
from ssa.peer import PeerIdentity
from ssa.policy import DEFAULT_POLICY, KEYS, Policy, PolicyError
from ssa.policyfile import load_default, load_policy
from ssa.profiles import PolicySet, read_proc_groups, read_proc_identity
from ssa.tlsconfig import DEFAULT_TLS12_CIPHERS, DEFAULT_TLS13_CIPHERS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(os.path.dirname(REPO), "shared", "fixtures", "ssa-config.yml")


def certificate(name: str) -> bytes:
    """
    A fresh self-signed certificate, PEM.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM)


class PolicyFileCase(SynchronousTestCase):
    """
    Helpers: policy files in a fresh temporary directory.
    """

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def write(self, text: str | bytes, name: str = "config.yml") -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        return path

    def load(self, text: str, **kwargs) -> PolicySet:
        return load_policy(self.write(text), **kwargs)

    def refused(self, text: str, line: int, key: str | None, *words: str) -> PolicyError:
        """
        Assert that C{text} fails as C{FILE:LINE: KEY: ...} with C{words}
        in the reason.
        """
        path = self.write(text)
        e = self.assertRaises(PolicyError, load_policy, path)
        prefix = f"{path}:{line}: {key}: " if key else f"{path}:{line}: "
        self.assertTrue(str(e).startswith(prefix), f"{str(e)!r} does not start with {prefix!r}")
        for word in words:
            self.assertIn(word, e.reason)
        self.assertEqual((e.path, e.line, e.key), (path, line, key))
        return e


class DefaultsTests(PolicyFileCase):
    """
    The built-in defaults are SPEC section 5's.
    """

    def test_defaults(self) -> None:
        p = DEFAULT_POLICY
        self.assertEqual((p.min_version, p.max_version), (TLS_1_2, TLS_1_3))
        self.assertEqual((p.tls12_ciphers, p.tls13_ciphers), (DEFAULT_TLS12_CIPHERS, DEFAULT_TLS13_CIPHERS))
        self.assertTrue(all(c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c) for c in p.tls12_ciphers))
        self.assertEqual(len(p.tls13_ciphers), 3)
        self.assertIsNone(p.trust_anchors)
        self.assertEqual(p.verify_depth, 10)
        self.assertEqual((p.session_resumption, p.session_tickets, p.session_timeout), (True, False, 300))
        self.assertEqual(p.cert_transparency, False)
        self.assertTrue(p.revocation_checks and p.revocation_stapled and p.revocation_ocsp
                        and p.revocation_crl and p.revocation_cached)
        self.assertEqual(p.revocation_mode, "soft-fail")
        self.assertEqual((p.backend, p.log_format, p.source, p.generation, p.profile),
                         ("openssl", "text", "built-in defaults", 0, None))

    def test_frozen_and_hashable(self) -> None:
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, DEFAULT_POLICY, "min_version", 0)
        self.assertEqual(hash(Policy()), hash(DEFAULT_POLICY))
        hash(self.load("tlsv1.2-ciphers: [ECDHE-RSA-AES128-GCM-SHA256]\n").default)

    def test_no_default_file(self) -> None:
        """
        C{load_default} of a missing file is the built-in defaults; an
        explicit missing file is an error.
        """
        missing = os.path.join(self.dir, "absent.yml")
        self.assertEqual(load_default(missing).default, DEFAULT_POLICY)
        e = self.assertRaises(PolicyError, load_policy, missing)
        self.assertEqual(str(e), f"{missing}: cannot read the policy file: No such file or directory")

    def test_load_default_existing(self) -> None:
        path = self.write("session-timeout: 5\n")
        self.assertEqual(load_default(path).default.session_timeout, 5)
        self.assertRaises(PolicyError, load_default, self.write("session-timeout: x\n"))

    def test_empty_file(self) -> None:
        """
        An empty (or comment-only) file is the defaults, from that file.
        """
        path = self.write("# nothing\n")
        self.assertEqual(load_policy(path).default, dataclasses.replace(DEFAULT_POLICY, source=path))

    def test_generation(self) -> None:
        policies = self.load("profiles:\n  - name: a\n    match: {uid: 1}\n").with_generation(7)
        self.assertEqual(policies.default.generation, 7)
        self.assertEqual(policies.profiles[0].policy.generation, 7)


EVERY_KEY = """\
min-tls-version: 3
max-tls-version: 3
tlsv1.2-ciphers: [ECDHE-RSA-AES128-GCM-SHA256]
tlsv1.3-ciphers:
  - TLS_CHACHA20_POLY1305_SHA256
  - TLS_AES_128_CCM_SHA256
trust-store-path: anchors.pem
cert-chain-depth: 4
path-validation: rfc5280
app-trust-anchors: deny
verify-ip-addresses: disabled
session-resumption: disabled
session-tickets: enabled
session-timeout: 0
cert-transparency: enabled
revocation-checks: enabled
revocation-stapled: disabled
revocation-ocsp: disabled
revocation-crl: true
revocation-cached: no
revocation-mode: hard-fail
crl-path: crls
revocation-timeout: 1.5
connect-timeout: 2.5
handshake-timeout: 7
max-sockets-per-client: 3
max-sockets-per-user: 40
max-request-bytes-per-user: 2097152
backend: stdlib
log-format: json
"""


class KeyTests(PolicyFileCase):
    """
    Every key loads to its field; aliases and older spellings too.
    """

    def test_every_key(self) -> None:
        pem = certificate("anchor")
        self.write(pem, "anchors.pem")
        crls = os.path.join(os.path.abspath(self.dir), "crls")
        os.mkdir(crls)
        p = self.load(EVERY_KEY).default
        self.assertEqual(p, Policy(
            min_version=3, max_version=3, tls12_ciphers=("ECDHE-RSA-AES128-GCM-SHA256",),
            tls13_ciphers=("TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_CCM_SHA256"),
            trust_anchors=pem, trust_store_path=os.path.join(os.path.abspath(self.dir), "anchors.pem"),
            verify_depth=4, path_validation="rfc5280", app_trust_anchors="deny", verify_ip_addresses=False,
            session_resumption=False, session_tickets=True, session_timeout=0, cert_transparency=True,
            revocation_checks=True, revocation_stapled=False, revocation_ocsp=False, revocation_crl=True,
            revocation_cached=False, revocation_mode="hard-fail", crl_path=crls, crls=crl_set(crls, []), revocation_timeout=1.5,
            connect_timeout=2.5, handshake_timeout=7.0,
            max_sockets_per_client=3, max_sockets_per_user=40, max_request_bytes_per_user=2 << 20,
            backend="stdlib", log_format="json",
            source=os.path.join(self.dir, "config.yml"),
        ))

    def test_every_key_documented(self) -> None:
        """
        The test above and C{docs/policy.md} cover every key.
        """
        with open(os.path.join(REPO, "docs", "policy.md")) as f:
            doc = f.read()
        for key in KEYS:
            self.assertIn(f"{key.name}:", EVERY_KEY)
            self.assertIn(f"`{key.name}`", doc)
            for alias in key.aliases:
                self.assertIn(f"`{alias}`", doc)

    def test_aliases(self) -> None:
        self.write(certificate("a"), "a.pem")
        p = self.load("cert-verification-depth: 3\ntrust-store-location: a.pem\n"
                      "cert-transparency-checks: enabled\n").default
        self.assertEqual((p.verify_depth, p.cert_transparency), (3, True))
        self.assertTrue(p.trust_store_path.endswith("a.pem"))
        self.assertEqual(self.load("ca-path: a.pem\nverify-cert-transparency: true\n").default.cert_transparency, True)

    def test_version_spellings(self) -> None:
        for text, version in [("0", 0), ("1.1", 1), ("'1.2'", 2), ("tls-1.3", 3), ("TLSv1.2", 2)]:
            self.assertEqual(self.load(f"min-tls-version: {text}\nmax-tls-version: 3\n").default.min_version,
                             version, text)

    def test_booleans(self) -> None:
        for text, value in [("enabled", True), ("disabled", False), ("true", True), ("off", False), ("Enabled", True)]:
            self.assertEqual(self.load(f"session-tickets: {text}\n").default.session_tickets, value, text)

    def test_cipher_string(self) -> None:
        """
        One C{:}-separated string is a list too.
        """
        p = self.load("tlsv1.2-ciphers: ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256\n").default
        self.assertEqual(p.tls12_ciphers, ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"))

    def test_empty_list_outside_range(self) -> None:
        """
        No TLS 1.3 suites is fine when TLS 1.3 is not allowed.
        """
        self.assertEqual(self.load("max-tls-version: 2\ntlsv1.3-ciphers: []\n").default.tls13_ciphers, ())

    def test_system_store(self) -> None:
        """
        C{trust-store-path: ~} is the system store.
        """
        self.assertIsNone(self.load("trust-store-path: ~\n").default.trust_anchors)


class FixtureTests(PolicyFileCase):
    """
    The SSA's own C{config.yml} loads unchanged and means what it says.
    """

    def test_fixture(self) -> None:
        if not os.path.exists(FIXTURE):
            raise SkipTest(f"the SSA config fixture is not at {FIXTURE} (../shared/fixtures next to the repo)")
        p = load_policy(FIXTURE).default
        self.assertEqual((p.min_version, p.max_version), (TLS_1_2, TLS_1_3))
        self.assertEqual(p.session_tickets, False)
        self.assertEqual(p.tls12_ciphers, DEFAULT_TLS12_CIPHERS)
        self.assertEqual(p.tls13_ciphers, DEFAULT_TLS13_CIPHERS)
        self.assertEqual(p.session_timeout, 86400)
        self.assertEqual(p.verify_depth, 10)
        self.assertEqual(p.cert_transparency, False)
        self.assertEqual(p.revocation_checks, False)
        self.assertEqual(p.session_resumption, True)
        self.assertIsNone(p.trust_anchors)
        self.assertEqual(p.source, FIXTURE)

    def test_example(self) -> None:
        """
        C{docs/example-config.yml} loads.
        """
        policies = load_policy(os.path.join(REPO, "docs", "example-config.yml"))
        self.assertTrue(policies.profiles)


class ErrorTests(PolicyFileCase):
    """
    Each kind of mistake: C{FILE:LINE: KEY: what is wrong}.
    """

    def test_unknown_key(self) -> None:
        self.refused("session-timeout: 1\nmin-tls-verison: 2\n", 2, "min-tls-verison",
                     "unknown key", "did you mean min-tls-version?")
        self.refused("Session-Tickets: enabled\n", 1, "Session-Tickets", "did you mean session-tickets?")
        e = self.refused("frobnicate: 1\n", 1, "frobnicate", "unknown key")
        self.assertNotIn("did you mean", e.reason)

    def test_wrong_type(self) -> None:
        self.refused("cert-chain-depth: ten\n", 1, "cert-chain-depth", "expected a whole number", "'ten'")
        self.refused("min-tls-version: true\n", 1, "min-tls-version", "expected a whole number")
        self.refused("session-tickets: maybe\n", 1, "session-tickets", "expected enabled or disabled")
        self.refused("tlsv1.2-ciphers:\n", 1, "tlsv1.2-ciphers", "expected a list of cipher names")
        self.refused("connect-timeout: soon\n", 1, "connect-timeout", "expected a number of seconds")
        self.refused("revocation-mode: strict\n", 1, "revocation-mode", "soft-fail or hard-fail")
        self.refused("app-trust-anchors: [add]\n", 1, "app-trust-anchors", "not a list")
        self.refused("log-format: xml\n", 1, "log-format", "text or json")
        self.refused("backend: {a: 1}\n", 1, "backend", "not a mapping")
        self.refused("max-sockets-per-client: 1.5\n", 1, "max-sockets-per-client", "whole number")

    def test_out_of_range(self) -> None:
        self.refused("min-tls-version: 4\n", 1, "min-tls-version", "4 is out of range (0..3)")
        self.refused("max-tls-version: -1\n", 1, "max-tls-version", "out of range")
        self.refused("cert-chain-depth: 101\n", 1, "cert-chain-depth", "out of range (0..100)")
        self.refused("session-timeout: -1\n", 1, "session-timeout", "out of range")
        self.refused("handshake-timeout: 0\n", 1, "handshake-timeout", "out of range")
        self.refused("max-sockets-per-client: 0\n", 1, "max-sockets-per-client", "out of range (1..")

    def test_min_above_max(self) -> None:
        self.refused("min-tls-version: 3\nmax-tls-version: 2\n", 2, "max-tls-version",
                     "minimum TLS 1.3 is above the maximum TLS 1.2")
        self.refused("max-tls-version: 2\nmin-tls-version: 3\n", 2, "min-tls-version", "above the maximum")
        self.refused("max-tls-version: 1\n", 1, "max-tls-version", "above the maximum TLS 1.1")

    def test_unknown_cipher(self) -> None:
        """
        The line is the item's own.
        """
        self.refused("tlsv1.2-ciphers:\n  - ECDHE-RSA-AES128-GCM-SHA256\n  - FOO-BAR\n", 3, "tlsv1.2-ciphers",
                     "unknown TLS 1.2 cipher FOO-BAR")
        self.refused("tlsv1.3-ciphers:\n  - TLS_FOO\n", 2, "tlsv1.3-ciphers", "unknown TLS 1.3 cipher suite TLS_FOO")
        self.refused("tlsv1.2-ciphers: [TLS_AES_128_GCM_SHA256]\n", 1, "tlsv1.2-ciphers", "under tlsv1.3-ciphers")
        self.refused("tlsv1.3-ciphers: [ECDHE-RSA-AES128-GCM-SHA256]\n", 1, "tlsv1.3-ciphers",
                     "under tlsv1.2-ciphers")
        self.refused("tlsv1.2-ciphers: [ECDHE-RSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256]\n", 1,
                     "tlsv1.2-ciphers", "listed twice")
        self.refused("tlsv1.3-ciphers: []\n", 1, "tlsv1.3-ciphers", "no ciphers left for TLS 1.3")

    def test_insecure_cipher(self) -> None:
        for name, why in [("NULL-SHA", "NULL"), ("NULL-MD5", "NULL"), ("RC4-SHA", "RC4"), ("RC4-MD5", "RC4"),
                          ("DES-CBC3-SHA", "3DES"), ("ECDHE-RSA-DES-CBC3-SHA", "3DES"),
                          ("EXP-DES-CBC-SHA", "3DES/DES"), ("EXP1024-DES-CBC-SHA", "DES"),
                          ("ADH-AES128-GCM-SHA256", "anonymous"), ("AECDH-AES128-SHA", "anonymous"),
                          ("PSK-AES128-GCM-SHA256", "pre-shared key")]:
            self.refused(f"tlsv1.2-ciphers:\n  - ECDHE-RSA-AES128-GCM-SHA256\n  - {name}\n", 3, "tlsv1.2-ciphers",
                         f"{name} is refused", why)

    def test_repeated_key(self) -> None:
        self.refused("session-timeout: 1\nsession-timeout: 2\n", 2, "session-timeout", "already given on line 1")
        self.refused("cert-chain-depth: 1\ncert-verification-depth: 2\n", 2, "cert-verification-depth",
                     "already given as cert-chain-depth on line 1")

    def test_not_yaml(self) -> None:
        self.refused("session-timeout: 1\ntlsv1.2-ciphers: [a\n", 3, None, "not valid YAML")
        self.refused("a: b\n  c: d\n", 2, None, "not valid YAML")
        self.refused("- 1\n", 1, None, "must be a mapping")
        self.refused("2: x\n", 1, "2", "expected a key name")
        self.refused("min-tls-version: !foo 2\n", 1, "min-tls-version", "could not determine a constructor")
        self.refused("tlsv1.2-ciphers: &a [*a]\n", 1, "tlsv1.2-ciphers", "nested too deeply")

    def test_trust_store_errors(self) -> None:
        self.refused("trust-store-path: absent.pem\n", 1, "trust-store-path",
                     f"cannot read {os.path.abspath(self.dir)}/absent.pem")
        self.write("not a certificate\n", "junk.pem")
        self.refused("trust-store-path: junk.pem\n", 1, "trust-store-path", "junk.pem holds no PEM certificates")
        self.write("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "bad.pem")
        self.refused("trust-store-path: bad.pem\n", 1, "trust-store-path", "cannot be parsed")
        os.makedirs(os.path.join(self.dir, "empty"))
        self.refused("trust-store-path: empty\n", 1, "trust-store-path", "holds no PEM certificates")
        self.refused("trust-store-path: 3\n", 1, "trust-store-path", "expected the path")
        self.refused("trust-store-path: junk.pem/x\n", 1, "trust-store-path", "Not a directory")

    def test_unreadable_trust_store(self) -> None:
        if os.geteuid() == 0:
            raise SkipTest("root reads any file")
        path = self.write(certificate("a"), "locked.pem")
        os.chmod(path, 0)
        self.refused("trust-store-path: locked.pem\n", 1, "trust-store-path", "Permission denied")


class TrustStoreTests(PolicyFileCase):
    """
    C{trust-store-path} is read into PEM here: a file, or a directory's
    files that hold certificates, each certificate once.
    """

    def test_file(self) -> None:
        pems = certificate("a") + certificate("b")
        self.write(pems, "bundle.pem")
        self.assertEqual(self.load("trust-store-path: bundle.pem\n").default.trust_anchors, pems)

    def test_directory(self) -> None:
        store = os.path.join(self.dir, "certs")
        os.makedirs(store)
        a, b = certificate("a"), certificate("b")
        for name, data in [("a.pem", a), ("b.crt", b), ("README", b"not a cert\n")]:
            with open(os.path.join(store, name), "wb") as f:
                f.write(data)
        os.symlink("a.pem", os.path.join(store, "1234abcd.0"))
        os.symlink("gone.pem", os.path.join(store, "dangling.0"))
        path = self.write(f"trust-store-path: {store}\n")
        self.assertEqual(load_policy(path).default.trust_anchors, a + b)


class ProfileTests(PolicyFileCase):
    """
    Profiles: the first whose match fits the peer wins; overrides apply
    over the file's defaults.
    """

    def policies(self, groups: dict[int, frozenset[int]] | None = None) -> PolicySet:
        me = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(0).gr_name
        self.reads: list[int] = []

        def read_groups(pid: int) -> frozenset[int]:
            self.reads.append(pid)
            if groups is None or pid not in groups:
                raise OSError("no such process")
            return groups[pid]

        return self.load(f"""\
session-timeout: 60
profiles:
  - name: curl
    match:
      executable: /usr/bin/curl
    min-tls-version: 3
  - name: tools
    match:
      executable: ["/opt/tools/*", "/usr/local/bin/tool?"]
      uid: [1000, 1001]
    cert-chain-depth: 3
  - name: me
    match:
      user: {me}
      executable: /usr/bin/me
    session-tickets: enabled
  - name: wheel
    match:
      group: {group}
    revocation-mode: hard-fail
  - name: everyone-else-uid-5
    match: {{uid: 5}}
    session-timeout: 5
""", read_groups=read_groups)

    def test_executable(self) -> None:
        policies = self.policies()
        p = policies.for_peer(PeerIdentity(1, 5, 5, "/usr/bin/curl"))
        self.assertEqual((p.profile, p.min_version, p.session_timeout), ("curl", 3, 60))
        self.assertEqual(policies.for_peer(PeerIdentity(1, 5, 5, "/usr/bin/curl2")).profile, "everyone-else-uid-5")
        self.assertEqual(policies.for_peer(PeerIdentity(1, 7, 7, None)).profile, None)

    def test_glob_and_uid(self) -> None:
        """
        Every criterion must hold; any value of one will do.
        """
        policies = self.policies()
        self.assertEqual(policies.for_peer(PeerIdentity(1, 1001, 7, "/opt/tools/bin/x")).verify_depth, 3)
        self.assertEqual(policies.for_peer(PeerIdentity(1, 1000, 7, "/usr/local/bin/tool1")).profile, "tools")
        self.assertEqual(policies.for_peer(PeerIdentity(1, 1002, 7, "/opt/tools/x")).profile, None)
        self.assertEqual(policies.for_peer(PeerIdentity(1, 1000, 7, "/usr/local/bin/tool12")).profile, None)

    def test_user(self) -> None:
        policies = self.policies()
        p = policies.for_peer(PeerIdentity(1, os.getuid(), 7, "/usr/bin/me"))
        self.assertEqual((p.profile, p.session_tickets), ("me", True))
        self.assertEqual(policies.for_peer(PeerIdentity(1, os.getuid() + 1, 7, "/usr/bin/me")).profile, None)

    def test_group(self) -> None:
        """
        A group matches the peer's gid, or one of its supplementary groups
        (read, through the injected reader, only when needed).
        """
        policies = self.policies({42: frozenset({10, 0}), 43: frozenset({10})})
        self.assertEqual(policies.for_peer(PeerIdentity(41, 7, 0, "/x")).revocation_mode, "hard-fail")
        self.assertEqual(self.reads, [])
        self.assertEqual(policies.for_peer(PeerIdentity(42, 7, 7, "/x")).profile, "wheel")
        self.assertEqual(policies.for_peer(PeerIdentity(43, 7, 7, "/x")).profile, None)
        self.assertEqual(policies.for_peer(PeerIdentity(44, 7, 7, "/x")).profile, None)
        self.assertEqual(self.reads, [42, 43, 44])

    def test_nothing_cached(self) -> None:
        policies = self.policies({42: frozenset({0})})
        policies.for_peer(PeerIdentity(42, 7, 7, "/x"))
        policies.for_peer(PeerIdentity(42, 7, 7, "/x"))
        self.assertEqual(self.reads, [42, 42])

    def test_first_match_wins(self) -> None:
        """
        curl run by uid 5 as gid 0 fits three profiles; the first is used.
        """
        p = self.policies().for_peer(PeerIdentity(1, 5, 0, "/usr/bin/curl"))
        self.assertEqual((p.profile, p.revocation_mode, p.session_timeout), ("curl", "soft-fail", 60))

    def test_profile_overrides_validated(self) -> None:
        base = "profiles:\n  - name: p\n    match: {uid: 1}\n"
        self.refused(base + "    cert-chain-depth: 1000\n", 4, "cert-chain-depth", "out of range", "in profile 'p'")
        self.refused(base + "    sesion-timeout: 1\n", 4, "sesion-timeout", "did you mean session-timeout?")
        self.refused(base + "    backend: stdlib\n", 4, "backend", "only be set at the top level")
        self.refused("max-tls-version: 2\n" + base + "    min-tls-version: 3\n", 5, "min-tls-version",
                     "above the maximum", "in profile 'p'")
        self.refused(base + "    tlsv1.2-ciphers:\n      - RC4-SHA\n", 5, "tlsv1.2-ciphers", "RC4")

    def test_profile_errors(self) -> None:
        self.refused("profiles: 3\n", 1, "profiles", "expected a list of profiles")
        self.refused("profiles:\n  - 3\n", 2, "profiles", "entry 1 is not a mapping")
        self.refused("profiles:\n  - match: {uid: 1}\n", 2, "profiles", "entry 1 has no name")
        self.refused("profiles:\n  - name: p\n", 2, "match", "missing")
        self.refused("profiles:\n  - name: p\n    match: {}\n", 3, "match", "needs at least one of")
        self.refused("profiles:\n  - name: p\n    match: /bin/x\n", 3, "match", "expected a mapping")
        self.refused("profiles:\n  - name: p\n    match: {exe: /bin/x}\n", 3, "exe", "did you mean executable?")
        self.refused("profiles:\n  - name: p\n    match: {executable: bin/x}\n", 3, "executable",
                     "not an absolute path")
        self.refused("profiles:\n  - name: p\n    match:\n      uid: [1, x]\n", 4, "uid", "expected a user id")
        self.refused("profiles:\n  - name: p\n    match: {user: no-such-user-xyz}\n", 3, "user",
                     "no user named 'no-such-user-xyz'")
        self.refused("profiles:\n  - name: p\n    match: {group: no-such-group-xyz}\n", 3, "group",
                     "no group named")
        self.refused("profiles:\n  - name: p\n    match: {uid: 1}\n  - name: p\n    match: {uid: 2}\n", 4, "name",
                     "already defined on line 2")

    def test_describe(self) -> None:
        lines = policyfile.describe(self.policies())
        self.assertIn("session-timeout: 60", lines)
        self.assertIn("# profile curl: for executable /usr/bin/curl", lines)
        self.assertIn("#   min-tls-version: 3  # TLS 1.3", lines)


class ProcTests(PolicyFileCase):
    """
    What C{/proc} says of a process.
    """

    def fake_proc(self) -> str:
        proc = os.path.join(self.dir, "proc")
        os.makedirs(os.path.join(proc, "77"))
        with open(os.path.join(proc, "77", "status"), "w") as f:
            f.write("Name:\tx\nUid:\t1000\t1001\t1000\t1000\nGid:\t100\t101\t100\t100\nGroups:\t4 24 27 \n")
        os.symlink("/usr/bin/x", os.path.join(proc, "77", "exe"))
        return proc

    def test_groups(self) -> None:
        self.assertEqual(read_proc_groups(77, self.fake_proc()), frozenset({4, 24, 27}))
        self.assertEqual(read_proc_groups(os.getpid()), frozenset(os.getgroups()))
        self.assertRaises(OSError, read_proc_groups, 99, self.dir)

    def test_identity(self) -> None:
        """
        The effective uid and gid, as C{SO_PEERCRED} gives them.
        """
        self.assertEqual(read_proc_identity(77, self.fake_proc()), PeerIdentity(77, 1001, 101, "/usr/bin/x"))


class CheckConfigTests(PolicyFileCase):
    """
    C{ssa check-config}.
    """

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        return cli.main(["check-config", *argv]), out.getvalue(), err.getvalue()

    def test_valid(self) -> None:
        path = self.write("session-timeout: 86400\nrevocation-checks: disabled\n")
        status, out, err = self.run_cli(path)
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], f"# {path}: valid")
        self.assertIn("session-timeout: 86400", lines)
        self.assertIn("revocation-checks: disabled", lines)
        self.assertEqual(len([line for line in lines if not line.startswith("#")]), len(KEYS))

    def test_output_loads_back(self) -> None:
        """
        What it prints is itself a policy file meaning the same.
        """
        path = self.write(EVERY_KEY.replace("trust-store-path: anchors.pem\n", "").replace("crl-path: crls\n", ""))
        _, out, _ = self.run_cli(path)
        again = self.write(out, "again.yml")
        self.assertEqual(dataclasses.replace(load_policy(again).default, source=path), load_policy(path).default)

    def test_invalid(self) -> None:
        path = self.write("min-tls-version: 2\ncert-chain-depth: -3\n")
        status, out, err = self.run_cli(path)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"{path}:2: cert-chain-depth: -3 is out of range (0..100)\n")

    def test_missing_explicit(self) -> None:
        status, _, err = self.run_cli(os.path.join(self.dir, "absent.yml"))
        self.assertEqual(status, 1)
        self.assertIn("cannot read the policy file", err)

    def test_default_absent(self) -> None:
        absent = os.path.join(self.dir, "absent.yml")
        self.patch(policyfile, "DEFAULT_PATH", absent)
        status, out, _ = self.run_cli()
        self.assertEqual(status, 0)
        self.assertIn(f"# {absent} does not exist: the daemon would use the built-in defaults", out)
        self.assertIn("session-timeout: 300", out.splitlines())

    def test_default_present(self) -> None:
        self.patch(policyfile, "DEFAULT_PATH", self.write("session-timeout: 9\n"))
        status, out, _ = self.run_cli()
        self.assertEqual(status, 0)
        self.assertIn("session-timeout: 9", out.splitlines())

    def test_explain_executable(self) -> None:
        path = self.write(f"profiles:\n  - name: curl\n    match:\n      executable: /usr/bin/curl\n"
                          f"      uid: {os.geteuid()}\n    min-tls-version: 3\n")
        status, out, _ = self.run_cli(path, "--explain", "/usr/bin/curl")
        self.assertEqual(status, 0)
        self.assertIn("# profile: curl (line 2: executable /usr/bin/curl and uid", out)
        self.assertIn("min-tls-version: 3  # TLS 1.3", out.splitlines())
        status, out, _ = self.run_cli(path, "--explain", "/usr/bin/wget")
        self.assertIn("# profile: none (the file's defaults apply)", out)
        self.assertIn("min-tls-version: 2  # TLS 1.2", out.splitlines())

    def test_explain_pid(self) -> None:
        exe = os.readlink("/proc/self/exe")
        path = self.write(f"profiles:\n  - name: me\n    match:\n      executable: {exe}\n"
                          f"    session-timeout: 1\n")
        status, out, _ = self.run_cli(path, "--explain", str(os.getpid()))
        self.assertEqual(status, 0)
        self.assertIn(f"# pid {os.getpid()} uid {os.geteuid()} gid {os.getegid()} {exe}", out)
        self.assertIn("# profile: me", out)
        self.assertIn("session-timeout: 1", out.splitlines())

    def test_explain_no_such_pid(self) -> None:
        status, _, err = self.run_cli(self.write(""), "--explain", "999999999")
        self.assertEqual(status, 1)
        self.assertIn("cannot read process 999999999", err)

