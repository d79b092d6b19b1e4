"""
The preload library (C{preload/ssa_preload.c}, built by C{pip install} as
C{ssa/libssa-preload.so}): where it is, and the environment that makes a
program use it (C{ssa run}).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ssa.paths import ENVIRONMENT_VARIABLE

#: The library's file name, next to this module.
LIBRARY_NAME = "libssa-preload.so"


def library_path() -> Path:
    """
    The installed preload library.

    @raise FileNotFoundError: it was not built (no C compiler at install).
    """
    path = Path(__file__).resolve().parent / LIBRARY_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"the SSA preload library is not installed at {path}: "
            "reinstall ssa with a C compiler (gcc) available"
        )
    return path


def preload_environment(
    env: Mapping[str, str], library: Path, socket_path: str | None = None
) -> dict[str, str]:
    """
    C{env} with C{library} first in C{LD_PRELOAD} (once) and, if given,
    C{SSA_SOCKET} set to C{socket_path}; an C{SSA_SOCKET} already in C{env}
    is kept otherwise.
    """
    result = dict(env)
    others = [
        entry
        for entry in result.get("LD_PRELOAD", "").replace(":", " ").split()
        if entry != str(library)
    ]
    result["LD_PRELOAD"] = " ".join([str(library), *others])
    if socket_path is not None:
        result[ENVIRONMENT_VARIABLE] = socket_path
    return result
