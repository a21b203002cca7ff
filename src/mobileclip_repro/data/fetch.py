"""`fetch`: one group of hub shards -> DataComp shards with images (+ Apple's DataCompDR shards).

What is on the hub, and so what this module reads
-------------------------------------------------
* ``apple/DataCompDR-12M`` / ``apple/DataCompDR-1B`` (``--dr-repo``): webdataset tars named
  by shard id (``00000000.tar``, ..., and ``00/00000000.tar``, ... for 1B), one sample per
  image with ``url.txt``, ``syn.json``, ``paug.json``, ``npz`` and ``json`` {uid, sha256}:
  no image and no caption (the DataCompDR dataset cards; docs/reference.md §3).
* ``mlfoundations/DataComp-12M`` -> layout ``shards``: webdataset tars with the *same shard
  ids* at the repo root (``00000093.tar``, 1,024 shards, 12,784,978 samples), one sample
  per image with ``url.txt``, ``txt`` (the original caption) and ``json`` {uid, sha256,
  original_height, original_width}, no image. Sources: that repo's dataset card and file
  listing, and Apple's cards (apple/DataComp-12M, apple/DataCompDR-12M): "The UIDs per
  shards match between mlfoundations/DataComp-12M and apple/DataCompDR-12M", and "the
  image assignment to shards is the same for both" (DataCompDR-12M discussion #5). So
  DataComp shard <id> is joined with DataCompDR shard <id>, by uid.
* ``mlfoundations/datacomp_1b`` -> layout ``parquet``: metadata in parquet files named by a
  hash, not by shard, with ``uid``, ``url``, ``text``, ``sha256``, ... (the repo's file listing;
  mlfoundations/datacomp's download_upstream.py reads the same columns, ``url_col="url"``,
  ``caption_col="text"``, and hands them to img2dataset). DataCompDR-1B's shards are a subset
  of it, so every ``*.parquet`` of the repo is downloaded once (into the staging folder,
  shared by all groups) and scanned for the uids of the group's DataCompDR shards; only the
  caption comes from the parquet, URL and sha256 from the DataCompDR sample. This layout
  needs ``--dr-repo``: without it nothing says which rows form a shard.

``--datacomp-layout auto`` (the default) lists the repo once and picks ``shards`` when it
holds ``*.tar`` files and ``parquet`` when it holds ``*.parquet`` files.

A DR shard whose every sample carries its own URL and web caption (``url.txt`` and ``txt``, the
caption a string or, as MobileCLIP2's reader allows, a JSON list of strings) needs no caption
source: chosen per shard (``carries_own_text``), it is fetched as it is, its DataComp shard or
parquet rows never downloaded, and the join guard has nothing to check (its manifest says
``caption_source: dr_shard``; otherwise ``datacomp_repo``). uid, sha256 and the original size
come from its ``json`` when it has them; a sample without a uid is written with ``uid: null``, and
an image with no recorded sha256 is kept unchecked and counted (``sha256_unchecked``). Of a
list of captions, ``txt`` gets the first (the one ``text_emb[0]`` embeds) and the ``json`` all
(``captions``). Apple's DFNDR cards do not say whether their shards carry ``txt``
(docs/reference.md §9); the same config works either way. In any other shard, a sample that
carries a caption of its own keeps it, and the others are joined by uid: a sample with neither
is counted (``no_caption``), never passed over.

Per shard id of the group: the DataCompDR tar is downloaded with ``hf_hub_download``
(``HF_ENDPOINT``, ``HF_TOKEN`` and the other ``HF_*`` variables apply as in
huggingface_hub), checked (``shards.is_readable_tar`` and every member's data inside the
file), re-downloaded once if broken and otherwise the shard is counted as failed; it is
installed atomically at ``<dr-dir>/<id>.tar``. Every hub download and listing retries a
transient error (HTTP 408/429/5xx, a connection error, a timeout) ``--hub-retries`` times
with exponential backoff from ``--hub-backoff`` seconds (``hub.HubRetries``); a 404, 401/403
or missing repo fails at once. Captions (and, without DataCompDR, URLs and
sha256) come from the DataComp source above. Images are downloaded from their URLs, their
bytes are checked against the recorded sha256 (DataCompDR's ``json``, else DataComp's) and
stored *unmodified* under ``jpg`` (whatever their format: re-encoding would break the
sha256 the reinforcement was computed for); a mismatch is dropped or kept per the sha256
policy below. The DataComp shard ``<datacomp-dir>/<id>.tar``
has exactly the DataCompDR keys, in sorted order, minus the samples lost, so training's
merge-join by key (``train.samples.joined_samples``) pairs them; without DataCompDR the DataComp
keys are kept.

Why not img2dataset: img2dataset 1.47.0 requires ``webdataset<0.3`` (this project pins
webdataset 1.0.2) and pulls wandb, albumentations and opencv. It can keep and check the
original bytes (``disable_all_reencoding=True``; ``verify_hash`` hashes the downloaded bytes
before any resize), but it drops every mismatch (no ``same_size`` policy for the ~14% of
images their hosts re-encoded), bounds each socket operation rather than the URL, and by
default re-encodes what it stores. ``benchmarks/fetch_vs_img2dataset.py`` times the two on
the same URLs. The downloader here is a few hundred lines over urllib3 (``_Client``; requests
only picks a URL's proxy, as ``requests.get`` would): a
thread pool per process (``--processes`` shards at a time x ``--threads`` URLs per shard;
DataComp's own download uses 16 x 128), a per-URL deadline (``--timeout``, below), retries
(``--retries``) only for connection errors and HTTP 429/5xx (never for a timeout), a size
cap, and img2dataset's default opt-out rule (``X-Robots-Tag:
noai|noimageai|noindex|noimageindex`` drops the image).

The deadline: each try of a URL must have its answer (DNS lookup, connect, redirects, status
and headers) within ``timeout`` seconds, and then its whole body within ``timeout`` more, so
one URL costs at most about twice the timeout per try, whether the server trickles, stalls
or never answers. requests and urllib3 bound each socket operation, not their sum, and not
the DNS lookup at all; so here the lookup runs on a resolver thread given up on at the
deadline (``resolve_within``), the lookup and the connects share the connect timeout
(``_LookupWithinConnectTimeout``), urllib3's ``Timeout(total=...)`` ends the wait for the
headers at the deadline, redirects are followed hop by hop with what is left, and the body
is read as it arrives, the socket's timeout set to the time left before each read. Only a
server that trickles its TLS handshake or its headers byte by byte is bounded per read, not
in total; and through a proxy, the proxy does the DNS lookups.

Revisions (``--datacomp-revision``, ``--dr-revision``; ``data.hub.*_revision``, default the
main branch): the job resolves each repo's revision to its commit SHA once, at its start
(the repo-info API, ``hub.hub_commit``), and every download and listing of the job, parquet
metadata and DataCompDR tars included, asks for that SHA; so one job never mixes two
commits, and every shard and group manifest records the SHAs (``datacomp_commit``,
``dr_commit``) next to the revisions asked for. A rerun whose revision now resolves to
another commit than a finished shard of the group records fails before downloading
anything (CommitMoved), naming both commits: a dataset should be one commit of each repo,
and refetching would only move this group while the groups already done stay at the old
commit. Pin the old SHA to finish at it, or delete the shards to fetch them at the new one.
The report lists each repo's commits, and says loudly when its groups differ.

The sha256 policy (``--sha256``; ``data.hub.sha256``): about 14% of DataComp's recorded
sha256 do not match what a plain GET returns today (mlfoundations/datacomp#67), mostly the
same picture re-encoded by its host. ``strict`` drops every mismatch; ``same_size`` (the
default) keeps one whose decoded width x height equals the original size the metadata
records (DataComp's ``original_width``/``original_height``), since DataCompDR's stored crop
boxes are in the original image's pixels and so still cut the same region; ``off`` keeps
every image. A kept mismatch's ``json`` keeps the recorded sha256 (``recorded_sha256``) and
the policy; its ``sha256`` is of the bytes stored, as for every sample.

The join guard (``--min-join-rate``; ``data.hub.min_join_rate``, default 0.5): before any
image of a shard is fetched, the fraction of the DataCompDR shard's uids that the DataComp
source holds is checked; below it the job fails (JoinRateTooLow), naming both repos and the
rate (of the samples that need the source: those without a caption or URL of their own; one
without a uid counts as not held, and a shard where none has a uid fails outright). A matching
pair joins at about 100%, a source for other samples (DFN DR shards with DataComp-12M's
captions) at about 0%, which would write nearly empty shards.

Accounting, per shard (``<datacomp-dir>/<id>.tar.manifest.json``) and per group
(``--manifest``, with the per-shard entries and totals): ``samples_listed`` =
``no_caption`` + ``no_url`` + ``urls_tried``; ``urls_tried`` = ``images_fetched`` + the
``failed`` counts by reason (FAILURE_REASONS); ``images_fetched`` = ``sha256_mismatch_dropped``
+ ``samples_kept``; ``sha256_mismatch_kept`` counts the kept samples the sha256 policy let
through, ``sha256_unchecked`` those with no recorded sha256 to check. The report totals the
group manifests it is handed (``report --fetch-manifests``).

Resumable: every file gets its final name only once complete (``shards.atomic_output``);
a rerun skips a shard whose DataComp tar, manifest (and DataCompDR tar) exist and read
back, and redoes any other (a dead writer's ``.partial`` leftover is removed). A shard that
fails (a hub file broken twice, missing, or still failing after the hub retries) fails its
group: the command logs every failed shard and why, keeps the shards it finished (each with
its manifest), writes no group manifest and exits 1, so the workflow does not take the
group for done and its next run fetches exactly the missing shards. Only a loss the config
accepts (``data.hub.max_failed_shards``, ``--max-failed-shards``; default 0) lets the group
finish without them: its manifest then lists them (``lost_shards``) and the report names them. A failed image URL is a
lost sample, counted, and never stops its shard.
"""
from __future__ import annotations

