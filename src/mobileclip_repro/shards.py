"""On-disk formats: DataComp shards and DataCompDR shards (docs/reference.md §3).

A DataComp sample is ``jpg`` + ``txt`` + ``json`` (``uid``, ``sha256`` of the jpg bytes)
+ ``url.txt``. A DataCompDR sample carries no image and no caption: ``url.txt``,
``syn.json``, ``paug.json``, ``npz`` (or ``pth.gz``) and ``json``; it is joined with the
DataComp sample of the same key/uid.

Synthetic captions come in two layouts, both read here (docs/reference.md §9):

* v1: ``syn.json`` holds one set, ``syn_text``, whose teacher embeddings follow the
  ground-truth caption's row in ``text_emb``;
* v2: ``syn.json`` holds one or more sets (``syn_text_<suffix>``, ...), set ``k``'s
  embeddings being the payload array ``k + "_emb"``, and ``text_emb`` only the ground truth.

Writers are atomic (a tar only gets its final name once complete) so an interrupted job
never leaves a half-written shard that a rerun would mistake for a finished one.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import io
import json
import math
import os
import re
import secrets
import socket
import struct
import tarfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from PIL import Image

# webdataset (which imports torch, ~1 s) is imported where tars are written or read: the
# report stage uses this module for JSON files only.
if TYPE_CHECKING:
    import webdataset

DATACOMP_KEYS = ("jpg", "txt", "json")
DR_KEYS_NPZ = ("syn.json", "paug.json", "npz", "json")
DR_KEYS_PTH = ("syn.json", "paug.json", "pth.gz", "json")
SYN_TEXT = "syn_text"  # v1's one synthetic-caption set
EMBEDDING_SUFFIX = "_emb"  # v2: set k's teacher embeddings are the payload array k + "_emb"
# Which sets a reader draws from: Apple's v2 default, every set (v1's syn_text included).
DEFAULT_SYN_CAPTION_REGEX = r"^syn_text.*$"
# Ground-truth captions per sample: DataComp's txt is one caption, text_emb's first row.
GROUND_TRUTH_ROWS = 1


class MissingCaptionSet(ValueError):
    """A DataCompDR sample has no synthetic-caption set the regex selects, or a selected set
    has no embeddings: something is absent, rather than malformed."""


def shard_name(index: int) -> str:
    return f"{index:08d}.tar"


def member_key(member_name: str) -> tuple[str, str] | None:
    """(sample key, extension) of a tar member, by webdataset's rule: the key is the path up to
    the first dot of the file name, the extension everything after it; None without a dot."""
    directory, _, base = member_name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot:
        return None
    return (f"{directory}/{stem}" if directory else stem), extension


def sample_key(shard_index: int, position: int) -> str:
    """DataComp-style key: shard index then position, so keys sort in shard order."""
    return f"{shard_index:08d}{position:04d}"


def datacomp_uid(json_bytes: bytes | None) -> str:
    """The uid in a DataComp sample's json member, as text: what the DR join checks against the
    DataCompDR sample's, and what the subset ranking and filter key on. Raises ValueError saying
    why there is none."""
    if json_bytes is None:
        raise ValueError("no json member")
    try:
        meta = json.loads(json_bytes)
    except ValueError as error:
        raise ValueError(f"{type(error).__name__}: {error}") from None
    if not isinstance(meta, dict) or meta.get("uid") is None:
        raise ValueError("no uid in the json")
    return str(meta["uid"])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PARTIAL_SUFFIX = ".partial"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leftover_partials(path: Path) -> None:
    """Temporary files of ``path`` that no writer will finish: the old fixed ``<name>.partial``,
    and ``<name>.<host>.<pid>.<token>.partial`` of a process of this host that is gone (a writer
    on another node of a shared filesystem cannot be checked from here, so its files stay)."""
    host = socket.gethostname()
    for leftover in path.parent.glob(glob.escape(path.name) + "*" + PARTIAL_SUFFIX):
        fields = leftover.name[len(path.name) + 1:].rsplit(".", 3)
        legacy = leftover.name == path.name + PARTIAL_SUFFIX
        dead = len(fields) == 4 and fields[0] == host and fields[1].isdigit() and not _pid_alive(int(fields[1]))
        if legacy or dead:
            leftover.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write; it becomes ``path`` only if the block succeeds.

    Every file a rerun checks for (shards, manifests, records, checkpoints) is written
    this way, so an interrupted job never leaves a half-written file under the final name.
    The temporary name is the writer's own (host, pid, a random token): two writers of one
    file never write into the same temporary file. A failed block removes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    try:
        yield partial
        # On disk before the rename, and the rename itself on disk: a crash or power loss then
        # leaves the old file or the new one, never a renamed but empty one.
        with open(partial, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    _remove_leftover_partials(path)


@contextmanager
def atomic_tar_writer(path: str | os.PathLike, *, mtime: float | None = None,
                      encoder=True) -> Iterator["webdataset.TarWriter"]:
    """A webdataset TarWriter whose output appears at ``path`` only if the block succeeds.

    ``mtime`` fixes the members' modification time; without it TarWriter stamps the
    current time, so the same content would give different bytes on every run.
    ``encoder`` is TarWriter's (True: webdataset's default encoding by extension).
    """
    import webdataset

    with atomic_output(path) as partial, open(partial, "wb") as stream:
        writer = webdataset.TarWriter(stream, mtime=mtime, encoder=encoder)
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
    return {"__key__": key, "jpg": jpg, "txt": caption,
            "json": datacomp_json(key, sha256_hex(jpg), caption, uid, url, extra_meta), "url.txt": url}


def datacomp_json(key: str, sha256: str, caption: str, uid: str | None, url: str,
                  extra_meta: dict | None = None) -> str:
    """A DataComp sample's ``json`` member: uid, the image's sha256, caption and URL, and
    ``extra_meta``'s fields, which may not replace those."""
    meta = {"uid": uid, "sha256": sha256, "caption": caption, "url": url}
    clashes = sorted(set(meta) & set(extra_meta or {}))
    if clashes:
        raise ValueError(f"{key}: extra_meta may not override DataComp metadata fields {clashes}")
    meta.update(extra_meta or {})
    return json.dumps(meta)


