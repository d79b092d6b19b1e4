"""
Reading the administrator's policy file (SPEC section 5).

L{load_policy} reads one YAML file safely (C{yaml.SafeLoader}'s composer, so
every value keeps its line), checks every key against the schema in
L{ssa.policy.KEYS}, reads the trust store the file names, and returns a
L{PolicySet}. Anything wrong raises L{PolicyError}: C{FILE:LINE: KEY: what
is wrong}. Reading these two (the file and its trust store) is the only
I/O here; the daemon decides when to load (start-up, SIGHUP).
"""

from __future__ import annotations

import dataclasses
import difflib
import grp
import os
import pwd
import re
import warnings
from collections.abc import Callable, Iterable

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .crls import CRLSet, crl_set
from .peer import PeerIdentity
from .policy import (
    DEFAULT_POLICY,
    KEY_BY_NAME,
    Invalid,
    Located,
    Policy,
    PolicyError,
    conflict,
    render,
    shown,
)
from .profiles import GroupsReader, Match, PolicySet, Profile, read_proc_groups

DEFAULT_PATH = "/etc/ssa/config.yml"
MATCH_KEYS = ("executable", "uid", "user", "group")
_MAX_DEPTH = 32
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL)

__all__ = ["DEFAULT_PATH", "PolicyError", "PolicySet", "describe", "explain", "load_default",
           "load_policy", "parse_policy", "read_crls", "read_trust_store"]


