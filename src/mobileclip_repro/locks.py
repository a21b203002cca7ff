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

One DAG per results folder (``hold_dag_lock``): the Snakemake main process holds ``<results_dir>/.dag.lock``
for its lifetime, so a DAG started from another working directory (Snakemake's own lock covers
only one) is refused before it deletes the first one's outputs or opens its logs.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import TextIO

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
DAG_LOCK_FILE = ".dag.lock"


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


class ResultsBusy(FolderBusy):
    """Another Snakemake DAG, from any working directory or host, runs on the results folder."""


# The results folders whose DAG lock this process holds, with the open lock file that holds it.
# The lock lives as long as the file stays open: dropping the handle (or opening and closing the
# file a second time in this process: POSIX record locks are per process) would release it.
_held_dag_locks: dict[Path, TextIO] = {}


def hold_dag_lock(results_dir: Path) -> None:
    """Claim ``results_dir`` for this process's DAG until ``release_dag_lock`` or the process ends,
    however it ends (the kernel drops the lock of a dead process). Raises ``ResultsBusy``, naming
    the holder, when another process holds it; touches nothing in the folder then. Holding it
    again from the same process is a no-op."""
    results_dir = Path(results_dir).resolve()
    if results_dir in _held_dag_locks:
        return
    results_dir.mkdir(parents=True, exist_ok=True)
    handle = open(results_dir / DAG_LOCK_FILE, "a+")  # "a+": a refused DAG must not truncate the holder's note
    try:
        _lock(handle)
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES, as the platform has it
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not written its name yet"
        handle.close()
        raise ResultsBusy(
            f"{results_dir} is in use by another Snakemake DAG: {holder}. One DAG per results_dir: "
            "Snakemake's own lock covers one working directory only, and a second DAG here would delete "
            "the first one's outputs and logs. Wait for that DAG to end, or stop it (kill that pid on "
            "that host), then rerun; or give this config another results_dir.") from None
    except OSError as error:  # ENOLCK, ENOSYS, EOPNOTSUPP: no locks on this filesystem
        handle.close()
        log.warning("cannot lock %s (%s); nothing stops a second DAG on this results folder", handle.name, error)
        return
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, working directory {os.getcwd()}, "
                 f"started {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n")
    handle.flush()
    _held_dag_locks[results_dir] = handle


def release_dag_lock(results_dir: Path) -> None:
    """Let another DAG have ``results_dir`` (nothing when this process does not hold it). The file
    keeps the last holder's note; only the lock says whether the folder is busy."""
    handle = _held_dag_locks.pop(Path(results_dir).resolve(), None)
    if handle is not None:
        handle.close()
