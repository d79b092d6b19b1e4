"""
Reading a file on behalf of a caller the daemon cannot name (the SSA
kernel module does not say which process called): only what every local
user may read, so that the daemon's own rights lend nobody anything.

A path qualifies when it is absolute, has no symbolic link in it, every
directory on the way may be searched by others (C{o+x}) and the file (or
each file of a directory) may be read by others (C{o+r}). The walk opens
one component at a time with C{O_NOFOLLOW} beside the directory opened
before it and checks what it opened, so swapping a component for a link
while the daemon reads fails instead of reaching elsewhere.
"""

from __future__ import annotations

import errno
import os
import stat

#: The most bytes read from one file or directory.
MAX_BYTES = 1 << 20
_PEM_MARK = b"-----BEGIN"


class NotPublic(OSError):
    """
    The path is not one every local user may read.
    """


def read_public(path: str) -> bytes:
    """
    The contents of C{path}: a file, or for a directory its regular files
    holding PEM, in name order.

    @raise OSError: it cannot be read, or not by everybody (L{NotPublic},
        C{EACCES}); the message says why, never what it holds.
    """
    if not os.path.isabs(path):
        raise NotPublic(errno.EACCES, f"{path} is not an absolute path")
    parts = [part for part in path.split("/") if part]
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index, part in enumerate(parts):
            _searchable(fd, "/" + "/".join(parts[:index]))
            if part in (".", ".."):
                raise NotPublic(errno.EACCES, f"{path} is not a plain path (it holds {part!r})")
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise NotPublic(errno.EACCES, f"{path} goes through a symbolic link") from None
                raise
            os.close(fd)
            fd = next_fd
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            _searchable(fd, path)
            return _directory(fd, path)
        return _file(fd, path)
    finally:
        os.close(fd)


def _searchable(fd: int, where: str) -> None:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISDIR(mode) or not mode & stat.S_IXOTH:
        raise NotPublic(errno.EACCES, f"{where or '/'} is not a directory every user may enter")


def _file(fd: int, path: str) -> bytes:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        raise NotPublic(errno.EACCES, f"{path} is not a regular file")
    if not mode & stat.S_IROTH:
        raise NotPublic(errno.EACCES, f"{path} is not readable by every user")
    data = os.pread(fd, MAX_BYTES + 1, 0)
    if len(data) > MAX_BYTES:
        raise OSError(errno.EFBIG, f"{path} is larger than {MAX_BYTES} bytes")
    return data


def _directory(fd: int, path: str) -> bytes:
    if not os.fstat(fd).st_mode & stat.S_IROTH:
        raise NotPublic(errno.EACCES, f"{path} is not a directory every user may list")
    chunks = []
    seen: set[tuple[int, int]] = set()
    total = 0
    for name in sorted(os.listdir(fd)):
        try:
            entry = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError:
            continue  # a link (c_rehash names) or gone: its target, if here, is read by its own name
        try:
            status = os.fstat(entry)
            key = (status.st_dev, status.st_ino)
            if key in seen or not stat.S_ISREG(status.st_mode) or not status.st_mode & stat.S_IROTH:
                continue
            seen.add(key)
            data = os.pread(entry, MAX_BYTES + 1, 0)
        finally:
            os.close(entry)
        if _PEM_MARK not in data:
            continue
        total += len(data)
        if total > MAX_BYTES:
            raise OSError(errno.EFBIG, f"the PEM files of {path} hold more than {MAX_BYTES} bytes")
        chunks.append(data if data.endswith(b"\n") else data + b"\n")
    if not chunks:
        raise OSError(errno.EINVAL, f"{path} holds no PEM file every user may read")
    return b"".join(chunks)
