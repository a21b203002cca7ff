# Shared once per DAG: validate the config against the schema (before any job runs) and resolve
# the experiment once (experiment.Experiment: every job's spec, the jobs this config selects, and
# layout.Layout's paths); below, only the hooks and the accessors the rules call with wildcards.
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from mobileclip_repro.config import ConfigError, read_yaml
from mobileclip_repro.data.local_data import folder_listing
from mobileclip_repro.experiment import Experiment, spec_json
from mobileclip_repro.launch import FETCH_RESOURCES, launcher_prefix, resubmits
from mobileclip_repro.layout import group_job_name, train_job_name
from mobileclip_repro.locks import ResultsBusy, hold_dag_lock, release_dag_lock
from mobileclip_repro.preflight import check_prerequisites
from snakemake.logging import logger

DEFAULT_CONFIG = "configs/toy.yaml"

try:
    for configfile in workflow.configfiles:  # Snakemake's own reader lets a key given twice pass
        read_yaml(configfile)
    EXP = Experiment.load(dict(config) if config else DEFAULT_CONFIG)
except ConfigError as error:
    raise WorkflowError(f"invalid config: {error}") from None
# A dry run plans before the data exist (the paper configs plan on a laptop) and never reaches
# onstart: it names, as warnings, every benchmark root and hub credential a real run would be
# refused for.
if workflow.output_settings.dryrun and workflow.is_main_process:  # workflow.dryrun: only once jobs run
    for missing in check_prerequisites(EXP.config, dry_run=True):
        logger.warning(missing)


onstart:
    # One DAG per results_dir, whichever working directory started it (Snakemake locks only its
    # own): onstart is the last hook before Snakemake prepares a job (deletes its outputs, opens
    # its log). Dry runs never get here, nor should a job's own Snakemake process (SLURM jobs,
    # spawned with --no-hooks), which its main process's lock must not refuse. The lock goes with
    # the main process, however it ends.
    if workflow.is_main_process:
        try:
            hold_dag_lock(EXP.layout.results_dir)
        except ResultsBusy as error:
            raise WorkflowError(str(error)) from None
    # A hub experiment loads (and plans: `snakemake -n`) without its benchmark roots or hub
    # token, as it is planned before its data exist, wherever it is planned. When jobs are about
    # to run, what the jobs to run need from outside the DAG must be there (the roots where some
    # evaluate, a token where some fetch from a gated repo): before any job, not after training.
    try:
        for unverified in check_prerequisites(EXP.config, {job.rule.name for job in workflow.dag.needrun_jobs()}):
            logger.warning(unverified)
    except ConfigError as error:
        raise WorkflowError(f"invalid config: {error}") from None


onsuccess:
    release_dag_lock(EXP.layout.results_dir)


onerror:
    release_dag_lock(EXP.layout.results_dir)

LAYOUT = EXP.layout
IS_TOY, IS_HUB = EXP.is_toy, EXP.is_hub  # else data the DAG makes (toy) or finds (local: data.datacomp_dir)
REINFORCEMENTS = EXP.reinforcements  # every named reinforcement, each its own reinforce job(s)
# Jobs run the CLI (`mobileclip-repro`, `python -m mobileclip_repro`) of the environment that
# runs Snakemake: its bin folder goes first on PATH, which jobs (and srun's tasks) inherit.
# Not a parameter, so a moved checkout does not rerun every job.
envvars:
    "PATH",


inherited_path = os.environ["PATH"]
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), inherited_path])
# Local data's folders as they are now (stat only): part of local_data's spec, so a shard added,
# removed or rewritten reruns it and every job downstream.
LOCAL_LISTING = folder_listing(EXP.local_data_folders()) if EXP.is_local else ""

wildcard_constraints:
    run="|".join(map(re.escape, EXP.runs)) if EXP.runs else "NONE",
    seed=r"\d+",
    epoch=r"\d+",
    reinforcement="|".join(map(re.escape, EXP.reinforcements)),
    group=r"\d{5}",


# -- thin accessors: the rules' wildcards to the Experiment's answers ------------------------------

def spec_of(wildcards):
    return EXP.spec(wildcards.run, wildcards.seed)


def train_resource(name):
    """A train job's SLURM resource (launch.slurm_resources, through the Experiment)."""
    return lambda wildcards: EXP.train_resources(wildcards.run, wildcards.seed)[name]


def teacher_resource(name):
    """A teacher's train job's SLURM resource, sized like a run's."""
    return lambda wildcards: EXP.teacher_resources(wildcards.teacher)[name]


def evaluate_resource(name):
    """An evaluate job's resource: a GPU only for GPU-sized models."""
    return lambda wildcards: EXP.evaluate_resources(wildcards.run)[name]


def evaluate_teachers_resource(name):
    return EXP.evaluate_teachers_resources()[name]


def reinforce_resource(name):
    """A reinforce job's resource: a GPU unless its teachers trained on CPUs."""
    return EXP.reinforce_resources()[name]


def run_checkpoints(run):
    return EXP.run_checkpoints(run)


def train_inputs(wildcards):
    return EXP.training_data(wildcards.run, wildcards.seed)


def benchmark_inputs(wildcards):
    return EXP.benchmark_inputs()


def reinforce_inputs(wildcards):
    data = {"fetched": LAYOUT.fetch_manifest(wildcards.group)} if IS_HUB else {"data": EXP.data_inputs()}
    return {**data, "reinforce_config": REINFORCEMENTS[wildcards.reinforcement]["config"],
            "teachers": EXP.teacher_weights()}
