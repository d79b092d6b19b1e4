"""
Per-application profiles (SPEC section 5): which policy an application gets.

A L{PolicySet} is a loaded policy file: the file's defaults and its
profiles in order. L{PolicySet.for_peer} gives the policy of the first
profile whose L{Match} fits the application (as the kernel vouches for it,
L{PeerIdentity}), else the defaults. Nothing is cached per application: the
answer is computed on each call from the peer and, for groups, C{/proc}.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from .peer import PeerIdentity
from .policy import DEFAULT_POLICY, Policy

GroupsReader = Callable[[int], "frozenset[int]"]
"""Given a pid, the process's supplementary group ids; may raise L{OSError}."""


def _status_fields(pid: int, proc: str) -> dict[str, list[str]]:
    with open(os.path.join(proc, str(pid), "status"), encoding="utf-8", errors="replace") as f:
        return {k: v.split() for k, _, v in (line.partition(":") for line in f)}


def read_proc_groups(pid: int, proc: str = "/proc") -> frozenset[int]:
    """
    The supplementary groups of process C{pid}: its C{/proc/PID/status}
    C{Groups:} line.

    @raise OSError: the process is gone or its status unreadable.
    """
    return frozenset(int(g) for g in _status_fields(pid, proc).get("Groups", []))


def read_proc_identity(pid: int, proc: str = "/proc") -> PeerIdentity:
    """
    What C{SO_PEERCRED} would say of process C{pid}: its effective uid and
    gid (the second column of C{Uid:}/C{Gid:} in C{/proc/PID/status}) and
    its executable (C{/proc/PID/exe}, L{None} when unreadable).

    @raise OSError: no such process, or its status unreadable.
    """
    fields = _status_fields(pid, proc)
    try:
        executable: str | None = os.readlink(os.path.join(proc, str(pid), "exe"))
    except OSError:
        executable = None
    return PeerIdentity(pid, int(fields["Uid"][1]), int(fields["Gid"][1]), executable)


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


@dataclass(frozen=True)
class Match:
    """
    Which applications a profile is for. Every criterion given must hold;
    within one criterion any of its values will do. An empty C{Match}
    matches nothing (the loader refuses one).

    @ivar executables: absolute paths, exact or globs (C{fnmatch}: C{*} also
        crosses C{/}), matched against C{/proc/PID/exe}.
    @ivar uids: user ids, from C{uid}.
    @ivar users: C{(name, uid)} from C{user}.
    @ivar groups: C{(name, gid)} from C{group}: the peer's gid or any of
        its supplementary groups.
    """

    executables: tuple[str, ...] = ()
    uids: tuple[int, ...] = ()
    users: tuple[tuple[str, int], ...] = ()
    groups: tuple[tuple[str, int], ...] = ()

    def empty(self) -> bool:
        """
        Whether no criterion is given.
        """
        return not (self.executables or self.uids or self.users or self.groups)

    def matches(self, peer: PeerIdentity, read_groups: GroupsReader) -> bool:
        """
        Whether C{peer} fits; C{read_groups} is asked only when a group
        criterion is given and the peer's own gid is not one of them.
        """
        if self.empty():
            return False
        if self.executables:
            exe = peer.executable
            if exe is None or not any(
                exe == p or (_has_magic(p) and fnmatchcase(exe, p)) for p in self.executables
            ):
                return False
        if self.uids and peer.uid not in self.uids:
            return False
        if self.users and peer.uid not in {uid for _, uid in self.users}:
            return False
        if self.groups:
            gids = {gid for _, gid in self.groups}
            if peer.gid not in gids:
                try:
                    supplementary = read_groups(peer.pid)
                except OSError:
                    return False
                if not gids & supplementary:
                    return False
        return True

    def describe(self) -> str:
        """
        The criteria in words: C{executable /usr/bin/curl and user alice}.
        """
        parts = []
        for label, values in (
            ("executable", self.executables),
            ("uid", tuple(str(u) for u in self.uids)),
            ("user", tuple(f"{n} (uid {u})" for n, u in self.users)),
            ("group", tuple(f"{n} (gid {g})" for n, g in self.groups)),
        ):
            if values:
                parts.append(f"{label} {' or '.join(values)}")
        return " and ".join(parts) or "nothing"


@dataclass(frozen=True)
class Profile:
    """
    One entry of C{profiles:}.

    @ivar name: its C{name}.
    @ivar match: its C{match}.
    @ivar policy: the file's defaults with its overrides applied, and
        C{profile} set to C{name}.
    @ivar overrides: the keys it sets, as written in the file.
    @ivar line: where it starts in the file.
    """

    name: str
    match: Match
    policy: Policy
    overrides: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class PolicySet:
    """
    A loaded policy file: its defaults and its profiles, first match wins.

    @ivar default: the policy for applications no profile matches.
    @ivar profiles: the profiles in the file's order.
    @ivar read_groups: how a peer's supplementary groups are read (for tests
        to replace); L{read_proc_groups} by default.
    """

    default: Policy = DEFAULT_POLICY
    profiles: tuple[Profile, ...] = ()
    read_groups: GroupsReader = field(default=read_proc_groups, compare=False, repr=False)

    @property
    def source(self) -> str:
        """
        The file this came from, or C{"built-in defaults"}.
        """
        return self.default.source

    def profile_for(self, peer: PeerIdentity) -> Profile | None:
        """
        The first profile matching C{peer}, or L{None}.
        """
        for profile in self.profiles:
            if profile.match.matches(peer, self.read_groups):
                return profile
        return None

    def for_peer(self, peer: PeerIdentity) -> Policy:
        """
        The policy for C{peer}: its profile's, else the defaults.
        """
        profile = self.profile_for(peer)
        return self.default if profile is None else profile.policy

    def with_generation(self, generation: int) -> PolicySet:
        """
        This set with every policy's C{generation} set.
        """
        return dataclasses.replace(
            self,
            default=dataclasses.replace(self.default, generation=generation),
            profiles=tuple(
                dataclasses.replace(p, policy=dataclasses.replace(p.policy, generation=generation))
                for p in self.profiles
            ),
        )
