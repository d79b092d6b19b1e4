"""
The manual pages: each renders cleanly with C{man --warnings}, the call
pages list every errno SPEC section 3 gives their call, and a built wheel
installs them (and the systemd units).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from twisted.trial.unittest import SynchronousTestCase

from ssa.testing.daemon import SOURCE_ROOT

MAN = SOURCE_ROOT / "man"
PAGES = ["ssa.1", "ssa-socket.2", "ssa-setsockopt.2", "ssa-connect.2", "ssa-bind.2", "ssa-listen.2",
         "ssa-accept.2", "ssa-config.5", "ssa.7", "ssa.8"]

#: SPEC section 3's errno values, by the page of their call.
ERRNOS = {
    "ssa-socket.2": ["EPROTONOSUPPORT", "ESOCKTNOSUPPORT", "EAFNOSUPPORT", "ECONNREFUSED", "ENOENT"],
    "ssa-bind.2": ["EINVAL", "EADDRINUSE", "EACCES", "EADDRNOTAVAIL"],
    "ssa-connect.2": ["EOPNOTSUPP", "EBADFD", "EALREADY", "EBADF", "ECONNABORTED", "EPROTO", "ECANCELED",
                      "EAFNOSUPPORT", "EINPROGRESS"],
    "ssa-listen.2": ["EPROTO", "EOPNOTSUPP", "EBADFD"],
    "ssa-accept.2": ["EINVAL", "EAGAIN"],
    "ssa-setsockopt.2": ["ENOPROTOOPT", "EOPNOTSUPP", "EBADFD", "EINVAL", "EPROTO"],
}


class ManPageTests(SynchronousTestCase):
    """
    The pages in C{man/}.
    """

    def test_render_cleanly(self) -> None:
        """
        C{man --warnings -l PAGE} renders each page with no warning.
        """
        man = shutil.which("man")
        if man is None:
            raise self.skipTest("man is not installed (.ci/run installs man-db and groff)")
        self.assertEqual(sorted(os.listdir(MAN)), sorted(PAGES))
        env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
        for page in PAGES:
            result = subprocess.run([man, "--warnings", "-l", str(MAN / page)], capture_output=True, text=True,
                                    env=env, timeout=60)
            self.assertEqual((result.returncode, result.stderr), (0, ""), page)
            self.assertIn("NAME", result.stdout, page)

    def test_every_errno_of_each_call(self) -> None:
        """
        Each call's ERRORS section names every errno SPEC section 3 gives
        that call.
        """
        for page, names in ERRNOS.items():
            text = (MAN / page).read_text()
            errors = text[text.index(".SH ERRORS"):]
            for name in names:
                self.assertIn(f"\\fB{name}\\fP", errors, f"{page}: {name}")

    def test_every_option(self) -> None:
        """
        The setsockopt page describes every IPPROTO_TLS option.
        """
        from ssa import constants

        text = (MAN / "ssa-setsockopt.2").read_text()
        options = [name for name in dir(constants) if name.startswith("TLS_") and not name.startswith("TLS_1_")]
        self.assertTrue(options)
        for name in options:
            self.assertIn(f".BR {name} \"", text, name)

    def test_wheel_installs_pages_and_units(self) -> None:
        """
        A wheel built from the tree installs every page under share/man and
        the units under share/ssa/systemd.
        """
        out = tempfile.mkdtemp(prefix="ssa-wheel-")
        self.addCleanup(shutil.rmtree, out)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out,
             str(SOURCE_ROOT)],
            check=True, capture_output=True, timeout=300,
        )
        wheel = next(name for name in os.listdir(out) if name.endswith(".whl"))
        names = zipfile.ZipFile(os.path.join(out, wheel)).namelist()
        for page in PAGES:
            section = page.rsplit(".", 1)[1]
            self.assertTrue(any(n.endswith(f".data/data/share/man/man{section}/{page}") for n in names), page)
        for unit in ("ssa.service", "ssa.socket"):
            self.assertTrue(any(n.endswith(f".data/data/share/ssa/systemd/{unit}") for n in names), unit)