import collections
import errno
import http.client
import io
import json
import logging
import multiprocessing
import os
import queue
import shutil
import socket
import tarfile
import threading
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family, create_connection

from mobileclip_repro import shards
from mobileclip_repro.hub import (HubRetries, describe_hub_error, hub_commit, hub_download, hub_list_files)

log = logging.getLogger("mobileclip_repro.data.fetch")

MANIFEST_SCHEMA = "mobileclip_repro/fetch-manifest/1"
SHARD_MANIFEST_SCHEMA = "mobileclip_repro/fetch-shard/1"
FAILURE_REASONS = (
    "http_404",      # 404 / 410: the image is gone
    "http_error",    # any other non-200 status (after retries for 429 / 5xx)
    "timeout",       # no answer, or no complete body, within the deadline
    "connection",    # DNS, refused, reset, TLS, broken transfer (after retries)
    "invalid_url",   # not an http(s) URL
    "too_large",     # body over --max-image-bytes
    "opted_out",     # X-Robots-Tag noai / noimageai / noindex / noimageindex
)
COUNTERS = ("samples_listed", "no_caption", "no_url", "urls_tried", "images_fetched", "sha256_mismatch_dropped",
            "sha256_mismatch_kept", "samples_kept")
SHA256_POLICIES = ("strict", "same_size", "off")  # what a fetched image whose sha256 differs from the recorded one
#   becomes: strict drops it; same_size keeps it when its decoded width x height equals the recorded original
#   size (DataCompDR's crop boxes are in the original image's pixels, so they still land where they did);
#   off keeps it. See the module docstring.
DEFAULT_SHA256_POLICY = "same_size"
DEFAULT_MIN_JOIN_RATE = 0.5
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
USER_AGENT_TOKEN = "mobileclip-repro-fetch"
USER_AGENT = f"{USER_AGENT_TOKEN}/0.1 (research reproduction of DataComp/DataCompDR; image-text pairs)"
TAR_MTIME = 0  # fixed member mtime: the same bytes give the same shard


class ShardFailed(Exception):
    """The shard cannot be built in this run (hub file missing, broken, or still failing after
    the hub retries); the group fails and the next run retries the shard."""


class JoinRateTooLow(ValueError):
    """The caption/URL source holds too few of a DataCompDR shard's uids (``--min-join-rate``): the
    two repos do not describe the same samples, and every shard would come out nearly empty."""


class CommitMoved(ValueError):
    """Finished shards of the group were fetched at another commit than the one the revision names now."""


@dataclass(frozen=True)
class FetchOptions:
    datacomp_repo: str
    datacomp_dir: Path
    dr_repo: str | None = None
    dr_dir: Path | None = None
    layout: str = "auto"              # auto | shards | parquet
    datacomp_revision: str | None = None
    dr_revision: str | None = None
    staging_dir: Path | None = None
    processes: int = 1                # shards in parallel (processes)
    threads: int = 64                 # URLs in flight per shard
    timeout: float = 10.0
    retries: int = 1                  # per image URL
    max_image_bytes: int = 64 << 20
    hub_retries: int = 4              # per hub download or listing, after a transient error
    hub_backoff_s: float = 2.0        # wait before the first hub retry; doubles each retry
    sha256_policy: str = DEFAULT_SHA256_POLICY
    min_join_rate: float = DEFAULT_MIN_JOIN_RATE

    # the commits the revisions resolved to at the start of the job (fetch_group); every download asks for these
    datacomp_commit: str | None = None
    dr_commit: str | None = None

    def datacomp_at(self) -> str | None:
        return self.datacomp_commit or self.datacomp_revision

    def dr_at(self) -> str | None:
        return self.dr_commit or self.dr_revision

    def hub_retry(self) -> HubRetries:
        return HubRetries(retries=self.hub_retries, backoff_s=self.hub_backoff_s)

    def staging(self) -> Path:
        """Hub downloads land here first; a sibling of the shard folders, so moves are renames."""
        if self.staging_dir is not None:
            return Path(self.staging_dir)
        return Path(self.datacomp_dir).parent / ".fetch-staging"


@dataclass
class SourceSample:
    """One sample to build: where its image is and what it must hash to."""
    key: str
    uid: str | None                      # None: a DR sample whose json names none (written as null)
    url: str | None
    sha256: str | None                   # None: nothing to check the image against (counted, sha256_unchecked)
    caption: str | None
    size: tuple[int, int] | None = None  # the recorded original (width, height), when the metadata has it
    captions: tuple[str, ...] = ()       # every ground-truth caption a DR sample's own txt holds (v2: a JSON list)
    carries: frozenset = frozenset()     # which of OWN_TEXT_MEMBERS the DR sample has (read_dr_index)


@dataclass
class ShardCounts:
    samples_listed: int = 0
    no_caption: int = 0
    no_url: int = 0
    urls_tried: int = 0
    images_fetched: int = 0
    sha256_mismatch_dropped: int = 0
    sha256_mismatch_kept: int = 0     # mismatched, kept by the sha256 policy (also in samples_kept)
    samples_kept: int = 0
    failed: dict = field(default_factory=lambda: {reason: 0 for reason in FAILURE_REASONS})
    sha256_unchecked: int = 0         # kept with no recorded sha256 to check (also in samples_kept; not a COUNTER)


# ---------------------------------------------------------------------------------------------
# Hub access


def detect_layout(files: list[str]) -> str:
    if any(name.endswith(".tar") for name in files):
        return "shards"
    if any(name.endswith(".parquet") for name in files):
        return "parquet"
    raise ValueError("the DataComp repo holds neither *.tar shards nor *.parquet metadata "
                     f"({len(files)} files); pass --datacomp-layout")


