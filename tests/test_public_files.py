"""
L{ssa.public_files}: what the netlink frontend reads for a caller it cannot
name is only what every local user may read. Real files and modes.
"""

from __future__ import annotations

import errno
import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from ssa.public_files import NotPublic, read_public

PEM = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


class ReadPublicTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.top = tempfile.mkdtemp()
        self.addCleanup(lambda: os.system(f"rm -rf {self.top}"))
        os.chmod(self.top, 0o755)

    def write(self, name: str, data: bytes = PEM, mode: int = 0o644) -> str:
        path = os.path.join(self.top, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def refused(self, path: str, *words: str) -> None:
        error = self.assertRaises(NotPublic, read_public, path)
        self.assertEqual(error.errno, errno.EACCES)
        for word in words:
            self.assertIn(word, str(error))
        self.assertNotIn("AAAA", str(error))

    def test_world_readable_file(self) -> None:
        self.assertEqual(read_public(self.write("cert.pem")), PEM)

    def test_file_only_its_owner_reads(self) -> None:
        self.refused(self.write("key.pem", mode=0o600), "not readable by every user")

    def test_readable_file_in_a_closed_directory(self) -> None:
        path = self.write("private/key.pem")
        os.chmod(os.path.dirname(path), 0o700)
        self.refused(path, "every user may enter")

    def test_symbolic_links(self) -> None:
        target = self.write("private/key.pem", mode=0o600)
        link = os.path.join(self.top, "link.pem")
        os.symlink(target, link)
        self.refused(link, "symbolic link")
        os.symlink(os.path.dirname(target), os.path.join(self.top, "dir"))
        self.refused(os.path.join(self.top, "dir", "key.pem"), "symbolic link")

    def test_relative_and_dotted_paths(self) -> None:
        self.refused("cert.pem", "absolute")
        self.write("sub/cert.pem")
        self.refused(os.path.join(self.top, "sub", "..", "sub", "cert.pem"), "plain path")

    def test_not_a_regular_file(self) -> None:
        self.refused("/dev/null", "regular file")

    def test_directory_of_certificates(self) -> None:
        """
        A directory gives its public PEM files in name order, each once;
        private files, links and non-PEM files are left out.
        """
        self.write("store/b.pem", PEM.replace(b"AAAA", b"BBBB"))
        self.write("store/a.pem")
        self.write("store/secret.pem", PEM.replace(b"AAAA", b"CCCC"), mode=0o600)
        self.write("store/notes.txt", b"hello")
        os.symlink(os.path.join(self.top, "store", "a.pem"), os.path.join(self.top, "store", "abcd1234.0"))
        data = read_public(os.path.join(self.top, "store"))
        self.assertEqual(data, PEM + PEM.replace(b"AAAA", b"BBBB"))

    def test_missing(self) -> None:
        error = self.assertRaises(OSError, read_public, os.path.join(self.top, "none.pem"))
        self.assertEqual(error.errno, errno.ENOENT)
