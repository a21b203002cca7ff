"""The report: tables, the learning-efficiency figure and one self-contained HTML page.

Everything is derived from evaluation records (``evaluate``'s JSON files), so a report can
be rebuilt at any time from whatever checkpoints have been evaluated so far. In the DAG the
report reads exactly the files its rule hands it (``ReportInputs``): the records its
``records.json`` indexes list, the job manifests and benchmark TSVs of the experiment's jobs;
never a glob of the results tree, which still holds runs removed from the config. The paper's
anchor points (``paper_reference.json``, docs/reference.md §6) are overlaid only when asked:
they only make sense next to the paper-scale runs, not the toy world.
"""
from __future__ import annotations

import base64
import glob
import html
import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

from mobileclip_repro import telemetry
from mobileclip_repro.layout import Layout
from mobileclip_repro.report import cost
from mobileclip_repro.report import efficiency
from mobileclip_repro.report.ablation import ablation_markdown, display_ablation, write_ablation
from mobileclip_repro.report.plots import (FlopsFormatter, plot_data_efficiency, plot_learning_efficiency,
                                   plot_notice, plot_training_curves, validate_reference_points)
from mobileclip_repro.report.tables import (FAILURE_SCHEMA, FETCH_MANIFEST_SCHEMA, RECORD_SCHEMA, display_fetch_table,
                                     display_table, display_teachers, failures_markdown, fetch_commits,
                                     fetch_commit_lines, fetch_markdown, fetch_table,
                                     format_seen_samples, long_table, lost_shards, read_failures,
                                     read_fetch_manifests, read_records, student_records, suite_averages,
                                     suite_markdown, summary_table, tagged_json, teacher_markdown, teacher_table,
                                     wide_table, write_csv, write_markdown)

PAPER_REFERENCE_PATH = Path(__file__).parent / "paper_reference.json"
# Named anchor sets (config `report.paper_reference`): the MobileCLIP paper's learning-efficiency
# points, and the released MobileCLIP / MobileCLIP2 models' numbers (docs/reference.md §9).
PAPER_REFERENCES = {"mobileclip": PAPER_REFERENCE_PATH,
                    "mobileclip2": Path(__file__).parent / "paper_reference_mobileclip2.json"}
DEFAULT_TITLE = "MobileCLIP reproduction: learning efficiency"
# The software whose version a result depends on: name on the page -> distribution name.
PROVENANCE_PACKAGES = {"torch": "torch", "open_clip": "open_clip_torch", "clip_benchmark": "clip_benchmark",
                       "snakemake": "snakemake", "mobileclip-repro": "mobileclip-repro"}


