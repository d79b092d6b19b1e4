"""
The six C{config.yml} files shipped with the original SSA's tests
(C{../shared/peers/ssa-tests/test_files/}) load unchanged, with their
pre-release key names (C{CA-path}, C{cipher-list}, C{ciphersuites},
C{cert-verification-depth}, C{verify-cert-transparency}) and versions
written as C{1.2}, and mean what they say.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ssa.constants import TLS_1_0, TLS_1_2, TLS_1_3
from ssa.policyfile import load_policy
from ssa.testing.certs import CertificateAuthority
from ssa.testing.daemon import SOURCE_ROOT

KIT = Path(os.environ.get("SSA_TESTS_KIT", SOURCE_ROOT.parent / "shared" / "peers" / "ssa-tests"))
ECDHE = (
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
)
TLS13 = ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")
TLS13_CCM = (*TLS13, "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256")


def kit_file(relative: str) -> Path:
    """
    A file of the original's kit, or skip when the kit is not next to the
    repository (C{SSA_TESTS_KIT} names another place).
    """
    path = KIT / relative
    if not path.is_file():
        raise SkipTest(f"the original SSA's tests are not at {KIT} (set SSA_TESTS_KIT)")
    return path


class OriginalConfigTests(SynchronousTestCase):
    """
    Each file, copied unchanged into a directory laid out as the original's
    C{test_files/} (a relative C{CA-path} is taken from the file's
    directory), with a fresh root wherever one names it.
    """

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ssa-original-configs-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.root = CertificateAuthority.create().root_pem()
        for place in ("certs/rootCA.pem", "test_files/certs/rootCA.pem", "certs/testing/CAs/root.pem"):
            (self.dir / place).parent.mkdir(parents=True, exist_ok=True)
            (self.dir / place).write_bytes(self.root)

    def load(self, relative: str):
        """
        The default policy of the kit's file C{relative}, loaded from a copy.
        """
        copy = self.dir / Path(relative).name
        shutil.copyfile(kit_file(relative), copy)
        return load_policy(copy).default

    def assertCommon(self, policy, tls13=TLS13_CCM) -> None:
        self.assertEqual((policy.min_version, policy.max_version), (TLS_1_2, TLS_1_3))
        self.assertEqual(policy.tls12_ciphers, ECDHE)
        self.assertEqual(policy.tls13_ciphers, tls13)
        self.assertEqual(policy.verify_depth, 10)
        self.assertFalse(policy.cert_transparency)
        self.assertTrue(policy.session_resumption)
        self.assertEqual(policy.session_timeout, 300)

    def test_config(self) -> None:
        """
        C{test_files/config.yml}: tickets off, revocation off, the system
        store (its C{CA-path} lines are comments).
        """
        policy = self.load("test_files/config.yml")
        self.assertCommon(policy, TLS13)
        self.assertFalse(policy.session_tickets)
        self.assertFalse(policy.revocation_checks)
        self.assertIsNone(policy.trust_anchors)

    def test_default(self) -> None:
        """
        C{configs/default.yml}: tickets and revocation checks on.
        """
        policy = self.load("test_files/configs/default.yml")
        self.assertCommon(policy)
        self.assertTrue(policy.session_tickets)
        self.assertTrue(policy.revocation_checks)
        self.assertIsNone(policy.trust_anchors)

    def test_default_localhost(self) -> None:
        """
        C{configs/default_localhost.yml}: C{CA-path: certs/rootCA.pem} is
        the trust store.
        """
        policy = self.load("test_files/configs/default_localhost.yml")
        self.assertCommon(policy)
        self.assertEqual(policy.trust_anchors, self.root)
        self.assertEqual(policy.trust_store_path, str(self.dir / "certs" / "rootCA.pem"))
        self.assertFalse(policy.revocation_checks)

    def test_server_chain(self) -> None:
        """
        C{configs/server_chain.yml}: C{CA-path} names a directory of roots.
        """
        policy = self.load("test_files/configs/server_chain.yml")
        self.assertCommon(policy)
        self.assertEqual(policy.trust_anchors, self.root)

    def test_low_security(self) -> None:
        """
        C{configs/low_security_config.yml}: TLS 1.0 allowed, depth 100,
        C{on}/C{off} flags, every revocation method on but checks off.
        """
        policy = self.load("test_files/configs/low_security_config.yml")
        self.assertEqual((policy.min_version, policy.max_version), (TLS_1_0, TLS_1_3))
        self.assertEqual(policy.verify_depth, 100)
        self.assertEqual(policy.tls13_ciphers, TLS13_CCM)
        self.assertFalse(policy.revocation_checks)
        self.assertTrue(policy.revocation_ocsp and policy.revocation_crl and policy.revocation_stapled)
        self.assertTrue(policy.session_tickets)
        self.assertEqual(policy.session_timeout, 86400)
        self.assertEqual(policy.trust_anchors, self.root)

    def test_every_config_covered(self) -> None:
        """
        The five the suites use are all the original's files: none is left
        out above (low_security_config.yml is the sixth).
        """
        names = sorted(p.name for p in (KIT / "test_files" / "configs").glob("*.yml"))
        if not names:
            raise SkipTest(f"the original SSA's tests are not at {KIT}")
        self.assertEqual(
            names, ["default.yml", "default_localhost.yml", "low_security_config.yml", "server_chain.yml"]
        )
