"""`fetch` against a fake hub + image server on 127.0.0.1: huggingface_hub's real download path
(HEAD/GET /datasets/<repo>/resolve/<rev>/<file>, the tree API for the layout), images that
404, time out, fail, changed, opted out; resumability; the DataComp ⋈ DataCompDR join; hub
errors retried, a group with a failed shard failing; the per-URL deadline."""
from __future__ import annotations

import io
import json
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from mobileclip_repro import shards, toyworld
from mobileclip_repro.data import fetch
from mobileclip_repro.hub import HubRetries, parse_shard_spec
from mobileclip_repro.cli import main

import fake_hub  # tests/fake_hub.py
from fake_hub import SLOW_SECONDS, TRICKLE_BYTES, TRICKLE_SECONDS, FakeHub

TIMEOUT = 1.0          # the per-URL deadline where fetch_url's deadline itself is tested
# where one image is "slow" (SLOW_SECONDS) and must time out among images that answer at once: a
# deadline the clean ones meet on a loaded 2-core machine (1 s did not, twice in clean-clone CI)
SLOW_WORLD_TIMEOUT = 3.0
# everywhere else every image URL answers at once: a deadline no loaded machine reaches, so a slow
# moment cannot turn an image into a timeout
CLEAN_IMAGE_TIMEOUT = 10.0
PER_SHARD = 8
DR_REPO = "apple/DataCompDR-toy"
DC_REPO = "mlfoundations/DataComp-toy"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with fake_hub.serving(monkeypatch, tmp_path / "hf_home") as fake:
        yield fake


# ---------------------------------------------------------------------------------------------
# Hub content from the project's own generators


@dataclass
class Sample:
    key: str
    uid: str
    jpg: bytes
    caption: str

    @property
    def sha256(self) -> str:
        return shards.sha256_hex(self.jpg)


def _tar_bytes(records: list[dict]) -> bytes:
    stream = io.BytesIO()
    writer = wds.TarWriter(stream, mtime=0)
    for record in records:
        writer.write(record)
    writer.close()
    return stream.getvalue()


@pytest.fixture(scope="module")
def toy_samples(tmp_path_factory) -> list[list[Sample]]:
    """Three shards of toy-world DataComp samples (images, captions, uids)."""
    root = tmp_path_factory.mktemp("toy")
    toyworld.generate(root, train_samples=3 * PER_SHARD, teacher_samples=1, benchmark_samples=1,
                      samples_per_shard=PER_SHARD)
    return [[Sample(raw["__key__"], json.loads(raw["json"])["uid"], raw["jpg"], raw["txt"].decode())
             for raw in shards.iter_raw_samples(path)]
            for path in shards.list_shards(root / "datacomp")]


