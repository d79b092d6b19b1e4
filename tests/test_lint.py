"""
The daemon's code stays ruff-clean and gains no mypy error: ruff must find
nothing in C{ssa/}, C{backends/} and C{tap/}; mypy (with the zope.interface
plugin, configured in C{setup.cfg}) may report only the errors listed in
C{tests/mypy-baseline.txt}, which shrinks as they are fixed and never grows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("ssa", "backends", "tap")
BASELINE = Path(__file__).with_name("mypy-baseline.txt")
_LINE = re.compile(r"^(?P<path>[^:]+):\d+: error: (?P<message>.*)$")


def _tool(module: str) -> None:
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    if probe.returncode != 0:
        raise SkipTest(f"{module} is not installed (pip install -e '.[test]')")


def mypy_errors() -> Counter[str]:
    """
    mypy's errors, without line numbers (so that moving code does not
    count as a new error), as C{path: message [code]}.
    """
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty", "--show-error-codes", *CHECKED],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MYPY_FORCE_COLOR": "0"},
    )
    errors: Counter[str] = Counter()
    for line in result.stdout.splitlines():
        match = _LINE.match(line)
        if match:
            errors[f"{match['path']}: {match['message']}"] += 1
    if result.returncode not in (0, 1) or (result.returncode == 1 and not errors):
        raise AssertionError(f"mypy did not run: {result.stdout}{result.stderr}")
    return errors


def baseline() -> Counter[str]:
    """
    The errors known today (one per line, repeated as often as it occurs).
    """
    lines = BASELINE.read_text().splitlines() if BASELINE.exists() else []
    return Counter(line for line in lines if line and not line.startswith("#"))


class LintTests(TestCase):
    """
    ruff and mypy on the daemon's code.
    """

    def test_ruff_is_clean(self) -> None:
        _tool("ruff")
        result = subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--no-cache", *CHECKED], cwd=ROOT, capture_output=True,
            text=True,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_no_new_mypy_errors(self) -> None:
        _tool("mypy")
        _tool("mypy_zope")
        new = mypy_errors() - baseline()
        self.assertFalse(new, "new mypy errors (fix them; the baseline only shrinks):\n" + "\n".join(sorted(new)))


if __name__ == "__main__":
    # python tests/test_lint.py: write the baseline anew (after fixing errors).
    errors = mypy_errors()
    BASELINE.write_text(
        "# mypy errors known when tests/test_lint.py was last run to write this; it only shrinks.\n"
        + "".join(f"{error}\n" for error in sorted(errors.elements()))
    )
    print(f"{sum(errors.values())} errors written to {BASELINE}")
