"""A Snakemake logger plugin: one line per finished job, for a person watching the DAG run.

``snakemake --logger mobileclip-repro ...`` (the Makefile's demo, ablation and study targets)
replaces Snakemake's own console output (a block of input/output/reason/shell lines per job,
the job table, the provenance notes) with::

    15 jobs: 1 toy_data, 2 train_teacher, 1 reinforce, 6 train, 2 evaluate, 1 evaluate_teachers, 1 report, 1 all
    logs: results/toy/logs/ (one per job; training's per-step progress: results/toy/logs/train/<run>_seed_<seed>.log)
    [ 1/15] toy_data                       12 s   14 left, about 4 min 10 s
    [ 4/15] train toy_dr seed 0        1 min 32 s   11 left, about 2 min 40 s
            running: train toy_dr seed 1 for 30 s (step 40/96), train toy_plain seed 1 for 12 s (step 16/96)
    ...
    FAILED  evaluate toy_dr after 20 s: see results/toy/logs/eval/toy_dr.log

Each line: the job (its rule, then its wildcards' values), its wall time, the jobs left and an
estimate of the time they take: the mean wall time of the jobs of the same rule that finished
(of every finished job, for a rule none finished yet), scaled by how many ran at once so far. After ``quiet_seconds`` (30; the option
``--logger-mobileclip-repro-quiet-seconds``) without a line, one line names the jobs running,
for how long, and the last ``step S/N`` their logs report (the trainer logs one per log
interval), so a long job is never silence.
Warnings and errors pass through as Snakemake words them; Snakemake's complete log
(``.snakemake/log/``) keeps everything this leaves out, and the last line says where it is.

Without ``--logger`` Snakemake behaves as ever (the tests and SLURM use it so). Snakemake finds
the plugin by its module name (``snakemake_logger_plugin_<name>``); ``make install`` installs
it with the project, from ``src/``.
"""
from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase

# The DAG's per-step training progress (the train rule's log), named in the logs line.
TRAIN_RULE = "train"
# Snakemake's convention for the target rule: no command, no time of its own to estimate.
TARGET_RULE = "all"
# A running job's last progress in its log: the trainer's "epoch E step S/N" lines.
STEP = re.compile(rb"step (\d+)/(\d+)")
LOG_TAIL_BYTES = 4096
# Snakemake's own info lines a person still needs, by their first words.
PASSED_ON = ("Nothing to be done", "Complete log", "This was a dry-run")


def duration(seconds: float) -> str:
    """``42 s``, ``1 min 32 s``, ``1 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def job_title(rule: str, wildcards: dict | None) -> str:
    """``train toy_dr seed 0``: the rule, its first wildcard's value, then the others by name."""
    values = [(name, str(value)) for name, value in (wildcards or {}).items()]
    words = [rule] + [value for _, value in values[:1]] + [f"{name} {value}" for name, value in values[1:]]
    return " ".join(words)


def logs_folder(log_path: str) -> str | None:
    """The DAG's logs folder (up to and including its ``logs`` part) of a job's log file."""
    parts = Path(log_path).parts
    if "logs" not in parts:
        return None
    return str(Path(*parts[:len(parts) - parts[::-1].index("logs")])) + "/"


@dataclass
class Progress:
    """What the lines say, from the events seen so far: pure bookkeeping, no clock of its own."""
    planned: Counter = field(default_factory=Counter)   # rule -> jobs the run has
    started: dict = field(default_factory=dict)         # jobid -> (rule, title, logs, start time)
    walls: dict = field(default_factory=dict)           # rule -> wall times of its finished jobs
    first_start: float | None = None
    total: int = 0
    done: int = 0

    def plan(self, stats: dict) -> str:
        self.total = int(stats.get("total", 0))
        self.planned = Counter({rule: int(count) for rule, count in stats.items() if rule != "total"})
        return f"{self.total} jobs: " + ", ".join(f"{count} {rule}" for rule, count in self.planned.items())

    def start(self, jobid, rule: str, wildcards: dict | None, logs: list[str], when: float) -> str | None:
        """Records a job's start; the first one's log names the logs folder (the line returned)."""
        first = not self.started and self.first_start is None
        self.first_start = when if self.first_start is None else self.first_start
        self.started[jobid] = (rule, job_title(rule, wildcards), list(logs), when)
        folder = next(filter(None, map(logs_folder, logs)), None)
        if not first or folder is None:
            return None
        train = f"{folder}{TRAIN_RULE}/<run>_seed_<seed>.log" if self.planned.get(TRAIN_RULE) else None
        return (f"logs: {folder} (one per job" + (f"; training's per-step progress: {train}" if train else "")
                + ")")

    def finish(self, jobid, when: float) -> str:
        rule, title, _, start = self.started.pop(jobid, ("?", f"job {jobid}", [], when))
        wall = when - start
        self.walls.setdefault(rule, []).append(wall)
        self.done += 1
        total = max(self.total, self.done)
        left = total - self.done
        width = len(str(total))
        line = f"[{self.done:>{width}}/{total}] {title:<32} {duration(wall):>12}"
        if left:
            line += f"   {left} left, about {duration(self.time_left(when))}"
        else:
            line += f"   all done in {duration(when - (when if self.first_start is None else self.first_start))}"
        return line

    def fail(self, jobid, rule: str, logs: list[str], when: float) -> str:
        _, title, known_logs, start = self.started.pop(jobid, (rule, rule, [], when))
        where = ", ".join(logs or known_logs) or "Snakemake's log below"
        return f"FAILED  {title} after {duration(when - start)}: see {where}"

    def time_left(self, now: float) -> float:
        """The work not done over the parallelism seen so far. Work: a job's wall time, each job
        at its rule's mean so far (the mean of all finished jobs for a rule none finished), a
        running one less what it ran; parallelism: the work done (running jobs' time included)
        over the time since the first job started."""
        finished = [wall for walls in self.walls.values() for wall in walls]
        if not finished:
            return 0.0
        overall = sum(finished) / len(finished)

        def mean(rule: str) -> float:
            walls = self.walls.get(rule, [])
            return sum(walls) / len(walls) if walls else (0.0 if rule == TARGET_RULE else overall)

        running = Counter(rule for rule, *_ in self.started.values())
        work_left = sum(max(count - len(self.walls.get(rule, [])) - running[rule], 0) * mean(rule)
                        for rule, count in self.planned.items())
        work_left += sum(max(mean(rule) - (now - start), 0.0) for rule, _, _, start in self.started.values())
        work_done = sum(finished) + sum(now - start for *_, start in self.started.values())
        elapsed = now - (now if self.first_start is None else self.first_start)
        return work_left * elapsed / work_done if work_done > 0 and elapsed > 0 else work_left