def dr_tar(samples: list[Sample], base_url: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return _tar_bytes([shards.dr_record(s.key, s.uid, s.sha256, f"{base_url}/img/{s.uid}.jpg",
                                        ["a synthetic caption", "another one"], [[[0, 0, 16, 16], [[0, 0.0]]]] * 2,
                                        rng.normal(size=(2, 8)), rng.normal(size=(3, 8)))
                       for s in samples])


def datacomp_caption_tar(samples: list[Sample], base_url: str) -> bytes:
    """As mlfoundations/DataComp-12M's shards: url.txt, txt, json; no image."""
    return _tar_bytes([{"__key__": s.key, "url.txt": f"{base_url}/img/{s.uid}.jpg", "txt": s.caption,
                        "json": json.dumps({"uid": s.uid, "sha256": s.sha256, "original_height": 64,
                                            "original_width": 64})}
                       for s in samples])


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/img/refused.jpg"


@dataclass
class World:
    ids: list[str]
    samples: dict[str, list[Sample]]
    good_dr: dict[str, bytes]


def publish_shards_world(hub: FakeHub, toy_samples) -> World:
    """Shard 0 holds one sample of each kind of loss; shard 1's DR tar is truncated on the hub; shard 2 is clean."""
    ids = [f"{i:08d}" for i in range(3)]
    world = World(ids, dict(zip(ids, toy_samples)), {})
    for shard_id, samples in world.samples.items():
        world.good_dr[shard_id] = dr_tar(samples, hub.base_url)
        hub.files[(DR_REPO, f"{shard_id}.tar")] = world.good_dr[shard_id]
        captioned = [s for s in samples if not (shard_id == ids[0] and s is samples[4])]  # sample 4: no caption
        hub.files[(DC_REPO, f"{shard_id}.tar")] = datacomp_caption_tar(captioned, hub.base_url)
        for s in samples:
            hub.images[f"{s.uid}.jpg"] = s.jpg
    first = world.samples[ids[0]]
    del hub.images[f"{first[1].uid}.jpg"]                                  # 404
    hub.special[f"{first[2].uid}.jpg"] = "slow"                             # timeout
    hub.images[f"{first[3].uid}.jpg"] = first[3].jpg[:-10] + b"changed!!!"  # sha256 mismatch
    hub.special[f"{first[5].uid}.jpg"] = "error"                            # HTTP 500
    hub.special[f"{first[7].uid}.jpg"] = "opted_out"                        # X-Robots-Tag: noai
    # sample 6: a URL nobody listens on (connection refused), in the DR tar
    rng = np.random.default_rng(0)
    rebuilt = []
    for s in first:
        url = closed_port_url() if s is first[6] else f"{hub.base_url}/img/{s.uid}.jpg"
        rebuilt.append(shards.dr_record(s.key, s.uid, s.sha256, url, ["a synthetic caption", "another one"],
                                        [[[0, 0, 16, 16], [[0, 0.0]]]] * 2, rng.normal(size=(2, 8)),
                                        rng.normal(size=(3, 8))))
    world.good_dr[ids[0]] = _tar_bytes(rebuilt)
    hub.files[(DR_REPO, f"{ids[0]}.tar")] = world.good_dr[ids[0]]
    good = world.good_dr[ids[1]]
    hub.files[(DR_REPO, f"{ids[1]}.tar")] = good[: len(good) // 2]            # truncated upload
    return world


def publish_clean_world(hub: FakeHub, toy_samples) -> World:
    """Three shards whose hub files and images are all fine."""
    ids = [f"{i:08d}" for i in range(3)]
    world = World(ids, dict(zip(ids, toy_samples)), {})
    for shard_id, samples in world.samples.items():
        world.good_dr[shard_id] = hub.files[(DR_REPO, f"{shard_id}.tar")] = dr_tar(samples, hub.base_url)
        hub.files[(DC_REPO, f"{shard_id}.tar")] = datacomp_caption_tar(samples, hub.base_url)
        for s in samples:
            hub.images[f"{s.uid}.jpg"] = s.jpg
    return world


def options(tmp_path: Path, **overrides) -> fetch.FetchOptions:
    values = dict(datacomp_repo=DC_REPO, datacomp_dir=tmp_path / "data" / "datacomp", dr_repo=DR_REPO,
                  dr_dir=tmp_path / "data" / "datacompdr", processes=1, threads=8, timeout=CLEAN_IMAGE_TIMEOUT, retries=1,
                  hub_backoff_s=0.01)
    values.update(overrides)
    return fetch.FetchOptions(**values)


def revision_lookups(*repos: str) -> set[str]:
    """The repo-info requests a fetch job makes once per repo, to resolve its revision to a commit."""
    return {f"/api/datasets/{repo}" for repo in (repos or (DC_REPO, DR_REPO))}


def image_requests(requests: list[tuple[str, str]]) -> list[str]:
    return [path for method, path in requests if path.startswith("/img/")]


# under sha256 policy strict: the changed image (same size) is dropped
EXPECTED_SHARD0 = {"samples_listed": 8, "no_caption": 1, "no_url": 0, "urls_tried": 7, "images_fetched": 2,
                   "sha256_mismatch_dropped": 1, "sha256_mismatch_kept": 0, "samples_kept": 1}
EXPECTED_SHARD0_FAILED = {"http_404": 1, "http_error": 1, "timeout": 1, "connection": 1, "invalid_url": 0,
                          "too_large": 0, "opted_out": 1}


def test_fetch_group_counts_joins_and_resumes(hub, toy_samples, tmp_path):
    from mobileclip_repro.train.samples import SkipCounter, assemble_dr_example, joined_samples

    world = publish_shards_world(hub, toy_samples)
    opts = options(tmp_path, sha256_policy="strict", timeout=SLOW_WORLD_TIMEOUT)
    started = time.monotonic()
    manifest = fetch.fetch_group(world.ids, opts)
    # the slow URL costs about one timeout, not its full SLOW_SECONDS, and nothing waits on it twice
    assert time.monotonic() - started < 2 * SLOW_SECONDS + 5
    first_run = hub.taken()

    entries = {entry["shard"]: entry for entry in manifest["shards"]}
    assert manifest["layout"] == "shards"
    assert [entry["status"] for entry in manifest["shards"]] == ["ok", "failed", "ok"]
    shard0 = entries[world.ids[0]]
    assert {name: shard0[name] for name in EXPECTED_SHARD0} == EXPECTED_SHARD0
    assert shard0["failed"] == EXPECTED_SHARD0_FAILED
    assert "truncated" in entries[world.ids[1]]["error"]
    assert entries[world.ids[2]]["samples_kept"] == PER_SHARD and entries[world.ids[2]]["urls_tried"] == PER_SHARD
    totals = manifest["totals"]
    assert totals["shards"] == 3 and totals["shards_ok"] == 2 and totals["shards_failed"] == 1
    assert totals["samples_listed"] == 16 and totals["urls_tried"] == 15 and totals["images_fetched"] == 10
    assert totals["samples_kept"] == 9 and totals["sha256_mismatch_dropped"] == 1 and totals["no_caption"] == 1
    assert totals["failed"] == EXPECTED_SHARD0_FAILED
    # the truncated DR tar was downloaded twice, then given up; its shard's images were never asked for
    dr1 = f"/datasets/{DR_REPO}/resolve/{hub.head(DR_REPO)}/{world.ids[1]}.tar"
    assert [m for m, p in first_run if p == dr1] == ["HEAD", "GET", "HEAD", "GET"]
    assert not any(s.uid in path for s in world.samples[world.ids[1]] for path in image_requests(first_run))
    # HTTP 500 was retried once; the 404 was not
    uid5, uid1 = world.samples[world.ids[0]][5].uid, world.samples[world.ids[0]][1].uid
    assert image_requests(first_run).count(f"/img/{uid5}.jpg") == 2
    assert image_requests(first_run).count(f"/img/{uid1}.jpg") == 1

    # The DataComp shard joins the DR shard key by key, with the original image bytes.
    datacomp_dir, dr_dir = opts.datacomp_dir, opts.dr_dir
    for shard_id, kept in ((world.ids[0], [0]), (world.ids[2], range(PER_SHARD))):
        counter = SkipCounter()
        pairs = list(joined_samples(datacomp_dir / f"{shard_id}.tar", dr_dir / f"{shard_id}.tar", counter))
        expected = [world.samples[shard_id][i] for i in kept]
        assert [dc["__key__"] for dc, _ in pairs] == [s.key for s in expected]
        for (datacomp, dr), sample in zip(pairs, expected):
            assert datacomp["jpg"] == sample.jpg and datacomp["txt"].decode() == sample.caption
            example = assemble_dr_example(datacomp, dr, lambda image, aug: image.size, random.Random(0))
            assert example.caption == sample.caption
        assert counter.totals() == ({"no_image": PER_SHARD - 1} if shard_id == world.ids[0] else {})
    assert not (datacomp_dir / f"{world.ids[1]}.tar").exists()
    per_shard = json.loads((datacomp_dir / f"{world.ids[0]}.tar.manifest.json").read_text())
    assert {name: per_shard[name] for name in EXPECTED_SHARD0} == EXPECTED_SHARD0

    # Rerun: complete shards are not touched; the failed one is tried again (still broken).
    manifest = fetch.fetch_group(world.ids, opts)
    rerun = hub.taken()
    listing = f"/api/datasets/{DC_REPO}/tree/{hub.head(DC_REPO)}"
    assert {path for _, path in rerun} == {dr1, listing} | revision_lookups()
    assert [e.get("resumed", False) for e in manifest["shards"]] == [True, False, True]
    assert manifest["totals"]["samples_kept"] == 9

    # The hub's file is fixed: the rerun completes the shard, and the next one asks for nothing at all.
    hub.files[(DR_REPO, f"{world.ids[1]}.tar")] = world.good_dr[world.ids[1]]
    manifest = fetch.fetch_group(world.ids, opts)
    assert manifest["totals"]["shards_ok"] == 3 and manifest["totals"]["samples_kept"] == 9 + PER_SHARD
    assert len(image_requests(hub.taken())) == PER_SHARD
    manifest = fetch.fetch_group(world.ids, opts)
    assert {path for _, path in hub.taken()} == revision_lookups()
    assert all(entry["resumed"] for entry in manifest["shards"])

    # A deleted DataComp shard is fetched again (its installed DR shard is reused).
    (datacomp_dir / f"{world.ids[2]}.tar").unlink()
    manifest = fetch.fetch_group(world.ids, opts)
    refetch = hub.taken()
    assert len(image_requests(refetch)) == PER_SHARD
    assert not any(path.startswith(f"/datasets/{DR_REPO}/") for _, path in refetch)
    assert manifest["shards"][2]["samples_kept"] == PER_SHARD and not manifest["shards"][2].get("resumed")

    # A truncated DataComp shard (e.g. a killed copy) and a .partial leftover are redone too.
    tar2 = datacomp_dir / f"{world.ids[2]}.tar"
    tar2.write_bytes(tar2.read_bytes()[:3000])
    (datacomp_dir / f"{world.ids[0]}.tar.partial").write_bytes(b"leftover")
    (datacomp_dir / f"{world.ids[0]}.tar").unlink()
    manifest = fetch.fetch_group(world.ids, opts)
    assert shards.is_readable_tar(tar2) and manifest["totals"]["samples_kept"] == 1 + 2 * PER_SHARD
    hub.taken()

    # Nothing half-written or staged is left behind.
    assert list(tmp_path.rglob("*.partial")) == [] and list(tmp_path.rglob("*.incomplete")) == []
    assert list(opts.staging().rglob("*.tar")) == []


def test_plain_datacomp_without_dr(hub, toy_samples, tmp_path):
    """No --dr-repo: DataComp shards only, keys and sha256 from DataComp's own metadata."""
    samples = toy_samples[2]
    hub.files[(DC_REPO, "00000000.tar")] = datacomp_caption_tar(samples, hub.base_url)
    for s in samples:
        hub.images[f"{s.uid}.jpg"] = s.jpg
    hub.images[f"{samples[0].uid}.jpg"] = b"not the recorded image"  # no size to compare: dropped by same_size too
    opts = options(tmp_path, dr_repo=None, dr_dir=None, layout="shards")
    manifest = fetch.fetch_group(["00000000"], opts)
    totals = manifest["totals"]
    assert (totals["urls_tried"], totals["images_fetched"], totals["sha256_mismatch_dropped"],
            totals["samples_kept"]) == \
        (PER_SHARD, PER_SHARD, 1, PER_SHARD - 1)
    written = list(shards.iter_raw_samples(opts.datacomp_dir / "00000000.tar"))
    assert [raw["__key__"] for raw in written] == [s.key for s in samples[1:]]
    for raw, sample in zip(written, samples[1:]):
        meta = json.loads(raw["json"])
        assert raw["jpg"] == sample.jpg and meta["uid"] == sample.uid and meta["sha256"] == sample.sha256
    assert not (tmp_path / "data" / "datacompdr").exists()


def test_parquet_layout_nested_shards(hub, toy_samples, tmp_path):
    """DataComp-1B style: captions in parquet files named by hash, DR shards under 00/."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = toy_samples[0] + toy_samples[1]
    ids = ["00/00000000", "00/00000001"]
    for shard_id, part in zip(ids, (toy_samples[0], toy_samples[1])):
        hub.files[(DR_REPO, f"{shard_id}.tar")] = dr_tar(part, hub.base_url)
    for s in samples:
        hub.images[f"{s.uid}.jpg"] = s.jpg
    rows = [s for s in samples if s is not samples[3]]  # one uid absent from the metadata
    random.Random(1).shuffle(rows)
    for name, chunk in (("0a1b2c.parquet", rows[:7]), ("ff00ee.parquet", rows[7:])):
        table = pa.table({"uid": [s.uid for s in chunk], "url": [f"{hub.base_url}/img/{s.uid}.jpg" for s in chunk],
                          "text": [s.caption for s in chunk], "sha256": [s.sha256 for s in chunk]})
        stream = io.BytesIO()
        pq.write_table(table, stream)
        hub.files[(DC_REPO, name)] = stream.getvalue()
    opts = options(tmp_path)
    manifest = fetch.fetch_group(ids, opts)
    assert manifest["layout"] == "parquet"
    # listing, parquet files and DR tars all at the commit resolved once; each DR tar fetched once
    hub_paths = _hub_paths(hub.taken())
    assert not any("/main" in path for path in hub_paths) and revision_lookups() <= set(hub_paths)
    assert f"/api/datasets/{DC_REPO}/tree/{hub.head(DC_REPO)}" in hub_paths
    assert [path for path in hub_paths if path.endswith("00/00000000.tar")] == \
        [f"/datasets/{DR_REPO}/resolve/{hub.head(DR_REPO)}/00/00000000.tar"] * 2  # its HEAD and its GET
    assert [e["samples_kept"] for e in manifest["shards"]] == [PER_SHARD - 1, PER_SHARD]
    assert manifest["shards"][0]["no_caption"] == 1
    written = list(shards.iter_raw_samples(opts.datacomp_dir / "00" / "00000000.tar"))
    expected = [s for s in toy_samples[0] if s is not samples[3]]
    assert [(raw["__key__"], raw["txt"].decode(), raw["jpg"]) for raw in written] == \
        [(s.key, s.caption, s.jpg) for s in expected]
    assert (opts.dr_dir / "00" / "00000001.tar").is_file()
    hub.taken()
    assert fetch.fetch_group(ids, opts)["totals"]["shards_resumed"] == 2
    assert {path for _, path in hub.taken()} == revision_lookups()


def test_cli_end_to_end_with_processes(hub, toy_samples, tmp_path):
    """A group with a failed shard exits 1 without its manifest, keeping the shards it finished;
    once the hub's file is fixed, the same command completes the group."""
    world = publish_shards_world(hub, toy_samples)
    results = tmp_path / "results" / "x" / "data"
    group_manifest = results / "fetch" / "group_00000.json"
    command = [sys.executable, "-m", "mobileclip_repro", "fetch", "--datacomp-repo", DC_REPO, "--dr-repo", DR_REPO,
               "--shard-spec", json.dumps(["{00000000..00000002}"]), "--group", "00000", "--group-size", "3",
               "--datacomp-dir", str(results / "datacomp"), "--dr-dir", str(results / "datacompdr"),
               "--processes", "2", "--threads", "4", "--timeout", str(SLOW_WORLD_TIMEOUT), "--manifest", str(group_manifest),
               "--sha256", "strict"]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    assert not group_manifest.exists()
    assert f"shard {world.ids[1]} failed: apple/DataCompDR-toy/{world.ids[1]}.tar: not a readable tar" in done.stderr
    per_shard = {shard_id: results / "datacomp" / f"{shard_id}.tar.manifest.json" for shard_id in world.ids}
    assert [path.is_file() for path in per_shard.values()] == [True, False, True]
    shard0 = json.loads(per_shard[world.ids[0]].read_text())
    assert {name: shard0[name] for name in EXPECTED_SHARD0} == EXPECTED_SHARD0
    assert shard0["failed"] == EXPECTED_SHARD0_FAILED

    hub.files[(DR_REPO, f"{world.ids[1]}.tar")] = world.good_dr[world.ids[1]]
    hub.taken()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(group_manifest.read_text())
    assert manifest["schema"] == fetch.MANIFEST_SCHEMA and manifest["group"] == "00000"
    assert [entry["shard"] for entry in manifest["shards"]] == world.ids
    assert [bool(entry.get("resumed")) for entry in manifest["shards"]] == [True, False, True]
    assert manifest["totals"]["shards_ok"] == 3 and manifest["totals"]["samples_kept"] == 1 + 2 * PER_SHARD
    assert manifest["totals"]["failed"] == EXPECTED_SHARD0_FAILED
    assert set(image_requests(hub.taken())) == {f"/img/{s.uid}.jpg" for s in world.samples[world.ids[1]]}
    assert "images/s" in done.stderr


def test_group_with_no_usable_shard_fails_without_manifest(hub, toy_samples, tmp_path):
    publish_clean_world(hub, toy_samples)
    hub.files = {(repo, name): content for (repo, name), content in hub.files.items() if repo != DR_REPO}
    hub.files[(DR_REPO, "other.tar")] = b"not a shard of the spec"
    manifest_path = tmp_path / "group_00001.json"
    code = main(["fetch", "--datacomp-repo", DC_REPO, "--dr-repo", DR_REPO, "--shard-spec",
                 '"{00000000..00000003}"', "--group", "00001", "--group-size", "2", "--datacomp-layout", "shards",
                 "--datacomp-dir", str(tmp_path / "dc"), "--dr-dir", str(tmp_path / "dr"),
                 "--manifest", str(manifest_path), "--timeout", str(CLEAN_IMAGE_TIMEOUT)])
    assert code == 1 and not manifest_path.exists()
    # the group index picks shards 2 and 3 of the spec
    head = hub.head(DR_REPO)
    assert {p for _, p in hub.taken()} == {f"/datasets/{DR_REPO}/resolve/{head}/0000000{i}.tar" for i in (2, 3)} \
        | revision_lookups()


def test_a_missing_repo_fails_the_job_before_any_download(hub, toy_samples, tmp_path):
    from huggingface_hub.errors import RepositoryNotFoundError

    publish_clean_world(hub, toy_samples)
    with pytest.raises(RepositoryNotFoundError, match="apple/missing"):
        fetch.fetch_group(["00000000"], options(tmp_path, dr_repo="apple/missing"))
    assert {p for _, p in hub.taken()} == revision_lookups(DC_REPO, "apple/missing")


# ---------------------------------------------------------------------------------------------
# Hub errors: transient ones retried, a shard that still fails fails its group


def _http_error(status: int, error_class=None):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    response = httpx2.Response(status, request=httpx2.Request("GET", "https://hub.test/datasets/a/b/resolve/main/x"))
    return (error_class or HfHubHTTPError)(f"{status} error", response=response)


def _raised_from(error: Exception, cause: Exception) -> Exception:
    error.__cause__ = cause
    return error


def _transient_errors():
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError

    request = httpx2.Request("GET", "https://hub.test/x")
    return {
        "http_500": _http_error(500), "http_502": _http_error(502), "http_503": _http_error(503),
        "http_504": _http_error(504), "http_429": _http_error(429), "http_408": _http_error(408),
        "connect_error": httpx2.ConnectError("connection refused", request=request),
        "connection_reset": httpx2.ReadError("connection reset by peer", request=request),
        "read_timeout": httpx2.ReadTimeout("timed out", request=request),
        "server_disconnected": httpx2.RemoteProtocolError("server disconnected", request=request),
        # hf_hub_download's HEAD failed: the library raises this *from* the HTTP error
        "head_503_wrapped": _raised_from(LocalEntryNotFoundError("cannot locate the file"), _http_error(503)),
    }


def _permanent_errors():
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError)

    return {
        "entry_not_found_404": _http_error(404, RemoteEntryNotFoundError),
        "repo_not_found": _http_error(404, RepositoryNotFoundError),
        "gated_403": _http_error(403, GatedRepoError), "unauthorized_401": _http_error(401),
        "offline": _raised_from(LocalEntryNotFoundError("offline"), OfflineModeIsEnabled("HF_HUB_OFFLINE=1")),
        "not_a_hub_error": ValueError("bad argument"),
    }


def _fails_once(error: Exception):
    calls = []

    def download():
        calls.append(error)
        if len(calls) == 1:
            raise error
        return "the file"

    return download, calls


@pytest.mark.parametrize("name", sorted(_transient_errors()))
def test_hub_retries_a_transient_error(name):
    download, calls = _fails_once(_transient_errors()[name])
    assert HubRetries(retries=2, backoff_s=0.001).call("repo/file", download) == "the file"
    assert len(calls) == 2


@pytest.mark.parametrize("name", sorted(_permanent_errors()))
def test_hub_does_not_retry_what_another_try_cannot_fix(name):
    error = _permanent_errors()[name]
    download, calls = _fails_once(error)
    with pytest.raises(type(error)):
        HubRetries(retries=2, backoff_s=0.001).call("repo/file", download)
    assert len(calls) == 1


def test_hub_retries_are_bounded_and_back_off_exponentially(monkeypatch):
    waits = []
    monkeypatch.setattr("mobileclip_repro.hub.time.sleep", waits.append)
    calls = []

    def always_503():
        calls.append(1)
        raise _http_error(503)

    with pytest.raises(Exception, match="503"):
        HubRetries(retries=3, backoff_s=2.0).call("repo/file", always_503)
    assert len(calls) == 4 and len(waits) == 3
    for wait, full in zip(waits, (2.0, 4.0, 8.0)):
        assert full / 2 <= wait <= full  # jittered down to half, never more


@pytest.mark.parametrize("status", [500, 503])
def test_a_transient_error_on_a_dr_tar_is_retried_and_the_group_completes(hub, toy_samples, tmp_path, status):
    world = publish_clean_world(hub, toy_samples)
    hub.fail_downloads(DR_REPO, f"{world.ids[1]}.tar", status, times=1)
    manifest = fetch.fetch_group(world.ids, options(tmp_path))
    assert manifest["totals"]["shards_ok"] == 3 and manifest["totals"]["samples_kept"] == 3 * PER_SHARD
    dr1 = f"/datasets/{DR_REPO}/resolve/{hub.head(DR_REPO)}/{world.ids[1]}.tar"
    assert [method for method, path in hub.taken() if path == dr1] == ["HEAD", "GET", "HEAD", "GET"]


def test_a_shard_that_keeps_failing_fails_its_group_and_the_rerun_fetches_only_it(hub, toy_samples, tmp_path,
                                                                                    caplog):
    caplog.set_level(logging.WARNING)
    world = publish_clean_world(hub, toy_samples)
    broken = world.ids[1]
    hub.fail_downloads(DR_REPO, f"{broken}.tar", 503)
    datacomp_dir, manifest_path = tmp_path / "data" / "datacomp", tmp_path / "fetch" / "group_00000.json"
    argv = ["fetch", "--datacomp-repo", DC_REPO, "--dr-repo", DR_REPO, "--shard-spec", '"{00000000..00000002}"',
            "--group", "00000", "--group-size", "3", "--datacomp-dir", str(datacomp_dir),
            "--dr-dir", str(tmp_path / "data" / "datacompdr"), "--manifest", str(manifest_path),
            "--timeout", str(CLEAN_IMAGE_TIMEOUT), "--threads", "8", "--hub-retries", "2", "--hub-backoff", "0.01"]

    assert main(argv) == 1
    assert not manifest_path.exists()
    shard_manifests = [datacomp_dir / f"{shard_id}.tar.manifest.json" for shard_id in world.ids]
    assert [path.is_file() for path in shard_manifests] == [True, False, True]
    dr_broken = f"/datasets/{DR_REPO}/resolve/{hub.head(DR_REPO)}/{broken}.tar"
    assert [method for method, path in hub.taken() if path == dr_broken].count("GET") == 3  # 1 try + 2 retries
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert any(message.startswith(f"shard {broken} failed") and "503" in message for message in errors), errors

    hub.recover(DR_REPO, f"{broken}.tar")
    assert main(argv) == 0
    rerun = hub.taken()
    manifest = json.loads(manifest_path.read_text())
    assert manifest["schema"] == fetch.MANIFEST_SCHEMA and manifest["group"] == "00000"
    assert manifest["totals"]["shards_ok"] == 3 and manifest["totals"]["shards_resumed"] == 2
    assert manifest["totals"]["samples_kept"] == 3 * PER_SHARD
    # only the missing shard's files and images were asked for
    hub_files = {path.rsplit("/", 1)[-1] for _, path in rerun if "/resolve/" in path}
    assert hub_files == {f"{broken}.tar"}
    assert set(image_requests(rerun)) == {f"/img/{s.uid}.jpg" for s in world.samples[broken]}


def test_a_loss_the_config_accepts_finishes_the_group_and_the_report_names_the_lost_shard(hub, toy_samples, tmp_path):
    world = publish_clean_world(hub, toy_samples)
    gone = world.ids[2]
    hub.fail_downloads(DR_REPO, f"{gone}.tar", 404)  # gone from the hub for good: no retry helps
    datacomp_dir, manifest_path = tmp_path / "data" / "datacomp", tmp_path / "fetch" / "group_00000.json"
    argv = ["fetch", "--datacomp-repo", DC_REPO, "--dr-repo", DR_REPO, "--shard-spec", '"{00000000..00000002}"',
            "--group", "00000", "--group-size", "3", "--datacomp-dir", str(datacomp_dir),
            "--dr-dir", str(tmp_path / "data" / "datacompdr"), "--manifest", str(manifest_path),
            "--timeout", str(CLEAN_IMAGE_TIMEOUT), "--threads", "8", "--hub-retries", "0", "--max-failed-shards", "1"]

    assert main(argv) == 0
    manifest = json.loads(manifest_path.read_text())
    assert list(manifest["lost_shards"]) == [gone] and manifest["totals"]["shards_failed"] == 1
    # training reads the shards the manifest lists: the two fetched ones, DataComp and DataCompDR tars
    listed = shards.listed_shard_files([manifest_path])
    assert sorted(path.name for path in listed) == sorted(f"{shard}.tar" for shard in world.ids[:2] for _ in "ab")
    assert all(entry["sha256"] == shards.file_sha256(path) for path, entry in listed.items())
    from mobileclip_repro.report.tables import fetch_markdown, fetch_table, lost_shards, read_fetch_manifests

    manifests = read_fetch_manifests([manifest_path])
    section = fetch_markdown(fetch_table(manifests), lost_shards(manifests))
    assert "**1 shard(s) lost**" in section and f"- group 00000, shard {gone}: " in section


@pytest.mark.parametrize("count", [0, 1, 7])
def test_the_shard_writer_writes_the_bytes_of_webdatasets_tar_writer_and_datacomp_record(tmp_path, count):
    """fetch writes its shards itself (a third of TarWriter's CPU per sample); byte for byte what
    shards.atomic_tar_writer writes of shards.datacomp_record, whatever the sizes (block edges,
    empty), captions (non-ASCII), extra metadata, a null uid, or a key too long for a ustar name or
    not ASCII (tarfile's pax records)."""
    rng = random.Random(count)
    sizes = [0, 511, 512, 513, 70_001, 10_240, 3]
    samples = []
    for i in range(count):
        body = rng.randbytes(sizes[i % len(sizes)])
        key = {4: "k" * 96, 5: "k" * 120, 6: "ключ"}.get(i, f"{i:09d}")  # 96 + ".jpg": the ustar name's 100
        extra = [None, {"recorded_sha256": "ab" * 32, "sha256_policy": "same_size"}, {"captions": ["é", "猫"]}][i % 3]
        samples.append((key, body, f"caption {i} café ☕ 猫", None if i == 2 else f"uid{i}",
                        f"http://example.org/{i}/ü.jpg", extra))
    with shards.atomic_tar_writer(tmp_path / "webdataset.tar", mtime=fetch.TAR_MTIME) as writer:
        for key, body, caption, uid, url, extra in samples:
            writer.write(shards.datacomp_record(key, body, caption, uid, url, extra_meta=extra))
    with open(tmp_path / "fetch.tar", "wb") as stream:
        writer = fetch.ShardTarWriter(stream)
        for key, body, caption, uid, url, extra in samples:
            writer.write(key, body, shards.sha256_hex(body), caption, uid, url, extra)
        writer.close()
    assert (tmp_path / "fetch.tar").read_bytes() == (tmp_path / "webdataset.tar").read_bytes()


def stalled_head_shard() -> list[fetch.SourceSample]:
    """200 samples whose first URL (".../0") the fakes below stall on."""
    return [fetch.SourceSample(f"{i:09d}", f"{i:032x}", f"http://example.invalid/{i}", None, f"caption {i}")
            for i in range(200)]


def test_a_shard_with_a_stalled_url_at_its_head_is_written_in_key_order(tmp_path, monkeypatch):
    """URLs finish in any order; the tar does not depend on the network."""
    started: list[str] = []

    def fake_fetch_url(url, timeout, retries, max_bytes):
        started.append(url)
        if url.endswith("/0"):
            time.sleep(0.5)  # the stalled one, at the head of the shard
            return None, "timeout"
        return b"image bytes (no recorded sha256 to check)", None

    monkeypatch.setattr(fetch, "fetch_url", fake_fetch_url)
    samples = stalled_head_shard()
    counts = fetch.build_shard("00000000", samples, options(tmp_path, threads=2))

    assert counts.samples_kept == 199 and counts.failed["timeout"] == 1 and len(started) == 200
    written = [raw["__key__"] for raw in shards.iter_raw_samples(opts_dir(tmp_path) / "00000000.tar")]
    assert written == [f"{i:09d}" for i in range(1, 200)]


def test_while_the_head_url_stalls_the_pool_keeps_starting_urls(tmp_path, monkeypatch):
    """The threads go on with later URLs while the first one stalls; before, only the threads x 4
    of its window did, then the pool sat idle until its timeout (0.22x img2dataset's images/s)."""
    started_during_stall = []
    stalled = threading.Event()

    def fake_fetch_url(url, timeout, retries, max_bytes):
        if url.endswith("/0"):
            stalled.set()
            time.sleep(0.5)
            stalled.clear()
            return None, "timeout"
        if stalled.is_set():
            started_during_stall.append(url)
        return b"x", None

    monkeypatch.setattr(fetch, "fetch_url", fake_fetch_url)
    samples = stalled_head_shard()
    fetch.build_shard("00000000", samples, options(tmp_path, threads=2))
    # the old window (threads x 4 = 8) let 7 more start; now every later URL does, memory permitting
    assert len(started_during_stall) == 199


def _fresh_client():
    fetch._local.__dict__.pop("client", None)  # one per thread, made on first use
    return fetch._client()


def test_the_environment_is_read_once_for_a_threads_client(monkeypatch):
    """Proxies and the CA bundle are read when a thread's client is made, not for every URL (requests'
    per-URL proxy and .netrc lookups were a fifth of a URL's client CPU); a no_proxy alone is no proxy."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "example.org")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/site-ca.pem")
    client = _fresh_client()
    assert client.proxies == {} and client.ca_bundle == "/etc/ssl/site-ca.pem"
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")  # a site proxy
    assert _fresh_client().proxies == {"https": "http://proxy.example:3128"}
    fetch._local.__dict__.pop("client", None)


def test_a_ca_bundle_that_cannot_be_read_fails_its_https_urls_as_connection_errors(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/site-ca.pem")
    _fresh_client()
    try:
        assert fetch.fetch_url("https://127.0.0.1:9/a.jpg", TIMEOUT, 0, 1 << 20) == (None, "connection")
    finally:
        fetch._local.__dict__.pop("client", None)


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                   "NO_PROXY")


def test_image_urls_go_through_the_proxy_the_environment_names_unless_no_proxy_lists_their_host(hub, monkeypatch):
    """A site proxy (http_proxy) carries the image requests, DNS lookups included (the fake hub answers
    an absolute-form request as a proxy does); a host no_proxy lists is reached directly."""
    hub.images["proxied.jpg"] = b"image bytes"
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", hub.base_url)
    fetch._local.__dict__.clear()  # a thread's client reads the environment when it is made
    assert fetch.fetch_url("http://images.invalid/img/proxied.jpg", TIMEOUT, 0, 1 << 20) == (b"image bytes", None)
    assert image_requests(hub.taken()) == ["/img/proxied.jpg"]

    monkeypatch.setenv("http_proxy", closed_port_url().rsplit("/img/", 1)[0])  # a proxy that refuses everything
    fetch._local.__dict__.clear()
    assert fetch.fetch_url(f"{hub.base_url}/img/proxied.jpg", TIMEOUT, 0, 1 << 20) == (None, "connection")
    monkeypatch.setenv("no_proxy", "example.org, 127.0.0.1")
    fetch._local.__dict__.clear()
    assert fetch.fetch_url(f"{hub.base_url}/img/proxied.jpg", TIMEOUT, 0, 1 << 20) == (b"image bytes", None)
    fetch._local.__dict__.clear()


def test_https_images_are_verified_against_the_ca_bundle_the_environment_names(hub, monkeypatch, tmp_path):
    """One TLS context per bundle and process (loading the bundle per connection cost ~16 ms of CPU):
    a server whose certificate the bundle vouches for answers; with certifi's bundle it does not."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    hub.images["secure.jpg"] = b"image over TLS"
    for name in PROXY_VARIABLES + ("CURL_CA_BUNDLE",):
        monkeypatch.delenv(name, raising=False)
    try:
        with fake_hub.serving_tls(hub, cert, key) as base_url:
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
            fetch._local.__dict__.clear()
            assert fetch.fetch_url(f"{base_url}/img/secure.jpg", TIMEOUT, 0, 1 << 20) == (b"image over TLS", None)
            assert fetch.fetch_url(f"{base_url}/img/secure.jpg", TIMEOUT, 0, 1 << 20) == (b"image over TLS", None)
            monkeypatch.delenv("REQUESTS_CA_BUNDLE")  # certifi's bundle: this certificate is nobody's
            fetch._local.__dict__.clear()
            assert fetch.fetch_url(f"{base_url}/img/secure.jpg", TIMEOUT, 0, 1 << 20) == (None, "connection")
    finally:
        fetch._local.__dict__.clear()


# ---------------------------------------------------------------------------------------------
# The per-URL deadline: an answer within the timeout, its body within the timeout more


def _elapsed(function, *args):
    started = time.monotonic()
    result = function(*args)
    return result, time.monotonic() - started


def test_a_trickling_body_is_cut_at_the_deadline(hub):
    body = bytes(3000)  # 30 pieces: 6 s at the trickle's pace
    hub.images["trickle.jpg"], hub.special["trickle.jpg"] = body, "trickle"
    assert len(body) / TRICKLE_BYTES * TRICKLE_SECONDS > 4 * TIMEOUT
    result, elapsed = _elapsed(fetch.fetch_url, f"{hub.base_url}/img/trickle.jpg", TIMEOUT, 1, 1 << 20)
    assert result == (None, "timeout")
    assert elapsed < 2 * TIMEOUT


def test_a_server_that_never_answers_is_cut_at_the_deadline():
    with socket.socket() as listener:  # the kernel completes the handshake; nobody reads or answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        result, elapsed = _elapsed(fetch.fetch_url, f"http://127.0.0.1:{listener.getsockname()[1]}/a.jpg", TIMEOUT,
                                   1, 1 << 20)
    assert result == (None, "timeout") and elapsed < 2 * TIMEOUT


