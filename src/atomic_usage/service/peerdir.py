"""The peer folder of several serving processes: where it is, who holds it, and what dead runs left.

Every serving process of one store (``serve --processes N``, or several ``serve`` commands on
one data folder) keeps its peer socket and its published counts in one folder under the
temporary folder (:func:`peer_folder`). Each holds a shared ``flock`` on the folder's
``owners.lock`` for as long as it serves (:func:`join`), and so does the supervisor of
``serve --processes`` for as long as it runs. The kernel drops that lock when the
process ends, SIGKILL included, so "nobody holds it" is the sign that every owner is gone:

- the first process to join a folder nobody holds clears what a dead run left in it
  (sockets, counts), so a restarted service starts from zero, as one process does;
- the last process to leave removes the folder (:func:`leave`);
- a starting process removes the folders of other stores that nobody holds any more
  (:func:`clear_stale`): those of runs killed with SIGKILL, which could not remove their own.

A folder is removed only under an exclusive lock, which no live process lets anyone take, and
a process that was waiting to join a folder while it was removed sees that its lock file is
not the folder's any more and joins again (a new folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Final

from ..errors import ConfigError

__all__ = ["FOLDER_PREFIX", "clear_stale", "join", "leave", "listening", "peer_folder"]

FOLDER_PREFIX: Final = "atomic-peers-"
"""How the name of every peer folder starts (then a hash of the data folder's path)."""

_LOCK: Final = "owners.lock"
"""The file whose shared lock every serving process of the folder holds."""

_log = logging.getLogger("atomic_usage.service")


_SOCKET_PATH_MAX: Final = 107
"""Bytes a Unix socket's path may hold (``sun_path`` is 108, with its closing NUL)."""


def peer_folder(data_dir: Path) -> Path:
    """The folder of the peer sockets of the processes serving the store in ``data_dir``.

    Under the temporary folder, named by a hash of the data folder's resolved path: the same
    for every process on that store. Where the temporary folder's path is too long for a
    socket in it (a long ``TMPDIR``), under ``/tmp`` instead, so every process still agrees.

    Raises:
        ConfigError: neither leaves room for a socket's path; says to shorten ``TMPDIR``.
    """
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    for base in dict.fromkeys([tempfile.gettempdir(), "/tmp"]):
        folder = Path(base) / f"{FOLDER_PREFIX}{digest}"
        if len(os.fsencode(folder / "4294967296.sock")) <= _SOCKET_PATH_MAX and Path(base).is_dir():
            return folder
    raise ConfigError(
        f"the temporary folder {tempfile.gettempdir()!r} is too long for the sockets serving processes "
        f"share ({_SOCKET_PATH_MAX} bytes at most for a socket's path) and /tmp is missing; set TMPDIR "
        "to a shorter folder",
        name="TMPDIR",
    )


def _is_current(fd: int, path: Path) -> bool:
    """Whether the open lock file ``fd`` is still the one at ``path`` (not removed meanwhile)."""
    held = os.fstat(fd)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _empty(folder: Path) -> None:
    """Removes everything in ``folder`` but its lock file."""
    for entry in folder.iterdir():
        if entry.name == _LOCK:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue


def _is_own_folder(info: os.stat_result) -> bool:
    """Whether ``info`` (of :meth:`~pathlib.Path.lstat`) is a folder of this user, not a symbolic link."""
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


def _check_own(folder: Path) -> None:
    """Fails unless ``folder`` is a folder (not a symbolic link) of this user; makes it mode 0700.

    Its name is known to anyone (a hash of the data folder's path) and it lies in the shared
    temporary folder: a symbolic link put there would have the first joiner empty the folder it
    points to, and another user's folder would hold this service's sockets and counts.

    Raises:
        ConfigError: it is not such a folder; the message names it.
    """
    info = folder.lstat()
    if not _is_own_folder(info):
        if stat.S_ISLNK(info.st_mode):
            found = f"a symbolic link to {os.readlink(folder)}"
        elif stat.S_ISDIR(info.st_mode):
            found = f"a folder of uid {info.st_uid}, not {os.getuid()}"
        else:
            found = "a file"
        raise ConfigError(
            f"{folder}: the peer folder of the serving processes is not a folder of this user ({found}); "
            "remove it, or set TMPDIR to a folder only this user can write."
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(folder, 0o700)


def join(folder: Path) -> int:
    """Makes this process one of the folder's owners, and clears it first if nobody held it.

    Blocks while another process clears or removes the folder.

    Args:
        folder: the peer folder (:func:`peer_folder`); created (mode 0700) when missing.

    Returns:
        The open lock file, holding the shared lock: pass it to :func:`leave`.
    """
    lock = folder / _LOCK
    while True:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_own(folder)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:  # removed by the last process out between mkdir and open
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                first = True
            except BlockingIOError:
                fcntl.flock(fd, fcntl.LOCK_SH)
                first = False
            if not _is_current(fd, lock):  # the folder was removed while this process waited
                os.close(fd)
                continue
            if first:
                # Nobody held the folder: whatever is in it was left by processes that are gone.
                _empty(folder)
                # Not atomic (flock drops the lock, then takes the shared one): another process
                # that takes the exclusive lock meanwhile clears a folder with nothing of ours yet,
                # or (another store's server clearing stale folders) removes it: then join again.
                fcntl.flock(fd, fcntl.LOCK_SH)
                if not _is_current(fd, lock):
                    os.close(fd)
                    continue
            return fd
        except BaseException:
            os.close(fd)
            raise


def leave(fd: int, folder: Path) -> bool:
    """Gives up this process's share of the folder, and removes the folder if it was the last one.

    Args:
        fd: what :func:`join` returned; closed here.
        folder: the peer folder.

    Returns:
        Whether the folder was removed.
    """
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # others still serve from it
        if not _is_current(fd, folder / _LOCK):
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def listening(path: Path) -> bool:
    """Whether a process accepts connections on the Unix socket ``path`` (an unknown answer: yes)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:  # busy (a full backlog) or unknown: taken as alive, so its folder stays
        return True
    finally:
        probe.close()
    return True


def clear_stale(root: Path, *, keep: Path) -> list[Path]:
    """Removes the peer folders under ``root`` that no live process holds (left by SIGKILLed runs).

    Only this user's folders are touched. A folder is removed under its exclusive lock, which
    every live owner's shared lock keeps anyone from taking; a folder where some socket still
    accepts connections is kept in any case. Each failure is logged and the next folder tried.

    Args:
        root: the folder holding the peer folders (the temporary folder).
        keep: this process's own peer folder, never touched.

    Returns:
        The folders removed.
    """
    removed = []
    for folder in sorted(root.glob(f"{FOLDER_PREFIX}*")):
        if folder == keep:
            continue
        try:
            if not _is_own_folder(folder.lstat()):
                continue
            fd = os.open(folder / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            _log.debug("peer folder %s left alone: %s", folder, exc)
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process holds it
            if not _is_current(fd, folder / _LOCK) or any(listening(s) for s in folder.glob("*.sock")):
                continue
            shutil.rmtree(folder)
            removed.append(folder)
        except OSError as exc:
            _log.warning("could not remove the stale peer folder %s: %s", folder, exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
    return removed
