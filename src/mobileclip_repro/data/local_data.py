"""`local-data`: the manifest of data the DAG finds on disk (``data.source: local``).

Toy and hub data are made by jobs whose manifests say what they wrote; local data is made by
no job, so this one lists it: every shard of the given folders with its size and sha256
(``shards.SHARD_FILES_KEY``), which is what training reads and what identifies its data. The
DAG reruns it whenever a shard is added, removed or rewritten (``folder_listing``, a param read
when the DAG starts), and everything downstream follows: subsets are selected again, train jobs
resume (the same bytes) or start over (other bytes).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
SCHEMA = "mobileclip_repro/local-data/1"


def folder_listing(folders: list[str | os.PathLike]) -> str:
    """A digest of every shard's path, size and modification time under ``folders``: cheap (stat
    only) and changed by any shard added, removed or rewritten. Not the data's identity (the job's
    sha256 are): a rewrite of the same bytes reruns the job, whose manifest then says the same."""
    # shards.list_shards' rule, without its imports: this runs when the DAG loads
    entries = [(str(path), stat.st_size, stat.st_mtime_ns)
               for folder in folders for path in sorted(Path(folder).rglob("*.tar")) for stat in [path.stat()]]
    return f"{len(entries)} shards, listing sha256 {hashlib.sha256(json.dumps(entries).encode()).hexdigest()}"


def describe(folders: list[Path], previous: dict | None = None) -> dict:
    """The manifest of ``folders``; digests of ``previous``'s entries of the same path, size and
    modification time are reused (a rerun after one shard changed hashes that shard only)."""
    from mobileclip_repro import shards

    known = {(entry["path"], entry["bytes"], entry.get("mtime_ns")): entry["sha256"]
             for entry in (previous or {}).get(shards.SHARD_FILES_KEY, [])}
    files, hashed = [], 0
    for folder in folders:
        paths = shards.list_shards(folder)
        if not paths:
            raise FileNotFoundError(f"no .tar shards in {folder}")
        for path in paths:
            stat = path.stat()
            key = (str(shards.absolute_path(path)), stat.st_size, stat.st_mtime_ns)
            digest = known.get(key)
            if digest is None:
                digest, hashed = shards.file_sha256(path), hashed + 1
            files.append({"path": key[0], "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest})
    log.info("%d shards in %s (%d hashed, %d known from the last listing)", len(files),
             ", ".join(map(str, folders)), hashed, len(files) - hashed)
    return {"schema": SCHEMA, "folders": [str(folder) for folder in folders],
            "totals": {"shards": len(files), "bytes": sum(entry["bytes"] for entry in files)},
            shards.SHARD_FILES_KEY: files}
