"""A fake Hugging Face hub and image server on 127.0.0.1 for offline tests.

It answers what huggingface_hub's real download path asks (HEAD/GET
``/datasets/<repo>/resolve/<rev>/<file>`` with the ``X-Repo-Commit`` header, the tree API
``/api/datasets/<repo>/tree/<rev>`` for listings, the repo-info API
``/api/datasets/<repo>/revision/<rev>`` whose ``sha`` names the commit) from files the test
puts in ``FakeHub.files`` (the repo's main branch; ``move_main`` freezes them as an older
commit, still served by its SHA, as a push to the real hub does), fails the downloads of
the files a test names (``fail_downloads``),
serves images by name (some slow, trickling, redirected, chunked, failing or opted out) and
logs every request so a test can count them.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

SLOW_SECONDS = 8.0     # how long a "slow" image waits before answering (well past any test's deadline for it)
TRICKLE_BYTES = 100    # a "trickle" image's body comes this many bytes at a time,
TRICKLE_SECONDS = 0.2  # one piece every this many seconds
REDIRECT_HOPS = 5      # a "redirects" / "slow_redirects" image is this many redirects away,
SLOW_HOP_SECONDS = 0.4  # each of a "slow_redirects" image's hops answering after this long


class FakeHub:
    """Files of hub dataset repos, images by name, and a log of every request."""

    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.images: dict[str, bytes] = {}
        self.special: dict[str, str] = {}       # image name -> "slow" | "trickle" | "redirects" |
        #                                         "slow_redirects" | "chunked" | "error" | "opted_out"
        self.requests: list[tuple[str, str]] = []
        self.failing: dict[tuple[str, str], list] = {}  # (repo, file) -> [HTTP status, GETs left or None: all]
        self.lock = threading.Lock()
        self.base_url = ""
        self.heads: dict[str, str] = {}  # repo -> the commit main points at (default: the sha1 of its name)
        self.snapshots: dict[tuple[str, str], dict[str, bytes]] = {}  # (repo, older commit) -> its files

    def head(self, repo: str) -> str:
        return self.heads.get(repo) or hashlib.sha1(repo.encode()).hexdigest()

    def move_main(self, repo: str) -> str:
        """A push: the repo's files as they are stay readable at the current commit, main moves to a new
        one (the test then changes ``files``). Returns the new commit."""
        with self.lock:
            old = self.head(repo)
            self.snapshots[(repo, old)] = {name: content for (owner, name), content in self.files.items()
                                           if owner == repo}
            self.heads[repo] = hashlib.sha1(f"{repo}@{len(self.snapshots)}".encode()).hexdigest()
            return self.heads[repo]

    def commit_of(self, repo: str, revision: str) -> str | None:
        """The commit a branch ("main") or a commit SHA names in the repo, None when it names none."""
        head = self.head(repo)
        if revision in ("main", head):
            return head
        return revision if (repo, revision) in self.snapshots else None

    def files_at(self, repo: str, commit: str) -> dict[str, bytes]:
        if commit == self.head(repo):
            return {name: content for (owner, name), content in self.files.items() if owner == repo}
        return self.snapshots[(repo, commit)]

    def fail_downloads(self, repo: str, filename: str, status: int, times: int | None = None) -> None:
        """Answer the next ``times`` GETs of the file (every one: None) with ``status``, as a hub or
        CDN in trouble does; its HEAD (the metadata) still answers."""
        with self.lock:
            self.failing[(repo, filename)] = [status, times]

    def recover(self, repo: str, filename: str) -> None:
        with self.lock:
            self.failing.pop((repo, filename), None)

    def failure_for(self, repo: str, filename: str) -> int | None:
        """The status to fail this GET with, if any (one of its ``times`` used up)."""
        with self.lock:
            failing = self.failing.get((repo, filename))
            if failing is None:
                return None
            status, left = failing
            if left is not None:
                if left <= 1:
                    del self.failing[(repo, filename)]
                else:
                    failing[1] = left - 1
            return status

    def log(self, method: str, path: str) -> None:
        with self.lock:
            self.requests.append((method, path))

    def taken(self) -> list[tuple[str, str]]:
        with self.lock:
            taken, self.requests = self.requests, []
        return taken


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, status: int, body: bytes, headers: dict | None = None, head: bool = False) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _route(self, head: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.log(self.command, path)
            parts = path.strip("/").split("/")
            try:
                if parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
                    return self._resolve(f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:]), head)
                if parts[:2] == ["api", "datasets"] and len(parts) >= 6 and parts[4] == "tree":
                    return self._tree(f"{parts[2]}/{parts[3]}", parts[5])
                if parts[:2] == ["api", "datasets"] and len(parts) == 6 and parts[4] == "revision":
                    return self._revision(f"{parts[2]}/{parts[3]}", parts[5])
                if parts[:2] == ["api", "datasets"] and len(parts) == 4:  # no revision: the main branch
                    return self._revision(f"{parts[2]}/{parts[3]}", "main")
                if parts[:1] == ["img"] and len(parts) == 2:
                    return self._image(parts[1], head, int(parse_qs(url.query).get("hop", ["0"])[0]))
                self._send(404, b"not found")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timed-out URL)

        def _resolve(self, repo: str, revision: str, filename: str, head: bool) -> None:
            commit = hub.commit_of(repo, revision)
            if commit is None:
                return self._send(404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"}, head)
            content = hub.files_at(repo, commit).get(filename)
            if content is None:
                return self._send(404, b'{"error": "Entry not found"}',
                                  {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, head)
            status = None if head else hub.failure_for(repo, filename)
            if status is not None:
                return self._send(status, b'{"error": "the hub is having a bad day"}',
                                  {"Content-Type": "application/json"})
            self._send(200, content, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                                      "Content-Type": "application/octet-stream"}, head)

        def _tree(self, repo: str, revision: str) -> None:
            commit = hub.commit_of(repo, revision)
            files = hub.files_at(repo, commit) if commit else {}
            listing = [{"type": "file", "path": name, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
                       for name, content in sorted(files.items())]
            if not listing:
                return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            self._send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"})

        def _revision(self, repo: str, revision: str) -> None:
            """The repo-info API: ``sha`` is the commit the revision names (huggingface_hub's DatasetInfo.sha)."""
            if not any(owner == repo for owner, _ in hub.files) and repo not in hub.heads:
                return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            commit = hub.commit_of(repo, revision)
            if commit is None:
                return self._send(404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
            body = {"id": repo, "sha": commit, "private": False,
                    "siblings": [{"rfilename": name} for name in sorted(hub.files_at(repo, commit))]}
            self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

        def _image(self, name: str, head: bool, hop: int) -> None:
            special = hub.special.get(name)
            if special == "slow":
                time.sleep(SLOW_SECONDS)
            if special == "error":
                return self._send(500, b"server error", head=head)
            if special in ("redirects", "slow_redirects") and hop < REDIRECT_HOPS:
                if special == "slow_redirects":
                    time.sleep(SLOW_HOP_SECONDS)
                return self._send(302, b"", {"Location": f"/img/{name}?hop={hop + 1}"}, head)
            if name not in hub.images:
                return self._send(404, b"gone", head=head)
            headers = {"Content-Type": "image/jpeg"}
            if special == "opted_out":
                headers["X-Robots-Tag"] = "noai, noimageai"
            if special in ("trickle", "chunked") and not head:
                return self._send_in_pieces(hub.images[name], headers, special)
            self._send(200, hub.images[name], headers, head)

        def _send_in_pieces(self, body: bytes, headers: dict, special: str) -> None:
            """A "trickle" body goes TRICKLE_BYTES every TRICKLE_SECONDS, a "chunked" one in two HTTP chunks."""
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            if special == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                half = len(body) // 2
                for piece in (body[:half], body[half:], b""):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for start in range(0, len(body), TRICKLE_BYTES):
                self.wfile.write(body[start:start + TRICKLE_BYTES])
                self.wfile.flush()
                time.sleep(TRICKLE_SECONDS)

        def do_HEAD(self):
            self._route(head=True)

        def do_GET(self):
            self._route(head=False)

    return Handler



@contextmanager
def serving(monkeypatch, hf_home):
    """Serve a FakeHub and point huggingface_hub at it (HF_ENDPOINT, no token, no xet)."""
    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", fake.base_url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def serving_tls(hub: FakeHub, certfile, keyfile):
    """The same FakeHub's images over HTTPS (``certfile``/``keyfile``: the server's); yields the base URL."""
    import ssl

    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---------------------------------------------------------------- DataComp's benchmark repos, as the hub lays them out

def publish_wds_set(hub: FakeHub, repo: str, set_root) -> list[str]:
    """A webdataset set on disk as a dataset repo in DataComp's ``djghosh/wds_<task>_test`` layout:
    ``classnames.txt``, ``zeroshot_classification_templates.txt``, ``test/nshards.txt``,
    ``test/<i>.tar`` (whatever ``set_root`` holds), beside the ``.gitattributes`` and ``README.md``
    the real repos have. Returns the set's own files."""
    from pathlib import Path

    names = []
    for path in sorted(p for p in Path(set_root).rglob("*") if p.is_file()):
        name = path.relative_to(set_root).as_posix()
        hub.files[(repo, name)] = path.read_bytes()
        names.append(name)
    hub.files[(repo, ".gitattributes")] = b"*.tar filter=lfs diff=lfs merge=lfs -text\n"
    hub.files[(repo, "README.md")] = f"# {repo}\n".encode()
    return names


def _zip(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def publish_nlphuji_retrieval(hub: FakeHub, repo: str, csv_name: str, zip_name: str, images) -> None:
    """An nlphuji retrieval repo (``flickr_1k_test_image_text_retrieval``,
    ``mscoco_2014_5k_test_image_text_retrieval``) as its hub listing shows it: the loading script
    ``<name>.py`` (never run), ``README.md``, the CSV (one row per image: ``filename``, ``raw`` =
    its captions as a JSON list, and the Karpathy-split columns beside them) and the zip of the
    images under a folder named as the zip. ``images``: (file name, image bytes, captions)."""
    import csv
    import io
    import json

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["sentids", "imgid", "tokens", "raw", "sentid", "split", "filename"])
    writer.writeheader()
    for index, (filename, _, captions) in enumerate(images):
        writer.writerow({"sentids": json.dumps([5 * index + k for k in range(len(captions))]), "imgid": index,
                         "tokens": json.dumps([caption.lower().split() for caption in captions]),
                         "raw": json.dumps(captions), "sentid": 5 * index, "split": "test", "filename": filename})
    folder = zip_name.removesuffix(".zip")
    name = repo.split("/")[1]
    hub.files[(repo, csv_name)] = text.getvalue().encode()
    hub.files[(repo, zip_name)] = _zip({f"{folder}/{filename}": data for filename, data, _ in images})
    hub.files[(repo, f"{name}.py")] = b"# a datasets loading script: datasets >= 4 refuses to run it\n"
    hub.files[(repo, "README.md")] = f"# {repo}\n".encode()
    hub.files[(repo, ".gitattributes")] = b"*.zip filter=lfs diff=lfs merge=lfs -text\n"


def publish_nlphuji_winogavil(hub: FakeHub, instances, images: dict[str, bytes]) -> None:
    """``nlphuji/winogavil`` as its hub listing shows it: ``winogavil.py`` (the loading script,
    never run), ``README.md``, ``winogavil_dataset.csv`` (one instance a row: ``candidates`` and
    ``associations`` as Python list literals, ``cue``, the counts and the ``ID``) and
    ``winogavil_images.zip`` (``winogavil_images/<candidate>.jpg``). ``instances``: dicts with
    ``cue``, ``candidates``, ``associations``; ``images``: candidate -> JPEG bytes."""
    import csv
    import io

    repo = "nlphuji/winogavil"
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["candidates", "cue", "associations", "num_associations",
                                              "num_candidates", "solvers_jaccard_mean", "ID"])
    writer.writeheader()
    for index, instance in enumerate(instances):
        writer.writerow({"candidates": repr(list(instance["candidates"])), "cue": instance["cue"],
                         "associations": repr(list(instance["associations"])),
                         "num_associations": len(instance["associations"]),
                         "num_candidates": len(instance["candidates"]), "solvers_jaccard_mean": 1.0, "ID": index})
    hub.files[(repo, "winogavil_dataset.csv")] = text.getvalue().encode()
    hub.files[(repo, "winogavil_images.zip")] = _zip({f"winogavil_images/{name}.jpg": data
                                                      for name, data in images.items()})
    hub.files[(repo, "winogavil.py")] = b"# a datasets loading script: datasets >= 4 refuses to run it\n"
    hub.files[(repo, "README.md")] = b"# WinoGAViL\n"
    hub.files[(repo, ".gitattributes")] = b"*.zip filter=lfs diff=lfs merge=lfs -text\n"
