"""Result tables from evaluation records: pure functions over record dicts.

A record is one JSON file written by ``evaluate`` (one checkpoint x one benchmark). The
long table keeps every metric of every record; the wide table has one row per (run, seed,
checkpoint) and one column per benchmark's main metric; the summary is what a paper prints:
one row per (run, checkpoint), each metric as its mean over seeds with min and max. Teacher
records (``role`` teacher / ensemble) are kept apart, in the teacher table.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import pandas as pd

from mobileclip_repro.records import FAILURE_SCHEMA, RECORD_SCHEMA, REQUIRED_RECORD_KEYS

log = logging.getLogger(__name__)

ROW_KEYS = ["run", "dr", "seed", "epoch", "seen_samples"]
SUMMARY_KEYS = ["run", "dr", "epoch", "seen_samples"]
STUDENT = "student"
TEACHER_ROLES = ("teacher", "ensemble")
# Main metrics computed from others rather than reported by clip_benchmark.
DERIVED_MAIN_METRICS = {"mean_recall@1"}
# Column and subplot order: classification (ImageNet-like) first, as in the paper's tables.
TASK_ORDER = {"zeroshot_classification": 0, "zeroshot_retrieval": 1, "visual_association": 2}
LONG_COLUMNS = ROW_KEYS + ["model", "benchmark", "dataset", "task", "metric", "value", "is_main"]


def validate_record(record: dict, source: str = "record") -> dict:
    missing = [key for key in REQUIRED_RECORD_KEYS if key not in record]
    if missing:
        raise ValueError(f"{source}: evaluation record is missing {missing}")
    if not isinstance(record["metrics"], dict):
        raise ValueError(f"{source}: 'metrics' must be an object")
    name = record["main_metric_name"]
    if name not in DERIVED_MAIN_METRICS and name not in record["metrics"]:
        raise ValueError(f"{source}: main metric {record['main_metric_name']!r} is not among its metrics")
    return record


def load_records(directory: str | os.PathLike) -> list[dict]:
    """Every evaluation record under ``directory`` (recursively), in path order.

    JSON files without the record schema tag (configs, manifests) are not records and are
    passed over; a file carrying the tag but lacking fields is an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"records directory {directory} does not exist")
    return [validate_record(payload, str(path)) for path, payload in tagged_json(directory, RECORD_SCHEMA)]


def _read_tagged(path: Path, schema: str, what: str) -> dict:
    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} listed but missing") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(payload, dict) or payload.get("schema") != schema:
        raise ValueError(f"{path}: not {what} (schema tag {schema!r} expected)")
    return payload


def read_records(paths: list[str | os.PathLike]) -> list[dict]:
    """The evaluation records at ``paths`` (as an evaluate index lists them), in path order; a
    listed file that is missing or not a record is an error, never passed over."""
    return [validate_record(_read_tagged(path, RECORD_SCHEMA, "an evaluation record"), str(path))
            for path in sorted(map(Path, paths))]


def tagged_json(directory: str | os.PathLike, schema: str, pattern: str = "**/*.json") -> list[tuple[Path, dict]]:
    """(path, payload) of every JSON file under ``directory`` matching ``pattern`` whose
    ``schema`` tag is ``schema``, in path order; other JSON files are passed over, a file that
    is not JSON is an error."""
    found = []
    for path in sorted(Path(directory).glob(pattern)):
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON: {error}") from error
        if not isinstance(payload, dict) or payload.get("schema") != schema:
            log.debug("%s: not tagged %s, skipped", path, schema)
            continue
        found.append((path, payload))
    return found


def read_failures(paths: list[str | os.PathLike]) -> list[dict]:
    """The failure files at ``paths`` (an evaluate index's ``failed``), in path order."""
    return [_read_tagged(path, FAILURE_SCHEMA, "a benchmark failure file") for path in sorted(map(Path, paths))]


