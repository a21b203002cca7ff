"""Training telemetry: what a train job records per log step, and where.

Always ``<run>/metrics.jsonl`` (one JSON line per log step). Besides it, the run's ``report_to``
sinks: TensorBoard event files under ``<run>/tensorboard/`` (the default) and Weights & Biases
(an optional extra, offline unless the user sets ``WANDB_MODE``). Both get the same scalars,
named as open_clip_train names them where the quantity is the same (``train/loss``,
``train/lr``, ``train/scale``, ``train/samples_per_second`` ...), so existing dashboards work.

Every sink survives a kill and a rerun without counting a step twice: the jsonl drops the lines
past the resumed step, TensorBoard gets a purge step (its reader discards the old file's events
from there on), and W&B resumes the run of the same id.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path

from mobileclip_repro import shards

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
REPORT_TO = ("tensorboard", "wandb")

# metrics.jsonl key -> open_clip_train's scalar name (train_one_epoch's log_data, "train/" + key)
_OPEN_CLIP_NAMES = {"lr": "train/lr", "logit_scale": "train/scale", "samples_per_second": "train/samples_per_second",
                    "samples_per_second_per_gpu": "train/samples_per_second_per_gpu", "loss": "train/loss",
                    "contrastive_loss": "train/contrastive_loss", "distill_loss": "train/distill_loss"}


def scalars(record: dict) -> dict[str, float]:
    """The scalars a metrics.jsonl record gives the dashboards: open_clip_train's names where the
    quantity is the same, ``train/<key>`` for the rest (the DR loss terms as ``train/loss/<term>``),
    skipped samples as their total and per reason."""
    out = {}
    for key, value in record.items():
        if key in ("step", "skipped_samples"):
            continue
        if isinstance(value, (int, float)):
            out[_OPEN_CLIP_NAMES.get(key, f"train/{key}")] = float(value)
    skipped = record.get("skipped_samples") or {}
    out["train/skipped_samples"] = float(sum(skipped.values()))
    for reason, count in skipped.items():
        out[f"train/skipped/{reason}"] = float(count)
    return out


def _after_existing_event_files(log_dir: Path) -> None:
    """Wait (at most a second) until a new event file's name sorts after every existing one.
    Readers take the files in name order, and the name starts with the time in whole seconds,
    then the host and pid. A rerun started within the second its killed attempt started could
    otherwise sort first, and its purge would then be applied before the old steps are read."""
    stamps = [int(parts[3]) for parts in (path.name.split(".") for path in log_dir.glob("events.out.tfevents.*"))
              if len(parts) > 3 and parts[3].isdigit()]
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)


class TensorBoardSink:
    def __init__(self, log_dir: Path, resumed_step: int):
        from torch.utils.tensorboard import SummaryWriter  # only jobs that log to TensorBoard import it
        _after_existing_event_files(Path(log_dir))
        # purge_step: events a killed attempt logged past the resumed step are dropped by readers
        self.writer = SummaryWriter(str(log_dir), purge_step=resumed_step + 1 if resumed_step else None)

    def write(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One W&B run per training run and seed, its id stable across attempts (``resume="allow"``)."""

    def __init__(self, run_dir: Path, spec: dict, project: str):
        import wandb
        os.environ.setdefault("WANDB_MODE", "offline")  # no network unless the user asks for it
        run_id = f"{spec['name']}-seed{spec['seed']}".replace("/", "-")
        self.run = wandb.init(project=project, name=run_id, id=run_id, resume="allow", dir=str(run_dir),
                              config={k: v for k, v in spec.items() if k != "slurm"})

    def write(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def missing_report_to(report_to) -> list[str]:
    """The requested sinks whose package is not installed."""
    packages = {"tensorboard": "tensorboard", "wandb": "wandb"}
    return [sink for sink in report_to if importlib.util.find_spec(packages[sink]) is None]


class MetricsLog:
    """``<run>/metrics.jsonl`` and the run's other sinks, written by rank 0 and flushed as it goes.

    A run resumed at step k keeps the jsonl lines up to k and drops the rest (a killed job may
    have logged past its last checkpoint, and a cut last line is dropped too), so after any
    number of attempts every log step is there once, in order."""

    def __init__(self, out_dir: Path, resumed_step: int, spec: dict | None = None):
        out_dir = Path(out_dir)
        self.path = out_dir / METRICS_FILE
        kept = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # the line a kill cut short
                if isinstance(record, dict) and record.get("step", resumed_step + 1) <= resumed_step:
                    kept.append(line)
            with shards.atomic_output(self.path) as partial:
                partial.write_text("".join(f"{line}\n" for line in kept))
        self.stream = open(self.path, "a")
        report_to = (spec or {}).get("report_to", [])
        self.sinks = []
        if "tensorboard" in report_to:
            self.sinks.append(TensorBoardSink(out_dir / TENSORBOARD_DIR, resumed_step))
        if "wandb" in report_to:
            self.sinks.append(WandbSink(out_dir, spec, spec.get("wandb_project", "mobileclip-repro")))

    def write(self, record: dict) -> None:
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()
        values = scalars(record)
        for sink in self.sinks:
            sink.write(record["step"], values)

    def close(self) -> None:
        self.stream.close()
        for sink in self.sinks:
            sink.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """A metrics.jsonl's records; a line cut short by a kill is left out."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def read_tensorboard_scalars(log_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series under ``log_dir`` as TensorBoard's own reader returns it (purged
    steps dropped): name -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


LOSS_KEYS = ("loss", "contrastive_loss", "distill_loss")


def loss_columns(records: list[dict]) -> list[str]:
    """The loss series a run logged, total first, then open_clip's two, then the DR terms."""
    seen = {key for record in records for key in record}
    terms = sorted(key for key in seen if key.startswith("loss/"))
    return [key for key in LOSS_KEYS if key in seen] + terms


def findings(run: str, seed: int, records: list[dict]) -> list[str]:
    """Plain-words problems of one training run's curve: a non-finite loss, or a loss that ended
    higher than it began (mean of the last quarter of log steps over the first quarter)."""
    problems = []
    bad = [r["step"] for r in records if not all(math.isfinite(r.get(k, 0.0)) for k in loss_columns([r]))]
    if bad:
        problems.append(f"{run} seed {seed}: non-finite loss (NaN or inf) from step {bad[0]} "
                        f"({len(bad)} of {len(records)} log steps)")
    finite = [r["loss"] for r in records if "loss" in r and math.isfinite(r["loss"])]
    if len(finite) >= 4:
        quarter = len(finite) // 4
        first, last = sum(finite[:quarter]) / quarter, sum(finite[-quarter:]) / quarter
        if last > first:
            problems.append(f"{run} seed {seed}: loss diverged, {first:.3f} over the first quarter of "
                            f"the run and {last:.3f} over the last")
    return problems


def training_curves(run_manifests: list[str | os.PathLike]) -> dict[str, dict[int, list[dict]]]:
    """The metrics.jsonl beside each given student job manifest: run -> seed -> records (run and
    seed as the manifest records them, not parsed from folder names)."""
    curves: dict[str, dict[int, list[dict]]] = {}
    for manifest_path in sorted(Path(path) for path in run_manifests):
        manifest = json.loads(manifest_path.read_text())
        metrics = manifest_path.parent / METRICS_FILE
        records = read_metrics(metrics) if metrics.is_file() else []
        if records:
            curves.setdefault(manifest["run"], {})[int(manifest["seed"])] = records
    return curves


def curve_findings(curves: dict[str, dict[int, list[dict]]]) -> dict[str, list[str]]:
    """run -> the findings of its seeds' curves (an empty list for a healthy run)."""
    return {run: [problem for seed, records in sorted(seeds.items()) for problem in findings(run, seed, records)]
            for run, seeds in curves.items()}


def throughput_rows(curves: dict[str, dict[int, list[dict]]]) -> list[dict]:
    """Per job: its median samples/s over log steps, its median share of step time spent waiting
    for data, and the loss at its first and last log step."""
    from statistics import median

    rows = []
    for run, seeds in curves.items():
        for seed, records in sorted(seeds.items()):
            rows.append({"run": run, "seed": seed, "log_steps": len(records),
                         "samples_per_second": round(median(r.get("samples_per_second", 0.0) for r in records), 1),
                         "data_wait_share": round(median(r.get("data_wait_share", 0.0) for r in records), 3),
                         "first_loss": records[0].get("loss"), "last_loss": records[-1].get("loss")})
    return rows


def training_markdown(curves: dict[str, dict[int, list[dict]]], figure_name: str) -> str:
    rows = throughput_rows(curves)
    problems = [problem for found in curve_findings(curves).values() for problem in found]
    lines = ["## Training", "",
             f"Loss terms against seen samples, per run (mean over seeds, min-max band), and samples/s per "
             f"job: [{figure_name}]({figure_name}). Per-step records: `runs/<run>/seed_<k>/metrics.jsonl`; "
             f"TensorBoard: `tensorboard --logdir <results>/runs`.", ""]
    if problems:
        lines += ["**Problems found in the training curves:**", ""] + [f"- {p}" for p in problems] + [""]
    else:
        lines += ["No run logged a non-finite loss or ended with a higher loss than it began with.", ""]
    lines += ["| run | seed | log steps | samples/s (median) | data wait share | first loss | last loss |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['run']} | {r['seed']} | {r['log_steps']} | {r['samples_per_second']:,.1f} | "
              f"{r['data_wait_share']:.3f} | {r['first_loss']:.4f} | {r['last_loss']:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"
