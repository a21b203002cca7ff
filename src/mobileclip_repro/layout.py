"""Where the DAG writes: one ``Layout(results_dir)`` names every path, and parses back the names
that must be read (a job's benchmark TSV, a reinforce group's manifest).

The rule files, config, the toy world, the report's ledger and the planner take their paths from
here; no module builds ``seed_<k>`` or ``group_<g>`` itself, nor splits them out of a file name it
did not get from this module. Every method accepts wildcard patterns too (``"{run}"``, ``"{seed}"``),
so a rule's output pattern and the path a job writes are the same line of code.

    <results_dir>/
      data/manifest.json                         the toy world's manifest (datacomp/, teacher_data/, benchmarks/)
      data/fetch/group_<g>.json                  a hub fetch group's manifest
      data/local.json                            local data's listing
      data/reinforce/<reinforcement>/group_<g>.json
      data/subsets/seed_<subset_seed>.json
      data/benchmarks/<name>/                    a benchmark set's default root
      data/benchmarks_fetched/<name>.json        a fetched benchmark set's manifest
      runs/<run>/seed_<k>/                       a training job: manifest.json, checkpoints/epoch_<e>.pt
      teachers/<teacher>                         a teacher's exported weights; teachers/<stem>/ its run folder
      eval/<run>/records.json                    an evaluate job's index; eval/<run>/seed_<k>/epoch_<e>/ its records
      eval/teachers/records.json                 evaluate_teachers' index; eval/teachers/ensemble/<benchmark>.json
      benchmarks/<rule>/<job>.tsv                Snakemake's measurement of each job
      logs/...                                   each job's log
      report/                                    the report's tables, figures and page
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mobileclip_repro.checkpoints import checkpoint_path

# A toy world's outputs under data/ (toyworld writes them; config and the rules read them).
TOY_MANIFEST = "manifest.json"
TOY_DATACOMP = "datacomp"
TOY_TEACHER_DATA = "teacher_data"
BENCHMARKS = "benchmarks"
# A job's name in the whole DAG ("all": a job of which the DAG has one, toy data or the report).
WHOLE_DAG = "all"

_SEEDED = re.compile(r"^(?P<run>.+)_seed_(?P<seed>\d+)$")
_GROUPED = re.compile(r"^(?:(?P<reinforcement>.+)_)?group_(?P<group>\d{5})$")


def group_id(index: int) -> str:
    """A shard group's id: its index among the config's groups, five digits."""
    return f"{index:05d}"


@dataclass(frozen=True)
class Job:
    """A DAG job as its benchmark TSV names it: ``<rule>/<name>.tsv``."""
    rule: str
    name: str
    run: str | None = None  # a train job's run, or evaluate's
    seed: int | None = None
    reinforcement: str | None = None
    group: str | None = None


def train_job_name(run: str, seed) -> str:
    return f"{run}_seed_{seed}"


def group_job_name(group, reinforcement: str | None = None) -> str:
    """A fetch job's name (``group_<g>``), or a reinforce job's (``<reinforcement>_group_<g>``)."""
    return f"group_{group}" if reinforcement is None else f"{reinforcement}_group_{group}"


def parse_job_name(rule: str, name: str) -> Job:
    """The inverse of the job names above, for one rule's job."""
    if name == WHOLE_DAG:
        return Job(rule, name)
    seeded = _SEEDED.match(name) if rule == "train" else None
    if seeded:
        return Job(rule, name, run=seeded["run"], seed=int(seeded["seed"]))
    grouped = _GROUPED.match(name) if rule in ("fetch", "reinforce") else None
    if grouped:
        return Job(rule, name, reinforcement=grouped["reinforcement"], group=grouped["group"])
    return Job(rule, name, run=name if rule == "evaluate" else None)


def parse_job_benchmark(path: str | Path, benchmarks_dir: str | Path) -> Job:
    """The job a benchmark TSV measured, from its place under ``benchmarks_dir``: ``<rule>/<name>.tsv``."""
    relative = Path(path).relative_to(benchmarks_dir)
    return parse_job_name(relative.parts[0], relative.stem)


def parse_reinforce_manifest(path: str | Path) -> tuple[str, str]:
    """(reinforcement, group) of a reinforce job's manifest, ``.../<reinforcement>/group_<g>.json``."""
    path = Path(path)
    grouped = _GROUPED.match(path.stem)
    if not grouped or grouped["reinforcement"] is not None:
        raise ValueError(f"{path}: not a reinforce group manifest (<reinforcement>/group_<ggggg>.json)")
    return path.parent.name, grouped["group"]


