"""Hugging Face hub data: which shards a paper config names, and downloads that survive a hub hiccup.

Configs and Apple's run scripts name shards in brace notation (``data.hub.shards``):
``"{00000000..00001023}"`` for the 12M sets, ``["{00..64}/{00000000..00000999}",
"65/{00000000..00000535}"]`` for DataCompDR-1B. The fetch stage expands them here.

``hub_download`` and ``hub_list_files`` retry transient hub errors (HTTP 408, 429 and 5xx,
connection errors, timeouts) with exponential backoff (``HubRetries``). huggingface_hub
retries some of them itself (a HEAD, a listing, a 429 on a download) but not an HTTP 5xx on
a file download, and it gives up for good after its own few tries; one such error used to
cost a whole shard. Errors that another try cannot fix (404, 401/403, a missing repo or
revision) are raised at once.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from braceexpand import braceexpand

log = logging.getLogger("mobileclip_repro.hub")
T = TypeVar("T")

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shard_spec(spec: str | list[str]) -> list[str]:
    """Shard ids in the hub's ``{a..b}`` brace notation, zero-padded to the width of the bounds.

    Ranges are inclusive, as in bash; several groups expand as a product, the leftmost
    slowest; a list of specs expands to the concatenation of their ids. Used by the fetch
    stage to list the shards to download. A spec that is not literal text and ``{a..b}``
    groups with ``a <= b`` raises ValueError naming it.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    return [shard for one in specs for shard in _expand_one(one)]


def _expand_one(spec) -> list[str]:
    # braceexpand (webdataset's own) does the expansion, bash-like padding included; the
    # checks keep a typo from expanding into a silently different shard list.
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"malformed shard spec {spec!r}: expected text such as '{{00000000..00001023}}'")
    parts = _RANGE.split(spec)  # literal, lo, hi, literal, lo, hi, ..., literal
    literals, bounds = parts[0::3], list(zip(parts[1::3], parts[2::3]))
    if any(ch in literal for literal in literals for ch in "{}"):
        raise ValueError(f"malformed shard spec {spec!r}: braces must hold exactly '{{a..b}}' with integer bounds")
    for lo, hi in bounds:
        if int(lo) > int(hi):
            raise ValueError(f"malformed shard spec {spec!r}: range {{{lo}..{hi}}} runs backwards")
    return list(braceexpand(spec))


def parse_shard_spec(text: str):
    """``--shard-spec``: JSON (a string or a list of strings), or a bare brace pattern."""
    try:
        spec = json.loads(text)
    except ValueError:
        return text
    if isinstance(spec, str) or (isinstance(spec, list) and all(isinstance(item, str) for item in spec)):
        return spec
    raise ValueError(f"--shard-spec must be a brace pattern or a JSON list of them, got {text!r}")


def shard_groups(spec: str | list[str], group_size: int) -> list[list[str]]:
    """The expanded shard ids in consecutive groups of ``group_size``: one fetch/reinforce job each.

    One job per shard would put 65,536 fetch jobs in the DataCompDR-1B DAG; grouping keeps
    planning fast and each job long enough to amortize its start-up.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be positive, got {group_size}")
    ids = expand_shard_spec(spec)
    return [ids[start:start + group_size] for start in range(0, len(ids), group_size)]


def select_group(shard_spec, group: str, group_size: int) -> tuple[int, list[str]]:
    """(index, shard ids) of group ``group`` ("00003") among the spec's groups: the one group
    layer of the fetch and reinforce jobs (their rules pass the same three values)."""
    groups = shard_groups(parse_shard_spec(shard_spec), group_size)
    try:
        index = int(group)
    except (TypeError, ValueError):
        raise ValueError(f"--group must be a group index such as 00003, got {group!r}") from None
    if not 0 <= index < len(groups):
        raise ValueError(f"--group {group}: the spec has {len(groups)} groups of {group_size}")
    return index, groups[index]


def hub_endpoint() -> str | None:
    """``HF_ENDPOINT`` read now, not when huggingface_hub was imported (None: the library's default)."""
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None


TRANSIENT_HTTP_STATUSES = frozenset({408, 429})  # and every 5xx


@dataclass(frozen=True)
class HubRetries:
    """How a hub call is retried after a transient error: up to ``retries`` more tries, the first
    after about ``backoff_s`` seconds, each wait twice the one before (at most ``max_backoff_s``)."""
    retries: int = 4
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0

    def wait_before(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...). Jittered: the fetch jobs of a
        workflow share one hub, and waits in lockstep would hit it again all at the same moment."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)

    def call(self, what: str, function: Callable[[], T]) -> T:
        """``function()``, tried again after each transient hub error until ``retries`` are spent."""
        retry = 0
        while True:
            try:
                return function()
            except Exception as error:
                retry += 1
                if not is_transient_hub_error(error):
                    raise
                if retry > self.retries:
                    log.warning("%s: %s; still failing after %d tries, giving up", what, describe_hub_error(error),
                                retry)
                    raise
                wait = self.wait_before(retry)
                log.warning("%s: %s (transient); retry %d of %d in %.1f s", what, describe_hub_error(error), retry,
                            self.retries, wait)
                time.sleep(wait)


def _network_error_types() -> tuple[type[BaseException], ...]:
    """What huggingface_hub's HTTP client raises for a connection error or a timeout: the classes its
    own backoff retries (httpx2 since huggingface_hub 2, httpx in 1.x, requests before that)."""
    types: list[type[BaseException]] = []
    for client in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(client)
        except ImportError:
            continue
        types += [module.TimeoutException, module.NetworkError, module.RemoteProtocolError]
    import requests

    return (*types, requests.ConnectionError, requests.Timeout)


def _http_status(error: BaseException) -> int | None:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError):
        return getattr(getattr(error, "response", None), "status_code", None)
    return None


