"""On-disk formats: DataComp shards and DataCompDR shards (docs/reference.md §3).

A DataComp sample is ``jpg`` + ``txt`` + ``json`` (``uid``, ``sha256`` of the jpg bytes)
+ ``url.txt``. A DataCompDR sample carries no image and no caption: ``url.txt``,
``syn.json``, ``paug.json``, ``npz`` (or ``pth.gz``) and ``json``; it is joined with the
DataComp sample of the same key/uid.

Writers are atomic (a tar only gets its final name once complete) so an interrupted job
never leaves a half-written shard that a rerun would mistake for a finished one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import webdataset as wds
from PIL import Image

DATACOMP_KEYS = ("jpg", "txt", "json")
DR_KEYS_NPZ = ("syn.json", "paug.json", "npz", "json")
DR_KEYS_PTH = ("syn.json", "paug.json", "pth.gz", "json")


def shard_name(index: int) -> str:
    return f"{index:08d}.tar"


def sample_key(shard_index: int, position: int) -> str:
    """DataComp-style key: shard index then position, so keys sort in shard order."""
    return f"{shard_index:08d}{position:04d}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write; it becomes ``path`` only if the block succeeds.

    Every file a rerun checks for (shards, manifests, records, checkpoints) is written
    this way, so an interrupted job never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    yield partial
    # On disk before the rename, and the rename itself on disk: a crash or power loss then
    # leaves the old file or the new one, never a renamed but empty one.
    with open(partial, "rb") as stream:
        os.fsync(stream.fileno())
    os.replace(partial, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextmanager
def atomic_tar_writer(path: str | os.PathLike, *, mtime: float | None = None,
                      encoder=True) -> Iterator[wds.TarWriter]:
    """A webdataset TarWriter whose output appears at ``path`` only if the block succeeds.

    ``mtime`` fixes the members' modification time; without it TarWriter stamps the
    current time, so the same content would give different bytes on every run.
    ``encoder`` is TarWriter's (True: webdataset's default encoding by extension).
    """
    with atomic_output(path) as partial, open(partial, "wb") as stream:
        writer = wds.TarWriter(stream, mtime=mtime, encoder=encoder)
        try:
            yield writer
        finally:
            writer.close()


def write_json_atomic(path: str | os.PathLike, payload: dict, *, allow_nan: bool = True) -> None:
    with atomic_output(path) as partial:
        partial.write_text(json.dumps(payload, indent=2, allow_nan=allow_nan) + "\n")


def datacomp_record(key: str, jpg: bytes, caption: str, uid: str, url: str,
                    extra_meta: dict | None = None) -> dict:
    """A DataComp sample, ready for ``TarWriter.write``.

    ``extra_meta`` adds fields to the ``json`` metadata (e.g. the toy world's scene, which
    its oracle captioner reads); it may not replace the DataComp fields.
    """
    meta = {"uid": uid, "sha256": sha256_hex(jpg), "caption": caption, "url": url}
    clashes = sorted(set(meta) & set(extra_meta or {}))
    if clashes:
        raise ValueError(f"{key}: extra_meta may not override DataComp metadata fields {clashes}")
    meta.update(extra_meta or {})
    return {"__key__": key, "jpg": jpg, "txt": caption, "json": json.dumps(meta), "url.txt": url}


def encode_npz(image_emb: np.ndarray, text_emb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, image_emb=np.asarray(image_emb, np.float32), text_emb=np.asarray(text_emb, np.float32))
    return buffer.getvalue()


def dr_record(key: str, uid: str, sha256: str, url: str, syn_text: list[str], param_aug: list,
              image_emb: np.ndarray, text_emb: np.ndarray) -> dict:
    """A DataCompDR sample (float32 ``npz`` payload), ready for ``TarWriter.write``."""
    if len(image_emb) != len(param_aug):
        raise ValueError(f"{key}: {len(image_emb)} image embeddings for {len(param_aug)} augmentations")
    if len(text_emb) != 1 + len(syn_text):
        raise ValueError(f"{key}: text_emb needs 1 + {len(syn_text)} rows, got {len(text_emb)}")
    return {
        "__key__": key,
        "url.txt": url,
        "syn.json": json.dumps({"syn_text": list(syn_text)}),
        "paug.json": json.dumps({"param_aug": param_aug}),
        "npz": encode_npz(image_emb, text_emb),
        "json": json.dumps({"uid": uid, "sha256": sha256}),
    }


def iter_raw_samples(tar_path: str | os.PathLike) -> Iterator[dict]:
    """Samples of one tar as ``{"__key__": ..., ext: bytes}``, in file order.

    Uses webdataset's own tar expansion and key grouping; errors (e.g. a truncated tar)
    propagate so the caller can count them against the shard.
    """
    with open(tar_path, "rb") as stream:
        files = wds.tariterators.tar_file_iterator(stream)
        files = ({**f, "__url__": str(tar_path)} for f in files)
        yield from wds.tariterators.group_by_keys(files)


@dataclass
class Reinforcement:
    """The decoded payload of one DataCompDR sample."""
    key: str
    uid: str
    sha256: str
    syn_text: list[str]
    param_aug: list
    image_emb: np.ndarray  # [num_samples, D] float32, row a <-> param_aug[a]
    text_emb: np.ndarray   # [1 + n_syn, D] float32, row 0 = ground-truth caption


def decode_param_aug_field(raw: bytes | str) -> list:
    """``paug.json``'s ``param_aug``: a list, or (as on the hub) a JSON string holding the list."""
    payload = json.loads(raw)
    param_aug = payload["param_aug"]
    if isinstance(param_aug, str):
        param_aug = json.loads(param_aug)
    if not isinstance(param_aug, list):
        raise ValueError(f"param_aug must be a list, got {type(param_aug).__name__}")
    return param_aug