def encode_npz(image_emb: np.ndarray, text_emb: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> bytes:
    """The float32 payload; ``extra`` adds arrays by name (v2's ``<set>_emb``)."""
    arrays = {"image_emb": np.asarray(image_emb, np.float32), "text_emb": np.asarray(text_emb, np.float32)}
    arrays.update({name: np.asarray(value, np.float32) for name, value in (extra or {}).items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def dr_record(key: str, uid: str, sha256: str, url: str, syn_text: list[str] | None, param_aug: list,
              image_emb: np.ndarray, text_emb: np.ndarray,
              syn_sets: dict[str, tuple[list[str], np.ndarray]] | None = None) -> dict:
    """A DataCompDR sample (float32 ``npz`` payload), ready for ``TarWriter.write``.

    ``syn_text`` is v1's set, its embeddings the rows of ``text_emb`` after the ground truth's.
    ``syn_sets`` adds v2 sets, syn.json key -> (captions, embeddings [captions, D]), each stored
    as the payload array ``<key>_emb``. A sample in the v2 layout only passes ``syn_text=None``
    and a one-row ``text_emb``.
    """
    syn_sets = dict(syn_sets or {})
    if len(image_emb) != len(param_aug):
        raise ValueError(f"{key}: {len(image_emb)} image embeddings for {len(param_aug)} augmentations")
    appended = len(syn_text) if syn_text is not None else 0
    if len(text_emb) != GROUND_TRUTH_ROWS + appended:
        raise ValueError(f"{key}: text_emb needs {GROUND_TRUTH_ROWS} + {appended} rows, got {len(text_emb)}")
    if syn_text is None and not syn_sets:
        raise ValueError(f"{key}: no synthetic captions (give syn_text or syn_sets)")
    if syn_text is not None and SYN_TEXT in syn_sets:
        raise ValueError(f"{key}: {SYN_TEXT!r} given both as v1's syn_text and in syn_sets")
    syn_json = {SYN_TEXT: list(syn_text)} if syn_text is not None else {}
    extra = {}
    for name, (captions, embeddings) in syn_sets.items():
        if name + EMBEDDING_SUFFIX in ("image_emb", "text_emb"):
            raise ValueError(f"{key}: caption set {name!r} would store its embeddings as {name + EMBEDDING_SUFFIX}")
        if len(embeddings) != len(captions):
            raise ValueError(f"{key}: {len(embeddings)} embeddings for the {len(captions)} captions of {name!r}")
        syn_json[name] = list(captions)
        extra[name + EMBEDDING_SUFFIX] = embeddings
    return {
        "__key__": key,
        "url.txt": url,
        "syn.json": json.dumps(syn_json),
        "paug.json": json.dumps({"param_aug": param_aug}),
        "npz": encode_npz(image_emb, text_emb, extra),
        "json": json.dumps({"uid": uid, "sha256": sha256}),
    }


# A tar member larger than this is not read: no DataComp image or DataCompDR payload comes
# near it, and a (gzipped) tar can declare a member of any size -- a 2 MB shard once asked
# for 3.9 GB. The sample holding it is dropped and counted (``OVERSIZED``), the shard goes on.
MAX_MEMBER_BYTES = 64 * 2 ** 20
OVERSIZED = "__oversized__"  # a sample's members left unread for their size: [(extension, bytes), ...]
END_OF_ARCHIVE = b"\0" * (2 * tarfile.BLOCKSIZE)  # POSIX: a tar ends with two zero blocks
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


class ShardTruncated(Exception):
    """A tar whose members all read but which stops before its end-of-archive blocks: cut at a
    member boundary (or inside a header), so an unknown tail of samples is missing."""


def _is_compressed(path: str | os.PathLike) -> bool:
    with open(path, "rb") as stream:
        head = stream.read(6)
    return head.startswith(_COMPRESSED_MAGIC)


def _end_of_archive_problem(path: str | os.PathLike, offset: int, members: int) -> str | None:
    """Why the tar at ``path`` has no end-of-archive marker where its last member ends (``offset``).

    Python's tarfile ends its iteration without an error at end of file, at a header cut short
    and at a header that is not one, once past the first member: the only sign of such a cut
    is that the two zero blocks are not there. A compressed tar is not checked here: a cut in
    it breaks the compressed stream, which its decompressor reports."""
    if _is_compressed(path):
        return None
    with open(path, "rb") as stream:
        stream.seek(offset)
        tail = stream.read(len(END_OF_ARCHIVE))
    if tail == END_OF_ARCHIVE:
        return None
    zero_block = END_OF_ARCHIVE[:tarfile.BLOCKSIZE]
    if not tail:
        what = "ends"
    elif len(tail) >= tarfile.BLOCKSIZE and tail.startswith(zero_block):
        what = "has one end-of-archive block of two"
    else:
        what = "holds a cut or invalid tar header"
    return f"truncated: {what} at byte {offset:,} after {members} members, without the end-of-archive blocks"


def iter_raw_samples(tar_path: str | os.PathLike, max_member_bytes: int | None = None) -> Iterator[dict]:
    """Samples of one tar as ``{"__key__": ..., ext: bytes}``, in file order.

    tarfile's stream reader (as webdataset's ``tar_file_iterator``, whose member rules are
    kept: regular files only, ``__*__`` meta entries skipped) and webdataset's key grouping.
    Errors (a tar cut inside a member's data, a corrupt one) propagate so the caller can count
    them against the shard; a tar that reads to a member boundary but has no end-of-archive
    blocks raises ``ShardTruncated`` after its samples. A member over ``max_member_bytes`` is
    skipped unread and named in its sample's ``OVERSIZED`` list (default: ``MAX_MEMBER_BYTES``).
    """
    from webdataset.tariterators import group_by_keys

    max_member_bytes = MAX_MEMBER_BYTES if max_member_bytes is None else max_member_bytes
    with open(tar_path, "rb") as stream:
        tar = tarfile.open(fileobj=stream, mode="r|*")
        members = 0

        def files():
            nonlocal members
            for info in tar:
                members += 1
                if not info.isreg() or info.name is None or re.match(r"__[^/]*__($|/)", info.name):
                    continue
                if info.size > max_member_bytes:
                    # group_by_keys keeps a sample's extensions; this one stands in for the data
                    yield {"fname": f"{info.name}.{OVERSIZED}", "data": info.size, "__url__": str(tar_path)}
                else:
                    yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": str(tar_path)}
                tar.members = []  # a stream reader need not remember what it has passed

        for sample in group_by_keys(files()):
            oversized = [(key[:-len(OVERSIZED) - 1], sample.pop(key)) for key in list(sample)
                         if key.endswith("." + OVERSIZED)]
            if oversized:
                sample[OVERSIZED] = oversized
            yield sample
        offset = tar.offset
    problem = _end_of_archive_problem(tar_path, offset, members)
    if problem is not None:
        raise ShardTruncated(problem)


@dataclass
class Reinforcement:
    """The decoded payload of one DataCompDR sample, with the synthetic-caption sets a regex selected."""
    key: str
    uid: str
    sha256: str
    param_aug: list
    image_emb: np.ndarray  # [num_samples, D] float32, row a <-> param_aug[a]
    text_emb: np.ndarray   # [1 (+ n_syn in v1), D] float32, row 0 = ground-truth caption
    syn_sets: dict[str, list[str]]       # selected sets in syn.json's order, each non-empty
    syn_embs: dict[str, np.ndarray]      # [len(syn_sets[k]), D] float32, row s <-> syn_sets[k][s]

    @property
    def syn_text(self) -> list[str]:
        """v1's set (empty when it is not selected or not there)."""
        return self.syn_sets.get(SYN_TEXT, [])

    def all_finite(self) -> bool:
        return bool(np.isfinite(self.image_emb).all() and np.isfinite(self.text_emb).all()
                    and all(np.isfinite(rows).all() for rows in self.syn_embs.values()))


def decode_param_aug_field(raw: bytes | str) -> list:
    """``paug.json``'s ``param_aug``: a list, or (as on the hub) a JSON string holding the list."""
    payload = json.loads(raw)
    param_aug = payload["param_aug"]
    if isinstance(param_aug, str):
        param_aug = json.loads(param_aug)
    if not isinstance(param_aug, list):
        raise ValueError(f"param_aug must be a list, got {type(param_aug).__name__}")
    return param_aug


# A payload is refused (ValueError) once its decoded bytes would pass this: a DataCompDR
# payload is 30 x 1536 float32 image rows plus 6 text rows, ~0.2 MB (half that in bf16), but
# a few MB of gzip or deflate can expand to gigabytes. 64 MiB is ~300x a real one, and the
# largest tar member the reader takes, so a payload never decodes to more than a member may be.
MAX_PAYLOAD_BYTES = 64 * 2 ** 20
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # what np.load reads as an npz (the 2nd: an empty zip)


_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then (past 22 bytes) name and extra lengths


def _npz_arrays(data: bytes, limit: int) -> dict[str, np.ndarray]:
    """Every array of an npz, by member name without ``.npy``, from one read of its zip directory.

    A stored member (np.savez writes no other kind, and DataCompDR's are stored) is a read-only
    view of ``data``, not a copy: a reader that draws one augmentation's row copies that row
    only. Its CRC is checked as zipfile would. A deflated member is inflated, bounded by the
    directory's declared sizes, which are checked before anything is read.

    ValueError, before anything is allocated, when the members declare more than ``limit``
    bytes (a deflated member can declare gigabytes, and zipfile reads one up to its declared
    size), or an ``.npy`` header declares a shape its member cannot hold (np.load would
    allocate the shape before reading); also for a member that is not an ``.npy`` array.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
        raise ValueError(f"npz is not a readable zip: {error}") from None
    view = memoryview(data)
    with archive:
        members = archive.infolist()
        declared = sum(info.file_size for info in members)
        if declared > limit:
            raise ValueError(f"npz members declare {declared:,} bytes uncompressed, over "
                             f"MAX_PAYLOAD_BYTES ({limit:,})")
        arrays = {}
        for info in members:
            member = _stored_member(view, info) if info.compress_type == zipfile.ZIP_STORED else archive.read(info)
            name = info.filename[:-len(".npy")] if info.filename.endswith(".npy") else info.filename
            arrays[name] = _npy_array(member, info)
    return arrays


def _stored_member(data: memoryview, info: zipfile.ZipInfo) -> memoryview:
    start = info.header_offset
    header = bytes(data[start:start + _ZIP_LOCAL_HEADER.size])
    if len(header) < _ZIP_LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise ValueError(f"npz member {info.filename}: bad zip local header")
    _, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(header)
    start += _ZIP_LOCAL_HEADER.size + name_length + extra_length
    member = data[start:start + info.file_size]
    if len(member) != info.file_size:
        raise ValueError(f"npz member {info.filename} is cut: {len(member):,} of {info.file_size:,} bytes")
    if zlib.crc32(member) != info.CRC:
        raise ValueError(f"npz member {info.filename}: bad CRC-32")
    return member


@functools.lru_cache(maxsize=256)
def _npy_header(read_header, header: bytes) -> tuple:
    """(shape, fortran_order, dtype) of an ``.npy`` header. Memoized: numpy parses the header's
    text with ast.literal_eval (~30 us), and every sample of a dataset repeats the same few."""
    return read_header(io.BytesIO(header))


def _npy_array(member, info: zipfile.ZipInfo) -> np.ndarray:
    """The array in one ``.npy`` member, a view of its bytes; shape checked against the member's size."""
    prefix = np.lib.format.MAGIC_PREFIX
    magic_length = len(prefix) + 2
    magic = bytes(member[:magic_length])
    if not magic.startswith(prefix) or len(magic) < magic_length:
        raise ValueError(f"npz member {info.filename} is not an .npy array")
    version = (magic[-2], magic[-1])
    if version == (1, 0):
        length_bytes = 2
        read_header = np.lib.format.read_array_header_1_0
    elif version in ((2, 0), (3, 0)):  # 3.0 differs from 2.0 only in the header's text encoding
        length_bytes = 4
        read_header = np.lib.format.read_array_header_2_0
    else:
        raise ValueError(f"npz member {info.filename}: unsupported .npy version {version}")
    header_length = int.from_bytes(bytes(member[magic_length:magic_length + length_bytes]), "little")
    data_start = magic_length + length_bytes + header_length
    shape, fortran_order, dtype = _npy_header(read_header, bytes(member[magic_length:data_start]))
    if dtype.hasobject:
        raise ValueError(f"npz member {info.filename} holds Python objects, which are not loaded")
    count = math.prod(shape)
    array_bytes = count * dtype.itemsize
    if array_bytes > len(member) - data_start:
        raise ValueError(f"npz member {info.filename} declares shape {shape} ({array_bytes:,} bytes) "
                         f"in {info.file_size:,} bytes")
    array = np.frombuffer(member, dtype, count, offset=data_start)
    return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


def _gunzip(data: bytes, limit: int) -> bytes:
    """``gzip.decompress`` that stops once the output passes ``limit`` bytes (ValueError).

    zlib inflates at most the requested length per call, so a gzip bomb costs ``limit``
    bytes, not what it expands to; members that follow one another are read as gzip does."""
    import zlib

    parts, size, rest = [], 0, data
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing: header, CRC and length checked
        try:
            # One call returns once the output reaches the requested length, the stream ends
            # or the input runs out: one byte past the cap means over it.
            part = inflater.decompress(rest, limit - size + 1)
        except zlib.error as error:
            raise ValueError(f"pth.gz is not valid gzip: {error}") from None
        size += len(part)
        if size > limit:
            raise ValueError(f"pth.gz decompresses to more than MAX_PAYLOAD_BYTES ({limit:,} bytes)")
        if not inflater.eof:
            raise EOFError("pth.gz ends before its gzip stream does")  # what gzip.decompress raises
        parts.append(part)
        rest = inflater.unused_data.lstrip(b"\0")  # gzip skips zero padding between members
    return b"".join(parts)


def decode_payload(sample: dict, *, views: bool = False) -> dict[str, np.ndarray]:
    """Every array of the ``npz`` (or, without one, the bf16 ``pth.gz``) payload, as float32.
    ``views``: an npz's float32 arrays may be read-only views of the sample's bytes
    (``_npz_arrays``), for a reader that copies the rows it uses; otherwise each is its own array.

    Decoding is bounded: a payload that would decode to more than MAX_PAYLOAD_BYTES is
    refused with ValueError before it is expanded.
    """
    if "npz" in sample:
        if bytes(sample["npz"][:4]) not in _ZIP_MAGIC:
            # np.load would read a bare .npy (allocating its header's shape) or refuse a pickle;
            # neither is an npz
            raise ValueError(f"npz is not a zip archive (starts {bytes(sample['npz'][:8])!r})")
        arrays = _npz_arrays(sample["npz"], MAX_PAYLOAD_BYTES)
        return {name: (np.asarray if views else np.array)(array, np.float32) for name, array in arrays.items()}
    if "pth.gz" in sample:
        import torch

        tensors = torch.load(io.BytesIO(_gunzip(sample["pth.gz"], MAX_PAYLOAD_BYTES)), weights_only=True,
                             map_location="cpu")
        if not isinstance(tensors, dict):
            raise ValueError(f"pth.gz must hold a dict of tensors, got {type(tensors).__name__}")
        return {name: tensor.float().numpy() for name, tensor in tensors.items() if isinstance(tensor, torch.Tensor)}
    raise KeyError("npz")


def decode_embeddings(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    payload = decode_payload(sample)
    return payload["image_emb"], payload["text_emb"]


def _caption_sets(syn_json: dict, payload: dict[str, np.ndarray], regex: str,
                  width: int) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """The sets of ``syn_json`` whose key ``re.match``es ``regex``, each with its embedding rows.

    Rows appended to ``text_emb`` after the ground truth's are v1's: they belong to ``syn_text``
    (or to syn.json's only set), and a v2 set's rows are its ``<key>_emb`` array. Apple's
    reader takes the appended rows for whichever set it drew whenever there are any, which
    pairs a v2 set's caption with another set's embedding in a sample carrying both layouts.
    """
    pattern = re.compile(regex)
    selected = [key for key in syn_json if pattern.match(key)]
    if not selected:
        raise MissingCaptionSet(f"syn.json has no caption set matching {regex!r} (its keys: {list(syn_json)})")
    appended = payload["text_emb"][GROUND_TRUTH_ROWS:]
    owner = SYN_TEXT if SYN_TEXT in syn_json or len(syn_json) != 1 else next(iter(syn_json))
    sets, embeddings = {}, {}
    for key in selected:
        captions = syn_json[key]
        if not isinstance(captions, list) or not captions or not all(isinstance(t, str) for t in captions):
            raise ValueError(f"syn.json's {key!r} must be a non-empty list of strings")
        if key == owner and len(appended):
            rows, where = appended, "text_emb rows after the ground truth's"
        elif key + EMBEDDING_SUFFIX in payload:
            rows, where = payload[key + EMBEDDING_SUFFIX], key + EMBEDDING_SUFFIX
        else:
            note = f" (the text_emb rows after the ground truth's are {owner!r}'s)" if len(appended) else ""
            raise MissingCaptionSet(f"no embeddings for syn.json's {key!r}: the payload has no "
                                    f"{key + EMBEDDING_SUFFIX}{note}")
        if rows.ndim != 2 or rows.shape[1] != width:
            raise ValueError(f"{where} has shape {rows.shape}, expected [{len(captions)}, {width}]")
        if len(rows) != len(captions):
            raise ValueError(f"{len(rows)} {where} for the {len(captions)} captions of syn.json's {key!r}")
        sets[key], embeddings[key] = captions, rows
    return sets, embeddings


def decode_reinforcement(sample: dict, *, check_finite: bool = True,
                         syn_caption_regex: str = DEFAULT_SYN_CAPTION_REGEX) -> Reinforcement:
    """Decode a raw DataCompDR sample, v1 or v2 layout, keeping the synthetic-caption sets
    ``syn_caption_regex`` selects; raises MissingCaptionSet when something the selection needs
    is absent, KeyError/ValueError naming anything else that is wrong.

    Entries of ``param_aug`` are checked when replayed, not here: a caller that draws one
    entry should not pay for parsing the others. For the same reason the embeddings are
    read-only views of the npz's bytes where it stores float32: copy the rows you keep.
    """
    meta = json.loads(sample["json"])
    if not isinstance(meta, dict) or "uid" not in meta or "sha256" not in meta:
        raise ValueError(f"json must hold uid and sha256, got {sample['json'][:80]!r}")
    payload = decode_payload(sample, views=True)
    image_emb, text_emb = payload["image_emb"], payload["text_emb"]
    syn_json = json.loads(sample["syn.json"])
    if not isinstance(syn_json, dict):
        raise ValueError(f"syn.json must be an object of caption sets, got {type(syn_json).__name__}")
    param_aug = decode_param_aug_field(sample["paug.json"])
    if not param_aug:
        raise ValueError("param_aug is empty")
    if image_emb.ndim != 2 or text_emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got image_emb {image_emb.shape} and text_emb {text_emb.shape}")
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image_emb is {image_emb.shape[1]}-D but text_emb is {text_emb.shape[1]}-D")
    if len(image_emb) != len(param_aug):
        raise ValueError(f"{len(image_emb)} image_emb rows for {len(param_aug)} param_aug entries")
    if len(text_emb) < GROUND_TRUTH_ROWS:
        raise ValueError("text_emb has no row for the ground-truth caption")
    syn_sets, syn_embs = _caption_sets(syn_json, payload, syn_caption_regex, image_emb.shape[1])
    record = Reinforcement(sample["__key__"], str(meta["uid"]), str(meta["sha256"]), param_aug, image_emb, text_emb,
                           syn_sets, syn_embs)
    if check_finite and not record.all_finite():
        raise ValueError("non-finite value in embeddings")
    return record


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


# The keys a DataCompDR sample adds to its DataComp sample (docs/reference.md §3); `json`
# (uid, sha256) is on both sides, the same record.
DR_KEYS = ("syn.json", "paug.json", "npz", "pth.gz")


def split_joined_sample(sample: dict) -> tuple[dict, dict]:
    """A sample of Apple's joined layout (one tar holding the DataComp and the DataCompDR keys)
    as the (DataComp, DataCompDR) pair the split layout gives; the shared keys go to both."""
    dr_side = {key: value for key, value in sample.items() if key in DR_KEYS}
    shared = {key: value for key, value in sample.items() if key.startswith("__") or key == "json"}
    datacomp_side = {key: value for key, value in sample.items() if key not in DR_KEYS}
    return datacomp_side, {**shared, **dr_side}


def join_shards(datacomp_tar: str | os.PathLike, dr_tar: str | os.PathLike, out_tar: str | os.PathLike) -> int:
    """Write the joined layout of one shard: each DataComp sample with its DataCompDR keys
    (joined on the sample key; a sample missing on either side is left out), byte for byte.
    Returns the number of samples written."""
    dr_samples = {sample["__key__"]: sample for sample in iter_raw_samples(dr_tar)}
    written = 0
    with atomic_tar_writer(out_tar, mtime=0, encoder=False) as sink:
        for sample in iter_raw_samples(datacomp_tar):
            dr = dr_samples.get(sample["__key__"])
            if dr is None:
                continue
            joined = {key: value for key, value in sample.items() if key != "__url__"}
            joined.update({key: value for key, value in dr.items() if key in DR_KEYS})
            sink.write(joined)
            written += 1
    return written


def list_shards(directory: str | os.PathLike) -> list[Path]:
    """Every finished ``.tar`` under ``directory``, nested ones too (DataCompDR-1B's ``00/00000000.tar``)."""
    return sorted(Path(directory).rglob("*.tar"))


# Every data manifest (toy world, fetch group, local data, reinforce group) lists the shards it
# stands for under this key: [{"path", "bytes", "sha256"}], each path relative to the manifest's
# folder (a results folder moved or copied whole keeps its data). A train job reads exactly those
# shards, and their names, sizes and digests are its training data's identity (never modification
# times: the same bytes written again are the same data).
SHARD_FILES_KEY = "shard_files"


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def absolute_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute and normalized (``..`` folded), symlinks kept as they are."""
    return Path(os.path.normpath(os.path.abspath(path)))


def describe_shard(path: str | os.PathLike) -> dict:
    """One ``SHARD_FILES_KEY`` entry: the shard's path (absolute until ``relative_to_manifest``), size and sha256."""
    path = absolute_path(path)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def relative_to_manifest(entries: list[dict], manifest_path: str | os.PathLike) -> list[dict]:
    """``entries`` with each path relative to the folder of the manifest they are written into."""
    folder = absolute_path(manifest_path).parent
    return [{**entry, "path": os.path.relpath(absolute_path(entry["path"]), folder)} for entry in entries]


def listed_shard_files(manifest_paths: list[str | os.PathLike]) -> dict[Path, dict]:
    """Every shard the given data manifests list: its absolute path -> its entry."""
    listed = {}
    for manifest_path in manifest_paths:
        payload = json.loads(Path(manifest_path).read_text())
        if SHARD_FILES_KEY not in payload:
            raise ValueError(f"{manifest_path}: a data manifest without {SHARD_FILES_KEY!r} (written by an older "
                             "version: rerun the job that made it)")
        folder = absolute_path(manifest_path).parent
        for entry in payload[SHARD_FILES_KEY]:
            path = absolute_path(folder / entry["path"])
            listed[path] = {**entry, "path": str(path)}
    return listed


def shards_in(folder: str | os.PathLike, listed: dict[Path, dict]) -> list[Path]:
    """The listed shards under ``folder``, in path order."""
    folder = absolute_path(folder)
    return sorted(path for path in listed if folder in path.parents)


def tar_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete tar, None when it is.

    Reading the headers is not enough: a tar cut inside its last member's data still lists
    every member, so each member's data must also end within the file; and one cut at a
    member boundary lists the members before the cut, so the end-of-archive blocks must follow.
    """
    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            end = tar.offset
    except (tarfile.TarError, OSError, EOFError):
        return "not a readable tar (truncated or corrupt)"
    size = Path(path).stat().st_size
    for member in members:
        if member.isfile() and member.offset_data + member.size > size:
            return f"member {member.name} runs past the end of the file"
    return _end_of_archive_problem(path, end, len(members))


def is_readable_tar(path: str | os.PathLike) -> bool:
    return tar_problem(path) is None