def failures_markdown(failures: list[dict]) -> str:
    """The benchmarks left out of every table and average because they failed, in words."""
    if not failures:
        return ""
    lines = [f"- {failure['benchmark']}: {failure['run']}"
             + (f" seed {failure['seed']}" if failure.get("seed") is not None else "")
             + f", epoch {failure['epoch']} ({format_seen_samples(failure['seen_samples'])} samples): {failure['error']}"
             for failure in failures]
    return ("**Left out: benchmarks that failed to evaluate.** They are in no table and no average above; "
            "an average over a checkpoint's benchmarks is over the ones that evaluated.\n\n" + "\n".join(lines) + "\n")


def role(record: dict) -> str:
    return record.get("role") or STUDENT


def student_records(records: list[dict]) -> list[dict]:
    return [record for record in records if role(record) == STUDENT]


def teacher_records(records: list[dict]) -> list[dict]:
    return [record for record in records if role(record) in TEACHER_ROLES]


def _row_key(record: dict, key: str):
    # records written before seeds were a config axis carry no seed: the run's only one, 0
    return (record.get(key) or 0) if key == "seed" else record[key]


def long_table(records: list[dict]) -> pd.DataFrame:
    """One row per (student record, metric); the main metric is a row of its own, flagged ``is_main``."""
    rows = []
    for record in student_records(records):
        base = {key: _row_key(record, key) for key in ROW_KEYS + ["model", "benchmark", "dataset", "task"]}
        metrics = dict(record["metrics"])
        metrics[record["main_metric_name"]] = record["main_metric"]
        for metric, value in metrics.items():
            rows.append({**base, "metric": metric, "value": math.nan if value is None else float(value),
                         "is_main": metric == record["main_metric_name"]})
    table = pd.DataFrame(rows, columns=LONG_COLUMNS)
    return table.sort_values(["run", "seed", "seen_samples", "benchmark", "metric"], kind="stable").reset_index(drop=True)


def metric_column(benchmark: str, metric: str) -> str:
    return f"{benchmark}/{metric}"


def wide_table(records: list[dict], metrics: str = "main") -> pd.DataFrame:
    """Rows (run, dr, seed, epoch, seen_samples) of student records; columns ``<benchmark>/<metric>``.

    ``metrics="main"`` keeps each benchmark's main metric, ``"all"`` every metric.
    """
    if metrics not in ("main", "all"):
        raise ValueError(f"metrics must be 'main' or 'all', got {metrics!r}")
    table = long_table(records)
    if metrics == "main":
        table = table[table["is_main"]]
    if table.empty:
        return pd.DataFrame(columns=ROW_KEYS)
    table = table.assign(column=[metric_column(b, m) for b, m in zip(table["benchmark"], table["metric"])])
    duplicated = table.duplicated(ROW_KEYS + ["column"], keep=False)
    if duplicated.any():
        first = table[duplicated].iloc[0]
        raise ValueError(f"two records for run {first['run']!r} seed {first['seed']} epoch {first['epoch']} benchmark "
                         f"{first['benchmark']!r}; records must be unique per (run, seed, epoch, benchmark)")
    ordered = table.assign(task_rank=table["task"].map(TASK_ORDER).fillna(len(TASK_ORDER)))
    ordered = ordered.sort_values(["task_rank", "benchmark", "is_main", "metric"], ascending=[True, True, False, True],
                                  kind="stable")
    column_order = list(dict.fromkeys(ordered["column"]))
    wide = table.pivot(index=ROW_KEYS, columns="column", values="value")
    wide = wide[column_order].reset_index()
    wide.columns.name = None
    return wide.sort_values(["run", "seed", "seen_samples"], kind="stable").reset_index(drop=True)


def summary_table(wide: pd.DataFrame) -> pd.DataFrame:
    """Over seeds: rows (run, dr, epoch, seen_samples) with the number of seeds; per metric column its
    mean (same name) and ``<column> min`` / ``<column> max``."""
    metrics = [column for column in wide.columns if column not in ROW_KEYS]
    if wide.empty:
        return pd.DataFrame(columns=SUMMARY_KEYS + ["seeds"])
    groups = wide.groupby(SUMMARY_KEYS, sort=False)
    summary = groups.size().rename("seeds").to_frame()
    for column in metrics:
        summary[column] = groups[column].mean()
        summary[f"{column} min"] = groups[column].min()
        summary[f"{column} max"] = groups[column].max()
    return summary.reset_index().sort_values(["run", "seen_samples"], kind="stable").reset_index(drop=True)


