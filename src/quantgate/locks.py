"""flock()ed lock files and the private folders that hold them, one implementation for baselines, model
builds and GPU leases.

Lock files are opened with O_NOFOLLOW: in a shared folder such as /tmp, another user could otherwise plant a
symlink named like our lock and have us create or truncate a file of theirs choosing. A folder quantgate
creates for locks is mode 0700; one it finds must be a real directory (not a symlink), owned by this user and
not writable by anyone else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import QuantgateError


class LockError(QuantgateError, RuntimeError):
    """A lock folder or file is not safe to use; the message names it and says why."""


def private_dir(path: Path) -> Path:
    """Create `path` with mode 0700 (its parents as usual), or check that an existing one is ours alone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask; this is the mode we mean
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise LockError(f"{path}: cannot use as a lock folder ({exc.strerror or exc})") from None
    if stat.S_ISLNK(info.st_mode):
        raise LockError(f"{path}: lock folder is a symbolic link; refusing to follow it (remove it)")
    if not stat.S_ISDIR(info.st_mode):
        raise LockError(f"{path}: lock folder is not a directory")
    if info.st_uid != os.getuid():
        raise LockError(f"{path}: lock folder belongs to uid {info.st_uid}, not to this user ({os.getuid()}); "
                        f"someone else created it first: remove it or set QUANTGATE_GPU_LOCK_DIR")
    if info.st_mode & 0o022:
        raise LockError(f"{path}: lock folder is writable by others (mode {stat.S_IMODE(info.st_mode):o}); "
                        f"chmod 700 it")
    return path


def open_lock(path: Path) -> IO[str]:
    """The lock file, created 0600 if missing, opened read-write without following a symlink."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockError(f"{path}: lock file is a symbolic link; refusing to follow it") from None
        raise
    return os.fdopen(fd, "r+", encoding="utf-8")


def lock_file(path: Path, blocking: bool = True) -> IO[str] | None:
    """The open, exclusively flock()ed lock file (closing it releases the lock), or None when `blocking` is
    False and someone else holds it."""
    handle = open_lock(path)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return None
    except BaseException:
        handle.close()
        raise
    return handle


@contextlib.contextmanager
def locked(path: Path) -> Iterator[IO[str]]:
    """Hold an exclusive flock on `path` for the block (the file stays: deleting it would race waiters)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_file(path)
    assert handle is not None  # blocking
    try:
        yield handle
    finally:
        handle.close()  # closing drops the flock
