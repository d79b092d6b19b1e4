"""
The daemon's path validation is bounded in work, so no chain can stall the
daemon's one thread (issue 11): chains far over the bounds are refused
before the path builder sees them, and the refusal is a clean TLSFailure
through the validator, timed here.
"""

from __future__ import annotations

import datetime
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from ssa import pathvalidation
from ssa.errors import TLSFailure

_KEY = ec.generate_private_key(ec.SECP256R1())


def certificate(name: str, *, issuer: str | None = None, sans: int = 1, subtrees: int = 0) -> x509.Certificate:
    """
    A certificate for C{name} (signed by a throwaway key: these tests only
    count the work a chain asks for).
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or name)]))
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(f"h{i}.{name}") for i in range(sans)]), critical=False)
    )
    if subtrees:
        builder = builder.add_extension(x509.NameConstraints(
            permitted_subtrees=[x509.DNSName(f"p{i}.example") for i in range(subtrees)],
            excluded_subtrees=None), critical=True)
    return builder.sign(_KEY, hashes.SHA256())


class BoundTests(SynchronousTestCase):
    """
    L{pathvalidation.too_costly} and its use by the validator.
    """

    def test_ordinary_chain(self) -> None:
        chain = [certificate("leaf.example", issuer="ca"), certificate("ca", subtrees=3)]
        self.assertIsNone(pathvalidation.too_costly(chain))

    def test_many_names_under_many_constraints(self) -> None:
        chain = [certificate("leaf.example", issuer="ca", sans=200), certificate("ca", subtrees=20)]
        reason = pathvalidation.too_costly(chain)
        self.assertIsNotNone(reason)
        self.assertIn("201 names x 20 subtrees", reason)

    def test_too_many_certificates(self) -> None:
        chain = [certificate("leaf.example", issuer="i0")] + [
            certificate(f"i{n}", issuer=f"i{n + 1}") for n in range(pathvalidation.MAX_PRESENTED)
        ]
        self.assertIn("more than the 32", pathvalidation.too_costly(chain))

    def test_validator_refuses_quickly(self) -> None:
        """
        Through the validator: a clean TLSFailure, well within a
        millisecond budget that the path builder alone would exceed.
        """
        root = certificate("ca", subtrees=4000)
        chain = [certificate("leaf.example", issuer="ca", sans=500), root]
        validator = pathvalidation.PathValidator()
        started = time.perf_counter()
        with self.assertRaises(TLSFailure) as caught:
            validator.check(chain, anchors_pem=root_pem(root), system_store=False, name="h1.leaf.example",
                            max_depth=10)
        self.assertIn("name constraints ask for", str(caught.exception))
        self.assertLess(time.perf_counter() - started, 1.0)


def root_pem(root: x509.Certificate) -> bytes:
    return root.public_bytes(Encoding.PEM)
