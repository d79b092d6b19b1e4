"""
Choosing the TLS backend by name, among the backends installed as Twisted
plugins (L{IBackendChoice} providers in C{twisted.plugins}), the way
C{twisted.application.reactors} chooses a reactor. A third-party backend
ships a module in C{twisted/plugins/} holding a L{BackendChoice}.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.plugin import IPlugin, getPlugins
from twisted.python.reflect import namedAny
from zope.interface import implementer

from .interfaces import IBackendChoice, ITLSBackend

DEFAULT_BACKEND = "openssl"


class NoSuchBackend(KeyError):
    """
    No installed backend has that name.
    """


@implementer(IPlugin, IBackendChoice)
@dataclass(frozen=True)
class BackendChoice:
    """
    An installed backend: its name, and where its class lives.

    @ivar name: what C{--backend} and C{backend:} say.
    @ivar factory: the dotted name of a callable making an L{ITLSBackend}.
    @ivar description: one line for people.
    """

    name: str
    factory: str
    description: str

    def load(self) -> ITLSBackend:
        """
        Import the backend's module and make the backend.
        """
        return namedAny(self.factory)()


#: The backends that ship with C{ssa} (C{twisted/plugins/ssa_backends.py}
#: offers them as plugins).
BUILT_IN = (
    BackendChoice("openssl", "ssa.backends.openssl.OpenSSLBackend", "OpenSSL through pyOpenSSL (the default)"),
    BackendChoice("stdlib", "ssa.backends.stdlib.StdlibBackend", "OpenSSL through Python's ssl module"),
)


def available() -> dict[str, IBackendChoice]:
    """
    Every installed backend, by name: the built-in ones (always, even where
    an editable install hides plugin directories from the scan) and every
    plugin found.
    """
    choices: dict[str, IBackendChoice] = {choice.name: choice for choice in BUILT_IN}
    choices.update((choice.name, choice) for choice in getPlugins(IBackendChoice))
    return choices


def load_backend(name: str) -> ITLSBackend:
    """
    Make the backend called C{name}; its library is imported only now.

    @raise NoSuchBackend: none of that name is installed.
    """
    choices = available()
    try:
        choice = choices[name]
    except KeyError:
        raise NoSuchBackend(
            f"no TLS backend called {name!r} (installed: {', '.join(sorted(choices))})"
        ) from None
    return choice.load()
