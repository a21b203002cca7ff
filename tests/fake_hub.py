"""A fake Hugging Face hub and image server on 127.0.0.1 for offline tests.

It answers what huggingface_hub's real download path asks (HEAD/GET
``/datasets/<repo>/resolve/<rev>/<file>``, the tree API for listings) from files the test
puts in ``FakeHub.files``, serves images by name (some slow, failing or opted out) and logs
every request so a test can count them.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

SLOW_SECONDS = 2.5     # how long a "slow" image waits before answering


class FakeHub:
    """Files of hub dataset repos, images by name, and a log of every request."""

    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.images: dict[str, bytes] = {}
        self.special: dict[str, str] = {}       # image name -> "slow" | "error" | "opted_out"
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.base_url = ""

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
            path = unquote(urlsplit(self.path).path)
            hub.log(self.command, path)
            parts = path.strip("/").split("/")
            try:
                if parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
                    return self._resolve(f"{parts[1]}/{parts[2]}", "/".join(parts[5:]), head)
                if parts[:2] == ["api", "datasets"] and len(parts) >= 6 and parts[4] == "tree":
                    return self._tree(f"{parts[2]}/{parts[3]}")
                if parts[:1] == ["img"] and len(parts) == 2:
                    return self._image(parts[1], head)
                self._send(404, b"not found")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timed-out URL)

        def _resolve(self, repo: str, filename: str, head: bool) -> None:
            content = hub.files.get((repo, filename))
            commit = hashlib.sha1(repo.encode()).hexdigest()
            if content is None:
                return self._send(404, b'{"error": "Entry not found"}',
                                  {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, head)
            self._send(200, content, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                                      "Content-Type": "application/octet-stream"}, head)

        def _tree(self, repo: str) -> None:
            listing = [{"type": "file", "path": name, "size": len(content),
                        "oid": hashlib.sha1(content).hexdigest()}
                       for (owner, name), content in sorted(hub.files.items()) if owner == repo]
            if not listing:
                return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            self._send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"})

        def _image(self, name: str, head: bool) -> None:
            special = hub.special.get(name)
            if special == "slow":
                time.sleep(SLOW_SECONDS)
            if special == "error":
                return self._send(500, b"server error", head=head)
            if name not in hub.images:
                return self._send(404, b"gone", head=head)
            headers = {"Content-Type": "image/jpeg"}
            if special == "opted_out":
                headers["X-Robots-Tag"] = "noai, noimageai"
            self._send(200, hub.images[name], headers, head)

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
