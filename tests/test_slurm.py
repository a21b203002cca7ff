"""The toy DAG through a real SLURM: `snakemake --profile slurm` (slurm/config.yaml, overridden
only for this machine's partition and sizes) against a throwaway cluster started here (munged,
slurmctld, two slurmds: tests/slurm/cluster.py).

- every job of the smoke DAG runs as a SLURM job (slurmctld's job records and the job completion
  log), and its outputs equal a local run's (data byte for byte, checkpoints tensor for tensor,
  eval records and the report table exactly);
- a train run with `nodes: 2` runs as one two-node SLURM job whose srun starts a torchrun per
  node with a c10d rendezvous (world size 2), and, requeued after its first checkpoint, resumes
  from it (`resume: latest`).

Needs root (the daemons run as SlurmUser=root) and munge + SLURM from Debian: `make test` installs
them (tests/slurm/install.sh); run directly, this module installs them itself where it can (root
with apt-get) and skips otherwise.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
from cluster import ClusterUnavailable, SlurmCluster, client_env, missing_commands  # noqa: E402

SMOKE = "configs/toy-smoke.yaml"
RUNS = ("smoke_dr", "smoke_plain")
SEEDS = (0, 1)
TEACHERS = ("teacher_a.pt", "teacher_b.pt")
EPOCHS = (1, 2, 3)
INSTALL = Path(__file__).resolve().parent / "slurm" / "install.sh"

# What the profile's users edit, overridden for this one-machine cluster. Command-line
# --default-resources/--set-resources replace the profile's lists, so these are complete:
# partition `debug` for every rule, no account, and the training jobs' CPUs and memory cut to fit
# more of them on two 2-CPU nodes. No GPU is switched off: the toy world's jobs ask for none
# (test_the_toy_world_asks_slurm_for_no_gpu_32_gb_and_4_hours_at_most). Job status through
# squeue (no slurmdbd here, so no sacct), polled from 1 s on.
DEFAULT_RESOURCES = ["slurm_partition=debug", "runtime=30", "mem_mb=1500"]
SET_RESOURCES = ["train:cpus_per_task=1", "train:mem_mb=2000", "train_teacher:cpus_per_task=1",
                 "train_teacher:mem_mb=2000"]
OPTIONS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
           "--seconds-between-status-checks", "1", "--latency-wait", "5", "--slurm-keep-successful-logs"]


def expected_jobs() -> set[str]:
    """The plugin's `--comment` of every job of the smoke DAG: rule_<rule>[_wildcards_<values>]."""
    return {"rule_toy_data", "rule_reinforce_wildcards_default_00000", "rule_report", "rule_evaluate_teachers",
            *(f"rule_train_teacher_wildcards_{teacher}" for teacher in TEACHERS),
            *(f"rule_train_wildcards_{run}_{seed}" for run in RUNS for seed in SEEDS),
            *(f"rule_evaluate_wildcards_{run}" for run in RUNS)}


# ----------------------------------------------------------------------------- what each job asks for
def requested_resources(output: str) -> list[tuple[str, dict]]:
    """(rule, resources) of every job a dry run lists (its `resources:` lines)."""
    jobs, rule = [], None
    for line in output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            rule = match.group(1)
        elif line.strip().startswith("resources:") and rule:
            pairs = (item.split("=", 1) for item in line.strip()[len("resources:"):].split(", ") if "=" in item)
            jobs.append((rule, {key.strip(): value.strip() for key, value in pairs}))
            rule = None
    return jobs