def _install(source: Path, destination: Path) -> None:
    """Move a checked download to its final name, atomically (a copy when they are on two file systems)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, destination)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        with shards.atomic_output(destination) as partial:
            shutil.copyfile(source, partial)
        source.unlink()


def download_checked_tar(repo_id: str, filename: str, local_dir: Path, revision: str | None,
                         retry: HubRetries = HubRetries()) -> Path:
    """Download a tar from the hub (transient errors retried per ``retry``); one re-download if it
    is broken, then ShardFailed."""
    problem = None
    for attempt in range(2):
        try:
            path = hub_download(repo_id, filename, local_dir, revision=revision, force=attempt > 0, retry=retry)
        except Exception as error:  # noqa: BLE001 - hub / network errors: this shard fails, the others go on
            raise ShardFailed(f"{repo_id}/{filename}: download failed: {describe_hub_error(error)}") from None
        problem = shards.tar_problem(path)
        if problem is None:
            return path
        log.warning("%s/%s: %s%s", repo_id, filename, problem, "; downloading it again" if attempt == 0 else "")
    path.unlink(missing_ok=True)
    raise ShardFailed(f"{repo_id}/{filename}: {problem} (twice)")


# ---------------------------------------------------------------------------------------------
# Reading shards without decoding their payloads


def _small_members(path: Path, wanted: tuple[str, ...]) -> dict[str, dict[str, bytes]]:
    """``{key: {ext: bytes}}`` for members whose extension is in ``wanted``; other members are skipped unread,
    but every sample (key) of the tar is listed, one with none of ``wanted`` as ``{}``."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key_and_ext = shards.member_key(member.name)
            if key_and_ext is None:
                continue
            key, ext = key_and_ext
            members = samples.setdefault(key, {})
            if ext in wanted:
                members[ext] = tar.extractfile(member).read()
    return samples


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8").strip() or None
    except UnicodeDecodeError:
        return None


def _meta(raw: bytes | None) -> dict:
    try:
        meta = json.loads(raw) if raw is not None else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _recorded_size(meta: dict) -> tuple[int, int] | None:
    """(width, height) of the original image as DataComp's metadata records it (``original_width``,
    ``original_height``), or None when it does not."""
    width, height = meta.get("original_width"), meta.get("original_height")
    try:
        size = (int(width), int(height))
    except (TypeError, ValueError):
        return None
    return size if size[0] > 0 and size[1] > 0 else None


OWN_TEXT_MEMBERS = frozenset({"url.txt", "txt"})  # a DR sample with both needs no caption/URL source


def _own_captions(raw: bytes | None) -> tuple[str, ...]:
    """The ground-truth caption(s) a DR sample's ``txt`` holds: one string, or (MobileCLIP2's reader:
    ``texts = [texts] if not isinstance(texts, list)``) a JSON list of strings, kept in order since
    caption c goes with row c of ``text_emb``. Empty: none (an empty or undecodable ``txt``)."""
    text = _text(raw)
    if text is None:
        return ()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            return tuple(item.strip() for item in value)
    return (text,)


def read_dr_index(path: Path) -> list[SourceSample]:
    """Every sample of a DR shard, sorted by key: uid, sha256 and original size from its ``json`` when it
    has them, its own URL (``url.txt``) and its own caption (``txt``) when it carries them; DataCompDR's
    samples carry no ``txt``, so their caption comes from the DataComp source (``join_captions``)."""
    index = []
    for key, members in _small_members(path, ("json", "url.txt", "txt")).items():
        meta = _meta(members.get("json"))
        sha = meta.get("sha256")
        uid = meta.get("uid")
        captions = _own_captions(members.get("txt"))
        index.append(SourceSample(key, str(uid) if uid is not None else None, _text(members.get("url.txt")),
                                  str(sha).lower() if sha else None, (captions[0] or None) if captions else None,
                                  _recorded_size(meta), captions, OWN_TEXT_MEMBERS & frozenset(members)))
    return sorted(index, key=lambda sample: sample.key)


def carries_own_text(dr_index: list[SourceSample]) -> bool:
    """Whether every sample of a DR shard carries its own URL and caption (``url.txt`` and ``txt``): then
    the shard is fetched as it is, with no caption source, no join and no join guard. One that carries
    an empty one is a sample without URL or caption (counted), not a reason to join."""
    return bool(dr_index) and all(sample.carries == OWN_TEXT_MEMBERS for sample in dr_index)


def needs_source(sample: SourceSample) -> bool:
    """Whether a DR sample needs the DataComp source: it has no caption or no URL of its own."""
    return sample.caption is None or not sample.url


def read_datacomp_index(path: Path) -> list[SourceSample]:
    """The DataComp samples of a caption shard (``url.txt``, ``txt``, ``json``), sorted by key."""
    index = []
    for key, members in _small_members(path, ("json", "txt", "url.txt")).items():
        meta = _meta(members.get("json"))
        if "uid" not in meta:
            continue
        caption = _text(members.get("txt"))
        if caption is None and isinstance(meta.get("caption") or meta.get("text"), str):
            caption = (meta.get("caption") or meta.get("text")).strip() or None
        url = _text(members.get("url.txt")) or (meta.get("url") if isinstance(meta.get("url"), str) else None)
        sha = meta.get("sha256")
        index.append(SourceSample(key, str(meta["uid"]), url, str(sha).lower() if sha else None, caption,
                                  _recorded_size(meta)))
    return sorted(index, key=lambda sample: sample.key)


def _parquet_columns(schema) -> tuple[list[str], object, object, object]:
    """Columns to read and how to get uid, caption and the original size (None: not recorded):
    datacomp_1b's ``uid``/``text``/``original_width``/``original_height``, or the datasets-converted
    webdataset layout (``json`` struct holding ``uid``, ``txt``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = schema.names
    if "uid" in names:
        uid_column, uid_of = "uid", lambda batch: batch.column("uid")
    elif "json" in names and pa.types.is_struct(schema.field("json").type) \
            and schema.field("json").type.get_field_index("uid") >= 0:
        uid_column, uid_of = "json", lambda batch: pc.struct_field(batch.column("json"), "uid")
    else:
        raise ValueError(f"DataComp parquet has no uid column (columns: {names})")
    text_column = next((name for name in ("text", "txt", "caption") if name in names), None)
    if text_column is None:
        raise ValueError(f"DataComp parquet has no caption column text/txt/caption (columns: {names})")
    columns = [uid_column, text_column]
    size_of = None
    if "original_width" in names and "original_height" in names:
        columns += ["original_width", "original_height"]
        size_of = lambda batch: zip(batch.column("original_width").to_pylist(),  # noqa: E731
                                    batch.column("original_height").to_pylist())
    return columns, uid_of, lambda batch: batch.column(text_column), size_of


def parquet_metadata(paths: list[Path], uids: set[str]) -> dict[str, tuple[str, tuple[int, int] | None]]:
    """``{uid: (caption, original (width, height) or None)}`` for the wanted uids that have a caption,
    scanning DataComp parquet metadata one batch at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    found: dict[str, tuple] = {}
    if not uids:
        return {}
    value_set = pa.array(sorted(uids), pa.string())
    for path in paths:
        parquet = pq.ParquetFile(path)
        try:
            columns, uid_of, text_of, size_of = _parquet_columns(parquet.schema_arrow)
        except ValueError as error:
            raise ValueError(f"{path.name}: {error}") from None
        for batch in parquet.iter_batches(columns=columns, batch_size=1 << 16):
            batch_uids = pc.cast(uid_of(batch), pa.string())
            mask = pc.fill_null(pc.is_in(batch_uids, value_set=value_set), False)
            if pc.any(mask).as_py():
                kept = batch.filter(mask)
                sizes = size_of(kept) if size_of else [(None, None)] * kept.num_rows
                for uid, text, (width, height) in zip(pc.cast(uid_of(kept), pa.string()).to_pylist(),
                                                      text_of(kept).to_pylist(), sizes):
                    found[uid] = (text, _recorded_size({"original_width": width, "original_height": height}))
        if len(found) == len(uids):
            break
    return {uid: (text.strip(), size) for uid, (text, size) in found.items()
            if isinstance(text, str) and text.strip()}


