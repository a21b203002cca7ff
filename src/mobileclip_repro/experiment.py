"""One experiment, resolved once: what the DAG runs for a loaded and checked config.

``Experiment.load(config)`` (or ``Experiment(config)`` for a config ``preflight.load_experiment``
already gave) holds every training job's spec per (run, seed), the teachers' specs, the named
reinforcements, the hub's shard groups, the benchmarks with their roots, the subsets, the
``Layout``, and the selection of jobs: which of them this config makes (``trained_teachers``,
``generated_reinforcements``, ``teachers_evaluated``, ...). The rule files read it through thin
accessors (workflow/rules/common.smk) and ``plan`` sizes the same selection.

Each job gets one ``--spec``: the canonical JSON (``spec_json``) of exactly the settings the job uses
(``*_spec`` below). Snakemake compares a job's params by value, so a changed setting reruns exactly the
jobs whose spec holds it, and the same values written in another key order rerun nothing.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mobileclip_repro.config import (ConfigError, generated_benchmark, reinforcement_dr_dir, reinforcement_names,
                                     reinforcement_variant, resolve_run, run_seeds, subset_sizes)
from mobileclip_repro.hub import shard_groups
from mobileclip_repro.launch import evaluation_resources, reinforce_resources, slurm_resources
from mobileclip_repro.layout import WHOLE_DAG, Layout, group_id, group_job_name, parse_job_name, train_job_name

# The report's files in every experiment (report_outputs adds the ones a config asks for).
REPORT_FILES = ["results.csv", "results_per_seed.csv", "results_long.csv", "results.md", "efficiency.json",
                "learning_efficiency.png", "learning_efficiency.pdf", "report.html", "cost.csv",
                "learning_efficiency_compute.png", "learning_efficiency_compute.pdf", "training_curves.png",
                "training_curves.pdf"]
TEACHER_FILES = ["teachers.csv"]  # where the DAG evaluates the teachers
SUITE_FILES = ["suite_averages.csv"]  # where benchmarks carry DataComp's tags
HUB_DATA_FILES = ["data.csv"]  # where the data is fetched from the hub
# A run's settings that size its SLURM job and never change what it computes (launch.run_limits):
# the rule's resources, not its spec, so changing them reruns nothing.
RESOURCE_KEYS = ("slurm",)
ABLATION_FILES = ["ablation.csv", "ablation.md", "ablation.png", "ablation.pdf"]
DATA_EFFICIENCY_FILES = ["data_efficiency.png", "data_efficiency.pdf"]


def canonical(value):
    """``value`` with every mapping's keys in sorted order, recursively (lists keep theirs).
    Snakemake compares a job's params by their repr, which follows key order: the same config
    values written in another order (or through YAML anchors and merges) must be no change."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    return value


def _without_resources(run: dict) -> dict:
    return {key: value for key, value in run.items() if key not in RESOURCE_KEYS}


def spec_json(value) -> str:
    """A job's spec as one command-line word: JSON, keys sorted."""
    return json.dumps(value, sort_keys=True)