def test_the_toy_world_asks_slurm_for_no_gpu_32_gb_and_4_hours_at_most(snakemake_cmd, repo_root, tmp_path):
    result = subprocess.run([*snakemake_cmd, "--profile", "slurm", "-n", "--configfile", "configs/toy.yaml",
                             "--config", f"results_dir={tmp_path / 'results'}"],
                            cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [(rule, resources) for rule, resources in requested_resources(result.stdout) if rule != "all"]
    assert {rule for rule, _ in jobs} >= {"toy_data", "train_teacher", "reinforce", "train", "evaluate",
                                          "evaluate_teachers", "report"}
    for rule, resources in jobs:
        assert resources.get("gpu", "0") == "0" and "gpu" not in resources.get("gres", ""), (rule, resources)
        assert int(resources["mem_mb"]) <= 32_000 and int(resources["runtime"]) <= 4 * 60, (rule, resources)


@pytest.mark.parametrize("config", ["configs/paper/s30m-dr-vs-datacomp.yaml", "configs/paper/datacompdr1b.yaml"])
def test_paper_train_jobs_ask_for_a_day_at_most_and_their_gpus(snakemake_cmd, repo_root, tmp_path, config):
    result = subprocess.run([*snakemake_cmd, "--profile", "slurm", "-n", "--configfile", config,
                             "--config", f"results_dir={tmp_path / 'results'}"],
                            cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    train = [resources for rule, resources in requested_resources(result.stdout) if rule == "train"]
    assert train and all(int(resources["runtime"]) <= 24 * 60 and resources["gres"].startswith("gpu:")
                         for resources in train), train


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if missing_commands():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(f"SLURM/munge not installed ({', '.join(missing_commands())}) and cannot install "
                        "them here (needs root and apt-get): see tests/slurm/install.sh")
        subprocess.run(["bash", str(INSTALL)], check=True, timeout=1200)
    try:
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    except ClusterUnavailable as reason:
        pytest.skip(str(reason))
    yield cluster
    cluster.stop()


def run_snakemake(snakemake_cmd, repo_root, *args, timeout=1200, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([*snakemake_cmd, *args], cwd=repo_root, capture_output=True, text=True, timeout=timeout,
                          env=client_env(), **popen)


def through_the_profile(snakemake_cmd, cluster: SlurmCluster, *args, set_resources=()) -> list[str]:
    return [*snakemake_cmd, "--profile", "slurm", "--default-resources", *DEFAULT_RESOURCES,
            "--set-resources", *SET_RESOURCES, *set_resources, *OPTIONS,
            "--slurm-logdir", str(cluster.dir / "jobs"), *args]


@pytest.fixture(scope="module")
def slurm_smoke(slurm_cluster, snakemake_cmd, repo_root, tmp_path_factory):
    """The smoke DAG through `snakemake --profile slurm`; its results dir, output and wall time."""
    results = tmp_path_factory.mktemp("slurm_smoke") / "results"
    start = time.monotonic()
    result = subprocess.run(
        through_the_profile(snakemake_cmd, slurm_cluster, "--configfile", SMOKE, "--config", f"results_dir={results}"),
        cwd=repo_root, capture_output=True, text=True, timeout=1500, env=client_env())
    seconds = time.monotonic() - start
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-8000:], slurm_cluster.logs())
    print(f"\nsmoke DAG through SLURM: {seconds:.0f} s")
    return {"results": results, "log": result.stdout + result.stderr, "seconds": seconds}


@pytest.fixture(scope="module")
def local_smoke(snakemake_cmd, repo_root, tmp_path_factory):
    """A local run of the smoke DAG to compare with: test_dag.py's, when it ran earlier in this
    session (its tmp dir is still there), else one made here."""
    for done in sorted(tmp_path_factory.getbasetemp().glob("test_smoke_toy_dag_runs_end*/results/report/results.csv")):
        return done.parents[1]
    results = tmp_path_factory.mktemp("local_smoke") / "results"
    result = run_snakemake(snakemake_cmd, repo_root, "--cores", "2", "--configfile", SMOKE,
                           "--config", f"results_dir={results}", timeout=1500)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    return results


# ----------------------------------------------------------------------------- helpers
def submitted_jobs(log: str) -> dict[str, str]:
    """Snakemake job id -> SLURM job id, from the plugin's 'Job N has been submitted with SLURM jobid M'."""
    return dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))