def _git(*args: str) -> str | None:
    """A git command's output in the checkout this package runs from; None outside git."""
    try:
        done = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), *args], capture_output=True,
                              text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def provenance(config_digest: str | None = None) -> dict[str, str]:
    """What made this report: the commit of the checkout ("unknown" outside git; uncommitted changes
    said), the date (``SOURCE_DATE_EPOCH`` where set, so a rebuild can give the same bytes; else now,
    UTC), the versions of Python and of ``PROVENANCE_PACKAGES``, and the config digest the rule
    passes ("not given" outside a DAG)."""
    commit = _git("rev-parse", "HEAD") or "unknown"
    if commit != "unknown" and _git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    found = {"commit": commit, "date": moment.strftime("%Y-%m-%d %H:%M UTC"),
             "config digest": config_digest or "not given (a report made outside the DAG)",
             "python": platform.python_version()}
    for name, distribution in PROVENANCE_PACKAGES.items():
        try:
            found[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def provenance_markdown(found: dict[str, str]) -> str:
    return "## Provenance\n\n" + "\n".join(f"- {key}: {value}" for key, value in found.items()) + "\n"


def prose_html(text: str) -> str:
    """A sentence written for results.md as HTML: escaped, with its `code` and **bold** spans rendered,
    not shown as backticks and asterisks."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def display_run_costs(table: pd.DataFrame) -> pd.DataFrame:
    """The Cost section's per-run table in readable units: FLOPs with an SI prefix, seconds as ms."""
    def milliseconds(value):
        return "n/a" if value is None or pd.isna(value) else f"{1e3 * value:.3g} ms"

    shown = table[["run", "arm", "seeds"]].copy()
    shown["FLOPs / seen sample"] = [cost.format_flops(None if pd.isna(v) else v) for v in table["FLOPs / seen sample"]]
    shown["wall time / seen sample"] = [milliseconds(v) for v in table["wall s / seen sample"]]
    shown["CPU time / seen sample"] = [milliseconds(v) for v in table["CPU s / seen sample"]]
    return shown


def display_throughput(rows: list[dict]) -> pd.DataFrame:
    """The Training section's per-job table, as results.md prints it."""
    return pd.DataFrame([{"run": r["run"], "seed": r["seed"], "log steps": r["log_steps"],
                          "samples/s (median)": f"{r['samples_per_second']:.1f}",
                          "data wait share": f"{100 * r['data_wait_share']:.1f}%",
                          "first loss": _loss(r["first_loss"]), "last loss": _loss(r["last_loss"])}
                         for r in rows])


def _loss(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def load_paper_reference(path: str | os.PathLike = PAPER_REFERENCE_PATH) -> list[dict]:
    """The paper's anchor points as fractions (the file holds them in percent, as printed)."""
    payload = json.loads(Path(path).read_text())
    if not isinstance(payload, dict) or not isinstance(payload.get("points"), list):
        raise ValueError(f"{path}: expected an object with a 'points' list")
    unit = payload.get("unit")
    if unit not in ("percent", "fraction"):
        raise ValueError(f"{path}: 'unit' must be 'percent' or 'fraction', got {unit!r}")
    scale = 0.01 if unit == "percent" else 1.0
    points = [{**point, "value": float(point["value"]) * scale} if "value" in point else point
              for point in payload["points"]]
    return validate_reference_points(points)


def load_chance_levels(path: str | os.PathLike) -> dict[str, float]:
    """``{benchmark name: chance level}``, a fraction such as 1/num_classes."""
    payload = json.loads(Path(path).read_text())
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected an object mapping benchmark name to chance level")
    for benchmark, level in payload.items():
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= level <= 1.0:
            raise ValueError(f"{path}: chance level of {benchmark!r} must be a fraction in [0, 1], got {level!r}")
    return {benchmark: float(level) for benchmark, level in payload.items()}


def run_summary(records: list[dict]) -> pd.DataFrame:
    """One row per run: what was trained and how far the evaluated checkpoints reach."""
    rows = []
    records = student_records(records)
    for run in sorted({record["run"] for record in records}):
        mine = [record for record in records if record["run"] == run]
        spec = mine[0].get("run_spec") or {}
        rows.append({
            "run": run,
            "data": "DR" if mine[0]["dr"] else "non-DR",
            "model": mine[0]["model"],
            "global batch": spec.get("global_batch_size", "n/a"),
            "planned seen samples": format_seen_samples(spec["seen_samples"]) if "seen_samples" in spec else "n/a",
            "seeds": ", ".join(str(seed) for seed in sorted({record.get("seed") or 0 for record in mine})),
            "checkpoints evaluated": len({record["epoch"] for record in mine}),
            "last epoch": max(record["epoch"] for record in mine),
            "seen samples reached": format_seen_samples(max(record["seen_samples"] for record in mine)),
            "benchmarks": ", ".join(sorted({record["benchmark"] for record in mine})),
        })
    return pd.DataFrame(rows)


def benchmark_summary(records: list[dict]) -> pd.DataFrame:
    rows = {}
    for record in records:
        rows.setdefault(record["benchmark"], {
            "benchmark": record["benchmark"], "dataset": record["dataset"], "task": record["task"],
            "main metric": record["main_metric_name"], "images": record["num_samples"],
            "clip_benchmark": record.get("clip_benchmark_version", "n/a"),
        })
    return pd.DataFrame(list(rows.values()))


def _commits_html(commits: list[dict]) -> str:
    """The hub commit each repo's data came from (``tables.fetch_commits``); several for one repo, loudly."""
    items = []
    for entry in commits:
        named = f"{html.escape(entry['holds'])} <code>{html.escape(entry['repo'])}</code>"
        if len(entry["commits"]) == 1:
            (commit,) = entry["commits"]
            items.append(f"<li>{named} at commit <code>{html.escape(commit or 'not recorded')}</code></li>")
        else:
            parts = "; ".join(f"<code>{html.escape(commit or 'not recorded')}</code> (groups "
                              f"{html.escape(', '.join(groups))})" for commit, groups in entry["commits"].items())
            items.append(f"<li><strong>{named} mixes {len(entry['commits'])} commits</strong>: {parts}. Pin one with "
                         "<code>data.hub.*_revision</code> and refetch the others</li>")
    return f"<p>Hub commits:</p>\n<ul>{''.join(items)}</ul>\n" if items else ""


def render_html(title: str, records: list[dict], summary: pd.DataFrame, png_path: Path,
                paper_reference: list[dict] | None, data: pd.DataFrame | None = None,
                averages: pd.DataFrame | None = None, teachers: pd.DataFrame | None = None,
                multipliers: list[dict] | None = None, ablation: dict | None = None,
                cost_section: dict | None = None, training: dict | None = None,
                failures: list[dict] | None = None, data_efficiency: dict | None = None,
                lost: list[dict] | None = None, commits: list[dict] | None = None,
                provenance: dict[str, str] | None = None) -> str:
    image = base64.b64encode(png_path.read_bytes()).decode("ascii")
    specs = {}
    for record in student_records(records):
        specs.setdefault(record["run"], record.get("run_spec") or {})
    spec_blocks = "\n".join(
        f"<details><summary>{html.escape(run)}</summary><pre>{html.escape(json.dumps(spec, indent=2, sort_keys=True))}</pre></details>"
        for run, spec in sorted(specs.items()))
    reference_note = ""
    if paper_reference:
        reference_note = ("<p>Black markers: the paper's numbers (filled: DataCompDR, hollow: DataComp; "
                          "one shape per source), ViT-B/16 at the paper's scale.</p>"
                          + pd.DataFrame(paper_reference).assign(value=lambda t: (100 * t["value"]).round(1))
                          .to_html(index=False, classes="table", border=0))
    table_html = display_table(summary).to_html(index=False, classes="table", border=0)
    efficiency_section = ("<p>Each point: one checkpoint's main metric (<code>results_long.csv</code>), the line "
                          "the mean over seeds, the band their min–max.</p>")
    if multipliers:
        efficiency_section += ("<p>" + "</p>\n<p>".join(prose_html(efficiency.describe(m)) for m in multipliers)
                               + f"</p>\n<p>{prose_html(efficiency.DEFINITION)}</p>")
    data_efficiency_section = ""
    if data_efficiency is not None:
        figure = base64.b64encode(data_efficiency["png"].read_bytes()).decode("ascii")
        data_efficiency_section = ("<h2>Data efficiency</h2>\n<p>"
                                   + "</p>\n<p>".join(prose_html(efficiency.describe_data(m))
                                                      for m in data_efficiency["multipliers"])
                                   + f"</p>\n<p>{prose_html(efficiency.DATA_DEFINITION)}</p>\n"
                                   f'<img alt="final accuracy against dataset size" src="data:image/png;base64,{figure}">')
    teacher_section = ""
    if teachers is not None and not teachers.empty:
        shown = display_teachers(teachers)
        teacher_section = ("<h2>Teachers</h2>\n<p>The reinforcement's teachers on the same sets, alone and as the "
                           "ensemble the DR targets come from: the ceiling line in the figure "
                           "(<code>teachers.csv</code>).</p>\n"
                           + shown.to_html(index=False, classes="table", border=0))
    ablation_section = ""
    if ablation is not None:
        chart = base64.b64encode(ablation["png"].read_bytes()).decode("ascii")
        ablation_section = ("<h2>Ablation ladder</h2>\n<p>Final checkpoint, mean over seeds (min–max), percent; "
                            "Δ: change of the mean from the row above; the paper's Table 2 beside it.</p>\n"
                            + display_ablation(ablation["table"], ablation["benchmarks"])
                            .to_html(index=False, classes="table", border=0)
                            + f'\n<img alt="each step\'s change, ours and the paper\'s" src="data:image/png;base64,{chart}">')
    averages_section = ""
    if averages is not None and not averages.empty:
        averages_section = ("<h2>Averages over benchmark groups</h2>\n<p>Main metric averaged over the benchmarks "
                            "of each group (their number in parentheses), as DataComp reports its suite.</p>\n"
                            + display_table(summary_table(averages)).to_html(index=False, classes="table", border=0))
    if failures:
        note, _, items = failures_markdown(failures).partition("\n\n")
        averages_section += (f"\n<p>{prose_html(note)}</p>\n<ul>"
                             + "".join(f"<li>{prose_html(item[2:])}</li>" for item in items.splitlines()) + "</ul>")
    compute_section = ""
    if cost_section is not None:
        compute_section = "<h2>Cost</h2>\n" + "\n".join(
            f"<p>{prose_html(line.strip())}</p>" for line in cost_section["sentences"]) + \
            display_run_costs(cost_section["table"]).to_html(index=False, classes="table", border=0, na_rep="n/a")
        if cost_section.get("png") is not None:
            figure = base64.b64encode(cost_section["png"].read_bytes()).decode("ascii")
            compute_section += ("\n<p>The learning curves against training compute (seen samples × the run's counted "
                                "FLOPs per seen sample); the dotted curve is the DR run with its share of the one-time "
                                "reinforcement added, so the gap between it and the non-DR curve is the amortized "
                                "multiplier.</p>"
                                f'\n<img alt="main metric against training FLOPs" '
                                f'src="data:image/png;base64,{figure}">')
    training_section = ""
    if training is not None:
        figure = base64.b64encode(training["png"].read_bytes()).decode("ascii")
        problems = training["problems"]
        training_section = ("<h2>Training</h2>\n<p>Loss terms against seen samples (mean over seeds, min–max band) "
                            "and samples/s per job, from each job's <code>metrics.jsonl</code>; the same scalars "
                            "are in TensorBoard (<code>tensorboard --logdir &lt;results&gt;/runs</code>).</p>\n"
                            + ("<p><strong>Problems found in the training curves:</strong></p><ul>"
                               + "".join(f"<li>{html.escape(p)}</li>" for p in problems) + "</ul>" if problems else
                               "<p>No run logged a non-finite loss or ended with a higher loss than it began with.</p>")
                            + "<p>Each loss family on its own axes: contrastive (open_clip's CLIP loss, the "
                              "cross-entropy (CE) against the matching pairs) and distillation (the soft CE against the "
                              "teachers' similarity distributions); terms as they enter the loss, weighted; a term a "
                              "run's loss weights switch off (all zero) is not drawn.</p>"
                            + f'\n<img alt="training curves" src="data:image/png;base64,{figure}">\n'
                            + display_throughput(training["rows"]).to_html(index=False, classes="table", border=0))
    data_section = ""
    if data is not None and not data.empty:
        data_section = ("<h2>Data</h2>\n<p>What the fetch stage got, per group of hub shards: URLs tried and images "
                        "fetched, failed URLs by reason, images whose sha256 differs from the recorded one, dropped "
                        "or kept by the <code>data.hub.sha256</code> policy (kept ones are also in samples_kept), "
                        "samples kept (kept % = kept / listed).</p>\n"
                        + _commits_html(commits or [])
                        + display_fetch_table(data).to_html(index=False, classes="table", border=0))
        if lost:
            data_section += (f"<p><strong>{len(lost)} shard(s) lost</strong>, accepted by "
                             "<code>data.hub.max_failed_shards</code>: training ran without them.</p>\n<ul>"
                             + "".join(f"<li>group {html.escape(item['group'])}, shard {html.escape(item['shard'])}: "
                                       f"{html.escape(item['error'])}</li>" for item in lost) + "</ul>\n")
    provenance = provenance or {}
    provenance_section = ""
    if provenance:
        provenance_section = ("<h2>Provenance</h2>\n<p>What made this page: the commit of the checkout, the date it "
                              "was built, the software versions and the digest of the experiment's config.</p>\n"
                              + pd.DataFrame(list(provenance.items()), columns=["item", "value"])
                              .to_html(index=False, classes="table", border=0))
    built = (f"<p>Built {html.escape(provenance['date'])} from commit <code>{html.escape(provenance['commit'])}</code>, "
             f"config digest <code>{html.escape(provenance['config digest'])}</code> (versions: "
             '<a href="#provenance">Provenance</a>).</p>') if provenance else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; line-height: 1.45; }}