def format_seen_samples(count: float) -> str:
    """12800000 -> '12.8M', 245760000 -> '245.76M', 1.48e9 -> '1.48B' (the paper's units)."""
    for divisor, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= divisor:
            return f"{count / divisor:.4g}{unit}"
    return f"{count:g}"


def _percent(value) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.1f}"


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as a paper prints it: metrics in percent with one decimal, ``mean (min–max)`` over
    several seeds, seen samples in M/B."""
    metrics = [c for c in summary.columns if c not in SUMMARY_KEYS + ["seeds"] and not c.endswith((" min", " max"))]
    shown = summary[[c for c in SUMMARY_KEYS + ["seeds"] if c in summary.columns]].copy()
    shown["dr"] = shown["dr"].map({True: "DR", False: "non-DR"})
    shown["seen_samples"] = shown["seen_samples"].map(format_seen_samples)
    for column in metrics:
        cells = summary[column].map(_percent)
        if f"{column} min" in summary.columns:
            spread = summary["seeds"] > 1
            cells[spread] = [f"{_percent(m)} ({_percent(lo)}–{_percent(hi)})" for m, lo, hi in zip(
                summary[column][spread], summary[f"{column} min"][spread], summary[f"{column} max"][spread])]
        shown[column] = cells
    return shown.rename(columns={"seen_samples": "seen samples", "dr": "data"})


def teacher_table(records: list[dict]) -> pd.DataFrame:
    """One row per teacher and one for their ensemble: the main metric of each benchmark."""
    rows: dict[str, dict] = {}
    records = sorted(teacher_records(records), key=lambda r: (TASK_ORDER.get(r["task"], len(TASK_ORDER)), r["benchmark"]))
    for record in records:
        row = rows.setdefault(record["run"], {"teacher": record["run"], "role": role(record), "model": record["model"]})
        row[metric_column(record["benchmark"], record["main_metric_name"])] = record["main_metric"]
    ordered = sorted(rows.values(), key=lambda row: (row["role"] == "ensemble", row["teacher"]))
    return pd.DataFrame(ordered)


def display_teachers(teachers: pd.DataFrame) -> pd.DataFrame:
    """The teacher table as printed: metrics in percent with one decimal."""
    shown = teachers.copy()
    for column in shown.columns[3:]:
        shown[column] = shown[column].map(_percent)
    return shown


def teacher_markdown(teachers: pd.DataFrame) -> str:
    shown = display_teachers(teachers)
    return ("## Teachers\n\nThe reinforcement's teachers on the same benchmark sets, each alone and as the "
            "ensemble the DR targets come from (members' normalized features concatenated: their mean cosine); "
            "the ceiling a distilled student approaches.\n\n" + to_markdown(shown) + "\n")


def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def to_markdown(table: pd.DataFrame) -> str:
    # pandas' to_markdown needs tabulate; the pipe table is simple enough to write directly.
    header = [str(column) for column in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(str(value) for value in row) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(summary: pd.DataFrame, path: str | os.PathLike, title: str | None = None) -> Path:
    """The display table as Markdown, metrics in percent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n" if title else ""
    text += ("Main metric per benchmark, in percent (acc1: zero-shot top-1; mean_recall@1: mean of image and text "
             "R@1); with several seeds, the mean over seeds and (min–max).\n\n")
    path.write_text(text + to_markdown(display_table(summary)))
    return path


# ---------------------------------------------------------------------------------------------
# Data: what the fetch stage got from the hub and the web (docs/reference.md §8: URLs rot, so a
# reproduction reports what it lost). One row per fetch group manifest, plus a total.

FETCH_MANIFEST_SCHEMA = "mobileclip_repro/fetch-manifest/1"  # fetch.MANIFEST_SCHEMA
FETCH_COUNTERS = ("samples_listed", "no_caption", "no_url", "urls_tried", "images_fetched", "sha256_mismatch_dropped",
                  "sha256_mismatch_kept", "samples_kept")  # fetch.COUNTERS
FETCH_REPOS = (("datacomp", "DataComp"), ("dr", "DataCompDR"))  # (manifest field prefix, what the repo holds)
FETCH_FAILURE_ORDER = ("http_404", "http_error", "timeout", "connection", "invalid_url", "too_large", "opted_out")