def digests(root: Path) -> dict[str, str]:
    """Every file's sha256 but the writers' lock files (they name the process that held them)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


TIMING = re.compile(r"(seconds|per_second|_share|elapsed_s)$")  # wall-clock fields: eval_seconds, samples_per_second, ...


def normalized(value, results: Path):
    """A JSON value with wall-clock timings dropped and the results dir replaced by a placeholder."""
    if isinstance(value, dict):
        return {k: normalized(v, results) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [normalized(v, results) for v in value]
    if isinstance(value, str):
        return value.replace(str(results), "<results>")
    return value


def read_json(path: Path):
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- the DAG
def test_every_job_of_the_smoke_dag_ran_as_a_slurm_job(slurm_smoke, slurm_cluster):
    submitted = submitted_jobs(slurm_smoke["log"])
    records = slurm_cluster.jobs()  # slurmctld keeps finished jobs for MinJobAge (1 h)
    ours = {job_id: records[job_id] for job_id in submitted.values()}
    # one SLURM job per Snakemake job, each with the rule (and wildcards) the plugin put in its comment
    assert sorted(r["Comment"] for r in ours.values()) == sorted(expected_jobs())
    assert len(ours) == len(expected_jobs())
    run_ids = {r["JobName"] for r in ours.values()}
    assert len(run_ids) == 1, run_ids  # the plugin names every job of a run after its run uuid
    for job_id, record in ours.items():
        assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", record
        assert record["Partition"] == "debug" and record["NodeList"] == slurm_cluster.host, record
        # requeueable only through the profile's slurm-requeue (sbatch --requeue): JobRequeue=0 here
        assert record["BatchFlag"] == "1" and record["Requeue"] == "1", record
    # ... and in the job completion log (jobcomp/filetxt), the cluster's own history
    completed = {r["JobId"]: r for r in slurm_cluster.completion_log() if r["JobState"] == "COMPLETED"}
    assert set(ours) <= set(completed)
    assert all(completed[job_id]["Name"] in run_ids for job_id in ours)
    # each job's SLURM log shows the rule ran inside it, via the jobstep executor's srun step
    for job_id, record in ours.items():
        log = next((slurm_cluster.dir / "jobs").glob(f"{record['Comment'].split('_wildcards_')[0]}/**/{job_id}.log"))
        text = log.read_text()
        assert "Finished jobid" in text or "1 of 1 steps (100%) done" in text, text[-2000:]


def test_slurm_outputs_equal_a_local_run(slurm_smoke, local_smoke):
    slurm, local = slurm_smoke["results"], local_smoke
    # toy world, DataCompDR shards, benchmark sets: byte for byte (fixed seeds, fixed tar mtimes);
    # their JSON manifests, which record paths and timings, equal once those are set aside
    slurm_data, local_data = digests(slurm / "data"), digests(local / "data")
    assert slurm_data.keys() == local_data.keys()
    assert sum(name.endswith(".tar") for name in slurm_data) >= 6
    for name in slurm_data:
        if name.endswith(".json"):
            assert normalized(read_json(slurm / "data" / name), slurm) == \
                normalized(read_json(local / "data" / name), local), name
        else:
            assert slurm_data[name] == local_data[name], name

    # teachers and students: the same weights, tensor for tensor (CPU, one process, same seeds)
    import torch

    def weights(path):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return blob.get("state_dict", blob)

    checkpoints = [f"teachers/{t}" for t in TEACHERS] + \
        [f"runs/{run}/seed_{seed}/checkpoints/epoch_{epoch}.pt" for run in RUNS for seed in SEEDS for epoch in EPOCHS]
    for name in checkpoints:
        mine, theirs = weights(slurm / name), weights(local / name)
        assert mine.keys() == theirs.keys(), name
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), name

    # run manifests (timings aside), every eval record (timings and paths aside), the report table
    for run in RUNS:
        for seed in SEEDS:
            assert normalized(read_json(slurm / f"runs/{run}/seed_{seed}/manifest.json"), slurm) == \
                normalized(read_json(local / f"runs/{run}/seed_{seed}/manifest.json"), local)
    records = sorted(p.relative_to(slurm / "eval") for p in (slurm / "eval").rglob("*.json"))
    assert records == sorted(p.relative_to(local / "eval") for p in (local / "eval").rglob("*.json"))
    # each checkpoint on 2 benchmarks, one index per run's evaluate job; teachers a, b and ensemble on 2, and
    # the teachers' evaluate job's index
    assert len(records) == len(RUNS) * len(SEEDS) * len(EPOCHS) * 2 + len(RUNS) + 3 * 2 + 1
    for record in records:
        assert normalized(read_json(slurm / "eval" / record), slurm) == \
            normalized(read_json(local / "eval" / record), local), record
    for table in ("results.csv", "results_per_seed.csv", "results_long.csv", "efficiency.json"):
        assert (slurm / "report" / table).read_text() == (local / "report" / table).read_text(), table
    # results.md to its Cost section, which gives each job's measured wall and CPU seconds
    slurm_md, local_md = ((d / "report" / "results.md").read_text().split("\n## Cost\n")[0] for d in (slurm, local))
    assert slurm_md == local_md
    # the ledger's counted FLOPs and samples are the same on both (its times are not)
    counted = [{(row["rule"], row["run"], row["seed"]): (row["flops"], row["samples"])
                for row in csv.DictReader(open(d / "report" / "cost.csv"))} for d in (slurm, local)]
    assert counted[0] == counted[1]


# ----------------------------------------------------------------------------- two nodes
def test_two_node_train_job_launches_torchrun_per_node_and_resumes_after_requeue(
        slurm_smoke, slurm_cluster, snakemake_cmd, repo_root, tmp_path):
    """The multi-node path of torchrun() (common.smk) in the job script the plugin really runs:
    `srun --nodes 2 ...` from the batch script, c10d rendezvous on the first node's name, counts
    passed explicitly because the plugin strips SLURM_* but the job id. Requeued after epoch 1
    (`scontrol requeue`, as a preemption would: SIGTERM first), the same SLURM job resumes from the
    resume.pt its first attempt wrote on the signal (or epoch_1.pt, had the signal come as that ended)."""
    results = slurm_smoke["results"]  # its toy data is reused: only the new run's train job runs
    config = yaml.safe_load((repo_root / SMOKE).read_text())
    run = dict(config["runs"]["smoke_plain"], nodes=2, seen_samples=1536, num_checkpoints=4, seeds=[0],
               checkpoint_spacing="linear", slurm={"cpus_per_gpu": 1, "mem_mb_per_node": 1000, "runtime": 20})
    config.update(results_dir=str(results), runs={"smoke_2node": run})
    (tmp_path / "two_nodes.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # key order kept:
    # toy_data's params (dict reprs) then equal the first run's, so its data are reused, not rebuilt
    run_dir = results / "runs" / "smoke_2node" / "seed_0"

    requeued = {}

    def requeue_after_first_checkpoint(deadline):
        try:
            while time.monotonic() < deadline and not requeued:
                if (run_dir / "checkpoints" / "epoch_1.pt").exists():
                    job = next((j for j in slurm_cluster.jobs().values() if j["JobState"] == "RUNNING"
                                and j["Comment"].startswith("rule_train_wildcards_smoke_2node")), None)
                    if job is not None:
                        slurm_cluster.command("scontrol", "requeue", job["JobId"], check=True)
                        requeued["id"] = job["JobId"]
                        # SLURM holds a requeued job back for two minutes (BeginTime); release it now
                        while slurm_cluster.jobs()[job["JobId"]]["JobState"] != "PENDING" \
                                and time.monotonic() < deadline:
                            time.sleep(0.1)
                        slurm_cluster.command("scontrol", "update", f"JobId={job['JobId']}", "StartTime=now",
                                              check=True)
                time.sleep(0.1)
        except Exception as error:  # reported by the assertion below
            requeued["error"] = repr(error)

    watcher = threading.Thread(target=requeue_after_first_checkpoint, args=(time.monotonic() + 600,), daemon=True)
    watcher.start()
    # LOGLEVEL=INFO: torchrun logs its launch config (the job inherits it: sbatch --export=ALL)
    result = subprocess.run(
        through_the_profile(snakemake_cmd, slurm_cluster, str(run_dir / "manifest.json"),
                            "--configfile", str(tmp_path / "two_nodes.yaml"),
                            set_resources=["train:slurm_partition=multi"]),
        cwd=repo_root, capture_output=True, text=True, timeout=900, env={**client_env(), "LOGLEVEL": "INFO"})
    watcher.join(timeout=5)
    log = result.stdout + result.stderr
    train_log = (results / "logs" / "train" / "smoke_2node_seed_0.log")
    assert result.returncode == 0, (log[-4000:], train_log.read_text()[-4000:] if train_log.exists() else "",
                                    slurm_cluster.logs())
    assert "id" in requeued and "error" not in requeued, ("could not requeue the job while it ran", requeued)

    # one SLURM job (the one requeued), two nodes, --ntasks 2, restarted once
    job_id = requeued["id"]
    assert list(submitted_jobs(log).values()) == [job_id]
    record = slurm_cluster.jobs()[job_id]
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "1", record
    assert record["NumNodes"] == "2" and record["NumTasks"] == "2" and record["Partition"] == "multi", record
    assert sorted(record["NodeList"].split(",")) == sorted(slurm_cluster.nodes), record
    history = [r["JobState"] for r in slurm_cluster.completion_log() if r["JobId"] == job_id]
    assert history[-1] == "COMPLETED" and len(history) == 2, history  # the requeue, then the end

    # both slurmds launched a task of the job's srun step (torchrun agents on both nodes) ...
    for node in slurm_cluster.nodes:
        slurmd_log = (slurm_cluster.dir / "log" / f"slurmd.{node}.log").read_text()
        assert re.search(rf"launch task StepId={job_id}\.\d+", slurmd_log), (node, slurmd_log[-3000:])
    # ... which met at the c10d rendezvous on the allocation's first node (found through squeue:
    # the plugin leaves no SLURM_JOB_NODELIST in the rule's shell) and trained with world size 2
    first_node = slurm_cluster.command("scontrol", "show", "hostnames", record["NodeList"]).stdout.split()[0]
    text = train_log.read_text()
    endpoints = re.findall(r"rdzv_endpoint\s*:\s*(\S+)", text)
    assert endpoints == [f"{first_node}:29500"] * 2, (endpoints, text[-3000:])  # one agent per node
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["world_size"] == 2 and manifest["attempts"] == 2, manifest
    assert [e["seen_samples"] for e in manifest["epochs"]] == [384, 768, 1152, 1536]
    # the second attempt started from the first one's checkpoint: an epoch's, or the resume.pt the
    # first attempt wrote on the SIGTERM that SLURM sends a requeued job
    assert re.search(r"resuming from \S*(epoch_[123]|resume)\.pt", text), text[-3000:]