def is_transient_hub_error(error: BaseException) -> bool:
    """An HTTP 408, 429 or 5xx, a connection error or a timeout, raised or wrapped: when the HEAD
    request of ``hf_hub_download`` fails, the library raises a LocalEntryNotFoundError (or, with
    ``force_download``, a ValueError) *from* the network error, so the chain of causes is read too."""
    network_errors = _network_error_types()
    while error is not None:
        status = _http_status(error)
        if status is not None:
            return status in TRANSIENT_HTTP_STATUSES or status >= 500
        if isinstance(error, network_errors):
            return True
        error = error.__cause__
    return False


def describe_hub_error(error: BaseException) -> str:
    """The error in one line; a wrapper (LocalEntryNotFoundError, ...) with the error it was raised from."""
    text = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if _http_status(error) is None and error.__cause__ is not None:
        text += f" (from {describe_hub_error(error.__cause__)})"
    return text


def hub_download(repo_id: str, filename: str, local_dir: Path, *, revision: str | None = None,
                 force: bool = False, retry: HubRetries = HubRetries()) -> Path:
    """A dataset repo's file, downloaded into ``local_dir`` (transient hub errors retried per ``retry``)."""
    from huggingface_hub import hf_hub_download

    return retry.call(f"{repo_id}/{filename}", lambda: Path(hf_hub_download(
        repo_id, filename, repo_type="dataset", revision=revision, local_dir=local_dir, force_download=force,
        endpoint=hub_endpoint())))


def hub_list_files(repo_id: str, revision: str | None = None, *, retry: HubRetries = HubRetries()) -> list[str]:
    """The files of a dataset repo (transient hub errors retried per ``retry``)."""
    from huggingface_hub import HfApi

    return retry.call(f"{repo_id}: file listing", lambda: HfApi(endpoint=hub_endpoint()).list_repo_files(
        repo_id, repo_type="dataset", revision=revision))


def hub_commit(repo_id: str, revision: str | None = None, *, retry: HubRetries = HubRetries()) -> str:
    """The commit SHA that a dataset repo's branch, tag or commit (None: its main branch) points at now.

    A fetch job resolves each repo once and downloads at that SHA, so a branch that moves during
    the job (``apple/DataCompDR-12M`` has had a "Data reorder and squash" commit) cannot mix two
    commits in one job. The answer is the hub's repo-info API (``/api/datasets/<repo>/revision/<rev>``).
    """
    from huggingface_hub import HfApi

    info = retry.call(f"{repo_id}: revision {revision or 'main'}", lambda: HfApi(endpoint=hub_endpoint()).dataset_info(
        repo_id, revision=revision))
    if not info.sha:
        raise ValueError(f"{repo_id}: the hub named no commit for revision {revision or 'main'!r}")
    return info.sha