def read_fetch_manifests(paths: list[str | os.PathLike]) -> list[dict]:
    """The fetch group manifests at ``paths``, in path order (none: no data section)."""
    manifests = []
    for path in sorted(map(Path, paths)):
        payload = _read_tagged(path, FETCH_MANIFEST_SCHEMA, "a fetch group manifest")
        if not isinstance(payload.get("totals"), dict):
            raise ValueError(f"{path}: fetch manifest has no 'totals'")
        manifests.append({**payload, "group": str(payload.get("group", path.stem))})
    return manifests


def _fetch_count(totals: dict, name: str) -> int:
    """A group's count; a manifest written before the sha256 policy has ``sha256_mismatch`` (all dropped)."""
    if name == "sha256_mismatch_dropped" and name not in totals:
        return int(totals.get("sha256_mismatch", 0))
    return int(totals.get(name, 0))


def fetch_commits(manifests: list[dict]) -> list[dict]:
    """Per hub repo the fetch groups read: the commits they were fetched at, each with its groups.

    More than one commit for a repo means the dataset mixes two versions of it (groups fetched
    before and after a push, at a revision that names a branch); ``fetch`` records the commit of
    every group, and the report says so loudly. Manifests from before commits were recorded
    count under ``None``.
    """
    repos: dict[tuple[str, str], dict] = {}
    for manifest in sorted(manifests, key=lambda m: m["group"]):
        for prefix, holds in FETCH_REPOS:
            repo = manifest.get(f"{prefix}_repo")
            if not repo:
                continue
            entry = repos.setdefault((prefix, repo), {"repo": repo, "holds": holds, "commits": {}})
            entry["commits"].setdefault(manifest.get(f"{prefix}_commit"), []).append(manifest["group"])
    return list(repos.values())


def fetch_commit_lines(manifests: list[dict]) -> list[str]:
    """One line per hub repo: the commit its data came from, or every commit and its groups when they differ."""
    lines = []
    for entry in fetch_commits(manifests):
        commits = entry["commits"]
        if len(commits) == 1:
            (commit,) = commits
            lines.append(f"{entry['holds']} `{entry['repo']}` at commit `{commit or 'not recorded'}`")
        else:
            parts = "; ".join(f"`{commit or 'not recorded'}` (groups {', '.join(groups)})"
                              for commit, groups in commits.items())
            lines.append(f"**{entry['holds']} `{entry['repo']}` MIXES {len(commits)} commits**: {parts}. "
                         "Pin one with data.hub.*_revision and refetch the others")
    return lines


def fetch_table(manifests: list[dict]) -> pd.DataFrame:
    """One row per group and a ``total`` row: shards, counts by outcome, failed URLs by reason, fractions."""
    reasons = list(FETCH_FAILURE_ORDER)
    reasons += sorted({r for m in manifests for r in m["totals"].get("failed", {})} - set(reasons))
    rows = []
    for manifest in sorted(manifests, key=lambda m: m["group"]):
        totals = manifest["totals"]
        row = {"group": manifest["group"], "shards": int(totals.get("shards", 0)),
               "shards_failed": int(totals.get("shards_failed", 0))}
        row.update({name: _fetch_count(totals, name) for name in FETCH_COUNTERS})
        row.update({f"failed_{reason}": int(totals.get("failed", {}).get(reason, 0)) for reason in reasons})
        rows.append(row)
    columns = ["group", "shards", "shards_failed", *FETCH_COUNTERS, *(f"failed_{r}" for r in reasons)]
    table = pd.DataFrame(rows, columns=columns)
    if rows:
        total = {column: int(table[column].sum()) for column in columns[1:]}
        table = pd.concat([table, pd.DataFrame([{"group": "total", **total}])], ignore_index=True)
    # Fractions of what could have been had: kept of listed, fetched of tried.
    table["kept_fraction"] = (table["samples_kept"] / table["samples_listed"].where(table["samples_listed"] > 0))
    table["fetched_fraction"] = (table["images_fetched"] / table["urls_tried"].where(table["urls_tried"] > 0))
    return table