def parquet_captions(paths: list[Path], uids: set[str]) -> dict[str, str]:
    """``{uid: caption}`` for the wanted uids, scanning DataComp parquet metadata one batch at a time."""
    return {uid: text for uid, (text, _) in parquet_metadata(paths, uids).items()}


# ---------------------------------------------------------------------------------------------
# Image downloads


BODY_READ_BYTES = 1 << 18  # per read at most (most images in one); a read returns what has arrived
MAX_REDIRECTS = 10          # as urllib, which img2dataset uses


class _Resolver:
    """``socket.getaddrinfo`` on reusable daemon threads, each lookup given up on at its deadline.

    The system resolver takes no deadline from its caller (its timeouts and attempts are set in
    resolv.conf), so a lookup runs on a resolver thread and its caller waits ``seconds`` at most;
    one that overruns is left to finish on its thread, and its answer is dropped. Each lookup
    handed over finds a thread of its own free (one is started when none is idle), so a stuck
    lookup never holds up another. The threads are kept for the next lookups: starting one per
    lookup cost about 90 us of CPU and 270 us of waiting per URL.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def resolve(self, host: str, port: int, seconds: float) -> list[tuple]:
        answered = threading.Lock()
        answered.acquire()  # released by the resolver thread once the job holds its answer
        job = [host, port, answered, None, None]  # ..., addresses, error
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1
        if start:
            threading.Thread(target=self._work, name="resolver", daemon=True).start()
        self._jobs.put(job)
        if not answered.acquire(timeout=max(seconds, 0.0)):
            raise TimeoutError(f"DNS lookup of {host} took over {seconds:.3g} s")
        if job[4] is not None:
            raise job[4]
        return job[3]

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job[3] = socket.getaddrinfo(job[0], job[1], allowed_gai_family(), socket.SOCK_STREAM)
            except Exception as error:  # noqa: BLE001 - raised again in the caller's thread
                job[4] = error
            with self._lock:
                self._idle += 1  # counted before the answer goes out: the caller's next lookup finds it free
            job[2].release()


_resolver: _Resolver | None = None
_resolver_lock = threading.Lock()


def _forget_resolver() -> None:
    global _resolver
    _resolver = None  # a forked child has none of its parent's threads


os.register_at_fork(after_in_child=_forget_resolver)


def resolve_within(host: str, port: int, seconds: float) -> list[tuple]:
    """``socket.getaddrinfo`` for a TCP connection to ``host``, given up on after ``seconds`` (TimeoutError)."""
    global _resolver
    resolver = _resolver
    if resolver is None:
        with _resolver_lock:
            if _resolver is None:
                _resolver = _Resolver()
            resolver = _resolver
    return resolver.resolve(host, port, seconds)


class _LookupWithinConnectTimeout:
    """A urllib3 connection whose DNS lookup and TCP connects share one budget: its connect timeout.

    urllib3's own ``_new_conn`` bounds each connect attempt by that timeout, but not the lookup
    before it, and gives every address the lookup returns a fresh timeout.
    """

    def _new_conn(self) -> socket.socket:
        if self.timeout is None:
            return super()._new_conn()
        deadline = time.monotonic() + self.timeout
        timed_out = ConnectTimeoutError(self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})")
        try:
            addresses = resolve_within(self.host.strip("[]"), self.port, self.timeout)
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error
        except TimeoutError as error:
            raise timed_out from error
        except (OSError, UnicodeError) as error:
            raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error
        failure: Exception = timed_out
        for *_, address in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timed_out
            try:  # a numeric address: create_connection looks nothing up
                return create_connection(address[:2], remaining, source_address=self.source_address,
                                         socket_options=self.socket_options)
            except TimeoutError:
                failure = timed_out
            except OSError as error:
                failure = NewConnectionError(self, f"Failed to establish a new connection: {error}")
        raise failure


class _HTTPConnection(_LookupWithinConnectTimeout, HTTPConnection):
    pass


class _HTTPSConnection(_LookupWithinConnectTimeout, HTTPSConnection):
    pass


class _HTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOL_CLASSES = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}
_ssl_contexts: dict[str, object] = {}
_ssl_contexts_lock = threading.Lock()


def _ssl_context(ca_bundle: str):
    """One TLS context per CA bundle and process, its certificates loaded once: urllib3 given the
    bundle's path (as requests gives it) loads the whole bundle again for every HTTPS connection,
    about 16 ms of CPU each."""
    with _ssl_contexts_lock:
        context = _ssl_contexts.get(ca_bundle)
        if context is None:
            from urllib3.util.ssl_ import create_urllib3_context

            context = create_urllib3_context()
            if os.path.isdir(ca_bundle):
                context.load_verify_locations(capath=ca_bundle)
            else:
                context.load_verify_locations(cafile=ca_bundle)
            _ssl_contexts[ca_bundle] = context
        return context


class _Client:
    """One thread's HTTP client: urllib3 pools whose connections bound their DNS lookup, with what
    requests would take from the environment read once, when the client is made: the proxies
    (``*_proxy``; ``no_proxy`` is read per URL, and only when there is a proxy) and the CA bundle
    (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, else certifi's, as requests). Requests go to
    urllib3 directly: requests' per-request work (preparing the request, merging the session's
    settings, hooks and cookies, reading the environment) was most of a URL's client CPU. requests
    still picks a URL's proxy and makes the proxy managers (SOCKS and proxy credentials included);
    through a proxy, the proxy looks the image hosts up.
    """

    def __init__(self) -> None:
        from requests.utils import DEFAULT_CA_BUNDLE_PATH, default_headers

        self.headers = dict(default_headers())  # Accept, Accept-Encoding, Connection as requests sends them
        self.headers["User-Agent"] = USER_AGENT
        self.proxies = {scheme: proxy for scheme, proxy in urllib.request.getproxies().items() if scheme != "no"}
        self.ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") \
            or DEFAULT_CA_BUNDLE_PATH
        self.direct = urllib3.PoolManager(num_pools=10, maxsize=10, cert_reqs="CERT_REQUIRED")
        self.direct.pool_classes_by_scheme = _POOL_CLASSES
        self._proxy_adapter = None

    def _proxy_manager(self, url: str) -> urllib3.PoolManager | None:
        """The proxy manager ``url`` goes through, as requests picks it; None: direct."""
        from requests.utils import prepend_scheme_if_needed, select_proxy, should_bypass_proxies

        if should_bypass_proxies(url, no_proxy=None):
            return None
        proxy = select_proxy(url, self.proxies)
        if proxy is None:
            return None
        if self._proxy_adapter is None:
            from requests.adapters import HTTPAdapter

            self._proxy_adapter = HTTPAdapter()
        return self._proxy_adapter.proxy_manager_for(prepend_scheme_if_needed(proxy, "http"),
                                                     cert_reqs="CERT_REQUIRED")

    def get(self, url: str, timeout: float):
        """One GET of ``url``, its redirect not followed and its body not read: urllib3's response."""
        manager = self._proxy_manager(url) if self.proxies else None
        if manager is None:
            manager = self.direct
        if url[:6].lower() == "https:" and "ssl_context" not in manager.connection_pool_kw:
            # the bundle is read on the first HTTPS URL (a bad path fails that URL, counted as a
            # connection error, as with requests), then shared by every connection of the process
            manager.connection_pool_kw["ssl_context"] = _ssl_context(self.ca_bundle)
        return manager.urlopen("GET", url, headers=self.headers, redirect=False, retries=False,
                               preload_content=False, decode_content=True, timeout=urllib3.Timeout(total=timeout))


_local = threading.local()


def _client() -> _Client:
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = _Client()
    return client


def _opted_out(headers) -> bool:
    """img2dataset's rule: an X-Robots-Tag for every agent (or for ours) with an opt-out directive."""
    value = headers.get("X-Robots-Tag")
    if not value:
        return False
    agent, colon, directives = value.partition(":")
    if colon and agent.strip().lower() != USER_AGENT_TOKEN:
        if any(part.strip().lower() in OPT_OUT_DIRECTIVES for part in agent.split(",")):
            return True  # "noai, googlebot: ..." : the part before the agent applies to all
        return False
    listed = directives if colon else value
    return any(part.strip().lower() in OPT_OUT_DIRECTIVES for part in listed.split(","))