class Experiment:
    """A loaded, checked config (``preflight.load_experiment``) and everything the DAG derives from it."""

    def __init__(self, config: dict):
        self.config = config
        self.layout = Layout(config["results_dir"])
        self.data = config["data"]
        self.source = self.data["source"]
        self.hub = self.data["hub"]
        self.evaluation = config["evaluation"]
        self.benchmarks = self.evaluation["benchmarks"]  # each with its root (config fills the default)
        self.report = config["report"]
        self.runs = list(config["runs"])
        self.teachers = list(config["teachers"])
        # one training job per (run, seed), in the config's order
        self.specs = {(run, seed): resolve_run(config, run, seed=seed)
                      for run in self.runs for seed in run_seeds(config["runs"][run])}
        self.teacher_specs = {teacher: resolve_run(config, teacher, section="teachers") for teacher in self.teachers}
        # the default reinforcement (its teachers are the ones evaluated) and every named one
        self.reinforcement = reinforcement_variant(config)
        self.reinforcements = {name: reinforcement_variant(config, name) for name in reinforcement_names(config)}
        # hub shards in groups, one fetch (and reinforce) job each; toy or local data is one group
        self.hub_groups = shard_groups(self.hub["shards"], self.hub["group_size"]) if self.is_hub else []
        self.group_ids = [group_id(index) for index in range(len(self.hub_groups))] if self.is_hub else [group_id(0)]
        # sets with a hub_repo (clip_benchmark's webdataset mirrors): fetched once, before any evaluation
        self.hub_benchmarks = {b["name"]: b for b in self.benchmarks if b.get("hub_repo")}
        self.subset_sizes = subset_sizes(config)

    @classmethod
    def load(cls, source) -> Experiment:
        """Load and check a config (a path or a mapping), then resolve it."""
        from mobileclip_repro.preflight import load_experiment

        return cls(load_experiment(source))

    @property
    def is_toy(self) -> bool:
        return self.source == "toy"

    @property
    def is_hub(self) -> bool:
        return self.source == "hub"

    @property
    def is_local(self) -> bool:
        return self.source == "local"

    # -- training jobs ---------------------------------------------------------------------------
    def spec(self, run: str, seed) -> dict:
        return self.specs[(run, int(seed))]

    def train_spec(self, run: str, seed) -> dict:
        """A train job's spec: the run's settings without its resources (``RESOURCE_KEYS``)."""
        return _without_resources(self.spec(run, seed))

    def teacher_train_spec(self, teacher: str) -> dict:
        return _without_resources(self.teacher_specs[teacher])

    @property
    def config_digest(self) -> str:
        """The experiment's fingerprint on its report: sha256 of the canonical config, resources left
        out (the same values are the same experiment, however written or scheduled)."""
        config = canonical(self.config)
        for section in ("runs", "teachers"):
            config[section] = {name: _without_resources(run) for name, run in config[section].items()}
        return hashlib.sha256(spec_json(config).encode()).hexdigest()[:16]

    # -- each job's SLURM resources: sized by launch, asked here by the rules and by plan ------------
    def train_resources(self, run: str, seed) -> dict:
        return slurm_resources(self.spec(run, seed))

    def teacher_resources(self, teacher: str) -> dict:
        return slurm_resources(self.teacher_specs[teacher])

    def trained_teacher_specs(self) -> list[dict]:
        """The specs of the teachers the DAG trains; none where the reinforcement's are pretrained."""
        return [self.teacher_specs[teacher] for teacher in self.trained_teachers()]

    def evaluate_resources(self, run: str) -> dict:
        """One GPU only where the run trained on GPUs (``launch.evaluation_resources``)."""
        return evaluation_resources([self.spec(run, seed) for seed in self.seeds_of(run)], self.evaluation["device"],
                                    checkpoints=len(self.run_checkpoints(run)))

    def evaluate_teachers_resources(self) -> dict:
        return evaluation_resources(self.trained_teacher_specs(), self.evaluation["device"], checkpoints=0,
                                    teachers=True)

    def reinforce_resources(self) -> dict:
        """One GPU unless the teachers trained on CPUs (``launch.reinforce_resources``)."""
        return reinforce_resources(self.trained_teacher_specs())

    def seeds_of(self, run: str) -> list[int]:
        return [seed for name, seed in self.specs if name == run]

    def run_checkpoints(self, run: str) -> list[tuple[Path, Path]]:
        """Every seed's checkpoints of ``run`` with their record folders, in one order."""
        return [(self.layout.checkpoint(run, seed, epoch), self.layout.eval_dir(run, seed, epoch))
                for seed in self.seeds_of(run) for epoch in range(1, self.specs[(run, seed)]["num_checkpoints"] + 1)]

    @property
    def has_subsets(self) -> bool:
        return any(spec.get("subset_size") for spec in self.specs.values())

    # -- what the config selects -----------------------------------------------------------------
    def generated_reinforcements(self) -> list[str]:
        """The reinforcements the experiment's DR runs read and the DAG makes (not fetched)."""
        return sorted({spec["reinforcement"] for spec in self.specs.values()
                       if spec["dr"] and self.reinforcements[spec["reinforcement"]]["generate"]})

    def teachers_evaluated(self) -> bool:
        """Whether the DAG evaluates the reinforcement's teachers and their ensemble."""
        return bool(self.evaluation["teachers"] and any(spec["dr"] for spec in self.specs.values()))

    def trained_teachers(self) -> list[str]:
        """Teachers the DAG trains (the teachers section): when it reinforces or evaluates teachers."""
        return sorted(self.teachers) if self.generated_reinforcements() or self.teachers_evaluated() else []

    def fetches_dr_tars(self) -> bool:
        """Fetch downloads the hub's DataCompDR tars whenever the default reinforcement is not
        generated, whether or not a run reads them."""
        return self.is_hub and not self.reinforcement["generate"]

    def generated_benchmark_roots(self) -> list[str]:
        """Benchmark sets the toy-data rule generates (the others are fetched or user-provided roots)."""
        return [b["root"] for b in self.benchmarks if generated_benchmark(self.config, b)]

    def reinforcement_dr_dir(self, name: str) -> str:
        """Where a named reinforcement's DataCompDR shards live (data.dr_dir, or data.dr_dir + _<name>)."""
        return reinforcement_dr_dir(self.config, name)

    # -- inputs ----------------------------------------------------------------------------------
    def data_inputs(self) -> list[Path]:
        """The data stage's manifest(s) a job waits for: the toy world's, every fetched group's, or
        the listing of local data (local_data; rerun when a shard there is added, removed or rewritten)."""
        if self.is_toy:
            return [self.layout.toy_manifest]
        return [self.layout.fetch_manifest(group) for group in self.group_ids] if self.is_hub else [
            self.layout.local_manifest]

    def local_data_folders(self) -> list[str]:
        """Local data's folders: data.datacomp_dir, and data.dr_dir where DR runs read DataCompDR shards
        found there (not generated by the DAG, not joined into datacomp_dir)."""
        if not self.is_local:
            return []
        folders = [self.data["datacomp_dir"]]
        given_dr = any(spec["dr"] and not self.reinforcements[spec["reinforcement"]]["generate"]
                       and spec.get("data_layout") != "joined" for spec in self.specs.values())
        if given_dr and self.data["dr_dir"] not in folders:
            folders.append(self.data["dr_dir"])
        return folders

    def training_data(self, run: str, seed) -> dict:
        """What a run's training reads: the data stage's manifests, the subsets file of a subset run and,
        for a DR run, the reinforcement's manifests when the DAG generates it. Train reads exactly the
        shards the manifests list (``--data-manifests``)."""
        spec = self.spec(run, seed)
        inputs = {"data": self.data_inputs(), "reinforced": []}
        if spec.get("subset_size"):
            inputs["subsets"] = spec["subset_file"]
        if spec["dr"] and self.reinforcements[spec["reinforcement"]]["generate"]:
            inputs["reinforced"] = [self.layout.reinforce_manifest(spec["reinforcement"], group)
                                    for group in self.group_ids]
        return inputs

    def benchmark_inputs(self) -> dict:
        return {"benchmarks": self.generated_benchmark_roots(),
                "fetched": [self.layout.fetched_benchmark(name) for name in self.hub_benchmarks]}

    def teacher_weights(self) -> list[Path]:
        """Every teacher's weights under teachers/ (what reinforcement and the teachers' evaluation read)."""
        return [self.layout.teacher_weights(teacher) for teacher in self.teachers]

    def teacher_records(self) -> list[Path]:
        """The ensemble's records, one per benchmark (evaluate_teachers' outputs beside its index)."""
        if not self.teachers_evaluated():
            return []
        return [self.layout.teacher_record(b["name"]) for b in self.benchmarks]

    def eval_indexes(self) -> list[Path]:
        """The evaluate jobs' index files: the report reads the records they list, and no others."""
        return ([self.layout.eval_index(run) for run in self.runs]
                + ([self.layout.teachers_index] if self.teachers_evaluated() else []))

    def upstream_jobs(self) -> list[tuple[str, str]]:
        """(rule, job name) of every job the report depends on, in the DAG's order."""
        if self.is_toy:
            jobs = [("toy_data", WHOLE_DAG)]
        else:
            jobs = [("fetch", group_job_name(group)) for group in self.group_ids] if self.is_hub else [
                ("local_data", WHOLE_DAG)]
        if self.has_subsets:
            jobs.append(("select_subsets", WHOLE_DAG))
        jobs += [("fetch_benchmark", name) for name in self.hub_benchmarks]
        jobs += [("train_teacher", teacher) for teacher in self.trained_teachers()]
        jobs += [("reinforce", group_job_name(group, name))
                 for name in self.generated_reinforcements() for group in self.group_ids]
        jobs += [("train", train_job_name(run, seed)) for run, seed in self.specs]
        jobs += [("evaluate", run) for run in self.runs]
        if self.teachers_evaluated():
            jobs.append(("evaluate_teachers", WHOLE_DAG))
        return jobs

    def upstream_job_benchmarks(self) -> list[Path]:
        """The benchmark TSV of every job the report depends on: the compute ledger's rows."""
        return [self.layout.job_benchmark(rule, name) for rule, name in self.upstream_jobs()]

    # -- each job's --spec: its command's options (cli.add_spec_option), exactly the settings it uses ----
    def toy_data_spec(self) -> dict:
        toy = self.data["toy"]
        return {"out_dir": str(self.layout.data_root), "seed": toy["seed"], "train_samples": toy["train_samples"],
                "teacher_samples": toy["teacher_samples"], "benchmark_samples": toy["benchmark_samples"],
                "samples_per_shard": toy["samples_per_shard"],
                **{f"alt_{kind}": fraction for kind, fraction in toy["alt_text_mix"].items()}}

    def fetch_spec(self, group: str) -> dict:
        """One group of hub shards; Apple's DataCompDR tars too unless the DAG reinforces itself. A null
        revision: the repo's main branch (the job resolves it to a commit)."""
        hub, dr = self.hub, self.fetches_dr_tars()
        # the DataCompDR repo's settings only where the job fetches its tars: a DAG that reinforces
        # itself never reads them, and a change to them must not refetch (and retrain) anything
        return {"datacomp_repo": hub["datacomp_repo"], "dr_repo": hub["dr_repo"] if dr else None,
                "shard_spec": spec_json(hub["shards"]), "group": group, "group_size": hub["group_size"],
                "datacomp_dir": self.data["datacomp_dir"], "dr_dir": self.data["dr_dir"] if dr else None,
                "max_failed_shards": hub["max_failed_shards"], "datacomp_revision": hub["datacomp_revision"],
                "dr_revision": hub["dr_revision"] if dr else None, "sha256": str(hub["sha256"]),  # bare off is false
                "min_join_rate": hub["min_join_rate"]}

    def local_data_spec(self, listing: str) -> dict:
        """Local data's folders and their ``listing`` (data.local_data.folder_listing, read when the DAG
        starts: a shard added, removed or rewritten reruns the job)."""
        return {"folder": self.local_data_folders(), "listing": listing}

    def select_subsets_spec(self) -> dict:
        return {"datacomp_dir": self.data["datacomp_dir"], "sizes": self.subset_sizes, "seed": self.data["subset_seed"]}

    def reinforce_spec(self, reinforcement: str, group: str) -> dict:
        """One reinforcement of one group (toy or local data: every shard); a changed setting redoes the
        shards made with the old one (replace_other_settings)."""
        settings = self.reinforcements[reinforcement]
        selection = ({"shard_spec": spec_json(self.hub["shards"]), "group": group, "group_size": self.hub["group_size"]}
                     if self.is_hub else {})
        return {"datacomp_dir": self.data["datacomp_dir"], "out_dir": self.reinforcement_dr_dir(reinforcement),
                **selection, "reinforce_config": settings["config"], "pretrained_root": str(self.layout.teachers_dir),
                "captioner_json": spec_json(settings["captioner"]), "num_syn_captions": settings["num_syn_captions"],
                "dtype": settings["dtype"], "batch_size": settings["batch_size"], "seed": settings["seed"],
                "replace_other_settings": True}

    def fetch_benchmark_spec(self, name: str) -> dict:
        """A hub benchmark set; a revision absent or null: the main branch (the manifest names its commit)."""
        benchmark = self.hub_benchmarks[name]
        return {"repo": benchmark["hub_repo"], "root": benchmark["root"], "split": benchmark["split"],
                "revision": benchmark.get("revision")}

    def _evaluation_options(self) -> dict:
        evaluation = self.evaluation
        return {"benchmarks_json": spec_json(self.benchmarks), "batch_size": evaluation["batch_size"],
                "num_workers": evaluation["num_workers"], "device": evaluation["device"],
                "precision": evaluation["precision"], "skip_failed_benchmarks": evaluation["skip_failed_benchmarks"]}

    def evaluate_spec(self, run: str) -> dict:
        """Every checkpoint of every seed of ``run``, each into its record folder (the seeds differ in seed only)."""
        checkpoints = self.run_checkpoints(run)
        return {"checkpoint": [str(checkpoint) for checkpoint, _ in checkpoints],
                "out_dir": [str(out_dir) for _, out_dir in checkpoints],
                "model": self.specs[(run, self.seeds_of(run)[0])]["model"], **self._evaluation_options(), "force": True}

    def evaluate_teachers_spec(self) -> dict:
        """The default reinforcement's teachers and their ensemble."""
        return {"teachers": self.reinforcement["config"], "pretrained_root": str(self.layout.teachers_dir),
                "out_dir": [str(self.layout.teachers_eval_dir)], **self._evaluation_options()}

    def report_spec(self) -> dict:
        """The report's settings; its inputs (records, manifests, job benchmarks) are the rule's."""
        report = self.report
        reference = report["paper_reference"]  # true: the MobileCLIP paper's set
        return {"out_dir": str(self.layout.report_dir), "title": report["title"],
                "paper_reference": None if reference is False else "mobileclip" if reference is True else str(reference),
                "efficiency_pairs_json": (spec_json(report["efficiency_pairs"])
                                          if report.get("efficiency_pairs") is not None else None),
                "ablation_json": spec_json(report["ablation"]) if report.get("ablation") else None,
                "benchmarks_dir": str(self.layout.benchmarks_dir),
                "teacher_manifests": [str(self.layout.teacher_manifest(name)) for name in self.trained_teachers()],
                "config_digest": self.config_digest}

    def job_spec(self, rule: str, name: str | None = None) -> dict:
        """The spec of one job of this DAG, named as its benchmark TSV names it (``layout.parse_job_name``):
        what ``--config X --job RULE[:NAME]`` stands for when a person runs a job's command by hand.
        local_data's listing is left empty (the workflow's is only there to rerun the job)."""
        name = name or WHOLE_DAG
        jobs = self.upstream_jobs() + [("report", WHOLE_DAG)]
        if (rule, name) not in jobs:
            raise ConfigError(f"no job {rule}:{name} in experiment {self.config['name']!r}; its jobs: "
                              + ", ".join(f"{r}:{n}" if n != WHOLE_DAG else r for r, n in jobs))
        job = parse_job_name(rule, name)
        builders = {"toy_data": self.toy_data_spec, "fetch": lambda: self.fetch_spec(job.group),
                    "local_data": lambda: self.local_data_spec(""), "select_subsets": self.select_subsets_spec,
                    "reinforce": lambda: self.reinforce_spec(job.reinforcement, job.group),
                    "fetch_benchmark": lambda: self.fetch_benchmark_spec(name),
                    "evaluate": lambda: self.evaluate_spec(name), "evaluate_teachers": self.evaluate_teachers_spec,
                    "report": self.report_spec}
        if rule not in builders:
            raise ConfigError(f"job {rule}:{name}: its command takes the run spec (train --config X --run-name NAME)")
        return builders[rule]()

    # -- the report's outputs ----------------------------------------------------------------------
    def ablation_outputs(self) -> list[Path]:
        """The ablation ladder's table and chart, where the config has one (report.ablation)."""
        return [self.layout.report_file(name) for name in ABLATION_FILES] if self.report.get("ablation") else []

    def data_efficiency_outputs(self) -> list[Path]:
        """The data-efficiency figure, where runs train on data.subsets."""
        return [self.layout.report_file(name) for name in DATA_EFFICIENCY_FILES] if self.has_subsets else []

    def report_outputs(self) -> list[Path]:
        """Every file the report job writes: ``REPORT_FILES``, then each optional group's."""
        return ([self.layout.report_file(name) for name in REPORT_FILES] + self.optional_report_outputs()
                + self.ablation_outputs() + self.data_efficiency_outputs())

    def optional_report_outputs(self) -> list[Path]:
        """The report's tables this config's records and data call for: the teachers', DataComp's
        suite averages (tagged benchmarks), the fetched data's."""
        names = ((TEACHER_FILES if self.teachers_evaluated() else [])
                 + (SUITE_FILES if any(b.get("tags") for b in self.benchmarks) else [])
                 + (HUB_DATA_FILES if self.is_hub else []))
        return [self.layout.report_file(name) for name in names]