def display_fetch_table(table: pd.DataFrame) -> pd.DataFrame:
    """The data table as printed: failure reasons that never occurred are dropped, fractions in percent."""
    shown = table.copy()
    unused = [c for c in shown.columns if c.startswith("failed_") and not shown[c].any()]
    shown = shown.drop(columns=unused)
    for column in ("kept_fraction", "fetched_fraction"):
        shown[column] = shown[column].map(lambda value: "n/a" if pd.isna(value) else f"{100 * value:.1f}")
    return shown.rename(columns={"kept_fraction": "kept %", "fetched_fraction": "fetched %"})


def lost_shards(manifests: list[dict]) -> list[dict]:
    """The shards the fetch groups gave up on within ``data.hub.max_failed_shards``: group, shard, why."""
    return [{"group": manifest["group"], "shard": shard, "error": error}
            for manifest in sorted(manifests, key=lambda m: m["group"])
            for shard, error in sorted((manifest.get("lost_shards") or {}).items())]


def fetch_markdown(table: pd.DataFrame, lost: list[dict] | None = None, commits: list[str] | None = None) -> str:
    text = ("## Data\n\nWhat the fetch stage got, per group of hub shards: samples listed in the shards, "
            "URLs tried and images fetched, failed URLs by reason, images whose sha256 differs from the "
            "recorded one, dropped or kept by the data.hub.sha256 policy (kept ones are also in samples_kept), "
            "and samples kept (kept % = kept / listed).\n\n")
    if commits:
        text += "Hub commits:\n\n" + "\n".join(f"- {line}" for line in commits) + "\n\n"
    text += to_markdown(display_fetch_table(table))
    if lost:
        text += (f"\n\n**{len(lost)} shard(s) lost**, accepted by `data.hub.max_failed_shards`: training ran "
                 "without them.\n\n" + "\n".join(f"- group {item['group']}, shard {item['shard']}: {item['error']}"
                                                   for item in lost))
    return text


# DataComp's summary columns (its aggregate_scores.py): every task, ImageNet-1k, its
# distribution shifts, VTAB, retrieval (Flickr30k, MSCOCO, WinoGAViL); as tags of the suite.
DATACOMP_GROUPS = ("average", "imagenet", "imagenet_dist_shifts", "vtab", "retrieval")


def suite_averages(records: list[dict]) -> pd.DataFrame:
    """DataComp's summary columns: the main metric averaged over every benchmark and per tag.

    Rows (run, dr, seed, epoch, seen_samples); columns ``average`` and one per tag (e.g.
    ``imagenet_dist_shifts``, ``vtab``, ``retrieval``), each over the benchmarks that carry
    it. Empty when no record has tags (then a per-benchmark table says it all).
    """
    records = student_records(records)
    if not any(record.get("tags") for record in records):
        return pd.DataFrame(columns=ROW_KEYS)
    rows = [{**{key: _row_key(record, key) for key in ROW_KEYS}, "group": group, "benchmark": record["benchmark"],
             "value": record["main_metric"]}
            for record in records for group in ["average", *record.get("tags", [])]]
    table = pd.DataFrame(rows)
    sizes = table.drop_duplicates(["group", "benchmark"])["group"].value_counts()
    averaged = table.groupby(ROW_KEYS + ["group"])["value"].mean().unstack("group")
    # DataComp's aggregate columns first, in its order; then any other groups
    leading = [group for group in DATACOMP_GROUPS if group in averaged.columns]
    order = leading + sorted(set(averaged.columns) - set(leading))
    averaged = averaged[order].rename(columns={group: f"{group} ({sizes[group]})" for group in order})
    averaged.columns.name = None
    return averaged.reset_index().sort_values(["run", "seed", "seen_samples"], kind="stable").reset_index(drop=True)


def suite_markdown(averages: pd.DataFrame) -> str:
    shown = display_table(summary_table(averages))
    return ("## Averages over benchmark groups\n\nMain metric averaged over the benchmarks of each group "
            "(number of benchmarks in parentheses), in percent, as DataComp reports its suite: DataComp's "
            "aggregate columns (average, imagenet, imagenet_dist_shifts, vtab, retrieval) first.\n\n"
            + to_markdown(shown) + "\n")
