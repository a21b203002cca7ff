"""Image download throughput: the project's fetcher vs img2dataset, on the same loopback URL list.

What is measured (images/s = images stored / wall seconds, the same URLs, the same
``--processes`` x ``--threads`` on both sides, the sides alternating, the median of
``--repeats`` runs per side):

* Project (the real code path of ``fetch``): ``fetch.build_shard`` on each shard's
  ``SourceSample`` list, run through ``fetch._parallel`` (the forkserver process pool that
  ``fetch_group`` uses, ``--processes`` shards at a time), so each shard is: ``fetch_url`` on a
  pool of ``--threads`` threads (deadline, retries, size cap, opt-out header rule), the sha256
  of every body checked against the recorded one (``--sha256 strict``), and the DataComp
  shard written (``fetch.ShardTarWriter``: jpg, json, txt, url.txt, byte for byte what
  webdataset's TarWriter writes). Not included: hub downloads, the DataCompDR join and the
  shard manifests (none of them touch image URLs).
* Baseline: img2dataset (github.com/rom1504/img2dataset), ``img2dataset.download`` in a
  subprocess of ``--img2dataset-python``, configured to keep the original bytes and to check
  them: ``input_format="parquet"`` (url, caption, sha256 columns), ``output_format="webdataset"``,
  ``resize_mode="no"``, ``encode_format="jpg"``, ``disable_all_reencoding=True`` (the resizer
  hands the downloaded bytes through untouched), ``compute_hash="sha256"``,
  ``verify_hash=["sha256", "sha256"]`` (drops a body whose sha256 is not the listed one),
  ``extract_exif=False`` (the project stores no EXIF), ``processes_count`` / ``thread_count``
  = ours, ``number_sample_per_shard`` = ours, its ``timeout`` and ``retries`` = ours, its
  default opt-out header rule (the same rule). It writes per shard a tar (jpg, txt, json), a
  parquet of the metadata and a stats json, and first splits the input into arrow files.

Two clocks per side, both printed: *wall*, the whole call (process pool start, worker
imports, shard splitting; img2dataset's own interpreter start and import are outside it),
and *span*, the first shard's start to the last shard's end (each side's per-shard
timestamps: img2dataset's ``*_stats.json``, a wrapper around ``build_shard`` here), which
leaves out the fixed start-up cost that a real job pays once for thousands of shards. The
target line uses the span; the wall ratio is printed beside it.

Both sides' stored bytes are then checked against the served ones: ``stored bytes
identical`` counts images whose sha256 is the sha256 the server sent for that URL.

The URLs (``--images``, default 6,000, seeded by ``--seed``), served by an HTTP/1.0
``ThreadingHTTPServer`` that the script starts in a forked process on 127.0.0.1 (one
connection per URL, as on DataComp, where nearly every URL is on another host):

* ok (the rest, ~89%): a JPEG whose size is drawn log-normal around DataComp's ~70 KB mean
  (median 58 KB, sigma 0.6, clipped to 20-200 KB): one of 16 real small JPEGs padded to that
  size with random bytes in COM segments (a valid JPEG with a unique sha256);
* slow (``--slow-fraction``, 3%): the answer comes after 0.2-1.5 s, within the deadline;
* 404 (``--missing-fraction``, 3%);
* refused (``--refused-fraction``, 3%): a port where nothing listens;
* stalled (``--stall-fraction``, 2%): the server never answers (it waits 3 x the timeout
  before it closes), so both sides give up after ``--timeout``.

Both sides make one try per URL by default (``--retries 0``): img2dataset retries every
failure (a 404 or a timeout too), the project only connection errors and HTTP 429/5xx, so
with retries on, the two would make different numbers of requests for the same list.

The server, both sides' workers and this script share the machine's CPUs: the load average
and the CPU busy share (from /proc/stat) during each run are printed.

Reading the result (2 cores, 2 x 16, December 2026). At the defaults both sides sit at the
wait floor (printed: the span the stalled and slow URLs alone make, shard by shard, 14.5 s):
the span is their waits, which are the same on both sides, plus per-URL time, so the ratio
is about 1.0 by construction once the client's overhead is gone: 1.00x by span (median of
six invocations of 3 runs each, load average 0.3-3.8: 1.01, 0.99, 1.01, 0.99, 0.98, 1.04;
336-363 images/s on both sides), 1.22x by wall (img2dataset's start-up), with the project's
CPUs about 28% busy to img2dataset's 35-42% on a quiet machine. What is
left above the floor beyond per-URL time is each shard's tail (its last stalls leave its
other threads idle; both tools fetch one shard per process at a time): overlapping a
process's shards would take the floor from 14.5 s to about 13.6 s. History: 0.22x (80
images/s) while ``build_shard`` took results in key order and submitted the next URL only
when the oldest in flight was done (a stalled URL at the head left the pool idle for up to
the timeout); 0.92x by span, 1.03x by wall once a URL started whenever any download ended
(finished ones held up to ``fetch.HELD_BYTES`` until their turn, as img2dataset's
``imap_unordered`` refills a thread as soon as any URL finishes; the project writes in key
order, so a shard's bytes do not depend on the network); then client CPU per URL, measured
apart (one thread, ``fetch_url``, loopback): about 1 ms over requests, 0.42 ms over urllib3
with a reused resolver thread (urllib's ``urlopen`` 0.33 ms), and per URL in a 16-thread
shard (download, sha256, tar) 0.75 ms against img2dataset's 0.8-0.9 ms. The rest was
start-up inside the span: each worker process imported webdataset (1.3 s of CPU) inside its
first shard, now preloaded by ``fetch._parallel``'s forkserver. With ``--slow-fraction 0
--stall-fraction 0`` the run is bound by the CPUs (the Python server shares them), and on
this shared machine too noisy to read.

img2dataset needs its own virtualenv (img2dataset 1.47.0 pins ``webdataset<0.3``; this project
uses webdataset 1.0), so the benchmark never imports it:

    python3 -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset

Run (about 2 minutes on 2 cores at the defaults, 1 with ``--slow-fraction 0 --stall-fraction 0``;
exits 0 whatever the ratio):

    .venv/bin/python benchmarks/fetch_vs_img2dataset.py --img2dataset-python /tmp/i2d/bin/python
        [--images 6000] [--processes 2] [--threads 16] [--shards 4] [--timeout 2] [--retries 0]
        [--repeats 3] [--seed 0] [--slow-fraction 0.03] [--missing-fraction 0.03]
        [--refused-fraction 0.03] [--stall-fraction 0.02] [--keep-data DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import json
import multiprocessing
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

TARGET_RATIO = 1.0
MEAN_IMAGE_KB = 70        # DataComp's images average about 70 KB
SIZE_SIGMA = 0.6          # log-normal spread of the image sizes
MIN_IMAGE_BYTES, MAX_IMAGE_BYTES = 20_000, 200_000
SLOW_DELAY_S = (0.2, 1.5)
BASE_JPEGS = 16
JPEG_COM_MAX = 65_533     # payload bytes one JPEG COM segment can hold
IMG2DATASET_TIMEOUT_S = 900

IMG2DATASET_DRIVER = r'''
import json, os, sys, time
if __name__ == "__main__":  # img2dataset's spawned workers import this file again
    config = json.loads(sys.argv[1])
    from img2dataset import download
    start = time.perf_counter()
    download(**config)
    print("IMG2DATASET_ELAPSED_S", time.perf_counter() - start)
'''


@dataclass(frozen=True)
class PlannedUrl:
    index: int
    kind: str          # ok | slow | missing | refused | stalled
    size: int          # body bytes (ok and slow)
    delay_s: float     # wait before the answer (slow)


# -- the URL list and its server -----------------------------------------------------------------

def plan_urls(args) -> list[PlannedUrl]:
    rng = random.Random(args.seed)
    fractions = {"slow": args.slow_fraction, "missing": args.missing_fraction, "refused": args.refused_fraction,
                 "stalled": args.stall_fraction}
    kinds = []
    for kind, fraction in fractions.items():
        kinds += [kind] * round(fraction * args.images)
    kinds += ["ok"] * (args.images - len(kinds))
    rng.shuffle(kinds)
    median = MEAN_IMAGE_KB * 1000 / (2.718281828 ** (SIZE_SIGMA ** 2 / 2))  # log-normal: mean = median e^(s^2/2)
    plan = []
    for index, kind in enumerate(kinds):
        size = int(min(max(rng.lognormvariate(0.0, SIZE_SIGMA) * median, MIN_IMAGE_BYTES), MAX_IMAGE_BYTES))
        delay = rng.uniform(*SLOW_DELAY_S) if kind == "slow" else 0.0
        plan.append(PlannedUrl(index, kind, size, delay))
    return plan


def base_jpegs(seed: int) -> list[bytes]:
    """Small real JPEGs (smooth gradients plus noise, 96-160 px) to pad to each URL's size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    jpegs = []
    for _ in range(BASE_JPEGS):
        height, width = (int(v) for v in rng.integers(96, 161, 2))
        ramp = np.linspace(0, 1, width)[None, :, None] * rng.uniform(0, 255, 3) \
            + np.linspace(0, 1, height)[:, None, None] * rng.uniform(0, 255, 3)
        pixels = np.clip(ramp / 2 + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def image_body(planned: PlannedUrl, jpegs: list[bytes], seed: int) -> bytes:
    """A valid JPEG of exactly ``planned.size`` bytes (or its base JPEG when that is larger): random
    bytes in COM segments right after SOI, which decoders skip; random, so each URL has its own sha256
    and nothing compresses it."""
    base = jpegs[planned.index % len(jpegs)]
    padding = planned.size - len(base)
    filler = random.Random(seed * 1_000_003 + planned.index)
    segments = []
    while padding > 4:
        payload = min(padding - 4, JPEG_COM_MAX)
        segments.append(b"\xff\xfe" + (payload + 2).to_bytes(2, "big") + filler.randbytes(payload))
        padding -= payload + 4
    return base[:2] + b"".join(segments) + base[2:]


def serve(port_queue, bodies: dict[int, bytes], plan: list[PlannedUrl], stall_s: float) -> None:
    """Serve ``/img/<index>.jpg`` per the plan until terminated (runs in a forked process)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            try:
                planned = plan[int(self.path.rsplit("/", 1)[-1].split(".")[0])]
            except (ValueError, IndexError):
                self.send_error(400)
                return
            if planned.kind == "missing":
                self.send_error(404)
                return
            if planned.kind == "stalled":
                time.sleep(stall_s)  # the client gives up long before; then the connection just closes
                return
            if planned.delay_s:
                time.sleep(planned.delay_s)
            body = bodies[planned.index]
            try:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # a client that gave up

        def log_message(self, *args) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 1024  # socketserver's default backlog of 5 drops connects under 32 clients

        def handle_error(self, request, client_address) -> None:
            pass  # broken pipes of clients that gave up

    server = Server(("127.0.0.1", 0), Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released): its connects are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- machine load ----------------------------------------------------------------------------------

def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    return (after[0] - before[0]) / max(after[1] - before[1], 1)


# -- the project's side ------------------------------------------------------------------------------

def timed_build_shard(shard_id: str, samples: list, opts) -> tuple[float, float, dict]:
    """``build_shard`` with its start and end (epoch seconds, comparable across processes)."""
    from dataclasses import asdict

    from mobileclip_repro.data import fetch

    start = time.time()
    counts = fetch.build_shard(shard_id, samples, opts)
    return start, time.time(), asdict(counts)


def run_project(urls: list[str], digests: list[str], captions: list[str], out: Path, args) -> dict:
    from mobileclip_repro import shards
    from mobileclip_repro.data import fetch

    out.mkdir(parents=True)
    per_shard = -(-len(urls) // args.shards)
    opts = fetch.FetchOptions(datacomp_repo="loopback", datacomp_dir=out, processes=args.processes,
                              threads=args.threads, timeout=args.timeout, retries=args.retries,
                              sha256_policy="strict")
    jobs = []
    for shard in range(args.shards):
        indices = range(shard * per_shard, min((shard + 1) * per_shard, len(urls)))
        samples = [fetch.SourceSample(shards.sample_key(shard, position), f"uid{index:08d}", urls[index],
                                      digests[index], captions[index])
                   for position, index in enumerate(indices)]
        jobs.append((f"{shard:08d}", samples, opts))
    start = time.perf_counter()
    results = list(fetch._parallel(timed_build_shard, jobs, args.processes, "project fetch"))
    wall = time.perf_counter() - start
    failed = Counter()
    for _, _, counts in results:
        failed.update({reason: n for reason, n in counts["failed"].items() if n})
        if counts["sha256_mismatch_dropped"]:
            failed["sha256 mismatch"] += counts["sha256_mismatch_dropped"]
    return {"wall_s": wall, "span_s": max(r[1] for r in results) - min(r[0] for r in results),
            "failed": dict(failed), "stored": stored_images(out, ".jpg")}


# -- img2dataset's side -------------------------------------------------------------------------------

def run_img2dataset(parquet: Path, out: Path, driver: Path, args) -> dict:
    per_shard = -(-args.images // args.shards)
    config = {"url_list": str(parquet), "input_format": "parquet", "url_col": "url", "caption_col": "caption",
              "output_folder": str(out), "output_format": "webdataset", "processes_count": args.processes,
              "thread_count": args.threads, "number_sample_per_shard": per_shard, "resize_mode": "no",
              "encode_format": "jpg", "disable_all_reencoding": True, "compute_hash": "sha256",
              "verify_hash": ["sha256", "sha256"], "extract_exif": False, "timeout": args.timeout,
              "retries": args.retries, "enable_wandb": False, "incremental_mode": "incremental",
              "distributor": "multiprocessing"}
    # albumentations asks PyPI for a newer version at import unless told not to
    # "incremental" on a fresh folder: "overwrite" deletes the folder after img2dataset made its _tmp in it
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    # a bound, because img2dataset retries some file errors for minutes instead of failing
    done = subprocess.run([args.img2dataset_python, str(driver), json.dumps(config)], capture_output=True,
                          text=True, env=env, cwd=out.parent, timeout=IMG2DATASET_TIMEOUT_S)
    elapsed = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("IMG2DATASET_ELAPSED_S")]
    if done.returncode != 0 or not elapsed:
        raise RuntimeError(f"img2dataset failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    failed, starts, ends = Counter(), [], []
    for stats_file in out.glob("*_stats.json"):
        stats = json.loads(stats_file.read_text())
        starts.append(stats["start_time"])
        ends.append(stats["end_time"])
        failed.update({short_reason(reason): n for reason, n in stats["status_dict"].items() if reason != "success"})
    return {"wall_s": float(elapsed[0]), "span_s": max(ends) - min(starts), "failed": dict(failed),
            "stored": stored_images(out, ".jpg")}


def short_reason(message: str) -> str:
    """img2dataset counts failures by their exception text; group them by kind."""
    lowered = message.lower()
    for needle, reason in (("404", "http_404"), ("refused", "connection"), ("timed out", "timeout"),
                           ("hash mismatch", "sha256 mismatch")):
        if needle in lowered:
            return reason
    return message[:60]


# -- checking what each side stored ---------------------------------------------------------------------

def stored_images(folder: Path, image_suffix: str) -> dict[str, str]:
    """{url: sha256 of the stored image bytes} over every tar in ``folder``."""
    images, urls = {}, {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                if "." + ext == image_suffix:
                    images[key] = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
                elif ext == "json":
                    urls[key] = json.loads(tar.extractfile(member).read())["url"]
    return {urls[key]: digest for key, digest in images.items()}


def wait_floor(plan: list[PlannedUrl], args) -> float:
    """The span that the waits alone make, whichever tool: each shard's URLs in order on ``--threads``
    threads, a stalled URL holding its thread for the timeout and a slow one for its delay, every
    other URL for no time at all, and each shard on the process that is free first (both tools
    fetch one shard at a time per process, so a shard's last stalls leave its other threads idle).
    What a side spends above it is its per-URL time: client, server and their share of the CPUs."""
    import heapq

    per_shard = -(-len(plan) // args.shards)
    processes = [0.0] * args.processes
    for shard in range(args.shards):
        threads = [0.0] * args.threads
        for planned in plan[shard * per_shard:(shard + 1) * per_shard]:
            held = args.timeout if planned.kind == "stalled" else planned.delay_s
            heapq.heappush(threads, heapq.heappop(threads) + held)
        heapq.heappush(processes, heapq.heappop(processes) + max(threads))
    return max(processes)


def summarize(name: str, runs: list[dict], served: dict[str, str], expected: int) -> float:
    last = runs[-1]
    identical = sum(served.get(url) == digest for url, digest in last["stored"].items())
    failed = ", ".join(f"{reason} {n}" for reason, n in sorted(last["failed"].items())) or "none"
    span = statistics.median(r["span_s"] for r in runs)
    wall = statistics.median(r["wall_s"] for r in runs)
    stored = len(last["stored"])
    per_run = " ".join(f"{r['span_s']:.2f}/{r['wall_s']:.2f}" for r in runs)
    print(f"{name:<12s} {stored / span:7.1f} images/s span, {stored / wall:7.1f} wall (median of {len(runs)}: "
          f"span {span:.2f} s, wall {wall:.2f} s; span/wall per run {per_run})")
    print(f"{'':<12s} fetched {stored} of {expected} fetchable, stored bytes identical {identical}/{stored}; "
          f"failed {sum(last['failed'].values())}: {failed}")
    return stored / span, stored / wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--img2dataset-python", required=True,
                        help="a python with img2dataset installed (its own virtualenv; see the docstring)")
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--shards", type=int, default=4, help="shards the URL list is cut into, on both sides")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds; both sides' per-URL timeout")
    parser.add_argument("--retries", type=int, default=0, help="extra tries per URL, both sides")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating; the median counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slow-fraction", type=float, default=0.03)
    parser.add_argument("--missing-fraction", type=float, default=0.03)
    parser.add_argument("--refused-fraction", type=float, default=0.03)
    parser.add_argument("--stall-fraction", type=float, default=0.02)
    parser.add_argument("--keep-data", type=Path, default=None, help="work here and keep the outputs")
    args = parser.parse_args(argv)
    if args.shards < args.processes or args.images < args.shards or args.repeats < 1:
        parser.error("need --shards >= --processes, --images >= --shards and --repeats >= 1")

    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    plan = plan_urls(args)
    jpegs = base_jpegs(args.seed)
    bodies = {p.index: image_body(p, jpegs, args.seed) for p in plan if p.kind in ("ok", "slow")}
    served = {}
    # forked before any thread or pool exists; the bodies are shared copy-on-write
    port_queue = multiprocessing.get_context("fork").Queue()
    server = multiprocessing.get_context("fork").Process(
        target=serve, args=(port_queue, bodies, plan, 3 * args.timeout), daemon=True)
    server.start()
    root = args.keep_data or Path(tempfile.mkdtemp(prefix="fetch_vs_img2dataset_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        port, dead_port = port_queue.get(timeout=30), unused_port()
        urls, digests, captions = [], [], []
        for p in plan:
            urls.append(f"http://127.0.0.1:{dead_port if p.kind == 'refused' else port}/img/{p.index}.jpg")
            # a URL that yields no body still needs a recorded sha256: any value, nothing is compared
            digests.append(hashlib.sha256(bodies[p.index]).hexdigest() if p.index in bodies else "0" * 64)
            captions.append(f"synthetic image {p.index}")
            if p.index in bodies:
                served[urls[-1]] = digests[-1]
        parquet = root / "urls.parquet"
        pq.write_table(pa.table({"url": urls, "caption": captions, "sha256": digests}), parquet)
        driver = root / "img2dataset_driver.py"
        driver.write_text(IMG2DATASET_DRIVER)
        kinds = Counter(p.kind for p in plan)
        sizes = [len(b) for b in bodies.values()]
        version = subprocess.run([args.img2dataset_python, "-c", "import importlib.metadata as m; "
                                  "print(m.version('img2dataset'), m.version('webdataset'))"],
                                 capture_output=True, text=True).stdout.split()
        print(f"URLs: {len(plan)} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}); images mean "
              f"{statistics.mean(sizes) / 1000:.1f} KB, median {statistics.median(sizes) / 1000:.1f} KB, "
              f"{min(sizes) / 1000:.0f}-{max(sizes) / 1000:.0f} KB; made in {time.perf_counter() - start:.1f} s")
        print(f"both sides: {args.processes} processes x {args.threads} threads, {args.shards} shards of "
              f"{-(-args.images // args.shards)}, timeout {args.timeout:g} s, retries {args.retries}; "
              f"img2dataset {' with webdataset '.join(version) or '(version unknown)'}; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)

        runs = {"project": [], "img2dataset": []}
        for repeat in range(args.repeats):
            order = ("project", "img2dataset") if repeat % 2 == 0 else ("img2dataset", "project")
            for side in order:
                out = root / f"{side}-{repeat}"
                before, load = cpu_ticks(), os.getloadavg()[0]
                if side == "project":
                    result = run_project(urls, digests, captions, out, args)
                else:
                    result = run_img2dataset(parquet, out, driver, args)
                result["busy"] = busy_share(before, cpu_ticks())
                runs[side].append(result)
                print(f"run {repeat + 1} {side:<12s} {len(result['stored'])} images, span {result['span_s']:.2f} s, "
                      f"wall {result['wall_s']:.2f} s; CPUs busy {100 * result['busy']:.0f}%, "
                      f"load average before {load:.2f}", flush=True)
                if args.keep_data is None:
                    shutil.rmtree(out, ignore_errors=True)

        fetchable = kinds["ok"] + kinds["slow"]
        print()
        ours_span, ours_wall = summarize("project", runs["project"], served, fetchable)
        theirs_span, theirs_wall = summarize("img2dataset", runs["img2dataset"], served, fetchable)
        ratio = ours_span / theirs_span
        print(f"wait floor {wait_floor(plan, args):.2f} s (the span the stalled and slow URLs alone make, shard by "
              f"shard, on both sides: see wait_floor)")
        print(f"fetch / img2dataset wall images/s (incl. process start): {ours_wall / theirs_wall:.2f}x")
        print(f"fetch / img2dataset images/s: {ratio:.2f}x (target >= {TARGET_RATIO:.1f}: "
              f"{'met' if ratio >= TARGET_RATIO else 'not met'})")
        print(f"total {time.perf_counter() - start:.0f} s; load average now {os.getloadavg()[0]:.2f}")
    finally:
        server.terminate()
        if args.keep_data is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
