"""The report's figures: learning efficiency (each benchmark's main metric against seen
samples) and the training curves (``plot_training_curves``).

The paper's claim is about efficiency (DR reaches a given accuracy with ~10x fewer seen
samples), so the x axis is seen samples on a log scale and every checkpoint is a marker.
DR runs are solid lines with round markers, non-DR runs dashed with square markers; with
several seeds the line is their mean and a band spans their min and max. The teachers the
DR targets come from are horizontal lines: the ensemble (dash-dot) and each member (thin).
Each efficiency multiplier is drawn where it is read: an arrow at the target accuracy from
where the DR curve reaches it to where the non-DR curve does, labelled with the ratio.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from statistics import mean
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import LogFormatter  # noqa: E402
from matplotlib.transforms import offset_copy  # noqa: E402

from mobileclip_repro.report.cost import format_si  # noqa: E402
from mobileclip_repro.report.efficiency import final_accuracies, subset_size  # noqa: E402
from mobileclip_repro.report.tables import TASK_ORDER, format_seen_samples, student_records, teacher_records  # noqa: E402

log = logging.getLogger(__name__)

METRIC_LABELS = {
    "acc1": "zero-shot top-1 accuracy (%)",
    "mean_recall@1": "retrieval mean R@1 (%)",
}
STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False, "axes.spines.right": False,
}
REFERENCE_KEYS = ("label", "seen_samples", "value", "dr", "dataset", "metric")


def save_figure(figure, out_stem: str | os.PathLike) -> list[Path]:
    """``<out_stem>.png`` (200 dpi) and ``<out_stem>.pdf``, then the figure is closed."""
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.parent / f"{out_stem.name}.png", out_stem.parent / f"{out_stem.name}.pdf"]
    # tight bbox: a long legend is never cut off at the figure edge
    figure.savefig(paths[0], dpi=200, bbox_inches="tight")
    figure.savefig(paths[1], bbox_inches="tight")
    plt.close(figure)
    return paths


def plot_notice(out_stem: str | os.PathLike, message: str, *, title: str | None = None) -> list[Path]:
    """A figure that says why it has nothing to draw: a declared output is always written, and a
    reader of the report sees the reason where the figure would be."""
    with plt.rc_context(STYLE):
        figure, axis = plt.subplots(figsize=(7, 2))
        axis.axis("off")
        axis.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11)
        if title:
            figure.suptitle(title)
        return save_figure(figure, out_stem)


class SeenSamplesFormatter(LogFormatter):
    """Log-axis ticks in the paper's units (8.192k, 245.8M, 1.48B); matplotlib still picks which ticks to label."""

    def _num_to_string(self, x, vmin, vmax):
        return format_seen_samples(x)


def _benchmarks_in_order(records: list[dict]) -> list[dict]:
    """One entry per benchmark (first record's dataset, task, metric); classification first."""
    first = {}
    for record in records:
        first.setdefault(record["benchmark"], record)
    return sorted(first.values(), key=lambda r: (TASK_ORDER.get(r["task"], 2), r["benchmark"]))


def _run_curves(records: list[dict], benchmark: str) -> dict[tuple[str, bool], list[tuple[int, float, float, float]]]:
    """(run, dr) -> [(seen samples, mean, min, max over seeds)], DR runs first."""
    values = defaultdict(lambda: defaultdict(list))
    for record in student_records(records):
        if record["benchmark"] != benchmark or record["main_metric"] is None:
            continue
        if record["seen_samples"] <= 0:
            log.warning("%s/%s epoch %s: seen_samples %s cannot be drawn on a log axis; left out of the plot",
                        record["run"], benchmark, record["epoch"], record["seen_samples"])
            continue
        values[(record["run"], bool(record["dr"]))][record["seen_samples"]].append(record["main_metric"])
    curves = {key: [(seen, mean(v), min(v), max(v)) for seen, v in sorted(points.items())]
              for key, points in values.items()}
    return dict(sorted(curves.items(), key=lambda item: (not item[0][1], item[0][0])))