def decode_embeddings(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    if "npz" in sample:
        with np.load(io.BytesIO(sample["npz"]), allow_pickle=False) as npz:
            return np.asarray(npz["image_emb"], np.float32), np.asarray(npz["text_emb"], np.float32)
    if "pth.gz" in sample:
        import gzip

        import torch

        tensors = torch.load(io.BytesIO(gzip.decompress(sample["pth.gz"])), weights_only=True, map_location="cpu")
        return (tensors["image_emb"].float().numpy(), tensors["text_emb"].float().numpy())
    raise KeyError("npz")


def decode_reinforcement(sample: dict, *, check_finite: bool = True) -> Reinforcement:
    """Decode a raw DataCompDR sample; raises KeyError/ValueError naming what is wrong.

    Entries of ``param_aug`` are checked when replayed, not here: a caller that draws one
    entry should not pay for parsing the others.
    """
    meta = json.loads(sample["json"])
    if not isinstance(meta, dict) or "uid" not in meta or "sha256" not in meta:
        raise ValueError(f"json must hold uid and sha256, got {sample['json'][:80]!r}")
    image_emb, text_emb = decode_embeddings(sample)
    syn_text = json.loads(sample["syn.json"])["syn_text"]
    param_aug = decode_param_aug_field(sample["paug.json"])
    if not isinstance(syn_text, list) or not syn_text or not all(isinstance(t, str) for t in syn_text):
        raise ValueError("syn_text must be a non-empty list of strings")
    if not param_aug:
        raise ValueError("param_aug is empty")
    if image_emb.ndim != 2 or text_emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got image_emb {image_emb.shape} and text_emb {text_emb.shape}")
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image_emb is {image_emb.shape[1]}-D but text_emb is {text_emb.shape[1]}-D")
    if len(image_emb) != len(param_aug):
        raise ValueError(f"{len(image_emb)} image_emb rows for {len(param_aug)} param_aug entries")
    if len(text_emb) != 1 + len(syn_text):
        raise ValueError(f"{len(text_emb)} text_emb rows for 1 + {len(syn_text)} captions")
    if check_finite and not (np.isfinite(image_emb).all() and np.isfinite(text_emb).all()):
        raise ValueError("non-finite value in embeddings")
    return Reinforcement(sample["__key__"], str(meta["uid"]), str(meta["sha256"]), syn_text, param_aug,
                         image_emb, text_emb)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as the reference's loader makes it: webdataset's ``pilrgba``, then alpha dropped.

    Going through RGBA gives the same pixels for every source mode; an RGB image (most
    JPEGs) is returned as it is, without a copy.
    """
    if image.mode == "RGB":
        return image
    if image.mode != "RGBA":
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_image(jpg: bytes) -> Image.Image:
    """The ``jpg`` field as an RGB image (``to_rgb``), fully loaded."""
    image = Image.open(io.BytesIO(jpg))  # in-memory: load() leaves no file to close
    image.load()
    return to_rgb(image)


def list_shards(directory: str | os.PathLike) -> list[Path]:
    """Every finished ``.tar`` under ``directory``, nested ones too (DataCompDR-1B's ``00/00000000.tar``)."""
    return sorted(Path(directory).rglob("*.tar"))


def tar_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete tar, None when it is.

    Reading the headers is not enough: a tar cut inside its last member's data still lists
    every member, so each member's data must also end within the file.
    """
    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError):
        return "not a readable tar (truncated or corrupt)"
    size = Path(path).stat().st_size
    for member in members:
        if member.isfile() and member.offset_data + member.size > size:
            return f"member {member.name} runs past the end of the file"
    return None


def is_readable_tar(path: str | os.PathLike) -> bool:
    return tar_problem(path) is None