def _is_timeout(error: BaseException) -> bool:
    """urllib3 raises its own TimeoutError (connect, headers, body), the deadline the builtin one; a
    read timeout can also come wrapped (as the argument of another error). urllib3's NewConnectionError
    (refused, unreachable, no such host) subclasses its ConnectTimeoutError, but is no timeout."""
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    if isinstance(error, NewConnectionError):
        return False
    return isinstance(error, (Urllib3Timeout, TimeoutError)) or any(
        isinstance(arg, Urllib3Timeout) and not isinstance(arg, NewConnectionError) for arg in error.args)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no answer within the timeout")
    return remaining


REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def _redirect_target(url: str, response) -> str | None:
    """Where a redirect answer points, read as requests reads it (``Session.get_redirect_target`` and
    ``resolve_redirects``): Location as UTF-8 sent as Latin-1, relative to ``url``, re-quoted."""
    if response.status not in REDIRECT_STATUSES:
        return None
    location = response.headers.get("Location")
    if not location:
        return None
    from urllib.parse import urljoin, urlsplit

    from requests.utils import requote_uri

    try:
        location = location.encode("latin1").decode("utf8")
    except UnicodeError:
        pass
    if location.startswith("//"):
        location = f"{urlsplit(url).scheme}:{location}"
    return urljoin(url, requote_uri(location)) if not urlsplit(location).netloc else requote_uri(location)


def _answer(url: str, deadline: float):
    """GET ``url`` (body not read), redirects followed, every hop's DNS lookup, connect and headers by ``deadline``.

    urllib3's ``Timeout(total=...)`` bounds one hop's connect plus its wait for the headers; each
    hop gets what is left of the deadline, not a timeout of its own. Returns the urllib3 response.
    """
    client = _client()
    response = client.get(url, _remaining(deadline))
    for _ in range(MAX_REDIRECTS):
        next_url = _redirect_target(url, response)
        if next_url is None:
            break
        response.close()
        response.release_conn()
        url = next_url
        response = client.get(url, _remaining(deadline))  # each hop through the proxy (if any) its URL takes
    return response


def _read_body(response, deadline: float, max_bytes: int) -> tuple[bytes | None, str | None]:
    """The body by ``deadline``, read as it arrives: a body that trickles is cut at the deadline, as is
    one that stops (the socket's timeout is what is left before each read)."""
    sock = getattr(response.connection, "sock", None)
    body = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, "timeout"
        if sock is not None:
            sock.settimeout(remaining)
        chunk = response.read1(BODY_READ_BYTES)
        if not chunk:
            return bytes(body), None
        body += chunk
        if len(body) > max_bytes:
            return None, "too_large"


def fetch_url(url: str, timeout: float, retries: int, max_bytes: int) -> tuple[bytes | None, str | None]:
    """``(body, None)`` or ``(None, reason)`` with reason in FAILURE_REASONS. Never raises.

    Each try has two deadlines: the answer (DNS lookups, connects, redirects, headers) within
    ``timeout`` seconds, then the body within ``timeout`` more; so a try costs at most about
    2 x timeout, and a timeout is not retried.
    """
    if not url.lower().startswith(("http://", "https://")):
        return None, "invalid_url"
    reason = "connection"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.5 * attempt, 2.0))
        response = None
        try:
            response = _answer(url, time.monotonic() + timeout)
            if response.status in (404, 410):
                return None, "http_404"
            if response.status != 200:
                reason = "http_error"
                if response.status == 429 or response.status >= 500:
                    continue
                return None, reason
            if _opted_out(response.headers):
                return None, "opted_out"
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                return None, "too_large"
            body, failure = _read_body(response, time.monotonic() + timeout, max_bytes)
            if body is not None:
                response.release_conn()  # read to its end: the connection may serve the host again
                response = None
            return body, failure
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, ValueError):
            return None, "invalid_url"  # urllib3's LocationParseError is a ValueError; requests' for a SOCKS proxy
        except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                OSError) as error:
            if _is_timeout(error):
                return None, "timeout"  # not retried: a retry would double the stall
            reason = "connection"
        finally:
            if response is not None:  # not read to its end: its connection is closed, not reused
                response.close()
                response.release_conn()
    return None, reason


# ---------------------------------------------------------------------------------------------
# One shard


def _paths(shard_id: str, opts: FetchOptions) -> tuple[Path, Path, Path | None]:
    datacomp_tar = Path(opts.datacomp_dir) / f"{shard_id}.tar"
    manifest = datacomp_tar.with_name(datacomp_tar.name + ".manifest.json")
    dr_tar = Path(opts.dr_dir) / f"{shard_id}.tar" if opts.dr_repo else None
    return datacomp_tar, manifest, dr_tar


def load_done_shard(shard_id: str, opts: FetchOptions) -> dict | None:
    """The shard's manifest if the shard is complete for these repos (so a rerun skips it), else None."""
    datacomp_tar, manifest_path, dr_tar = _paths(shard_id, opts)
    if not (datacomp_tar.is_file() and manifest_path.is_file()):
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(manifest, dict) or manifest.get("schema") != SHARD_MANIFEST_SCHEMA
            or manifest.get("status") != "ok" or manifest.get("datacomp_repo") != opts.datacomp_repo
            or manifest.get("dr_repo") != opts.dr_repo):
        return None
    if not shards.is_readable_tar(datacomp_tar):
        return None
    if dr_tar is not None and not (dr_tar.is_file() and shards.is_readable_tar(dr_tar)):
        return None
    if any(Path(described["path"]).stat().st_size != described["bytes"]
           for described in manifest.get(shards.SHARD_FILES_KEY, []) if Path(described["path"]).is_file()):
        return None  # a tar replaced since: fetched again
    return manifest


def _dr_commit_note(shard_id: str, opts: FetchOptions) -> Path:
    """Where the commit of an installed DataCompDR tar is noted until its shard's manifest records it
    (in the staging folder: the DR folder holds only what training reads)."""
    return opts.staging() / "dr-commits" / f"{shard_id}.json"


def _installed_dr_commit(shard_id: str, opts: FetchOptions) -> str | None:
    """The commit the installed DataCompDR tar of the shard came from, as its manifest or note says (None: unknown)."""
    _, manifest_path, _ = _paths(shard_id, opts)
    for path in (manifest_path, _dr_commit_note(shard_id, opts)):
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(recorded, dict) and recorded.get("dr_repo") == opts.dr_repo and recorded.get("dr_commit"):
            return recorded["dr_commit"]
    return None


def ensure_dr_shard(shard_id: str, opts: FetchOptions) -> Path:
    """The installed DataCompDR tar of the shard, downloaded unless a complete one from the job's commit is there."""
    _, _, dr_tar = _paths(shard_id, opts)
    if dr_tar.is_file() and shards.is_readable_tar(dr_tar) \
            and (opts.dr_commit is None or _installed_dr_commit(shard_id, opts) == opts.dr_commit):
        return dr_tar
    staged = download_checked_tar(opts.dr_repo, f"{shard_id}.tar", opts.staging() / "dr", opts.dr_at(),
                                  opts.hub_retry())
    _install(staged, dr_tar)
    if opts.dr_commit is not None:
        note = _dr_commit_note(shard_id, opts)
        note.parent.mkdir(parents=True, exist_ok=True)
        shards.write_json_atomic(note, {"dr_repo": opts.dr_repo, "dr_commit": opts.dr_commit})
    return dr_tar


def datacomp_shard_index(shard_id: str, opts: FetchOptions) -> list[SourceSample]:
    """Layout ``shards``: the DataComp caption shard of the same id, read, then its download removed."""
    staged = download_checked_tar(opts.datacomp_repo, f"{shard_id}.tar", opts.staging() / "datacomp",
                                  opts.datacomp_at(), opts.hub_retry())
    try:
        return read_datacomp_index(staged)
    finally:
        staged.unlink(missing_ok=True)


