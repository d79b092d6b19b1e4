"""
Revocation by CRLs as pure logic: the policy's C{crl-path} read from real
files, which CRL decides (L{ssa.revocation}), and the verdict cache keyed
by the CRLs. End to end through a daemon: C{tests/test_e2e_revocation.py}.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.trial.unittest import SynchronousTestCase

from ssa.crls import NO_CRLS, Revocation, crl_set
from ssa.errors import TLSFailure
from ssa.pathvalidation import RFC5280, PathValidator
from ssa.policy import PolicyError
from ssa.policyfile import describe, parse_policy
from ssa.revocation import revocation_failure
from ssa.testing.certs import CertificateAuthority

from .test_e2e_revocation import HOUR, make_crl
from .test_x509_limbo import LIMBO

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


class PolicyKeyTests(SynchronousTestCase):
    """
    C{crl-path} in the policy file.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ssa-crl-")
        self.ca = CertificateAuthority.create()
        self.config = os.path.join(self.dir, "config.yml")

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_file_relative(self) -> None:
        """
        A relative path is taken from the policy file's directory; PEM and
        DER both load; C{check-config} shows the absolute path.
        """
        for name, der in (("ca.pem", False), ("ca.crl", True)):
            path = self.write(name, make_crl(self.ca, der=der))
            policy = parse_policy(f"crl-path: {name}\n", self.config).default
            self.assertEqual(policy.crl_path, path)
            self.assertEqual(len(policy.crls.crls), 1)
            self.assertEqual(policy.crls.crls[0].source, path)
            self.assertIn(f"crl-path: {path}", describe(parse_policy(f"crl-path: {name}\n", self.config)))

    def test_directory(self) -> None:
        """
        A directory: every file's CRLs (dot files skipped); an empty one
        is allowed and holds none.
        """
        os.mkdir(os.path.join(self.dir, "crls"))
        policy = parse_policy("crl-path: crls\n", self.config).default
        self.assertEqual(policy.crls.crls, ())
        other = CertificateAuthority.create("Other")
        self.write("crls/a.pem", make_crl(self.ca) + make_crl(other))
        self.write("crls/b.der", make_crl(other, der=True))
        self.write("crls/.hidden", b"not a CRL")
        policy = parse_policy("crl-path: crls\n", self.config).default
        self.assertEqual(len(policy.crls.crls), 3)
        self.assertEqual(len(policy.crls.for_issuer(other.cert.subject)), 2)

    def test_broken(self) -> None:
        """
        A file that is not a CRL, a truncated CRL, a missing file: a policy
        error at the key's line naming the file.
        """
        crl = make_crl(self.ca, der=True)
        for data in (b"hello", crl[:-10], self.ca.cert_pem(),
                     b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"):
            path = self.write("bad.crl", data)
            failure = self.assertRaises(PolicyError, parse_policy, "min-tls-version: 2\ncrl-path: bad.crl\n",
                                        self.config)
            self.assertTrue(str(failure).startswith(f"{self.config}:2: crl-path: {path}"), str(failure))
        failure = self.assertRaises(PolicyError, parse_policy, "crl-path: nowhere.pem\n", self.config)
        self.assertIn("cannot read", str(failure))
        failure = self.assertRaises(PolicyError, parse_policy, "crl-path: [1]\n", self.config)
        self.assertIn("expected the path of a CRL file or directory", str(failure))

    def test_per_profile(self) -> None:
        """
        A profile may name other CRLs; the default has none.
        """
        self.write("ca.pem", make_crl(self.ca))
        policies = parse_policy(
            "profiles:\n  - name: p\n    match: {uid: 0}\n    crl-path: ca.pem\n", self.config)
        self.assertIsNone(policies.default.crls)
        self.assertEqual(len(policies.profiles[0].policy.crls.crls), 1)


class DecisionTests(SynchronousTestCase):
    """
    Which CRL decides, on a root -> intermediate -> leaf path.
    """

    def setUp(self) -> None:
        self.root = CertificateAuthority.create()
        self.intermediate = self.root.issue_intermediate()
        self.leaf = self.intermediate.issue_server("localhost")
        self.path = (self.leaf.cert, self.intermediate.cert, self.root.cert)

    def verdict(self, *crls: bytes, hard: bool = True) -> str | None:
        files = [(f"crl{i}", crl) for i, crl in enumerate(crls)]
        return revocation_failure(self.path, Revocation(crl_set("dir", files), hard), NOW)

    def sign(self, builder: x509.CertificateRevocationListBuilder) -> bytes:
        builder = (builder.issuer_name(self.intermediate.cert.subject)
                   .last_update(NOW - HOUR).next_update(NOW + HOUR))
        return builder.sign(self.intermediate.key, hashes.SHA256()).public_bytes(Encoding.PEM)

    def entry(self, *extensions: x509.ExtensionType) -> x509.RevokedCertificate:
        builder = x509.RevokedCertificateBuilder().serial_number(self.leaf.cert.serial_number).revocation_date(NOW)
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.build()

    def test_good_and_unknown(self) -> None:
        both = (make_crl(self.root), make_crl(self.intermediate))
        self.assertIsNone(self.verdict(*both))
        self.assertIn("depth 1", self.verdict(both[1]))
        self.assertIsNone(self.verdict(both[1], hard=False))
        self.assertIsNone(revocation_failure(self.path, Revocation(NO_CRLS), NOW))

    def test_newest_decides(self) -> None:
        """
        Two usable CRLs of one issuer: the newest says (a hold released).
        """
        older = make_crl(self.intermediate, (self.leaf.cert,), this_update=NOW - 2 * HOUR)
        newer = make_crl(self.intermediate, this_update=NOW - HOUR)
        self.assertIsNone(self.verdict(make_crl(self.root), older, newer))
        self.assertIn("revoked", self.verdict(make_crl(self.root), older))

    def test_not_yet_valid(self) -> None:
        future = make_crl(self.intermediate, (self.leaf.cert,), this_update=NOW + HOUR, next_update=NOW + 2 * HOUR)
        self.assertIn("not valid yet", self.verdict(make_crl(self.root), future))

    def test_remove_from_crl_and_reason(self) -> None:
        removed = self.sign(x509.CertificateRevocationListBuilder().add_revoked_certificate(
            self.entry(x509.CRLReason(x509.ReasonFlags.remove_from_crl))))
        self.assertIn("removeFromCRL", self.verdict(make_crl(self.root), removed))
        self.assertIsNone(self.verdict(make_crl(self.root), removed, hard=False))
        compromised = self.sign(x509.CertificateRevocationListBuilder().add_revoked_certificate(
            self.entry(x509.CRLReason(x509.ReasonFlags.key_compromise))))
        self.assertIn("reason key_compromise", self.verdict(make_crl(self.root), compromised, hard=False))

    def test_scope(self) -> None:
        """
        An issuing distribution point for CA certificates only leaves the
        leaf out; a delta CRL is not used; another key's CRL (authority
        key identifier) is not used.
        """
        only_ca = self.sign(x509.CertificateRevocationListBuilder().add_extension(
            x509.IssuingDistributionPoint(None, None, False, True, None, False, False), critical=True
        ).add_revoked_certificate(self.entry()))
        self.assertIn("covers only CA certificates", self.verdict(make_crl(self.root), only_ca))
        self.assertIsNone(self.verdict(make_crl(self.root), only_ca, hard=False))
        delta = self.sign(x509.CertificateRevocationListBuilder().add_extension(
            x509.DeltaCRLIndicator(1), critical=True).add_revoked_certificate(self.entry()))
        self.assertIn("delta CRL", self.verdict(make_crl(self.root), delta))
        other_key = self.sign(x509.CertificateRevocationListBuilder().add_extension(
            x509.AuthorityKeyIdentifier(b"\x01" * 20, None, None), critical=False
        ).add_revoked_certificate(self.entry()))
        self.assertIn("another key", self.verdict(make_crl(self.root), other_key))

    def test_limbo_crls_decide(self) -> None:
        """
        The x509-limbo dev CRL cases: at their validation time the CRL of
        the leaf's issuer is usable and says good, even in hard-fail.
        """
        if not LIMBO.exists():
            raise self.skipTest("no x509-limbo cases")
        cases = [c for c in json.loads(LIMBO.read_text())["testcases"] if c.get("crls")]
        self.assertTrue(cases)
        for case in cases:
            leaf = x509.load_pem_x509_certificate(case["peer_certificate"].encode())
            anchors = [x509.load_pem_x509_certificate(p.encode()) for p in case["trusted_certs"]]
            issuer = next(a for a in anchors if a.subject == leaf.issuer)
            crls = crl_set("limbo", [(f"crl{i}", p.encode()) for i, p in enumerate(case["crls"])])
            when = datetime.datetime.fromisoformat(case["validation_time"])
            self.assertIsNone(revocation_failure((leaf, issuer), Revocation(crls, True), when), case["id"])


class CacheTests(SynchronousTestCase):
    """
    The verdict cache keys on the CRLs: new CRLs are a new check.
    """

    def test_cache_key(self) -> None:
        root = CertificateAuthority.create()
        leaf = root.issue_server("localhost")
        validator = PathValidator()

        def check(revocation: Revocation | None) -> None:
            validator.check((leaf.cert,), anchors_pem=root.cert_pem(), system_store=False, name="localhost",
                            max_depth=5, revocation=revocation)

        empty = Revocation(crl_set("dir", [("a", make_crl(root))]))
        check(empty)
        check(Revocation(empty.crls))
        self.assertEqual(validator.checks, 1)
        revoked = Revocation(crl_set("dir", [("a", make_crl(root, (leaf.cert,)))]))
        self.assertRaises(TLSFailure, check, revoked)
        self.assertEqual(validator.checks, 2)
        check(None)
        self.assertEqual(validator.checks, 3)
        failure = self.assertRaises(TLSFailure, check, Revocation(NO_CRLS, hard_fail=True))
        self.assertIn("no CRL from its issuer", str(failure))

    def test_rfc5280_mode(self) -> None:
        """
        With C{path-validation: rfc5280} and private anchors the path
        builder is not run, but the path (walked by signatures through the
        intermediates sent) is still checked against the CRLs.
        """
        root = CertificateAuthority.create()
        intermediate = root.issue_intermediate()
        leaf = intermediate.issue_server("localhost")
        validator = PathValidator()
        revoked = Revocation(crl_set("dir", [("r", make_crl(root, (intermediate.cert,)))]))
        for revocation, refused in ((None, False), (Revocation(NO_CRLS), False), (revoked, True)):
            try:
                validator.check((leaf.cert, *leaf.chain), anchors_pem=root.cert_pem(), system_store=False,
                                name="localhost", max_depth=5, mode=RFC5280, revocation=revocation)
            except TLSFailure as e:
                self.assertTrue(refused)
                self.assertIn("SSA Test Intermediate CA (depth 1) is listed on the CRL r", str(e))
            else:
                self.assertFalse(refused)