def same_architecture(label: str, model: str) -> bool:
    """Whether a released model (``MobileCLIP2-B``, ``MobileCLIP-B (LT)``) has the size of open_clip ``model``."""
    def size(name: str) -> str:
        name = name.split(" (")[0]
        for prefix in ("MobileCLIP2-", "MobileCLIP-"):
            if name.startswith(prefix):
                return name[len(prefix):]
        return name
    return bool(model) and size(label) == size(model)


def validate_reference_points(points: list[dict]) -> list[dict]:
    for position, point in enumerate(points):
        missing = [key for key in REFERENCE_KEYS if key not in point]
        if missing:
            raise ValueError(f"paper reference point #{position}: missing {missing}")
        if not 0.0 <= float(point["value"]) <= 1.0:
            raise ValueError(f"paper reference point #{position}: value {point['value']} must be a fraction in [0, 1]")
    return points


class FlopsFormatter(LogFormatter):
    """Log-axis ticks of FLOPs with SI prefixes (100 G, 1 T; the axis label says FLOPs)."""

    def _num_to_string(self, x, vmin, vmax):
        return format_si(x).strip()


def _teacher_and_chance_lines(axis, teachers: list[dict], benchmark: str, chance: dict[str, float],
                              legend_handles: dict) -> float:
    """The teachers' and chance levels of ``benchmark`` as horizontal lines; returns the highest."""
    highest = 0.0
    for teacher in (t for t in teachers if t["benchmark"] == benchmark and t["main_metric"] is not None):
        ensemble = teacher["role"] == "ensemble"
        style = dict(color="0.15", linestyle="-.", linewidth=1.6) if ensemble else \
            dict(color="0.55", linestyle="-", linewidth=0.8)
        axis.axhline(100 * teacher["main_metric"], **style)
        label = "teacher ensemble" if ensemble else "single teachers"
        legend_handles.setdefault(label, Line2D([], [], **style))
        highest = max(highest, teacher["main_metric"])
    if benchmark in chance:
        level = chance[benchmark]
        axis.axhline(100 * level, color="0.45", linestyle=":", linewidth=1.2)
        legend_handles.setdefault("chance", Line2D([], [], color="0.45", linestyle=":", linewidth=1.2))
        highest = max(highest, level)
    return highest


def _final_by_size(records: list[dict], benchmark: str) -> dict[tuple[str, bool], list[tuple]]:
    """(run a data.subsets run was expanded from, dr) -> [(dataset size, mean, min, max over seeds of the
    final checkpoint's metric)], DR runs first: the values the data multiplier is computed from."""
    runs = defaultdict(list)
    for record in student_records(records):
        if record["benchmark"] == benchmark and record["main_metric"] is not None and subset_size(record):
            runs[record["run"]].append(record)
    values = defaultdict(dict)
    for run, rows in runs.items():
        base = rows[0]["run_spec"].get("subset_of") or run
        values[(base, bool(rows[0]["dr"]))][subset_size(rows[0])] = list(final_accuracies(rows).values())
    curves = {key: [(size, mean(v), min(v), max(v)) for size, v in sorted(sizes.items())]
              for key, sizes in values.items()}
    return dict(sorted(curves.items(), key=lambda item: (not item[0][1], item[0][0])))