def join_captions(dr_index: list[SourceSample], by_uid: dict[str, SourceSample]) -> list[SourceSample]:
    """DataCompDR samples with their DataComp caption (and the DataComp URL, sha256 and original size
    when DR has none). A DR sample's own caption (``txt``), when it carries one, is kept; one with
    neither stays without caption (``no_caption``)."""
    joined = []
    for sample in dr_index:
        source = by_uid.get(sample.uid) if sample.uid is not None else None
        own = sample.caption is not None
        joined.append(replace(sample, caption=sample.caption if own else (source.caption if source else None),
                              captions=sample.captions if own else (),
                              url=sample.url or (source.url if source else None),
                              sha256=sample.sha256 or (source.sha256 if source else None),
                              size=sample.size or (source.size if source else None)))
    return joined


def check_join_rate(shard_id: str, dr_index: list[SourceSample], by_uid: dict, opts: FetchOptions) -> float:
    """The fraction of the DataCompDR shard's samples needing the caption/URL source (``needs_source``:
    all of them in DataCompDR) whose uid the source holds; JoinRateTooLow below ``opts.min_join_rate``,
    before a single image is asked for. A sample without a uid counts as not held.

    A real pair (DataComp-12M with DataCompDR-12M, datacomp_1b with DataCompDR-1B) joins at about
    100%; a source that describes other samples (DFN-2B's DR shards against DataComp-12M's
    captions) joins at about 0%, and would leave every shard nearly empty.
    """
    needing = [sample for sample in dr_index if needs_source(sample)]
    if not any(sample.uid is not None for sample in needing):
        # nothing to join by: a shard of another format (no json uid, no own txt), which would come out empty
        what = (f"no sample with a json uid among its {len(needing)} of {len(dr_index)} samples that lack a caption "
                "(txt) or URL (url.txt) of their own" if dr_index else "no sample with a json uid")
        raise JoinRateTooLow(
            f"shard {shard_id}: {opts.dr_repo}'s tar holds {what}, so nothing can be joined with "
            f"{opts.datacomp_repo} by uid: is data.hub.dr_repo a DataCompDR-format repo, or one whose samples "
            "carry url.txt and txt?")
    rate = sum(sample.uid in by_uid for sample in needing) / len(needing)
    if rate < opts.min_join_rate:
        raise JoinRateTooLow(
            f"shard {shard_id}: {opts.datacomp_repo} holds {rate:.1%} of the uids of {opts.dr_repo}'s shard "
            f"({round(rate * len(needing))} of {len(needing)}), below data.hub.min_join_rate "
            f"{opts.min_join_rate:g}: the two repos do not describe the same samples (a DFN DR set joined with "
            "DataComp captions?); point data.hub.datacomp_repo at the caption/URL source of data.hub.dr_repo")
    return rate


def decoded_size(body: bytes) -> tuple[int, int] | None:
    """(width, height) of an image from its header (Pillow decodes no pixels for this), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(body)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def keeps_mismatch(body: bytes, sample: SourceSample, policy: str) -> bool:
    """Whether an image whose bytes do not hash to the recorded sha256 is kept under ``policy``
    (SHA256_POLICIES). ``same_size`` needs a recorded size: without one it drops."""
    if policy == "off":
        return True
    if policy == "same_size":
        return sample.size is not None and decoded_size(body) == sample.size
    return False


class ShardTarWriter:
    """Writes a DataComp shard to an open binary stream byte for byte as ``shards.atomic_tar_writer``'s
    ``webdataset.TarWriter(mtime=TAR_MTIME)`` writes ``shards.datacomp_record``s (a test compares the
    two), at about a quarter of its CPU per sample: each member's header is tarfile's own header
    with the member's name, size and checksum put in (``header``), followed by the member's bytes,
    without ``TarFile.addfile``'s copy of each header, stream wrapper and member list, the encoder's
    pass over every sample, or a second sha256 of the image (the caller hashed it, in the download
    thread)."""

    USER = GROUP = "bigdata"  # webdataset.TarWriter's defaults
    MODE = 0o444

    def __init__(self, stream) -> None:
        self.stream = stream
        self.offset = 0
        # tarfile's header for a member with no name and no bytes; a member whose name fits the
        # ustar name field (ASCII, at most 100 characters) differs from it only in name, size and
        # checksum, which header() fills in (tarfile makes every other header, with its pax records)
        template = bytearray(self._tarinfo("", 0).tobuf(tarfile.DEFAULT_FORMAT, tarfile.ENCODING, "surrogateescape"))
        template[148:156] = b" " * 8  # the checksum is the sum of the header's bytes with these as spaces
        self._template = bytes(template)

    def _tarinfo(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, TAR_MTIME, self.MODE, self.USER, self.GROUP
        return info

    def header(self, name: str, size: int) -> bytes:
        """The member's header, as ``TarInfo.tobuf`` makes it."""
        if len(self._template) != tarfile.BLOCKSIZE or len(name) > 100 or not name.isascii() \
                or not 0 <= size < 8 ** 11:
            return self._tarinfo(name, size).tobuf(tarfile.DEFAULT_FORMAT, tarfile.ENCODING, "surrogateescape")
        header = bytearray(self._template)
        header[:len(name)] = name.encode("ascii")
        header[124:136] = b"%011o\0" % size
        header[148:155] = b"%06o\0" % sum(header)
        return bytes(header)

    def write(self, key: str, jpg: bytes, sha256: str, caption: str, uid: str | None, url: str,
              extra_meta: dict | None = None) -> None:
        """One sample as ``shards.datacomp_record`` makes it (``sha256``: of ``jpg``)."""
        meta = shards.datacomp_json(key, sha256, caption, uid, url, extra_meta)
        # TarWriter's member order: the extensions sorted
        for ext, data in (("jpg", jpg), ("json", meta.encode("utf-8")), ("txt", caption.encode("utf-8")),
                          ("url.txt", url.encode("utf-8"))):
            header = self.header(f"{key}.{ext}", len(data))
            padding = -len(data) % tarfile.BLOCKSIZE
            self.stream.write(header)
            self.stream.write(data)
            if padding:
                self.stream.write(tarfile.NUL * padding)
            self.offset += len(header) + len(data) + padding

    def close(self) -> None:
        """The end-of-archive blocks and the padding to a whole record, as ``TarFile.close``."""
        self.offset += 2 * tarfile.BLOCKSIZE
        self.stream.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE + -self.offset % tarfile.RECORDSIZE))


def _download(sample: SourceSample, opts: FetchOptions) -> tuple[bytes | None, str | None, str | None]:
    """``fetch_url`` in a pool thread, and there too the body's sha256 (hashlib lets go of the GIL)."""
    body, reason = fetch_url(sample.url, opts.timeout, opts.retries, opts.max_image_bytes)
    return body, reason, shards.sha256_hex(body) if body is not None else None


# Downloaded images a shard holds in memory while an earlier one (in key order) is still downloading.
HELD_BYTES = 256 << 20


