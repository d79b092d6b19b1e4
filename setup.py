"""
Builds the preload library (preload/ssa_preload.c) as a plain shared
library, ssa/libssa-preload.so, with the C compiler (gcc or cc): for
C{pip install .} and C{pip install -e .} alike. Everything else is in
setup.cfg.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildPreload(build_ext):
    """
    Build the extension as a plain C{.so} named as C{ssa run} expects, not
    as a Python module (no ABI suffix, no Python symbols needed).
    """

    def get_ext_filename(self, fullname: str) -> str:
        *package, name = fullname.split(".")
        return os.path.join(*package, name + ".so")

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []


setup(
    ext_modules=[
        Extension(
            "ssa.libssa-preload",
            sources=["preload/ssa_preload.c"],
            libraries=["dl", "pthread"],
            extra_compile_args=["-O2", "-Wall", "-fvisibility=default"],
        )
    ],
    cmdclass={"build_ext": BuildPreload},
)