table.table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }}
table.table th, table.table td {{ padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }}
table.table th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
pre {{ background: #f7f7f7; padding: 0.8em; overflow-x: auto; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{built}
<p>{len(records)} evaluation records, {summary['run'].nunique()} runs. Metrics in percent:
acc1 = zero-shot top-1 accuracy; mean_recall@1 = mean of image and text retrieval R@1 (DataComp's convention);
with several seeds, the mean over seeds and (min–max).</p>
<h2>Learning efficiency</h2>
{efficiency_section}
<img alt="main metric against seen samples" src="data:image/png;base64,{image}">
{reference_note}
{data_efficiency_section}
<h2>Results</h2>
<p>Main metric per run and checkpoint (<code>results.csv</code>; each seed: <code>results_per_seed.csv</code>;
every metric of every record: <code>results_long.csv</code>).</p>
{table_html}
{teacher_section}
{ablation_section}
{averages_section}
{compute_section}
{training_section}
<h2>Runs</h2>
<p>From the evaluation records' run specs (each in full under Run specs).</p>
{run_summary(records).to_html(index=False, classes="table", border=0)}
<h2>Benchmarks</h2>
<p>From the evaluation records: clip_benchmark's dataset, task and main metric, and the images scored.</p>
{benchmark_summary(records).to_html(index=False, classes="table", border=0)}
{data_section}
<h2>Run specs</h2>
{spec_blocks}
<div id="provenance">{provenance_section}</div>
</body></html>
"""


def chance_from_records(records: list[dict]) -> dict[str, float]:
    """Zero-shot classification chance, 1/num_classes, for each benchmark whose records say."""
    return {record["benchmark"]: 1.0 / record["num_classes"] for record in records
            if record["task"] == "zeroshot_classification" and record.get("num_classes")}


def efficiency_markdown(multipliers: list[dict]) -> str:
    return ("## Learning efficiency\n\n" + "\n\n".join(efficiency.describe(m) for m in multipliers)
            + f"\n\n{efficiency.DEFINITION}\n")


def data_efficiency_markdown(multipliers: list[dict], figure: str) -> str:
    return ("## Data efficiency\n\n" + "\n\n".join(efficiency.describe_data(m) for m in multipliers)
            + f"\n\n{efficiency.DATA_DEFINITION}\n\n![final accuracy against dataset size]({figure})\n")


def sample_arrows(multipliers: list[dict]) -> list[dict]:
    """The learning-efficiency figure's arrows: each multiplier (on the seed means) between the seen
    samples at which the DR and the non-DR curve reach its target accuracy."""
    arrows = []
    for record in multipliers:
        if record.get("dr_seen") is None:
            continue
        times = efficiency.format_times(record["multiplier"], record["lower_bound"], record["upper_bound"])
        arrows.append({"benchmark": record["benchmark"], "level": record["target"], "dr": record["dr_seen"],
                       "plain": record["plain_seen"], "run": record["dr_run"], "versus": record["plain_run"],
                       "short": times, "text": f"{times} fewer seen samples"
                       if record["multiplier"] >= 1 else f"{times}: DR needs more seen samples"})
    return arrows


def data_arrows(data_multipliers: list[dict]) -> list[dict]:
    """The data-efficiency figure's arrows: at each DR dataset size's final accuracy, from that size to
    the non-DR dataset size that reaches it (the largest non-DR size where none does: a bound). A DR size
    at the largest non-DR size that non-DR never matches (≥ 1.0×) has no length to draw."""
    arrows = []
    for record in data_multipliers:
        if record["plain_size_needed"] == record["dr_subset_size"]:
            continue
        times = efficiency.format_times(record["multiplier"], record["lower_bound"], record["upper_bound"])
        arrows.append({"benchmark": record["benchmark"], "level": record["target"], "dr": record["dr_subset_size"],
                       "plain": record["plain_size_needed"], "run": record["dr_run"], "versus": record["plain_run"],
                       "short": f"{times} the data at {format_seen_samples(record['dr_subset_size'])}",
                       "text": f"non-DR needs {times} the data"})
    return arrows


def amortized_records(records_in_flops: list[dict], shares: dict[str, float]) -> list[dict]:
    """The compute figure's second curve of each DR run: its checkpoints with the run's share of the
    one-time reinforcement added to their training FLOPs (``cost.reinforcement_per_job``)."""
    return [{**record, "run": f"{record['run']} (DR) + reinforcement share ({cost.format_flops(shares[record['run']])})",
             "amortized_of": record["run"], "seen_samples": record["seen_samples"] + shares[record["run"]]}
            for record in records_in_flops
            if record.get("role", "student") == "student" and record["run"] in shares]


def compute_arrows(multipliers: list[dict], runs: dict[str, dict], shares: dict[str, float]) -> list[dict]:
    """The compute figure's arrows: the compute multiplier between the DR and non-DR curves at the
    target accuracy, and just below it (dotted) the multiplier with the reinforcement amortized, from
    the dotted curve; one label above says both."""
    arrows = []
    for record in multipliers:
        if record.get("compute_multiplier") is None or record.get("dr_seen") is None:
            continue
        dr_flops = record["dr_seen"] * runs[record["dr_run"]]["flops_per_sample"]
        plain_flops = record["plain_seen"] * runs[record["plain_run"]]["flops_per_sample"]
        bounds = record["lower_bound"], record["upper_bound"]
        pair = {"benchmark": record["benchmark"], "level": record["target"], "plain": plain_flops,
                "run": record["dr_run"], "versus": record["plain_run"]}
        short = efficiency.format_times(record["compute_multiplier"], *bounds)
        text = f"{short} less compute"
        amortized = record.get("compute_multiplier_with_reinforcement")
        if amortized is not None and record["dr_run"] in shares:
            with_reinforcement = efficiency.format_times(amortized, *bounds)
            text += f"\n{with_reinforcement} with reinforcement (dotted)"
            short += f" ({with_reinforcement} with reinforcement)"
            arrows.append({**pair, "below": True, "dr": dr_flops + shares[record["dr_run"]], "text": ""})
        arrows.append({**pair, "dr": dr_flops, "text": text, "short": short})
    return arrows


@dataclass
class ReportInputs:
    """Every file a report reads. The DAG hands them over (``from_indexes``: its rule's declared
    inputs); ``from_folders`` collects them from folders, for records made outside a DAG."""

    records: list[Path]
    failures: list[Path] = field(default_factory=list)
    fetch_manifests: list[Path] = field(default_factory=list)
    run_manifests: list[Path] = field(default_factory=list)  # student train jobs; metrics.jsonl beside each
    teacher_manifests: list[Path] = field(default_factory=list)
    reinforce_manifests: list[Path] = field(default_factory=list)
    job_benchmarks: list[Path] = field(default_factory=list)  # Snakemake benchmark TSVs
    benchmarks_dir: Path | None = None  # their root: <rule>/<name>.tsv names each job
    source: str = "the given files"  # for messages

    @property
    def has_ledger(self) -> bool:
        return self.benchmarks_dir is not None

    @classmethod
    def from_indexes(cls, indexes: list[str | os.PathLike], **files) -> "ReportInputs":
        """Records from evaluate's index files (``{"records": [...], "failed": [...]}``); the
        other lists as given."""
        records, failures = [], []
        for index in map(Path, indexes):
            payload = json.loads(index.read_text())
            if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
                raise ValueError(f"{index}: not an evaluation index (no 'records' list)")
            records += [Path(path) for path in payload["records"]]
            failures += [Path(path) for path in payload.get("failed", [])]
        listed = {name: sorted(Path(path) for path in paths) for name, paths in files.items()
                  if name != "benchmarks_dir"}
        benchmarks_dir = files.get("benchmarks_dir")
        return cls(records=sorted(records), failures=sorted(failures),
                   benchmarks_dir=Path(benchmarks_dir) if benchmarks_dir else None,
                   source=", ".join(map(str, indexes)) or "no index", **listed)

    @classmethod
    def from_folders(cls, records_dir: str | os.PathLike, results_dir: str | os.PathLike | None = None,
                     fetch_manifests_dir: str | os.PathLike | None = None) -> "ReportInputs":
        """Every record and failure under ``records_dir``; with ``results_dir``, every job manifest and
        benchmark TSV under it (the compute ledger and training curves)."""
        records_dir = Path(records_dir)
        if not records_dir.is_dir():
            raise FileNotFoundError(f"records directory {records_dir} does not exist")
        inputs = cls(records=[path for path, _ in tagged_json(records_dir, RECORD_SCHEMA)],
                     failures=[path for path, _ in tagged_json(records_dir, FAILURE_SCHEMA, "**/*.failed.json")],
                     source=f"under {records_dir}")
        if fetch_manifests_dir is not None and Path(fetch_manifests_dir).is_dir():
            inputs.fetch_manifests = [path for path, _ in tagged_json(fetch_manifests_dir, FETCH_MANIFEST_SCHEMA)]
        if results_dir is not None:  # outside a DAG: whatever the folder holds, found where the layout puts it
            layout = Layout(results_dir)
            inputs.run_manifests = sorted(map(Path, glob.glob(str(layout.train_manifest("*", "*")))))
            inputs.teacher_manifests = sorted(map(Path, glob.glob(str(layout.teacher_manifest("*")))))
            inputs.reinforce_manifests = sorted(map(Path, glob.glob(str(layout.reinforce_manifest("*", "*")))))
            inputs.benchmarks_dir = layout.benchmarks_dir
            inputs.job_benchmarks = sorted(inputs.benchmarks_dir.rglob("*.tsv"))
        return inputs


def write_report(inputs: ReportInputs, out_dir: str | os.PathLike, title: str = DEFAULT_TITLE,
                 paper_reference: list[dict] | None = None, chance: dict[str, float] | None = None,
                 efficiency_pairs: list[tuple[str, str]] | None = None,
                 ablation_settings: dict | None = None, config_digest: str | None = None) -> list[Path]:
    """Write the report from ``inputs`` (and nothing else); with fetch group manifests among them,
    also a data section.

    ``efficiency_pairs`` (DR run, non-DR run) get an efficiency multiplier each; default: every
    DR run with every non-DR run of the same model. ``ablation_settings`` (config
    ``report.ablation``) adds the ablation ladder's table and chart. Job manifests and benchmark
    TSVs (``inputs.has_ledger``) add the compute ledger: ``cost.csv``, a Cost section, the
    compute multipliers in ``efficiency.json`` and accuracy against training FLOPs. ``config_digest``
    (the rule's param) goes into the provenance, with the commit, date and versions (``provenance``).
    """
    records = read_records(inputs.records)
    if not student_records(records):
        raise ValueError(f"no evaluation records of training runs in {inputs.source}")
    unknown = sorted(set(chance or {}) - {record["benchmark"] for record in records})
    if unknown:
        raise ValueError(f"chance levels given for benchmarks without records: {unknown}")
    if chance is None:
        chance = chance_from_records(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wide = wide_table(records)
    summary = summary_table(wide)
    markdown = out_dir / "results.md"
    paths = [write_csv(summary, out_dir / "results.csv"),
             write_csv(wide, out_dir / "results_per_seed.csv"),
             write_csv(long_table(records), out_dir / "results_long.csv"),
             write_markdown(summary, markdown, title=title)]
    pairs = efficiency.default_pairs(records) if efficiency_pairs is None else efficiency_pairs
    multipliers = efficiency.efficiency_records(records, pairs)
    ledger = None
    if inputs.has_ledger:
        table = cost.cost_table(inputs.job_benchmarks, inputs.benchmarks_dir, cost.full_ledger(inputs, records))
        runs = cost.run_costs(inputs.run_manifests, table)
        reinforcements = cost.reinforcement_flops(table, inputs.reinforce_manifests)
        cost.add_compute_multipliers(multipliers, runs, reinforcements)
        paths.append(write_csv(table, out_dir / "cost.csv"))
        ledger = {"table": table, "runs": runs, "reinforcements": reinforcements}
    data_multipliers = efficiency.data_efficiency_records(records)
    (out_dir / "efficiency.json").write_text(json.dumps(multipliers + data_multipliers, indent=2, allow_nan=False)
                                             + "\n")
    paths.append(out_dir / "efficiency.json")
    if multipliers:
        markdown.write_text(markdown.read_text() + "\n" + efficiency_markdown(multipliers))
    data_efficiency = None
    data_figure = plot_data_efficiency(records, out_dir / "data_efficiency", title=title, chance=chance,
                                       arrows=data_arrows(data_multipliers))
    if data_figure:
        paths += data_figure
        markdown.write_text(markdown.read_text() + "\n" + data_efficiency_markdown(data_multipliers,
                                                                                  "data_efficiency.png"))
        data_efficiency = {"multipliers": data_multipliers, "png": out_dir / "data_efficiency.png"}
    # Both tables are written even when empty: the DAG declares them from the config (teachers
    # evaluated, tagged benchmarks), and every benchmark of theirs may have failed and been skipped.
    teachers = teacher_table(records)
    paths.append(write_csv(teachers, out_dir / "teachers.csv"))
    if not teachers.empty:
        markdown.write_text(markdown.read_text() + "\n" + teacher_markdown(teachers))
    averages = suite_averages(records)
    paths.append(write_csv(averages, out_dir / "suite_averages.csv"))
    if not averages.empty:
        markdown.write_text(markdown.read_text() + "\n" + suite_markdown(averages))
    failures = read_failures(inputs.failures)
    if failures:
        markdown.write_text(markdown.read_text() + "\n" + failures_markdown(failures))
    data = None
    manifests = read_fetch_manifests(inputs.fetch_manifests)
    lost = lost_shards(manifests)
    commits = fetch_commits(manifests)
    if manifests:
        data = fetch_table(manifests)
        paths.append(write_csv(data, out_dir / "data.csv"))
        markdown = out_dir / "results.md"
        markdown.write_text(markdown.read_text() + "\n" + fetch_markdown(data, lost, fetch_commit_lines(manifests)))
    ablation = None
    if ablation_settings:
        ablation_paths, ablation_rows = write_ablation(records, ablation_settings, out_dir, title=title)
        paths += ablation_paths
        markdown.write_text(markdown.read_text() + "\n" + ablation_markdown(ablation_rows, ablation_settings["benchmarks"]))
        ablation = {"table": ablation_rows, "benchmarks": ablation_settings["benchmarks"], "png": out_dir / "ablation.png"}
    paths += plot_learning_efficiency(records, out_dir / "learning_efficiency", title=title, chance=chance,
                                      paper_reference=paper_reference, arrows=sample_arrows(multipliers))
    cost_section = None
    if ledger is not None:
        section = cost.cost_markdown(ledger["table"], ledger["runs"], ledger["reinforcements"], multipliers)
        markdown.write_text(markdown.read_text() + "\n" + section)
        compute_png = None
        in_flops = cost.records_in_flops(records, ledger["runs"])
        if in_flops:
            shares = cost.reinforcement_per_job(ledger["runs"], ledger["reinforcements"])
            paths += plot_learning_efficiency(in_flops + amortized_records(in_flops, shares),
                                              out_dir / "learning_efficiency_compute", title=title, chance=chance,
                                              x_label="training compute, FLOPs counted (log scale)",
                                              x_formatter=FlopsFormatter,
                                              arrows=compute_arrows(multipliers, ledger["runs"], shares))
            compute_png = out_dir / "learning_efficiency_compute.png"
        else:  # the DAG declares the figure: say why it is empty rather than leave it out
            paths += plot_notice(out_dir / "learning_efficiency_compute", "No run's manifest counted FLOPs per "
                                 "sample, so there is no compute axis to draw (see cost.csv).", title=title)
        cost_section = {"sentences": [line for line in section.splitlines()[2:] if line and not line.startswith("|")],
                        "table": cost.runs_table(ledger["runs"]), "png": compute_png}
    training = None
    curves = telemetry.training_curves(inputs.run_manifests)
    if curves:
        found = telemetry.curve_findings(curves)
        problems = [problem for run_problems in found.values() for problem in run_problems]
        flagged = {run for run, run_problems in found.items() if run_problems}
        paths += plot_training_curves(curves, out_dir / "training_curves", title=title, flagged=flagged)
        markdown.write_text(markdown.read_text() + "\n" + telemetry.training_markdown(curves, "training_curves.png"))
        training = {"png": out_dir / "training_curves.png", "problems": problems,
                    "rows": telemetry.throughput_rows(curves)}
    elif inputs.run_manifests:  # declared by the DAG: a figure that says why it is empty
        paths += plot_notice(out_dir / "training_curves", "No training job logged metrics (metrics.jsonl) to "
                             "draw.", title=title)
    made_by = provenance(config_digest)
    markdown.write_text(markdown.read_text() + "\n" + provenance_markdown(made_by))
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(title, records, summary, out_dir / "learning_efficiency.png", paper_reference,
                                     data, averages, teachers, multipliers, ablation, cost_section, training,
                                     failures, data_efficiency, lost, commits, made_by))
    return paths + [html_path]