def build_shard(shard_id: str, samples: list[SourceSample], opts: FetchOptions) -> ShardCounts:
    """Download the images of ``samples`` and write the DataComp shard (keys in sorted order)."""
    counts = ShardCounts(samples_listed=len(samples))
    todo = []
    for sample in sorted(samples, key=lambda s: s.key):
        if sample.caption is None:
            counts.no_caption += 1
        elif not sample.url:
            counts.no_url += 1
        else:
            todo.append(sample)
    datacomp_tar, _, _ = _paths(shard_id, opts)
    # Images are written in key order, but a URL is started whenever a download ends, not when the
    # oldest one does: a stalled URL at the head (up to 2 x timeout) must not leave the threads idle
    # while the URLs after it are done. Those wait for their turn in memory, up to HELD_BYTES.
    running_at_most = max(1, opts.threads) * 2  # queued in the pool or downloading: keeps every thread busy
    with shards.atomic_output(datacomp_tar) as partial, open(partial, "wb") as stream, \
            ThreadPoolExecutor(max_workers=max(1, opts.threads)) as pool:
        writer = ShardTarWriter(stream)
        in_key_order: collections.deque = collections.deque()  # (sample, future), not yet written
        running: set = set()
        finished: queue.SimpleQueue = queue.SimpleQueue()  # futures as they end (a wait() over all of
        #                                                    them cost O(threads) per URL)
        held: dict = {}  # finished, not yet written: future -> bytes held
        held_bytes = [0]  # their sum
        upcoming = iter(todo)

        def start_more() -> None:
            while len(running) < running_at_most and held_bytes[0] < HELD_BYTES:
                sample = next(upcoming, None)
                if sample is None:
                    return
                future = pool.submit(_download, sample, opts)
                future.add_done_callback(finished.put)
                in_key_order.append((sample, future))
                running.add(future)

        start_more()
        while in_key_order:
            if not in_key_order[0][1].done():
                future = finished.get()
                if future in running:  # else: written already, as the head
                    running.discard(future)
                    held[future] = len(future.result()[0] or b"")
                    held_bytes[0] += held[future]
                    start_more()
                continue
            sample, future = in_key_order.popleft()
            running.discard(future)
            held_bytes[0] -= held.pop(future, 0)
            body, reason, digest = future.result()
            start_more()
            counts.urls_tried += 1
            if body is None:
                counts.failed[reason] += 1
                continue
            counts.images_fetched += 1
            extra_meta = {}
            if sample.sha256 is None:
                counts.sha256_unchecked += 1  # nothing recorded to check the bytes against
            elif digest != sample.sha256:
                if not keeps_mismatch(body, sample, opts.sha256_policy):
                    counts.sha256_mismatch_dropped += 1
                    continue
                counts.sha256_mismatch_kept += 1
                # the json's sha256 is of the stored bytes; the one the metadata recorded stays visible
                extra_meta = {"recorded_sha256": sample.sha256, "sha256_policy": opts.sha256_policy}
            if len(sample.captions) > 1:  # v2's several ground-truth captions: txt is the first (text_emb[0])
                extra_meta["captions"] = list(sample.captions)
            writer.write(sample.key, body, digest, sample.caption, sample.uid, sample.url, extra_meta or None)
            counts.samples_kept += 1
        writer.close()
    return counts


def _source_fields(opts: FetchOptions) -> dict:
    """The repos a shard or group came from, the revisions asked for and the commits they resolved to."""
    return {"datacomp_repo": opts.datacomp_repo, "datacomp_revision": opts.datacomp_revision,
            "datacomp_commit": opts.datacomp_commit, "dr_repo": opts.dr_repo,
            "dr_revision": opts.dr_revision if opts.dr_repo else None, "dr_commit": opts.dr_commit}


def _shard_files(entry: dict) -> list[dict]:
    """The tars of an ok shard as ``shards.SHARD_FILES_KEY`` entries (hashed while still in the page cache)."""
    return [shards.describe_shard(entry[key]) for key in ("datacomp_tar", "dr_tar") if entry.get(key)]


def fetch_shard(shard_id: str, opts: FetchOptions, captions: dict[str, str] | None = None) -> dict:
    """Build one shard; returns its manifest entry (status ``ok`` or ``failed``). Never raises ShardFailed."""
    start = time.monotonic()
    datacomp_tar, manifest_path, dr_tar = _paths(shard_id, opts)
    entry = {"schema": SHARD_MANIFEST_SCHEMA, "shard": shard_id, **_source_fields(opts), "layout": opts.layout,
             "sha256_policy": opts.sha256_policy}
    try:
        if opts.dr_repo:
            dr_path = ensure_dr_shard(shard_id, opts)
            dr_index = read_dr_index(dr_path)
            if carries_own_text(dr_index):
                # every sample has its own url.txt and txt (a DFNDR layout): nothing to join, so the
                # DataComp source is not read for this shard and the join guard has nothing to check
                log.info("shard %s: every sample of %s's tar carries its own URL and caption; %s not read",
                         shard_id, opts.dr_repo, opts.datacomp_repo)
                entry["caption_source"] = "dr_shard"
                samples = dr_index
            else:
                if captions is not None:
                    by_uid = {uid: SourceSample("", uid, None, None, text, size)
                              for uid, (text, size) in captions.items()}
                else:
                    by_uid = {sample.uid: sample for sample in datacomp_shard_index(shard_id, opts)}
                entry["caption_source"] = "datacomp_repo"
                entry["join_rate"] = round(check_join_rate(shard_id, dr_index, by_uid, opts), 4)
                samples = join_captions(dr_index, by_uid)
        else:
            samples = datacomp_shard_index(shard_id, opts)
        counts = build_shard(shard_id, samples, opts)
    except ShardFailed as error:
        log.warning("shard %s failed: %s", shard_id, error)
        return {**entry, "status": "failed", "error": str(error), "elapsed_s": round(time.monotonic() - start, 3)}
    elapsed = time.monotonic() - start
    entry.update(status="ok", datacomp_tar=str(datacomp_tar), dr_tar=str(dr_tar) if dr_tar else None,
                 **{name: getattr(counts, name) for name in COUNTERS}, failed=counts.failed,
                 sha256_unchecked=counts.sha256_unchecked,
                 elapsed_s=round(elapsed, 3), images_per_s=round(counts.images_fetched / max(elapsed, 1e-9), 2))
    entry[shards.SHARD_FILES_KEY] = _shard_files(entry)
    shards.write_json_atomic(manifest_path, entry)
    return entry


def _fetch_shard_job(shard_id: str, opts: FetchOptions, captions: dict | None, log_level: int) -> dict:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return fetch_shard(shard_id, opts, captions)


def _dr_uids_job(shard_id: str, opts: FetchOptions, log_level: int) -> tuple[str, list[str] | None, str | None]:
    """Layout ``parquet``, first pass: the shard's DataCompDR tar installed, and its uids."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # only the samples without a caption/URL of their own are looked up (none in a shard that carries them)
        return shard_id, [sample.uid for sample in read_dr_index(ensure_dr_shard(shard_id, opts))
                          if sample.uid is not None and needs_source(sample)], None
    except ShardFailed as error:
        log.warning("shard %s failed: %s", shard_id, error)
        return shard_id, None, str(error)


# ---------------------------------------------------------------------------------------------
# One group


def _counter(entry: dict, name: str) -> int:
    """A shard manifest's count; one written before the sha256 policy has ``sha256_mismatch`` (all dropped)."""
    if name == "sha256_mismatch_dropped" and name not in entry:
        return int(entry.get("sha256_mismatch", 0))
    return int(entry.get(name, 0))


def _totals(entries: list[dict]) -> dict:
    ok = [entry for entry in entries if entry.get("status") == "ok"]
    totals = {name: sum(_counter(entry, name) for entry in ok) for name in COUNTERS}
    reasons = list(FAILURE_REASONS) + sorted({r for e in ok for r in e.get("failed", {})} - set(FAILURE_REASONS))
    totals["failed"] = {reason: sum(int(entry.get("failed", {}).get(reason, 0)) for entry in ok) for reason in reasons}
    totals["sha256_unchecked"] = sum(int(entry.get("sha256_unchecked", 0)) for entry in ok)
    totals["shards_captioned_by_dr"] = sum(entry.get("caption_source") == "dr_shard" for entry in ok)
    totals.update(shards=len(entries), shards_ok=len(ok), shards_failed=len(entries) - len(ok),
                  shards_resumed=sum(bool(entry.get("resumed")) for entry in entries))
    return totals