def test_a_stalled_connect_is_cut_at_the_deadline():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        fillers = []
        for _ in range(3):  # fill the accept queue: the kernel then drops new SYNs and connects hang
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        try:
            with socket.socket() as probe:
                probe.settimeout(0.2)
                if probe.connect_ex(address) == 0:
                    pytest.skip("this kernel accepts connections beyond a full backlog")
            result, elapsed = _elapsed(fetch.fetch_url, f"http://127.0.0.1:{address[1]}/a.jpg", TIMEOUT, 1, 1 << 20)
        finally:
            for filler in fillers:
                filler.close()
    assert result == (None, "timeout") and elapsed < 2 * TIMEOUT


def test_a_slow_dns_answer_is_cut_at_the_deadline(monkeypatch):
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    answer_now = threading.Event()
    system_getaddrinfo = socket.getaddrinfo

    def slow_getaddrinfo(host, *args, **kwargs):
        if host == "slow-dns.test":
            answer_now.wait(5)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return system_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    try:
        result, elapsed = _elapsed(fetch.fetch_url, "http://slow-dns.test/a.jpg", TIMEOUT, 1, 1 << 20)
    finally:
        answer_now.set()
    assert result == (None, "timeout") and elapsed < 2 * TIMEOUT


def test_redirects_are_followed_within_the_answer_deadline(hub):
    hub.images["moved.jpg"], hub.special["moved.jpg"] = b"moved image", "redirects"
    hub.images["far.jpg"], hub.special["far.jpg"] = b"far image", "slow_redirects"  # 5 hops of 0.4 s
    assert fetch.fetch_url(f"{hub.base_url}/img/moved.jpg", TIMEOUT, 1, 1 << 20) == (b"moved image", None)
    result, elapsed = _elapsed(fetch.fetch_url, f"{hub.base_url}/img/far.jpg", TIMEOUT, 1, 1 << 20)
    assert result == (None, "timeout") and elapsed < 2 * TIMEOUT


