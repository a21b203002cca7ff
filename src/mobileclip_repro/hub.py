"""Hugging Face hub data: which shards a paper config names.

Configs and Apple's run scripts name shards in brace notation (``data.hub.shards``):
``"{00000000..00001023}"`` for the 12M sets, ``["{00..64}/{00000000..00000999}",
"65/{00000000..00000535}"]`` for DataCompDR-1B. The fetch stage expands them here.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from braceexpand import braceexpand

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


def hub_download(repo_id: str, filename: str, local_dir: Path, *, revision: str | None = None,
                 force: bool = False) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision, local_dir=local_dir,
                                force_download=force, endpoint=hub_endpoint()))


def hub_list_files(repo_id: str, revision: str | None = None) -> list[str]:
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_endpoint()).list_repo_files(repo_id, repo_type="dataset", revision=revision)