def _parallel(function, jobs: list[tuple], processes: int, description: str):
    """``function(*job)`` for each job: in this process when ``processes`` is 1, else in spawned processes.

    Yields results as they complete, under one tqdm bar.
    """
    bar = tqdm(total=len(jobs), desc=description, unit="shard", mininterval=5)
    try:
        if processes <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield function(*job)
                bar.update()
            return
        # forkserver: workers fork from a clean single-threaded server that imported this module
        # and the writer's webdataset (1.3 s of CPU to import) once: no fork of a process with live
        # threads, no import per worker inside its first shard
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__, "webdataset"])
        with ProcessPoolExecutor(max_workers=min(processes, len(jobs)), mp_context=context) as pool:
            for future in as_completed([pool.submit(function, *job) for job in jobs]):
                yield future.result()
                bar.update()
    finally:
        bar.close()


def _parquet_files(opts: FetchOptions) -> list[Path]:
    names = sorted(name for name in hub_list_files(opts.datacomp_repo, opts.datacomp_at(), retry=opts.hub_retry())
                   if name.endswith(".parquet"))
    if not names:
        raise ValueError(f"{opts.datacomp_repo} holds no *.parquet files")
    local_dir = opts.staging() / "parquet" / opts.datacomp_repo.replace("/", "--")
    return [hub_download(opts.datacomp_repo, name, local_dir, revision=opts.datacomp_at(), retry=opts.hub_retry())
            for name in names]


def resolve_commits(opts: FetchOptions) -> FetchOptions:
    """``opts`` with each repo's revision (None: main) resolved to its commit, once for the whole job:
    every download and listing then asks for that commit, so a branch moving mid-job changes nothing."""
    datacomp_commit = hub_commit(opts.datacomp_repo, opts.datacomp_revision, retry=opts.hub_retry())
    dr_commit = hub_commit(opts.dr_repo, opts.dr_revision, retry=opts.hub_retry()) if opts.dr_repo else None
    log.info("%s at %s: commit %s%s", opts.datacomp_repo, opts.datacomp_revision or "main", datacomp_commit,
             f"; {opts.dr_repo} at {opts.dr_revision or 'main'}: commit {dr_commit}" if opts.dr_repo else "")
    return replace(opts, datacomp_commit=datacomp_commit, dr_commit=dr_commit)


def check_done_commits(done: dict[str, dict], opts: FetchOptions) -> None:
    """CommitMoved when a finished shard of the group came from another commit than the job's.

    The choice: fail, naming both commits, rather than refetch or mix. A dataset should be one
    commit of each repo; refetching would only make this group agree with the new commit while
    the groups already done stay at the old one, and mixing would go unnoticed in training. The
    researcher picks: pin the old commit (``data.hub.*_revision``) to finish at it, or delete
    the shards to fetch them at the new one. A manifest from before commits were recorded is
    kept, with a warning: nothing says which commit it came from.
    """
    unrecorded = sorted(shard for shard, entry in done.items() if "datacomp_commit" not in entry)
    if unrecorded:
        log.warning("%d finished shard(s) (%s, ...) record no hub commit (fetched before commits were recorded); "
                    "kept as they are", len(unrecorded), unrecorded[0])
    problems = []
    for role, repo, requested, commit in (("datacomp", opts.datacomp_repo, opts.datacomp_revision,
                                           opts.datacomp_commit),
                                          ("dr", opts.dr_repo, opts.dr_revision, opts.dr_commit)):
        if commit is None:
            continue
        moved = collections.defaultdict(list)
        for shard, entry in sorted(done.items()):
            recorded = entry.get(f"{role}_commit")
            if recorded and recorded != commit:
                moved[recorded].append(shard)
        for recorded, shard_ids in moved.items():
            problems.append(
                f"{len(shard_ids)} finished shard(s) ({', '.join(shard_ids[:3])}{', ...' * (len(shard_ids) > 3)})"
                f" came from {repo} at commit {recorded}, but revision {requested or 'main'} now resolves to {commit}."
                f" Pin data.hub.{role}_revision: {recorded} to finish at the old commit, or delete those shards "
                "(<id>.tar and <id>.tar.manifest.json) to fetch them at the new one")
    if problems:
        raise CommitMoved("the group would mix two commits of a hub repo: " + "; ".join(problems))


def fetch_group(shard_ids: list[str], opts: FetchOptions) -> dict:
    """Fetch every shard of a group that is not already complete; returns the group manifest, failed
    shards included (``command`` writes it only when none failed)."""
    start = time.monotonic()
    level = log.getEffectiveLevel()
    entries: dict[str, dict] = {}
    pending = []
    for shard_id in shard_ids:
        done = load_done_shard(shard_id, opts)
        if done is not None:
            entries[shard_id] = {**done, "resumed": True}
        else:
            pending.append(shard_id)
    log.info("%d shards in the group: %d already complete, %d to fetch", len(shard_ids), len(entries), len(pending))
    opts = resolve_commits(opts)
    check_done_commits(entries, opts)

    layout = opts.layout
    if pending and layout == "auto":
        layout = detect_layout(hub_list_files(opts.datacomp_repo, opts.datacomp_at(), retry=opts.hub_retry()))
        log.info("%s: layout %r", opts.datacomp_repo, layout)
    opts = replace(opts, layout=layout)
    if layout == "parquet" and not opts.dr_repo:
        raise ValueError(f"{opts.datacomp_repo} is parquet metadata, not shards: it needs --dr-repo to say which "
                         "samples form each shard")

    captions: dict[str, dict[str, str] | None] = {shard_id: None for shard_id in pending}
    if pending and layout == "parquet":
        uids_by_shard = {}
        for shard_id, uids, error in _parallel(_dr_uids_job, [(s, opts, level) for s in pending], opts.processes,
                                               "DataCompDR shards"):
            if error is not None:
                entries[shard_id] = {"schema": SHARD_MANIFEST_SCHEMA, "shard": shard_id, "status": "failed",
                                     "error": error, **_source_fields(opts), "layout": layout}
            else:
                uids_by_shard[shard_id] = uids
        wanted = {uid for uids in uids_by_shard.values() for uid in uids}
        if wanted:
            log.info("looking up %d uids in %s", len(wanted), opts.datacomp_repo)
        else:  # every shard carries its own captions and URLs, or has nothing to join by (the guard says so)
            log.info("no sample of the group needs %s: its parquet is not downloaded", opts.datacomp_repo)
        found = parquet_metadata(_parquet_files(opts), wanted) if wanted else {}
        pending = [shard_id for shard_id in pending if shard_id in uids_by_shard]
        captions = {shard_id: {uid: found[uid] for uid in uids_by_shard[shard_id] if uid in found}
                    for shard_id in pending}

    jobs = [(shard_id, opts, captions[shard_id], level) for shard_id in pending]
    for entry in _parallel(_fetch_shard_job, jobs, opts.processes, "shards"):
        entries[entry["shard"]] = entry
        if entry["status"] == "ok":
            log.info("shard %s: %d/%d samples kept; %d of %d URLs fetched in %.1f s (%.1f images/s)",
                     entry["shard"], entry["samples_kept"], entry["samples_listed"], entry["images_fetched"],
                     entry["urls_tried"], entry["elapsed_s"], entry["images_per_s"])

    ordered = [entries[shard_id] for shard_id in shard_ids]
    elapsed = time.monotonic() - start
    fetched_now = sum(e.get("images_fetched", 0) for e in ordered if e.get("status") == "ok" and not e.get("resumed"))
    return {"schema": MANIFEST_SCHEMA, **_source_fields(opts), "layout": layout, "sha256_policy": opts.sha256_policy,
            "min_join_rate": opts.min_join_rate, "datacomp_dir": str(opts.datacomp_dir),
            "dr_dir": str(opts.dr_dir) if opts.dr_repo else None, "totals": _totals(ordered), "shards": ordered,
            # what training reads: the ok shards' tars, by content (train.train.training_shards)
            shards.SHARD_FILES_KEY: [described for entry in ordered if entry.get("status") == "ok"
                                     for described in entry.get(shards.SHARD_FILES_KEY) or _shard_files(entry)],
            "elapsed_s": round(elapsed, 3), "images_per_s": round(fetched_now / max(elapsed, 1e-9), 2)}
