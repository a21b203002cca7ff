"""Seeds derived from names: one stream of random numbers per (purpose, run seed, key, ...).

Every random choice the project makes (a sample's stored augmentations, its synthetic
captions, a worker's shard order, a training example's augmentation index) takes its
seed from here, so reruns, resumed jobs and any number of workers draw the same values.
Python's ``hash`` of a string changes per process, so it cannot serve.
"""
from __future__ import annotations

import hashlib


def seed_from(*parts) -> int:
    """A 63-bit seed from any printable parts, stable across processes and machines."""
    digest = hashlib.sha256("/".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