def test_a_chunked_body_is_read_whole(hub):
    body = os.urandom(200_000)
    hub.images["chunked.jpg"], hub.special["chunked.jpg"] = body, "chunked"
    assert fetch.fetch_url(f"{hub.base_url}/img/chunked.jpg", TIMEOUT, 1, 1 << 20) == (body, None)
    assert fetch.fetch_url(f"{hub.base_url}/img/chunked.jpg", TIMEOUT, 1, 100_000) == (None, "too_large")


def test_group_index_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="the spec has 2 groups"):
        main(["fetch", "--datacomp-repo", DC_REPO, "--shard-spec", "{00..03}", "--group", "2", "--group-size", "2",
              "--datacomp-dir", str(tmp_path), "--manifest", str(tmp_path / "m.json")])


@pytest.mark.parametrize("value, opted_out", [
    ("noai", True), ("noindex, nofollow", True), ("googlebot: noindex", False),
    ("mobileclip-repro-fetch: noimageai", True), ("nofollow", False), ("", False),
])
def test_opt_out_header(value, opted_out):
    assert fetch._opted_out({"X-Robots-Tag": value} if value else {}) is opted_out


def test_shard_spec_forms():
    assert parse_shard_spec('"{00..01}"') == "{00..01}"
    assert parse_shard_spec("{00..01}") == "{00..01}"
    assert parse_shard_spec('["{00..01}/{0..1}", "02/0"]') == ["{00..01}/{0..1}", "02/0"]
    with pytest.raises(ValueError):
        parse_shard_spec('{"a": 1}')