@dataclass(frozen=True)
class Layout:
    """Every path under one experiment's ``results_dir``."""
    results_dir: Path

    def __init__(self, results_dir: str | Path):
        object.__setattr__(self, "results_dir", Path(results_dir))

    # -- data -----------------------------------------------------------------------------------
    @property
    def data_root(self) -> Path:
        return self.results_dir / "data"

    @property
    def toy_manifest(self) -> Path:
        return self.data_root / TOY_MANIFEST

    @property
    def toy_datacomp_dir(self) -> Path:
        """data.datacomp_dir's default: the toy world's training shards, or fetched ones."""
        return self.data_root / TOY_DATACOMP

    @property
    def teacher_data_dir(self) -> Path:
        return self.data_root / TOY_TEACHER_DATA

    @property
    def default_dr_dir(self) -> Path:
        return self.data_root / "datacompdr"

    def benchmark_root(self, name: str) -> Path:
        """A benchmark set's root where the config names none (the toy world writes its sets there)."""
        return self.data_root / BENCHMARKS / name

    def fetched_benchmark(self, name: str) -> Path:
        return self.data_root / "benchmarks_fetched" / f"{name}.json"

    def fetch_manifest(self, group) -> Path:
        return self.data_root / "fetch" / f"{group_job_name(group)}.json"

    @property
    def local_manifest(self) -> Path:
        return self.data_root / "local.json"

    def reinforce_manifest(self, reinforcement: str, group) -> Path:
        return self.data_root / "reinforce" / reinforcement / f"{group_job_name(group)}.json"

    def subsets_file(self, subset_seed) -> Path:
        return self.data_root / "subsets" / f"seed_{subset_seed}.json"

    # -- training -------------------------------------------------------------------------------
    def run_dir(self, run: str, seed) -> Path:
        return self.results_dir / "runs" / run / f"seed_{seed}"

    def train_manifest(self, run: str, seed) -> Path:
        return self.run_dir(run, seed) / "manifest.json"

    def checkpoint(self, run: str, seed, epoch) -> Path:
        """A run's checkpoint after pseudo-epoch ``epoch``, named as the trainer names it (checkpoints.py)."""
        return checkpoint_path(self.run_dir(run, seed), epoch)

    @property
    def teachers_dir(self) -> Path:
        return self.results_dir / "teachers"

    def teacher_weights(self, teacher: str) -> Path:
        """A teacher's exported weights (train_teacher's output), named as the teachers section names it."""
        return self.teachers_dir / teacher

    def teacher_dir(self, teacher: str) -> Path:
        """A teacher job's run folder, beside its weights: ``teachers/<stem>``."""
        return self.teachers_dir / Path(teacher).stem

    def teacher_manifest(self, teacher: str) -> Path:
        return self.teacher_dir(teacher) / "manifest.json"

    # -- evaluation -----------------------------------------------------------------------------
    def eval_dir(self, run: str, seed, epoch) -> Path:
        return self.results_dir / "eval" / run / f"seed_{seed}" / f"epoch_{epoch}"

    def eval_index(self, run: str) -> Path:
        """An evaluate job's output: the list of records it wrote (each seed x checkpoint x benchmark)."""
        return self.results_dir / "eval" / run / "records.json"

    @property
    def teachers_eval_dir(self) -> Path:
        return self.results_dir / "eval" / "teachers"

    def teacher_record(self, benchmark: str) -> Path:
        """The teachers' ensemble's record on one benchmark (evaluate_teachers' outputs beside its index)."""
        return self.teachers_eval_dir / "ensemble" / f"{benchmark}.json"

    @property
    def teachers_index(self) -> Path:
        return self.teachers_eval_dir / "records.json"

    # -- every job ------------------------------------------------------------------------------
    @property
    def benchmarks_dir(self) -> Path:
        return self.results_dir / "benchmarks"

    def job_benchmark(self, rule: str, name: str = WHOLE_DAG) -> Path:
        """Where Snakemake's `benchmark:` directive writes a job's TSV (wall s, max RSS, CPU s, I/O),
        joined with the FLOPs the job counted into report/cost.csv (``parse_job_benchmark``: the inverse)."""
        return self.benchmarks_dir / rule / f"{name}.tsv"

    def log(self, rule: str, name: str = WHOLE_DAG) -> Path:
        """A job's log: ``logs/<rule>.log`` for a job of the whole DAG, else ``logs/<folder>/<name>.log``."""
        logs = self.results_dir / "logs"
        if rule == "evaluate_teachers":
            return logs / "eval" / "teachers.log"
        if name == WHOLE_DAG:
            return logs / f"{rule}.log"
        folder = {"train_teacher": "teachers", "evaluate": "eval"}.get(rule, rule)
        if rule == "reinforce":  # one folder per reinforcement: logs/reinforce/<reinforcement>/group_<g>.log
            reinforcement, _, group = name.rpartition("_group_")
            return logs / folder / reinforcement / f"{group_job_name(group)}.log"
        return logs / folder / f"{name}.log"

    @property
    def report_dir(self) -> Path:
        return self.results_dir / "report"

    def report_file(self, name: str) -> Path:
        return self.report_dir / name
