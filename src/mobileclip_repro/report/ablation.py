"""The ablation ladder (the paper's Table 2): each row one run, each step one reinforcement
component switched on, our Δ per step beside the paper's.

Rows come from config (``report.ablation.rows``: run, label, and which Table 2 row it
stands for); the paper's numbers ship with the package (``paper_ablation.json``). A row's
value is its run's final checkpoint, the mean over seeds with the min–max range; Δ is the
change of that mean from the row above, as the paper's ladder reads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mobileclip_repro.report.plots import save_figure  # noqa: E402
from mobileclip_repro.report.tables import student_records, to_markdown  # noqa: E402

PAPER_ABLATION_PATH = Path(__file__).parent / "paper_ablation.json"


def load_paper_ablation(path: str | os.PathLike = PAPER_ABLATION_PATH) -> dict:
    """{"columns": {column: description}, "rows": {row: {"label": ..., column: percent}}}."""
    return json.loads(Path(path).read_text())


def describe_setting(spec: dict) -> str:
    """What a run trains with, in the ladder's terms (data, augmentation, loss, captions, teachers)."""
    if not spec.get("dr"):
        return "alt-text only, CLIP loss, open_clip's default augmentation"
    distill = spec.get("distill") or {}
    clip_weight, distill_weight = distill.get("loss_weights", [None, None])
    teachers = distill.get("teachers", "all")
    members = len(distill.get("teacher_dimension") or [])
    parts = [f"reinforcement '{spec.get('reinforcement', 'default')}'",
             f"CLIP {clip_weight:g} / distillation {distill_weight:g}",
             "synthetic captions" if distill.get("synthetic_captions", True) else "no synthetic captions"]
    if distill_weight:
        parts.append(f"teacher {teachers[0] + 1} of {members}" if teachers != "all" and len(teachers) == 1
                     else f"teachers: all {members}")
    return ", ".join(parts)


def _final_values(records: list[dict], run: str, benchmark: str) -> list[float]:
    """The run's main metric at its last checkpoint, one value per seed."""
    by_seed: dict = {}
    for record in student_records(records):
        if record["run"] != run or record["benchmark"] != benchmark or record["main_metric"] is None:
            continue
        best = by_seed.get(record.get("seed"))
        if best is None or record["seen_samples"] > best["seen_samples"]:
            by_seed[record.get("seed")] = record
    return [by_seed[seed]["main_metric"] for seed in sorted(by_seed, key=str)]


def ablation_table(records: list[dict], settings: dict, paper: dict | None = None) -> pd.DataFrame:
    """One row per ladder row: our final main metric per benchmark (percent; mean, min, max over
    seeds, Δ of the mean vs the row above) and the paper's column with its Δ."""
    paper = paper if paper is not None else load_paper_ablation()
    benchmarks = settings["benchmarks"]  # paper column -> our benchmark
    specs = {record["run"]: record.get("run_spec") or {} for record in student_records(records)}
    rows, previous = [], {}
    for position, row in enumerate(settings["rows"]):
        run = row["run"]
        if run not in specs:
            raise ValueError(f"report.ablation.rows.{position}: run {run!r} has no evaluation records")
        paper_row = paper["rows"].get(row.get("paper_row")) if row.get("paper_row") else None
        line = {"step": position, "row": row["label"], "run": run, "setting": describe_setting(specs[run])}
        seeds = None  # the first benchmark's count of final values
        for column, benchmark in benchmarks.items():
            values = _final_values(records, run, benchmark)
            seeds = len(values) if seeds is None else seeds
            if not values:
                raise ValueError(f"report.ablation.rows.{position}: run {run!r} has no {benchmark!r} record")
            mean = 100 * float(np.mean(values))
            line.update({benchmark: mean, f"{benchmark} min": 100 * min(values), f"{benchmark} max": 100 * max(values),
                         f"{benchmark} Δ": mean - previous[benchmark] if position else np.nan})
            ours_paper = paper_row.get(column) if paper_row else None
            line[f"paper {column}"] = ours_paper if ours_paper is not None else np.nan
            line[f"paper {column} Δ"] = (ours_paper - previous[f"paper {column}"]
                                         if position and ours_paper is not None
                                         and not np.isnan(previous[f"paper {column}"]) else np.nan)
            previous[benchmark], previous[f"paper {column}"] = mean, line[f"paper {column}"]
        line["seeds"] = seeds
        rows.append(line)
    return pd.DataFrame(rows)


def display_ablation(table: pd.DataFrame, benchmarks: dict) -> pd.DataFrame:
    """The table as printed: "mean (min–max)" and signed Δs, one decimal."""
    def signed(value):
        return "" if pd.isna(value) else f"{value:+.1f}"

    shown = table[["row", "setting"]].copy()
    for column, benchmark in benchmarks.items():
        shown[benchmark] = [f"{m:.1f} ({lo:.1f}–{hi:.1f})" for m, lo, hi in
                            zip(table[benchmark], table[f"{benchmark} min"], table[f"{benchmark} max"])]
        shown[f"{benchmark} Δ"] = table[f"{benchmark} Δ"].map(signed)
        shown[f"paper {column}"] = table[f"paper {column}"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
        shown[f"paper {column} Δ"] = table[f"paper {column} Δ"].map(signed)
    shown["seeds"] = table["seeds"]
    return shown


def ablation_markdown(table: pd.DataFrame, benchmarks: dict) -> str:
    return ("## Ablation ladder\n\nFinal checkpoint, mean over seeds (min–max) in percent; Δ: change of the "
            "mean from the row above. Paper: Table 2 (ViT-B/16, 30k steps x 8,192).\n\n"
            + to_markdown(display_ablation(table, benchmarks)) + "\n")


def plot_ablation(table: pd.DataFrame, benchmarks: dict, out_stem: str | os.PathLike,
                  title: str | None = None) -> list[Path]:
    """Grouped bars of each step's Δ, ours beside the paper's, one panel per benchmark; PNG and PDF."""
    steps = table.iloc[1:]
    figure, axes = plt.subplots(1, len(benchmarks), figsize=(5.2 * len(benchmarks), 3.8), squeeze=False)
    positions = np.arange(len(steps))
    for axis, (column, benchmark) in zip(axes[0], benchmarks.items()):
        ours, theirs = steps[f"{benchmark} Δ"].to_numpy(float), steps[f"paper {column} Δ"].to_numpy(float)
        axis.bar(positions - 0.2, ours, width=0.4, color="tab:blue", label=f"ours ({benchmark})")
        axis.bar(positions + 0.2, np.nan_to_num(theirs), width=0.4, color="0.6", label=f"paper ({column})")
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_xticks(positions, list(steps["row"]), rotation=20, ha="right", fontsize=8)
        axis.set_ylabel("Δ vs the row above (points)")
        axis.set_title(benchmark, fontsize=10)
        axis.legend(fontsize=8, frameon=False)
        axis.grid(axis="y", alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return save_figure(figure, out_stem)


def write_ablation(records: list[dict], settings: dict, out_dir: str | os.PathLike,
                   title: str | None = None) -> tuple[list[Path], pd.DataFrame]:
    out_dir = Path(out_dir)
    table = ablation_table(records, settings)
    csv = out_dir / "ablation.csv"
    table.to_csv(csv, index=False, float_format="%.4f")
    markdown = out_dir / "ablation.md"
    markdown.write_text(ablation_markdown(table, settings["benchmarks"]))
    return [csv, markdown, *plot_ablation(table, settings["benchmarks"], out_dir / "ablation", title)], table