def test_parquet_captions_reads_both_metadata_schemas(tmp_path):
    """datacomp_1b's uid/text columns, and the datasets-converted webdataset schema (json.uid, txt)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"uid": ["a1", "b2", "c3"], "url": ["u"] * 3, "text": [" cat ", None, "dog"]}),
                   tmp_path / "flat.parquet")
    pq.write_table(pa.table({"url.txt": ["u", "u"], "txt": ["bird", "fish"],
                             "json": [{"uid": "d4", "sha256": "x"}, {"uid": "e5", "sha256": "y"}]}),
                   tmp_path / "converted.parquet")
    pq.write_table(pa.table({"url": ["u"], "caption_missing": ["x"]}), tmp_path / "bad.parquet")
    found = fetch.parquet_captions([tmp_path / "flat.parquet", tmp_path / "converted.parquet"],
                                   {"a1", "b2", "e5", "zz"})
    assert found == {"a1": "cat", "e5": "fish"}  # b2 has no caption, zz is nowhere
    with pytest.raises(ValueError, match="bad.parquet: DataComp parquet has no uid column"):
        fetch.parquet_captions([tmp_path / "bad.parquet"], {"a1"})


# ---------------------------------------------------------------------------------------------
# Hub revisions: each repo resolved to one commit per job, downloaded at it, recorded


def _hub_paths(requests: list[tuple[str, str]]) -> list[str]:
    return [path for _, path in requests if not path.startswith("/img/")]


def test_a_pinned_commit_is_what_every_request_asks_for_and_the_manifests_record(hub, toy_samples, tmp_path):
    world = publish_clean_world(hub, toy_samples)
    pinned = {DC_REPO: hub.head(DC_REPO), DR_REPO: hub.head(DR_REPO)}
    for repo in pinned:  # main moves on after the pinned commit: a new DR tar, a caption shard gone
        hub.move_main(repo)
    hub.files[(DR_REPO, f"{world.ids[0]}.tar")] = dr_tar(world.samples[world.ids[1]], hub.base_url, seed=7)
    del hub.files[(DC_REPO, f"{world.ids[0]}.tar")]
    manifest_path = tmp_path / "fetch" / "group_00000.json"
    assert main(["fetch", "--datacomp-repo", DC_REPO, "--dr-repo", DR_REPO, "--shard-spec", '"{00000000..00000000}"',
                 "--group", "00000", "--group-size", "1", "--datacomp-dir", str(tmp_path / "data" / "datacomp"),
                 "--dr-dir", str(tmp_path / "data" / "datacompdr"), "--manifest", str(manifest_path),
                 "--timeout", str(CLEAN_IMAGE_TIMEOUT), "--datacomp-revision", pinned[DC_REPO],
                 "--dr-revision", pinned[DR_REPO]]) == 0

    hub_paths = _hub_paths(hub.taken())
    assert hub_paths and all(pinned[DC_REPO] in path or pinned[DR_REPO] in path for path in hub_paths), hub_paths
    assert f"/api/datasets/{DC_REPO}/tree/{pinned[DC_REPO]}" in hub_paths  # the layout's listing too
    assert (tmp_path / "data" / "datacompdr" / f"{world.ids[0]}.tar").read_bytes() == world.good_dr[world.ids[0]]
    group = json.loads(manifest_path.read_text())
    shard = json.loads((tmp_path / "data" / "datacomp" / f"{world.ids[0]}.tar.manifest.json").read_text())
    for recorded in (group, shard):
        assert (recorded["datacomp_commit"], recorded["dr_commit"]) == (pinned[DC_REPO], pinned[DR_REPO])
        assert (recorded["datacomp_revision"], recorded["dr_revision"]) == (pinned[DC_REPO], pinned[DR_REPO])
    assert shard["samples_kept"] == PER_SHARD


def test_a_branch_that_moved_between_two_runs_fails_the_group_naming_both_commits(hub, toy_samples, tmp_path):
    """One dataset, one commit: finished shards from the old commit are neither mixed with nor silently
    replaced by the new one; pinning the old commit finishes the group at it."""
    world = publish_clean_world(hub, toy_samples)
    hub.fail_downloads(DR_REPO, f"{world.ids[1]}.tar", 503)
    opts = options(tmp_path, hub_retries=0)
    first = fetch.fetch_group(world.ids, opts)
    old = hub.head(DR_REPO)
    assert [entry["status"] for entry in first["shards"]] == ["ok", "failed", "ok"]
    assert first["dr_commit"] == old and first["shards"][0]["dr_commit"] == old
    hub.recover(DR_REPO, f"{world.ids[1]}.tar")
    new = hub.move_main(DR_REPO)
    hub.taken()

    with pytest.raises(fetch.CommitMoved) as raised:
        fetch.fetch_group(world.ids, opts)
    message = str(raised.value)
    assert old in message and new in message and DR_REPO in message
    assert f"data.hub.dr_revision: {old}" in message and world.ids[0] in message and world.ids[2] in message
    assert {path for _, path in hub.taken()} == revision_lookups()  # failed before any download

    manifest = fetch.fetch_group(world.ids, replace(opts, dr_revision=old))
    assert manifest["totals"]["shards_ok"] == 3 and manifest["dr_commit"] == old
    assert {entry["dr_commit"] for entry in manifest["shards"]} == {old}
    dr_downloads = [path for path in _hub_paths(hub.taken()) if path.startswith(f"/datasets/{DR_REPO}/")]
    assert dr_downloads and all(f"/resolve/{old}/" in path for path in dr_downloads)


# ---------------------------------------------------------------------------------------------
# The sha256 policy: what a fetched image that does not hash to the recorded sha256 becomes


def _reencoded(jpg: bytes, scale: float = 1.0) -> bytes:
    """The same picture, other bytes: re-encoded (as a CDN does), and resized when ``scale`` != 1."""
    from PIL import Image

    image = Image.open(io.BytesIO(jpg))
    if scale != 1.0:
        image = image.resize((int(image.width * scale), int(image.height * scale)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=50)
    return out.getvalue()


@pytest.mark.parametrize("policy, dropped, kept", [("strict", 2, 0), ("same_size", 1, 1), ("off", 0, 2)])
def test_sha256_policy_counts_a_same_size_and_a_different_size_mismatch(hub, toy_samples, tmp_path, policy, dropped,
                                                                        kept):
    from PIL import Image

    samples = toy_samples[0]
    hub.files[(DR_REPO, "00000000.tar")] = dr_tar(samples, hub.base_url)
    # the caption shard records each image's real original size, as DataComp-12M's json does
    hub.files[(DC_REPO, "00000000.tar")] = _tar_bytes([
        {"__key__": s.key, "url.txt": f"{hub.base_url}/img/{s.uid}.jpg", "txt": s.caption,
         "json": json.dumps({"uid": s.uid, "sha256": s.sha256, "original_width": Image.open(io.BytesIO(s.jpg)).width,
                             "original_height": Image.open(io.BytesIO(s.jpg)).height})} for s in samples])
    for s in samples:
        hub.images[f"{s.uid}.jpg"] = s.jpg
    same_size, other_size = samples[0], samples[1]
    hub.images[f"{same_size.uid}.jpg"] = _reencoded(same_size.jpg)
    hub.images[f"{other_size.uid}.jpg"] = _reencoded(other_size.jpg, scale=2.0)

    manifest = fetch.fetch_group(["00000000"], options(tmp_path, sha256_policy=policy))
    entry = manifest["shards"][0]
    assert (entry["images_fetched"], entry["sha256_mismatch_dropped"], entry["sha256_mismatch_kept"]) == \
        (PER_SHARD, dropped, kept)
    assert entry["samples_kept"] == PER_SHARD - dropped and entry["sha256_policy"] == policy
    assert manifest["totals"]["sha256_mismatch_kept"] == kept and manifest["sha256_policy"] == policy
    written = {raw["__key__"]: json.loads(raw["json"])
               for raw in shards.iter_raw_samples(opts_dir(tmp_path) / "00000000.tar")}
    marked = {key for key, meta in written.items() if "recorded_sha256" in meta}
    assert marked == {"strict": set(), "same_size": {same_size.key}, "off": {same_size.key, other_size.key}}[policy]
    for key in marked:  # a kept mismatch says so, with the sha256 the metadata recorded
        recorded = {s.key: s.sha256 for s in samples}[key]
        assert written[key]["recorded_sha256"] == recorded and written[key]["sha256_policy"] == policy


def opts_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "datacomp"


# ---------------------------------------------------------------------------------------------
# The join-rate guard: a caption/URL source that lacks most of a shard's uids fails the job


@pytest.mark.parametrize("captioned", [3, 7])
def test_join_rate_guard(hub, toy_samples, tmp_path, captioned):
    """With data.hub.min_join_rate 0.5, a source holding 3 of 8 uids fails before any image is
    asked for, naming both repos and the rate; 7 of 8 (a few uids missing) goes through."""
    samples = toy_samples[0]
    hub.files[(DR_REPO, "00000000.tar")] = dr_tar(samples, hub.base_url)
    hub.files[(DC_REPO, "00000000.tar")] = datacomp_caption_tar(samples[:captioned], hub.base_url)
    for s in samples:
        hub.images[f"{s.uid}.jpg"] = s.jpg
    opts = options(tmp_path, min_join_rate=0.5)
    if captioned == 3:
        with pytest.raises(fetch.JoinRateTooLow) as raised:
            fetch.fetch_group(["00000000"], opts)
        message = str(raised.value)
        assert DC_REPO in message and DR_REPO in message and "37.5%" in message and "min_join_rate 0.5" in message
        assert image_requests(hub.taken()) == [] and not (opts_dir(tmp_path) / "00000000.tar").exists()
    else:
        entry = fetch.fetch_group(["00000000"], opts)["shards"][0]
        assert entry["join_rate"] == 0.875 and entry["samples_kept"] == 7 and entry["no_caption"] == 1


def test_a_dr_shard_with_no_uid_to_join_by_fails_the_job_instead_of_writing_an_empty_shard(hub, toy_samples,
                                                                                              tmp_path):
    """A repo of another format (its json without uid): before this check every sample was passed
    over and the shard written empty, with the group reported done."""
    samples = toy_samples[0]
    no_uid = [{**shards.dr_record(s.key, s.uid, s.sha256, f"{hub.base_url}/img/{s.uid}.jpg", ["a caption"],
                                  [[[0, 0, 16, 16], [[0, 0.0]]]], np.zeros((1, 8)), np.zeros((2, 8))),
               "json": json.dumps({"sha256": s.sha256})} for s in samples]
    hub.files[(DR_REPO, "00000000.tar")] = _tar_bytes(no_uid)
    hub.files[(DC_REPO, "00000000.tar")] = datacomp_caption_tar(samples, hub.base_url)
    with pytest.raises(fetch.JoinRateTooLow, match="no sample with a json uid"):
        fetch.fetch_group(["00000000"], options(tmp_path))
    assert image_requests(hub.taken()) == [] and not (opts_dir(tmp_path) / "00000000.tar").exists()


# ---------------------------------------------------------------------------------------------
# A DR shard that carries its own URL and caption (url.txt, txt: a DFNDR layout) needs no join


def dr_tar_with_own_text(samples: list[Sample], base_url: str, captions: dict | None = None,
                         urls: dict | None = None, meta=lambda s: {"uid": s.uid, "sha256": s.sha256}) -> bytes:
    """DR samples that carry ``url.txt`` and ``txt`` (``captions``/``urls``: key -> member text, None
    leaves the member out); ``meta(sample)`` is the ``json`` (None: no json member)."""
    records = []
    for s in samples:
        record = shards.dr_record(s.key, s.uid, s.sha256, f"{base_url}/img/{s.uid}.jpg", ["a synthetic caption"],
                                  [[[0, 0, 16, 16], [[0, 0.0]]]], np.zeros((1, 8)), np.zeros((2, 8)))
        record["txt"] = (captions or {}).get(s.key, s.caption)
        if urls and s.key in urls:
            record["url.txt"] = urls[s.key]
        for name in ("txt", "url.txt"):
            if record[name] is None:
                del record[name]
        if meta(s) is None:
            del record["json"]
        else:
            record["json"] = json.dumps(meta(s))
        records.append(record)
    return _tar_bytes(records)


def publish_parquet(hub: FakeHub, samples: list[Sample], name: str = "0a1b2c.parquet") -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    stream = io.BytesIO()
    pq.write_table(pa.table({"uid": [s.uid for s in samples], "text": [s.caption for s in samples],
                             "url": [f"{hub.base_url}/img/{s.uid}.jpg" for s in samples]}), stream)
    hub.files[(DC_REPO, name)] = stream.getvalue()


@pytest.mark.parametrize("layout", ["shards", "parquet"])
def test_a_dr_shard_whose_samples_carry_their_url_and_caption_is_fetched_without_reading_the_caption_source(
        hub, toy_samples, tmp_path, layout):
    """Every sample has url.txt and txt: the shard is fetched as it is (keys, captions, sha256 from its
    own json), and the DataComp source, here one for other samples that the guard would refuse, is
    never downloaded: neither its caption shard nor its parquet."""
    from mobileclip_repro.train.samples import SkipCounter, assemble_dr_example, joined_samples

    samples, others = toy_samples[0], toy_samples[1]
    hub.files[(DR_REPO, "00000000.tar")] = dr_tar_with_own_text(samples, hub.base_url)
    if layout == "shards":
        hub.files[(DC_REPO, "00000000.tar")] = datacomp_caption_tar(others, hub.base_url)
    else:
        publish_parquet(hub, others)
    for s in samples:
        hub.images[f"{s.uid}.jpg"] = s.jpg
    hub.images[f"{samples[2].uid}.jpg"] = b"not the recorded image"
    opts = options(tmp_path, sha256_policy="strict")
    manifest = fetch.fetch_group(["00000000"], opts)

    entry = manifest["shards"][0]
    assert manifest["layout"] == layout and entry["status"] == "ok" and entry["caption_source"] == "dr_shard"
    assert "join_rate" not in entry and manifest["totals"]["shards_captioned_by_dr"] == 1
    assert {name: entry[name] for name in fetch.COUNTERS} == {
        "samples_listed": 8, "no_caption": 0, "no_url": 0, "urls_tried": 8, "images_fetched": 8,
        "sha256_mismatch_dropped": 1, "sha256_mismatch_kept": 0, "samples_kept": 7}
    assert entry["sha256_unchecked"] == 0
    dc_downloads = [path for path in _hub_paths(hub.taken()) if path.startswith(f"/datasets/{DC_REPO}/")]
    assert dc_downloads == []  # only the listing (layout auto) and the revision lookup touched the source
    # the written keys are the DR tar's, so training pairs them key by key
    counter = SkipCounter()
    pairs = list(joined_samples(opts_dir(tmp_path) / "00000000.tar", opts.dr_dir / "00000000.tar", counter))
    kept = [s for s in samples if s is not samples[2]]
    assert [dc["__key__"] for dc, _ in pairs] == [s.key for s in kept]
    for (datacomp, dr), sample in zip(pairs, kept):
        assert datacomp["jpg"] == sample.jpg and json.loads(datacomp["json"])["uid"] == sample.uid
        assert assemble_dr_example(datacomp, dr, lambda image, aug: image.size,
                                   random.Random(0)).caption == sample.caption
    assert counter.totals() == {"no_image": 1}


def test_a_dr_shard_with_its_own_captions_and_no_json_is_fetched_unchecked_and_every_loss_counted(
        hub, toy_samples, tmp_path):
    """No json: no uid (written null) and no sha256 (kept unchecked, counted); a v2 list of captions
    gives txt its first and the json all; an empty txt or url.txt is a counted loss, not a join."""
    samples = toy_samples[0]
    listed, empty_caption, empty_url = samples[1].key, samples[3].key, samples[5].key
    hub.files[(DR_REPO, "00000000.tar")] = dr_tar_with_own_text(
        samples, hub.base_url, captions={listed: json.dumps(["first caption", "second caption"]), empty_caption: " "},
        urls={empty_url: ""}, meta=lambda s: None)
    hub.files[(DC_REPO, "00000000.tar")] = datacomp_caption_tar(samples, hub.base_url)  # never read
    for s in samples:
        hub.images[f"{s.uid}.jpg"] = s.jpg
    manifest = fetch.fetch_group(["00000000"], options(tmp_path, sha256_policy="strict"))

    entry = manifest["shards"][0]
    assert entry["caption_source"] == "dr_shard"
    assert {name: entry[name] for name in fetch.COUNTERS} == {
        "samples_listed": 8, "no_caption": 1, "no_url": 1, "urls_tried": 6, "images_fetched": 6,
        "sha256_mismatch_dropped": 0, "sha256_mismatch_kept": 0, "samples_kept": 6}
    assert entry["sha256_unchecked"] == 6 and manifest["totals"]["sha256_unchecked"] == 6
    written = {raw["__key__"]: raw for raw in shards.iter_raw_samples(opts_dir(tmp_path) / "00000000.tar")}
    assert sorted(written) == [s.key for s in samples if s.key not in (empty_caption, empty_url)]
    assert written[listed]["txt"].decode() == "first caption"
    assert json.loads(written[listed]["json"])["captions"] == ["first caption", "second caption"]
    for s in samples:
        if s.key in written and s.key != listed:
            meta = json.loads(written[s.key]["json"])
            assert written[s.key]["txt"].decode() == s.caption and meta["uid"] is None and "captions" not in meta
    assert not any(path.startswith(f"/datasets/{DC_REPO}/") for path in _hub_paths(hub.taken()))


@pytest.mark.parametrize("source", ["its pair", "other samples"])
def test_a_shard_where_some_samples_carry_no_caption_joins_those_and_the_guard_judges_them(
        hub, toy_samples, tmp_path, source):
    """Samples 0-3 carry their own txt, 4-7 do not (7 has no uid either): the shard is joined, each
    own caption kept, the rate taken over 4-7. With its pair's captions 3 of those 4 join (7 counted
    no_caption); with a source for other samples none does, and the guard fails the job."""
    samples = toy_samples[0]
    no_uid = samples[7]
    own = {s.key: (f"own caption {i}" if i < 4 else None) for i, s in enumerate(samples)}
    hub.files[(DR_REPO, "00000000.tar")] = dr_tar_with_own_text(
        samples, hub.base_url, captions=own,
        meta=lambda s: {"sha256": s.sha256} if s is no_uid else {"uid": s.uid, "sha256": s.sha256})
    captioned = samples if source == "its pair" else toy_samples[1]
    hub.files[(DC_REPO, "00000000.tar")] = datacomp_caption_tar(captioned, hub.base_url)
    for s in samples:
        hub.images[f"{s.uid}.jpg"] = s.jpg
    opts = options(tmp_path, min_join_rate=0.5)
    if source == "other samples":
        with pytest.raises(fetch.JoinRateTooLow, match=r"holds 0\.0% of the uids .* \(0 of 4\)"):
            fetch.fetch_group(["00000000"], opts)
        assert image_requests(hub.taken()) == [] and not (opts_dir(tmp_path) / "00000000.tar").exists()
        return
    entry = fetch.fetch_group(["00000000"], opts)["shards"][0]
    assert entry["caption_source"] == "datacomp_repo" and entry["join_rate"] == 0.75
    assert (entry["samples_listed"], entry["no_caption"], entry["samples_kept"]) == (8, 1, 7)
    written = {raw["__key__"]: raw["txt"].decode()
               for raw in shards.iter_raw_samples(opts_dir(tmp_path) / "00000000.tar")}
    assert written == {s.key: (f"own caption {i}" if i < 4 else s.caption) for i, s in enumerate(samples[:7])}


def test_fetch_options_from_the_workflow_command_line():
    """The rule passes a null revision as '' (the main branch) and YAML's bare `off` as False."""
    import argparse

    from mobileclip_repro.data.cli import fetch_arguments

    parser = argparse.ArgumentParser()
    fetch_arguments(parser)
    base = ["--datacomp-repo", DC_REPO, "--shard-spec", "{00..01}", "--group", "0", "--group-size", "1",
            "--datacomp-dir", "d", "--manifest", "m"]
    args = parser.parse_args(base + ["--datacomp-revision", "", "--dr-revision", "v1.0", "--sha256", "False"])
    assert (args.datacomp_revision, args.dr_revision, args.sha256) == (None, "v1.0", "off")
    defaults = parser.parse_args(base)
    assert (defaults.sha256, defaults.min_join_rate) == ("same_size", 0.5)
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--sha256", "lenient"])


def test_parquet_metadata_carries_the_recorded_original_size(tmp_path):
    """datacomp_1b-style rows with original_width/original_height: the size same_size compares with."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"uid": ["a1", "b2"], "text": ["cat", "dog"], "original_width": [640, None],
                             "original_height": [480, 300]}), tmp_path / "sized.parquet")
    assert fetch.parquet_metadata([tmp_path / "sized.parquet"], {"a1", "b2"}) == \
        {"a1": ("cat", (640, 480)), "b2": ("dog", None)}
