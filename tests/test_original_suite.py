"""
The original SSA's own C/GoogleTest suite and example programs
(C{../shared/peers/ssa-tests}, built and run by its C{build-and-run}), run
unmodified through C{ssa run} (the preload library) against this daemon.
Cases allowed to fail are listed, with their reasons, in
C{preload/tests/original-differences.txt}; every other case must pass.

Needs the kit next to the repository (or C{SSA_TESTS_KIT}), a C/C++
compiler and GoogleTest (C{.ci/run} installs C{g++} and C{libgtest-dev});
skipped when any is missing. About two minutes, build included.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ssa import preload
from ssa.testing.daemon import SOURCE_ROOT

KIT = Path(os.environ.get("SSA_TESTS_KIT", SOURCE_ROOT.parent / "shared" / "peers" / "ssa-tests"))
DIFFERENCES = SOURCE_ROOT / "preload" / "tests" / "original-differences.txt"
SUITES = "SocketAPI*:PrivateKey*:ServerChain*:ClientSession*:ServerSession*:Async*:Speed*"
TIMEOUT = 900


def allowed_failures(differences: Path = DIFFERENCES) -> dict[str, str]:
    """
    The cases of a list of differences (L{DIFFERENCES} by default), with
    their reasons.
    """
    allowed = {}
    for line in differences.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.strip().partition(" ")
            allowed[name] = reason.strip()
    return allowed


def _skip_unless_buildable() -> None:
    if not (KIT / "build-and-run").is_file():
        raise SkipTest(f"the original SSA's tests are not at {KIT} (set SSA_TESTS_KIT)")
    if shutil.which("g++") is None or not (
        Path("/usr/include/gtest/gtest.h").exists() or os.geteuid() == 0
    ):
        raise SkipTest("needs g++ and GoogleTest (libgtest-dev), which .ci/run installs")


class OriginalSuiteTests(SynchronousTestCase):
    """
    One run of the kit: the suites and the examples.
    """

    def test_suites_and_examples(self) -> None:
        """
        Every case passes except those listed in L{DIFFERENCES}; every
        example works.
        """
        _skip_unless_buildable()
        work = Path(tempfile.mkdtemp(prefix="ssa-original-suite-"))
        python = shlex.quote(sys.executable)
        daemon = (
            f"exec env PYTHONPATH={shlex.quote(str(SOURCE_ROOT))} {python} -m twisted ssa "
            '--socket "$SSA_SOCKET" --config "$SSA_TEST_POLICY"'
        )
        ssa_command = Path(sys.executable).parent / "ssa"
        if ssa_command.exists():
            prefix = f"{shlex.quote(str(ssa_command))} run --"
        else:
            prefix = f"env LD_PRELOAD={shlex.quote(str(preload.library_path()))}"
        result = subprocess.run(
            [str(KIT / "build-and-run"), "--work", str(work), "--daemon-cmd", daemon,
             "--prefix", prefix, "--filter", SUITES, "--examples"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=TIMEOUT, check=False,
        )
        output = result.stdout.decode(errors="replace")
        summary_path = work / "results" / "summary.json"
        if not summary_path.exists():
            self.fail(f"build-and-run gave no summary:\n{output[-5000:]}")
        summary = json.loads(summary_path.read_text())
        allowed = allowed_failures()
        unexpected = {}
        ran = 0
        for suite in summary["suites"].values():
            for name, case in suite.get("tests", {}).items():
                ran += 1
                if case["status"] != "passed" and name not in allowed:
                    unexpected[name] = f"{case['status']}: {case.get('message', '')}"
        for name, example in summary.get("examples", {}).items():
            if not example.get("ok"):
                unexpected[f"example {name}"] = str(example.get("detail"))
        statuses = {name: case["status"] for suite in summary["suites"].values()
                    for name, case in suite.get("tests", {}).items()}
        print("listed as differing, and passed this time:",
              sorted(name for name in allowed if statuses.get(name) == "passed"))
        print("listed as differing, and failed:", sorted(name for name in allowed if statuses.get(name) != "passed"))
        self.assertGreaterEqual(ran, 45, output[-5000:])
        self.assertTrue(summary.get("examples"), output[-5000:])
        self.assertEqual(unexpected, {}, f"{output[-3000:]}\nlogs: {work / 'logs'}")
        shutil.rmtree(work, ignore_errors=True)