def last_step(log_path: str) -> str | None:
    """``step 120/400``: the last step a job's log reports (its last few KB), None if none."""
    try:
        with open(log_path, "rb") as log:
            log.seek(0, 2)
            log.seek(max(log.tell() - LOG_TAIL_BYTES, 0))
            steps = STEP.findall(log.read())
    except OSError:
        return None
    return f"step {int(steps[-1][0])}/{int(steps[-1][1])}" if steps else None


def running_line(started: dict, now: float) -> str | None:
    """``running: train toy_dr seed 0 for 1 min 05 s (step 120/400), ...``, for a quiet stretch."""
    jobs = []
    for rule, title, logs, start in started.values():
        step = next(filter(None, map(last_step, logs)), None)
        jobs.append(f"{title} for {duration(now - start)}" + (f" ({step})" if step else ""))
    return "        running: " + ", ".join(jobs) if jobs else None


@dataclass
class LogHandlerSettings(LogHandlerSettingsBase):
    quiet_seconds: int = field(default=30, metadata={
        "help": "after this many seconds without a line, one line naming the jobs still running and "
                "the last step their logs report (0: never)", "type": int})


class LogHandler(LogHandlerBase):
    """Snakemake's console output, one line per finished job (see the module's docstring)."""

    def __post_init__(self) -> None:
        self.progress = Progress()
        self.stream = sys.stdout if getattr(self.common_settings, "stdout", False) else sys.stderr
        self.write_lock = threading.Lock()  # Snakemake's queue listener and the quiet-time thread both write
        self.last_line = time.time()
        self.quiet_seconds = getattr(self.settings, "quiet_seconds", 30) or 0
        self.closed = threading.Event()
        if self.quiet_seconds > 0 and not getattr(self.common_settings, "dryrun", False):
            threading.Thread(target=self._watch_quiet, name="progress-quiet-time", daemon=True).start()

    def _watch_quiet(self) -> None:
        while not self.closed.wait(1.0):
            with self.write_lock:
                now = time.time()
                if self.progress.started and now - self.last_line >= self.quiet_seconds:
                    self._write(running_line(self.progress.started, now))

    def close(self) -> None:
        self.closed.set()
        super().close()

    @property
    def writes_to_stream(self) -> bool:
        return True

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True   # every record comes here; emit picks

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        return False

    def _write(self, text: str | None) -> None:
        if text:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_line = time.time()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with self.write_lock:
                self._write(self.describe(record))
        except Exception:  # noqa: BLE001 - a logging handler never stops the run (logging's own rule)
            self.handleError(record)

    def describe(self, record: logging.LogRecord) -> str | None:
        event = getattr(record, "event", None)
        dryrun = getattr(self.common_settings, "dryrun", False)
        if event == LogEvent.RUN_INFO:
            if self.progress.total:
                return None  # a dry run repeats the table at its end
            return self.progress.plan(getattr(record, "stats", {}) or {})
        if event == LogEvent.JOB_INFO and not dryrun:
            return self.progress.start(record.jobid, record.rule_name, getattr(record, "wildcards", None),
                                       getattr(record, "log", None) or [], record.created)
        if event == LogEvent.JOB_FINISHED:
            return self.progress.finish(record.job_id, record.created)
        if event == LogEvent.JOB_ERROR:
            return self.progress.fail(record.jobid, record.rule_name, getattr(record, "log", None) or [],
                                      record.created)
        if event in (LogEvent.GROUP_ERROR, LogEvent.ERROR) or (event is None and record.levelno >= logging.WARNING):
            return record.getMessage()
        if event is None and record.levelno >= logging.INFO:
            message = record.getMessage()
            return message if message.startswith(PASSED_ON) else None
        return None