def plot_data_efficiency(records: list[dict], out_stem: str | os.PathLike, *, title: str | None = None,
                         chance: dict[str, float] | None = None, arrows: list[dict] | None = None) -> list[Path]:
    """Final accuracy against dataset size (``data.subsets`` runs, log x), one subplot per benchmark:
    each arm's seed mean with its min–max band, the teachers and chance as lines; ``arrows`` (as
    ``plot_learning_efficiency``'s, x in dataset sizes) draw the data multipliers. Writes
    ``<out_stem>.png`` and ``.pdf``; nothing (an empty list) without subset runs."""
    chance = chance or {}
    benchmarks = [b for b in _benchmarks_in_order(student_records(records)) if _final_by_size(records, b["benchmark"])]
    if not benchmarks:
        return []
    teachers = teacher_records(records)
    budgets = sorted({r["seen_samples"] for r in student_records(records) if subset_size(r)})
    width = max(6.4, 4.4 * len(benchmarks))
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(1, len(benchmarks), figsize=(width, 3.6), layout="constrained", squeeze=False)
        legend_handles: dict[str, object] = {}
        for axis, first in zip(axes[0], benchmarks):
            benchmark, metric = first["benchmark"], first["main_metric_name"]
            highest = 0.0
            for position, ((base, dr), points) in enumerate(_final_by_size(records, benchmark).items()):
                sizes, values, lowest, largest = zip(*points)
                colour = plt.get_cmap("tab10").colors[position % 10]
                label = f"{base} ({'DR' if dr else 'non-DR'})"
                (line,) = axis.plot(sizes, [100 * v for v in values], color=colour, linestyle="-" if dr else "--",
                                    marker="o" if dr else "s", markersize=5, linewidth=1.8)
                if lowest != largest:
                    axis.fill_between(sizes, [100 * v for v in lowest], [100 * v for v in largest], color=colour,
                                      alpha=0.18, linewidth=0)
                    legend_handles.setdefault("min–max over seeds", axis.fill_between(
                        [], [], [], color="0.5", alpha=0.3, linewidth=0))
                legend_handles.setdefault(label, line)
                highest = max(highest, max(largest))
            highest = max(highest, _teacher_and_chance_lines(axis, teachers, benchmark, chance, legend_handles))
            _multiplier_arrows(axis, [a for a in arrows or [] if a["benchmark"] == benchmark], lambda run: "0.1")
            axis.set_xscale("log")
            axis.xaxis.set_major_formatter(SeenSamplesFormatter())  # the same units: 250, 1k, 1.28M
            axis.xaxis.set_minor_formatter(SeenSamplesFormatter(labelOnlyBase=False))
            axis.set_xlabel("unique training samples (log scale)")
            axis.set_ylabel(f"final {METRIC_LABELS.get(metric, f'{metric} (%)')}")
            axis.set_title(benchmark)
            axis.set_ylim(0, min(100, 100 * highest * 1.15 + 2))
            axis.grid(True, which="major", alpha=0.35)
            axis.grid(True, which="minor", axis="x", alpha=0.12)
        budget = " / ".join(format_seen_samples(b) for b in budgets)
        figure.suptitle(f"{title + ': ' if title else ''}accuracy vs dataset size, {budget} seen samples each",
                        fontsize=12)
        figure.legend(list(legend_handles.values()), list(legend_handles.keys()), loc="outside lower center",
                      ncol=max(1, min(len(legend_handles), int(width // 3))), frameon=False)
        return save_figure(figure, out_stem)


def plot_learning_efficiency(records: list[dict], out_stem: str | os.PathLike, *, title: str | None = None,
                             chance: dict[str, float] | None = None,
                             paper_reference: list[dict] | None = None,
                             x_label: str = "seen samples (log scale)",
                             x_formatter: type[LogFormatter] = SeenSamplesFormatter,
                             arrows: list[dict] | None = None) -> list[Path]:
    """One figure, one subplot per benchmark; writes ``<out_stem>.png`` (200 dpi) and ``.pdf``.

    The x axis is the records' ``seen_samples``; the compute figure passes records whose
    ``seen_samples`` hold training FLOPs instead, with its own ``x_label`` and ``x_formatter``.
    A student record with ``amortized_of`` (a DR run's name) is a second curve of that run, drawn
    in its colour, dotted with hollow markers: the compute figure's DR run with its share of the
    one-time reinforcement added.

    ``arrows`` draw the multipliers: ``{"benchmark", "level"`` (a fraction)``, "dr"`` and ``"plain"``
    (x of each arm at that level)``, "text"}``, optionally ``"below": True`` to put the text under it.

    ``chance`` maps benchmark name to chance level (a fraction, e.g. 1/num_classes).
    ``paper_reference`` points (fractions) are drawn on the subplot whose dataset and main
    metric they match: one marker shape per ``source``, filled for DR, hollow for non-DR.
    """
    if not records:
        raise ValueError("no records to plot")
    chance = chance or {}
    paper_reference = validate_reference_points(paper_reference or [])
    benchmarks = _benchmarks_in_order(records)
    amortized = {r["run"]: r["amortized_of"] for r in student_records(records) if r.get("amortized_of")}
    runs = sorted({(r["run"], bool(r["dr"])) for r in student_records(records) if r["run"] not in amortized},
                  key=lambda run: (not run[1], run[0]))
    teachers = teacher_records(records)
    student_models = {(r.get("run_spec") or {}).get("model") or r.get("model_name") or "" for r in student_records(records)}
    palette = plt.get_cmap("tab10").colors
    colours = {run: palette[position % len(palette)] for position, run in enumerate(runs)}
    # one marker per paper source (a table, a figure), filled for DR and hollow for non-DR
    sources = list(dict.fromkeys(point.get("source", "") for point in paper_reference))
    reference_markers = {source: "*DPX"[position % 4] for position, source in enumerate(sources)}
    width = max(6.4, 4.4 * len(benchmarks))

    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(1, len(benchmarks), figsize=(width, 3.6),
                                    layout="constrained", squeeze=False)
        legend_handles: dict[str, object] = {}
        for axis, first in zip(axes[0], benchmarks):
            benchmark, metric = first["benchmark"], first["main_metric_name"]
            highest = 0.0
            for (run, dr), points in _run_curves(records, benchmark).items():
                seen, values, lowest, largest = zip(*points)
                if run in amortized:
                    label, colour = run, colours[(amortized[run], True)]
                    style = dict(linestyle=":", marker="o", markerfacecolor="white")
                else:
                    label, colour = f"{run} ({'DR' if dr else 'non-DR'})", colours[(run, dr)]
                    style = dict(linestyle="-" if dr else "--", marker="o" if dr else "s")
                (line,) = axis.plot(seen, [100 * v for v in values], color=colour, markersize=5, linewidth=1.8,
                                    label=label, **style)
                if lowest != largest:
                    axis.fill_between(seen, [100 * v for v in lowest], [100 * v for v in largest],
                                      color=colour, alpha=0.18 if run not in amortized else 0.08, linewidth=0)
                    legend_handles.setdefault("min–max over seeds", axis.fill_between(
                        [], [], [], color="0.5", alpha=0.3, linewidth=0))
                legend_handles.setdefault(label, line)
                highest = max(highest, max(largest))
            highest = max(highest, _teacher_and_chance_lines(axis, teachers, benchmark, chance, legend_handles))
            for point in paper_reference:
                if point["dataset"] != first["dataset"] or point["metric"] != metric:
                    continue
                source = point.get("source", "")
                label = f"paper ({source}): {point['label']}" if source else f"paper: {point['label']}"
                if point["seen_samples"] is None:
                    # a released model (its training length not given): a level, for the students of its size only
                    if not any(same_architecture(point["label"], model) for model in student_models):
                        continue
                    style = dict(color="black" if "2" in source else "0.4", linestyle=(0, (1, 1)), linewidth=1.2)
                    axis.axhline(100 * point["value"], **style)
                    legend_handles.setdefault(label, Line2D([], [], **style))
                    highest = max(highest, point["value"])
                    continue
                handle = axis.scatter([point["seen_samples"]], [100 * point["value"]], marker=reference_markers[source],
                                      s=150 if reference_markers[source] == "*" else 60, zorder=5,
                                      color="black" if point["dr"] else "white", edgecolors="black",
                                      linewidths=1.0, label=label)
                legend_handles.setdefault(label, handle)
                highest = max(highest, point["value"])
            _multiplier_arrows(axis, [a for a in arrows or [] if a["benchmark"] == benchmark],
                               lambda run: colours.get((run, True), "0.1"))
            axis.set_xscale("log")
            axis.xaxis.set_major_formatter(x_formatter())
            axis.xaxis.set_minor_formatter(x_formatter(labelOnlyBase=False))
            axis.set_xlabel(x_label)
            axis.set_ylabel(METRIC_LABELS.get(metric, f"{metric} (%)"))
            dataset = first["dataset"]
            axis.set_title(benchmark if dataset in (benchmark, f"wds/{benchmark}") else f"{benchmark} ({dataset})")
            axis.set_ylim(0, min(100, 100 * highest * 1.15 + 2))
            axis.grid(True, which="major", alpha=0.35)
            axis.grid(True, which="minor", axis="x", alpha=0.12)
        if title:
            figure.suptitle(title, fontsize=12)
        figure.legend(list(legend_handles.values()), list(legend_handles.keys()), loc="outside lower center",
                      ncol=max(1, min(len(legend_handles), int(width // 3))), frameon=False)
        return save_figure(figure, out_stem)


def _multiplier_arrows(axis, arrows: list[dict], colour_of) -> None:
    """One benchmark's multipliers. One pair of runs: its arrow(s) in black, the text on the arrow.
    Several pairs (an ablation ladder against one baseline): each arrow in its DR run's colour,
    stacked a few points apart, and their numbers listed in the upper left, one line per pair."""
    if len({(arrow.get("run"), arrow.get("versus")) for arrow in arrows}) <= 1:
        for arrow in arrows:
            _multiplier_arrow(axis, arrow)
        return
    listed = 0
    for position, arrow in enumerate(arrows):
        colour = colour_of(arrow.get("run"))
        _multiplier_arrow(axis, {**arrow, "text": ""}, colour=colour, drop=4 * position)
        if arrow["text"]:
            axis.annotate(f"{arrow['run']} vs {arrow['versus']}: {arrow['short']}", xy=(0.02, 0.98),
                          xycoords="axes fraction", xytext=(0, -11 * listed), textcoords="offset points",
                          ha="left", va="top", fontsize=8, color=colour, zorder=7)
            listed += 1


def _multiplier_arrow(axis, arrow: dict, colour="0.1", drop: float | None = None) -> None:
    """A multiplier where it is read: a double arrow at the target accuracy between the x at which each
    arm reaches it, its text centred above it on the log axis; ``below``: dotted, a few points lower,
    for a second arrow at the same level (its text, if any, under it). ``drop``: points below the level."""
    level, left, right = 100 * arrow["level"], arrow["dr"], arrow["plain"]
    below = arrow.get("below", False)
    # a second arrow at the same level is drawn a few points lower, parallel to the first
    drop = (7 if below else 0) if drop is None else drop
    shifted = offset_copy(axis.transData, fig=axis.figure, y=-drop, units="points")
    axis.annotate("", xy=(left, level), xytext=(right, level), xycoords=shifted, textcoords=shifted, zorder=6,
                  arrowprops=dict(arrowstyle="<|-|>", color=colour, linewidth=1.2, shrinkA=0, shrinkB=0,
                                  mutation_scale=9, linestyle=":" if below else "-"))
    if not arrow["text"]:
        return
    axis.annotate(arrow["text"], xy=((left * right) ** 0.5, level), xycoords=shifted, xytext=(0, -4 if below else 4),
                  textcoords="offset points", ha="center", va="top" if below else "bottom", fontsize=8.5,
                  zorder=7, bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.8))


# The two loss families the trainer sums (open_clip's ClipLoss and the DR distillation), each on its
# own axes: their values are not comparable, and a run trained on one logs the other as zero.
# CE: cross-entropy against the matching pairs; soft CE: against the teachers' similarity distributions.
FAMILIES = {"contrastive": ("contrastive", "CE, nats"), "distill": ("distillation", "soft CE, nats")}
TERM_WORDS = {"i2t": "image→text", "t2i": "text→image", "real": "real", "syn": "synthetic"}


def _loss_panel(column: str) -> tuple[str, str, str]:
    """(title, y label, share group) of one logged loss column: a family's total, one of its
    (weighted) terms, or the total of a run that logged no family."""
    if column == "contrastive_loss" or column == "distill_loss":
        family, unit = FAMILIES[column.removesuffix("_loss")]
        return f"{family} loss", f"{family} loss ({unit})", column
    if column.startswith("loss/"):
        family, *parts = column.removeprefix("loss/").split("_")
        family = "contrastive" if family == "clip" else family
        if family in FAMILIES:
            name, unit = FAMILIES[family]
            words = ", ".join(TERM_WORDS.get(part, part) for part in parts)
            return f"{name} term: {words}", f"{name} term, weighted ({unit})", f"terms of {family}"
    return "total loss" if column == "loss" else column, f"{column} (nats)", column


def _drawn(series) -> bool:
    """Whether a run's series says anything: a term switched off by its weight logs zeros."""
    values = series.dropna()
    return bool(len(values)) and bool((values != 0).any())


def plot_training_curves(curves: dict[str, dict[int, list[dict]]], out_stem: str | os.PathLike, *,
                         title: str | None = None, flagged: set[str] = frozenset()) -> list[Path]:
    """The training curves from each run's metrics.jsonl: one panel per loss series against seen
    samples (a run's mean over its seeds, a band from min to max), each loss family (contrastive,
    distillation) on its own axes with its unit, a family's terms on a shared y scale; and the
    samples/s of every job (its median over log steps). A run's series that is all zero (a term its
    loss weights switch off) is left out, and a panel no run draws is not made; the total loss is
    drawn only for runs that logged neither family. ``curves``: run -> seed -> records. A run in
    ``flagged`` (a non-finite or diverging loss) says so in the legend; non-finite points are gaps."""
    import pandas as pd

    from mobileclip_repro.telemetry import loss_columns

    rows = [{"run": run, "seed": seed, **record} for run, seeds in curves.items()
            for seed, records in seeds.items() for record in records]
    frame = pd.DataFrame(rows)
    runs = list(curves)
    colors = {run: f"C{i % 10}" for i, run in enumerate(runs)}
    has_family = {run: any(column in frame and _drawn(frame.loc[frame["run"] == run, column])
                           for column in ("contrastive_loss", "distill_loss")) for run in runs}
    panels = []  # (column, runs drawn)
    for column in loss_columns(rows):
        drawn = [run for run in runs if _drawn(frame.loc[frame["run"] == run, column])
                 and (column != "loss" or not has_family[run])]
        if drawn:
            panels.append((column, drawn))
    order = {"contrastive_loss": 0, "distill_loss": 2}
    panels.sort(key=lambda panel: (order.get(panel[0], 1 if panel[0].startswith("loss/clip") else 3), panel[0]))
    with plt.rc_context(STYLE):
        count = len(panels) + 1
        ncols = min(4, count)
        nrows = -(-count // ncols)
        figure, axes = plt.subplots(nrows, ncols, figsize=(3.7 * ncols, 3.0 * nrows), squeeze=False,
                                    layout="constrained")
        flat = list(axes.flat)
        shared: dict[str, object] = {}
        for axis, (column, drawn) in zip(flat, panels):
            panel_title, y_label, group = _loss_panel(column)
            if group in shared:
                axis.sharey(shared[group])
            shared.setdefault(group, axis)
            for run in drawn:
                series = frame[frame["run"] == run]
                values = series[["seen_samples", column]].copy()
                values[column] = values[column].where(values[column].abs() != float("inf"))
                stats = values.groupby("seen_samples")[column].agg(["mean", "min", "max"]).reset_index()
                axis.plot(stats["seen_samples"], stats["mean"], color=colors[run], linewidth=1.3)
                if series["seed"].nunique() > 1:
                    axis.fill_between(stats["seen_samples"], stats["min"], stats["max"], color=colors[run],
                                      alpha=0.2, linewidth=0)
            axis.set_title(panel_title, fontsize=10)
            axis.set_ylabel(y_label, fontsize=9)
            axis.set_xlabel("seen samples")
            axis.xaxis.set_major_formatter(lambda value, _: format_seen_samples(int(value)) if value > 0 else "0")
            axis.grid(True, alpha=0.3)
        rates = flat[len(panels)]
        labels, medians = [], []
        for run in runs:
            for seed in sorted(curves[run]):
                speeds = [r["samples_per_second"] for r in curves[run][seed] if "samples_per_second" in r]
                if speeds:
                    labels.append(f"{run} s{seed}")
                    medians.append(float(pd.Series(speeds).median()))
        rates.barh(range(len(labels)), medians, color=[colors[label.rsplit(" s", 1)[0]] for label in labels])
        rates.set_yticks(range(len(labels)), labels, fontsize=7)
        rates.invert_yaxis()
        rates.set_xlabel("samples/s (median over log steps)")
        rates.set_ylabel("training job (run, seed)", fontsize=8.5)
        rates.set_title("throughput per job")
        for axis in flat[count:]:
            axis.set_visible(False)
        handles = [Line2D([], [], color=colors[run], linewidth=1.6,
                          label=f"{run} [DIVERGED OR NaN]" if run in flagged else run) for run in runs]
        figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)
        if title:
            figure.suptitle(f"{title}: training curves (mean over seeds, min–max band)", fontsize=12)
        return save_figure(figure, out_stem)