def load_policy(path: str | os.PathLike[str], *, read_groups: GroupsReader | None = None) -> PolicySet:
    """
    Load the policy file at C{path}; it must exist.

    @param read_groups: how a peer's supplementary groups are read (default
        C{/proc/PID/status}); for tests.
    @raise PolicyError: the file is unreadable or wrong.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PolicyError(path, None, None, f"cannot read the policy file: {e.strerror}") from None
    return parse_policy(data, path, read_groups=read_groups)


def load_default(path: str | None = None, *, read_groups: GroupsReader | None = None) -> PolicySet:
    """
    Load C{path} (by default L{DEFAULT_PATH}, C{/etc/ssa/config.yml}), or
    the built-in defaults when there is no such file.

    @raise PolicyError: the file exists but is unreadable or wrong.
    """
    path = DEFAULT_PATH if path is None else path
    if not os.path.lexists(path):
        return PolicySet(read_groups=read_groups or read_proc_groups)
    return load_policy(path, read_groups=read_groups)


def parse_policy(data: bytes | str, path: str, *, read_groups: GroupsReader | None = None) -> PolicySet:
    """
    Check the text C{data} of the policy file C{path} (named in messages; a
    relative C{trust-store-path} is taken from its directory).

    @raise PolicyError: it is wrong.
    """
    return _Reader(path).read(data, read_groups or read_proc_groups)


def read_trust_store(path: str) -> bytes:
    """
    The PEM certificates of a file, or of every file in a directory that
    holds any, each certificate once.

    @raise ValueError: unreadable, or no certificate, or a bad certificate;
        the message names the path.
    """
    found: list[tuple[str, bytes]] = []
    if os.path.isdir(path):
        try:
            names = sorted(os.listdir(path))
        except OSError as e:
            raise ValueError(f"cannot read the directory {path}: {e.strerror}") from None
        for name in names:
            full = os.path.join(path, name)
            if os.path.isfile(full):
                data = _read(full)
                found += [(full, block) for block in _PEM_BLOCK.findall(data)]
        if not found:
            raise ValueError(f"the directory {path} holds no PEM certificates")
    else:
        data = _read(path)
        found = [(path, block) for block in _PEM_BLOCK.findall(data)]
        if not found:
            raise ValueError(f"{path} holds no PEM certificates")
    unique: dict[bytes, bytes] = {}
    for name, block in found:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cert = x509.load_pem_x509_certificate(block)
        except ValueError as e:
            raise ValueError(f"{name} holds a certificate that cannot be parsed ({e})") from None
        unique.setdefault(cert.public_bytes(Encoding.DER), cert.public_bytes(Encoding.PEM))
    return b"".join(unique.values())


def read_crls(path: str) -> CRLSet:
    """
    The CRLs (PEM or DER) of a file, or of every file in a directory
    (names starting with a dot are skipped; an empty directory holds no
    CRLs, which is allowed: the directory may be filled later, then
    SIGHUP).

    @raise ValueError: unreadable, or a file that is not a CRL; the
        message names the file.
    """
    if os.path.isdir(path):
        try:
            names = sorted(n for n in os.listdir(path) if not n.startswith("."))
        except OSError as e:
            raise ValueError(f"cannot read the directory {path}: {e.strerror}") from None
        files = [os.path.join(path, n) for n in names]
        files = [f for f in files if os.path.isfile(f)]
    else:
        files = [path]
    return crl_set(path, ((f, _read(f)) for f in files))


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None


def _suggest(key: str, names: Iterable[str]) -> str:
    names = list(names)
    lower = {n.lower(): n for n in names}
    prefixed = [n for n in names if len(key) >= 3 and n.startswith(key.lower())]
    close = ([lower[key.lower()]] if key.lower() in lower
             else difflib.get_close_matches(key, names, 1, 0.6) or prefixed[:1])
    return f" (did you mean {close[0]}?)" if close else ""


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _Reader:
    """
    One reading of one file: its path, and the trust stores and CRLs read
    so far.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))
        self.loaded: dict[tuple[Callable, str], object] = {}  # (reader, absolute path) -> what it read
        self.constructor = yaml.constructor.SafeConstructor()

    def error(self, line: int | None, key: str | None, reason: str, profile: str | None = None) -> PolicyError:
        if profile is not None:
            reason += f" (in profile {profile!r})"
        return PolicyError(self.path, line, key, reason)

    def read(self, data: bytes | str, read_groups: GroupsReader) -> PolicySet:
        try:
            root = yaml.compose(data, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else None
            raise self.error(line, None, f"not valid YAML: {e.problem or e.context}") from None
        except yaml.YAMLError as e:
            raise self.error(None, None, f"not valid YAML: {e}") from None
        base = dataclasses.replace(DEFAULT_POLICY, source=self.path)
        if root is None:
            return PolicySet(base, (), read_groups)
        if not isinstance(root, yaml.MappingNode):
            raise self.error(_line(root), None, "the file must be a mapping of keys to values")
        pairs = self.pairs(root, (*KEY_BY_NAME, "profiles"), None)
        profiles = [p for p in pairs if p[0] == "profiles"]
        default, _ = self.apply([p for p in pairs if p[0] != "profiles"], base, _line(root), None)
        found = self.profiles(profiles[0][1], profiles[0][2], default) if profiles else ()
        return PolicySet(default, found, read_groups)

    def pairs(self, node: yaml.MappingNode, known: Iterable[str], profile: str | None
              ) -> list[tuple[str, int, yaml.Node]]:
        """
        The C{(key, line, value node)} of a mapping; unknown and repeated
        keys (aliases count as their key) are errors.
        """
        known = list(known)
        seen: dict[str, tuple[int, str]] = {}
        out = []
        for knode, vnode in node.value:
            line = _line(knode)
            if not (isinstance(knode, yaml.ScalarNode) and knode.tag == "tag:yaml.org,2002:str"):
                text = knode.value if isinstance(knode, yaml.ScalarNode) else "?"
                raise self.error(line, str(text), "expected a key name", profile)
            key = knode.value
            if key not in known:
                raise self.error(line, key, "unknown key" + _suggest(key, known), profile)
            canonical = KEY_BY_NAME[key].name if key in KEY_BY_NAME else key
            if canonical in seen:
                first, written = seen[canonical]
                same = "" if written == key else f" as {written}"
                raise self.error(line, key, f"already given{same} on line {first}", profile)
            seen[canonical] = (line, key)
            out.append((key, line, vnode))
        return out

    def located(self, node: yaml.Node, depth: int = 0) -> Located:
        """
        A value node as plain data that keeps its line.
        """
        line = _line(node)
        if depth > _MAX_DEPTH:
            raise Invalid("the value is nested too deeply", line)
        if isinstance(node, yaml.SequenceNode):
            return Located(tuple(self.located(n, depth + 1) for n in node.value), line)
        if isinstance(node, yaml.MappingNode):
            return Located({}, line)  # no scalar key takes a mapping; shown as "a mapping"
        try:
            return Located(self.constructor.construct_object(node), line)
        except yaml.YAMLError as e:
            raise Invalid(f"cannot read the value: {getattr(e, 'problem', e)}", line) from None

    def apply(self, pairs: list[tuple[str, int, yaml.Node]], base: Policy, start: int, profile: str | None
              ) -> tuple[Policy, tuple[str, ...]]:
        """
        C{base} with the policy keys of C{pairs} applied, and those keys.
        """
        changes: dict[str, object] = {}
        lines: dict[str, tuple[int, str]] = {}
        for key, line, vnode in pairs:
            spec = KEY_BY_NAME[key]
            if spec.global_only and profile is not None:
                raise self.error(line, key, "can only be set at the top level, not in a profile", profile)
            try:
                value = spec.parse(self.located(vnode))
            except Invalid as e:
                raise self.error(e.line or line, key, e.message, profile) from None
            changes[spec.field] = value
            if spec.field == "trust_store_path":
                changes.update(self.store(value, line, key, profile))
            if spec.field == "crl_path":
                changes.update(self.crls(value, line, key, profile))
            lines[spec.name] = (line, key)
        policy = dataclasses.replace(base, **changes)
        problem = conflict(policy)
        if problem:
            # Blame the key written last: reading down, that is where it broke.
            line, key = max((lines[k] for k in problem[0] if k in lines), default=(start, problem[0][0]))
            raise self.error(line, key, problem[1], profile)
        return policy, tuple(written for _, written in lines.values())

    def store(self, path: object, line: int, key: str, profile: str | None) -> dict[str, object]:
        """
        The fields that C{trust-store-path: path} sets, its store read.
        """
        if path is None:
            return {"trust_store_path": None, "trust_anchors": None}
        full, anchors = self.read_once(path, line, key, profile, read_trust_store)
        return {"trust_store_path": full, "trust_anchors": anchors}

    def crls(self, path: object, line: int, key: str, profile: str | None) -> dict[str, object]:
        """
        The fields that C{crl-path: path} sets, its CRLs read.
        """
        if path is None:
            return {"crl_path": None, "crls": None}
        full, crls = self.read_once(path, line, key, profile, read_crls)
        return {"crl_path": full, "crls": crls}

    def read_once(self, path: object, line: int, key: str, profile: str | None,
                  reader: Callable[[str], object]) -> tuple[str, object]:
        """
        The absolute form of C{path} (relative to the file's directory) and
        what C{reader} reads there (once per file read).
        """
        full = os.path.normpath(os.path.join(self.base, str(path)))
        if (reader, full) not in self.loaded:
            try:
                self.loaded[reader, full] = reader(full)
            except ValueError as e:
                raise self.error(line, key, str(e), profile) from None
        return full, self.loaded[reader, full]

    def profiles(self, line: int, node: yaml.Node, default: Policy) -> tuple[Profile, ...]:
        """
        The C{profiles:} list, each entry checked like the top level.
        """
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(line, "profiles", "expected a list of profiles, each with a name and a match")
        found: dict[str, Profile] = {}
        for index, item in enumerate(node.value, 1):
            start = _line(item)
            if not isinstance(item, yaml.MappingNode):
                raise self.error(start, "profiles", f"entry {index} is not a mapping with a name and a match")
            name = self.profile_name(item, index, found)
            pairs = self.pairs(item, ["name", "match", *KEY_BY_NAME], name)
            matches = [p for p in pairs if p[0] == "match"]
            if not matches:
                raise self.error(start, "match", "missing: say which applications the profile is for", name)
            match = self.match(matches[0][1], matches[0][2], name)
            policy, keys = self.apply([p for p in pairs if p[0] not in ("name", "match")], default, start, name)
            found[name] = Profile(name, match, dataclasses.replace(policy, profile=name), keys, start)
        return tuple(found.values())

    def profile_name(self, item: yaml.MappingNode, index: int, found: dict[str, Profile]) -> str:
        for knode, vnode in item.value:
            if isinstance(knode, yaml.ScalarNode) and knode.value == "name":
                try:
                    name = self.located(vnode)
                except Invalid as e:
                    raise self.error(e.line, "name", e.message) from None
                if not isinstance(name.value, str) or not name.value.strip():
                    raise self.error(name.line, "name", f"expected the profile's name, not {shown(name)}")
                if name.value in found:
                    first = found[name.value].line
                    raise self.error(name.line, "name", f"profile {name.value!r} is already defined on line {first}")
                return name.value
        raise self.error(_line(item), "profiles", f"entry {index} has no name")

    def match(self, line: int, node: yaml.Node, profile: str) -> Match:
        """
        A profile's C{match:} mapping.
        """
        if not isinstance(node, yaml.MappingNode):
            raise self.error(line, "match", f"expected a mapping of {', '.join(MATCH_KEYS)}", profile)
        criteria: dict[str, tuple[object, ...]] = {}
        for key, kline, vnode in self.pairs(node, MATCH_KEYS, profile):
            try:
                value = self.located(vnode)
                items = value.value if isinstance(value.value, tuple) else (value,)
                if not items:
                    raise Invalid("expected at least one value, not an empty list")
                criteria[key] = tuple(_criterion(key, item) for item in items)
            except Invalid as e:
                raise self.error(e.line or kline, key, e.message, profile) from None
        if not criteria:
            raise self.error(line, "match", f"needs at least one of {', '.join(MATCH_KEYS)}", profile)
        return Match(
            executables=criteria.get("executable", ()),  # type: ignore[arg-type]
            uids=criteria.get("uid", ()),  # type: ignore[arg-type]
            users=criteria.get("user", ()),  # type: ignore[arg-type]
            groups=criteria.get("group", ()),  # type: ignore[arg-type]
        )


def _criterion(key: str, item: Located) -> object:
    """
    One value of a C{match} criterion: a path, a uid, or C{(name, id)}.
    """
    value = item.value
    if key == "uid":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise Invalid(f"expected a user id (a whole number), not {shown(item)}", item.line)
        return value
    if not isinstance(value, str) or not value:
        raise Invalid(f"expected a {'path' if key == 'executable' else 'name'}, not {shown(item)}", item.line)
    if key == "executable":
        if not value.startswith("/"):
            raise Invalid(f"{value!r} is not an absolute path", item.line)
        return value
    try:
        if key == "user":
            return (value, pwd.getpwnam(value).pw_uid)
        return (value, grp.getgrnam(value).gr_gid)
    except KeyError:
        raise Invalid(f"there is no {key} named {value!r}", item.line) from None


def describe(policies: PolicySet) -> list[str]:
    """
    The lines C{ssa check-config} prints: the defaults as C{key: value},
    then each profile as comments with what it changes.
    """
    lines = [f"{key}: {value}" for key, value in render(policies.default)]
    base = dict(render(policies.default))
    for profile in policies.profiles:
        lines.append(f"# profile {profile.name}: for {profile.match.describe()}")
        for key, value in render(profile.policy):
            if base[key] != value:
                lines.append(f"#   {key}: {value}")
    return lines


def explain(policies: PolicySet, peer: PeerIdentity) -> list[str]:
    """
    The lines of C{ssa check-config --explain}: which profile applies to
    C{peer} and the settings it gets.
    """
    profile = policies.profile_for(peer)
    lines = [f"# pid {peer.pid} uid {peer.uid} gid {peer.gid} {peer.executable or '?'}"]
    if profile is None:
        lines.append("# profile: none (the file's defaults apply)")
    else:
        lines.append(f"# profile: {profile.name} (line {profile.line}: {profile.match.describe()})")
    policy = policies.default if profile is None else profile.policy
    return lines + [f"{key}: {value}" for key, value in render(policy)]
