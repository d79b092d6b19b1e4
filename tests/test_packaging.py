"""
A regular install exposes C{twistd ssa}, C{ssa.backends} and C{ssa.tap},
and ships no top-level C{tap} or C{backends} (SPEC section 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from ssa.testing.daemon import SOURCE_ROOT


class PackagingTests(SynchronousTestCase):
    """
    Build and install the project the way a user would.
    """

    def test_regular_install_lists_plugin(self) -> None:
        """
        After C{pip install .} into a fresh directory, C{twistd --help} run
        outside the checkout lists C{ssa}, and the layout is as promised.
        """
        target = tempfile.mkdtemp(prefix="ssa-install-")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
             "--target", target, str(SOURCE_ROOT)],
            check=True, cwd=target, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.assertTrue(os.path.isfile(os.path.join(target, "twisted", "plugins", "ssa_daemon.py")))
        self.assertFalse(os.path.exists(os.path.join(target, "twisted", "plugins", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(target, "tap")))
        self.assertFalse(os.path.exists(os.path.join(target, "backends")))
        self.assertFalse(os.path.exists(os.path.join(target, "tests")))
        self.assertTrue(os.path.isfile(os.path.join(target, "ssa", "backends", "openssl.py")))
        self.assertTrue(os.path.isfile(os.path.join(target, "ssa", "tap", "daemon.py")))
        self.assertTrue(os.path.isfile(os.path.join(target, "ssa", "libssa-preload.so")))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = target
        code = (
            "import os, sys; sys.path = [p for p in sys.path if os.path.realpath(p or '.') != %r];"
            "sys.argv = ['twistd', '--help'];"
            "from twisted.scripts.twistd import run; run()"
        ) % os.path.realpath(SOURCE_ROOT)
        result = subprocess.run([sys.executable, "-c", code], cwd=target, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertIn(" ssa ", result.stdout)
        self.assertIn("Secure Socket API", result.stdout)
        # The ssa: endpoint strings are found in the installed tree too.
        self.assertTrue(os.path.isfile(os.path.join(target, "twisted", "plugins", "ssa_endpoints.py")))
        endpoint = code.split("sys.argv")[0] + (
            "from twisted.internet import reactor; from twisted.internet.endpoints import clientFromString;"
            "print(type(clientFromString(reactor, 'ssa:host=localhost:port=443')).__module__)"
        )
        result = subprocess.run([sys.executable, "-c", endpoint], check=False, cwd=target, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(result.stdout.strip().splitlines()[-1], "ssa.endpoints", result.stdout)
