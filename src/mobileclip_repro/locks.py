"""One writer per output folder: the trainer's run folder, a reinforce job's shards.

POSIX record locks (``lockf``) on ``<folder>/.lock``, not ``flock``: forked DataLoader workers
do not inherit them, so a killed job's lingering workers do not keep the folder busy; NFS carries
them between nodes; and the kernel drops them when the process dies, however it dies. They are
per process: a second writer in the same process is not seen. A filesystem without locks
(Lustre mounted without ``flock``) gets a warning and no guard, rather than a job that can never
start.

A lock covers the whole folder, or only some byte ranges of the lock file, one per shard: the
hub DAG's reinforce jobs write disjoint groups of shards into one folder side by side, and
only a second writer of the same shard must stop.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock (or a shard's part of it)."""


def _lock(handle, length: int = 0, start: int = 0) -> None:
    fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start, os.SEEK_SET)


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "trainer", slots: list[int] | None = None):
    """Hold an exclusive lock on ``folder`` (``slots`` None) or on one byte of its lock file per
    slot (e.g. a shard's number) until the block ends; raises ``FolderBusy`` at once when any of
    it is held by another process. ``what`` names the writer in the message."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+") as handle:
        try:
            if slots is None:
                _lock(handle)
            else:
                for slot in slots:
                    try:
                        _lock(handle, 1, slot)
                    except (BlockingIOError, PermissionError):
                        raise FolderBusy(f"shard {slot} of {folder} is being written by another {what}; wait for it "
                                         "to end or kill it, then rerun") from None
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES, as the platform has it
            handle.seek(0)
            raise FolderBusy(f"{folder} is being written by another {what} ({handle.read().strip() or 'pid ?'}); "
                             "wait for it to end or kill it, then rerun") from None
        except OSError as error:  # ENOLCK, ENOSYS, EOPNOTSUPP: no locks on this filesystem
            log.warning("cannot lock %s (%s); nothing stops a second %s on this folder", handle.name, error, what)
        if slots is None:  # who holds it, for the message a second writer gets
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
        yield
