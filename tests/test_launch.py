"""How a train job's processes start (launch.py): the prefix before ``-m mobileclip_repro train``
and the SLURM resources, for the toy CPU run and the paper's GPU runs. The multi-node path
runs for real in tests/test_slurm.py; here, each shape of job and what its command line says."""
import shlex

import pytest
import yaml

from mobileclip_repro.config import load_config, resolve_run
from mobileclip_repro.launch import (evaluation_resources, launcher_prefix, reinforce_resources, resubmits,
                                     run_limits, slurm_resources)


def spec(nodes=1, gpus_per_node=0, cpus_per_gpu=8, mem_mb_per_node=64000, runtime=600):
    return {"nodes": nodes, "gpus_per_node": gpus_per_node,
            "slurm": {"cpus_per_gpu": cpus_per_gpu, "mem_mb_per_node": mem_mb_per_node, "runtime": runtime}}


def option(words, name):
    return words[words.index(name) + 1]


def test_one_cpu_process_is_the_interpreter_itself_without_a_torchrun_agent():
    assert launcher_prefix(spec(gpus_per_node=0)) == "python"


def test_one_gpu_on_one_node_is_also_a_plain_process():
    assert launcher_prefix(spec(gpus_per_node=1)) == "python"


def test_several_gpus_on_one_node_use_torchruns_standalone_rendezvous_one_process_per_gpu():
    words = shlex.split(launcher_prefix(spec(gpus_per_node=8)))
    assert words[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--standalone" in words and "srun" not in words
    assert option(words, "--nnodes") == "1" and option(words, "--nproc-per-node") == "8"


def test_several_nodes_start_one_torchrun_per_node_through_one_srun_step():
    prefix = launcher_prefix(spec(nodes=4, gpus_per_node=8, cpus_per_gpu=6))
    srun, torchrun = prefix.split(" python -m torch.distributed.run ")
    srun_words = shlex.split(srun)
    assert srun_words[0] == "srun"
    assert option(srun_words, "--nodes") == "4" and option(srun_words, "--ntasks") == "4"
    assert option(srun_words, "--ntasks-per-node") == "1"
    assert option(srun_words, "--cpus-per-task") == "48"  # 8 processes x 6 CPUs each
    assert "--kill-on-bad-exit=1" in srun_words  # one dead node ends the step, not a hang
    assert "--nnodes 4 --nproc-per-node 8 --rdzv-backend c10d" in torchrun
    assert '--rdzv-id "$SLURM_JOB_ID"' in torchrun
    # the rendezvous host is the allocation's first node, found even where the plugin drops the node list
    assert "${SLURM_JOB_NODELIST:-$(squeue" in torchrun and "scontrol show hostnames" in torchrun
    assert torchrun.endswith(":29500")


def test_cpus_given_by_the_job_override_the_specs_default():
    prefix = launcher_prefix(spec(nodes=2, gpus_per_node=8), cpus=16)
    assert option(shlex.split(prefix.split(" python ")[0]), "--cpus-per-task") == "16"


def test_cpu_only_multi_node_runs_one_process_per_node():
    prefix = launcher_prefix(spec(nodes=2, gpus_per_node=0, cpus_per_gpu=4))
    assert "--nproc-per-node 1" in prefix and "--cpus-per-task 4" in prefix


def test_slurm_resources_ask_for_an_mpi_step_only_across_nodes():
    one_node, two_nodes = slurm_resources(spec(gpus_per_node=8)), slurm_resources(spec(nodes=2, gpus_per_node=8))
    assert one_node["mpi"] is None and two_nodes["mpi"] == "srun"
    assert two_nodes["tasks"] == two_nodes["nodes"] == 2
    assert one_node["gres"] == "gpu:8" and slurm_resources(spec())["gres"] == ""
    assert one_node["cpus_per_task"] == 64 and one_node["mem_mb"] == 64000 and one_node["runtime"] == 600


@pytest.mark.parametrize("config, run, nodes, gpus", [
    ("configs/paper/datacompdr1b.yaml", "datacompdr1b_s13b", 16, 8),
    ("configs/paper/datacompdr12m.yaml", "datacompdr12m_s30m", 4, 8),
    ("configs/toy.yaml", "toy_dr", 1, 0),
])
def test_the_shipped_runs_launch_as_their_scripts_do(repo_root, config, run, nodes, gpus):
    resolved = resolve_run(load_config(repo_root / config), run, seed=0 if run == "toy_dr" else None)
    prefix = launcher_prefix(resolved)
    if nodes == 1 and gpus == 0:
        assert prefix == "python"
    else:
        assert f"--nnodes {nodes} --nproc-per-node {gpus}" in prefix
    assert slurm_resources(resolved)["nodes"] == nodes


def unsized(nodes=1, gpus_per_node=0, **slurm):
    """A run whose `slurm` keys are the schema's nulls, but for ``slurm``."""
    return {"nodes": nodes, "gpus_per_node": gpus_per_node,
            "slurm": {"runtime": None, "mem_mb_per_node": None, "cpus_per_gpu": None, "resubmits": None, **slurm}}


def test_a_cpu_run_asks_for_no_gpu_a_few_gb_and_two_hours_without_resubmission():
    resources = slurm_resources(unsized())
    assert resources["gres"] == "" and resources["mem_mb"] == 8000 and resources["runtime"] == 120
    assert resources["cpus_per_task"] == 2 and run_limits(unsized())["resubmits"] == 0


def test_a_gpu_run_gets_a_day_memory_per_gpu_and_resubmissions_that_resume_it():
    resources = slurm_resources(unsized(nodes=4, gpus_per_node=8))
    assert resources["gres"] == "gpu:8" and resources["runtime"] == 24 * 60
    assert resources["mem_mb"] == 8 * 64000 and resources["cpus_per_task"] == 8 * 8
    assert resubmits([unsized(gpus_per_node=8), unsized()]) == 9  # the most any run of the rule asks for
    assert resubmits([]) == 0


def test_given_slurm_values_win_over_the_sizing():
    limits = run_limits(unsized(gpus_per_node=8, runtime=600, mem_mb_per_node=200000, cpus_per_gpu=4, resubmits=2))
    assert limits == {"runtime": 600, "mem_mb_per_node": 200000, "cpus_per_gpu": 4, "resubmits": 2}


@pytest.mark.parametrize("config, run", [("configs/paper/datacompdr1b.yaml", "datacompdr1b_s13b"),
                                         ("configs/paper/datacompdr12m.yaml", "datacompdr12m_s30m"),
                                         ("configs/paper/datacomp12m.yaml", "datacomp12m_s30m")])
def test_paper_train_jobs_fit_a_day_by_default(repo_root, config, run):
    resolved = resolve_run(load_config(repo_root / config), run)
    assert slurm_resources(resolved)["runtime"] <= 24 * 60
    # resubmitted where it resumes (s13b: Apple's --resume latest); the s30m scripts' runs do not resume
    assert run_limits(resolved)["resubmits"] == (9 if resolved["resume"] == "latest" else 0)


def test_evaluation_takes_a_gpu_only_for_gpu_sized_models():
    cpu_runs, gpu_runs = [unsized()], [unsized(gpus_per_node=8)]
    assert evaluation_resources(cpu_runs, "auto", checkpoints=3) == {"gpu": 0, "mem_mb": 8000, "runtime": 60}
    assert evaluation_resources(gpu_runs, "auto", checkpoints=3)["gpu"] == 1
    assert evaluation_resources(gpu_runs, "cpu", checkpoints=3)["gpu"] == 0
    assert evaluation_resources(cpu_runs, "cuda", checkpoints=3)["gpu"] == 1
    # teachers: the DAG's CPU-trained ones on CPUs, pretrained ViT-L-14s (no specs) on a GPU
    assert evaluation_resources(cpu_runs, "auto", checkpoints=0, teachers=True)["gpu"] == 0
    assert evaluation_resources([], "auto", checkpoints=0, teachers=True)["gpu"] == 1


def test_reinforcement_takes_a_gpu_for_pretrained_or_gpu_trained_teachers():
    assert reinforce_resources([unsized(), unsized()]) == {"gpu": 0, "mem_mb": 8000, "runtime": 60}
    assert reinforce_resources([])["gpu"] == 1 and reinforce_resources([unsized(gpus_per_node=1)])["gpu"] == 1


def test_the_profiles_partitions_send_cpu_jobs_to_the_cpu_partition_and_gpu_jobs_to_the_gpu_one(repo_root):
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file
    profile = yaml.safe_load((repo_root / "slurm" / "config.yaml").read_text())
    partitions = read_partition_file(repo_root / profile["slurm-partition-config"])
    logger = SimpleNamespace(info=print, debug=print, warning=print)

    class Resources(dict):
        __getattr__ = dict.__getitem__

    def partition(resources):
        return get_best_partition(partitions, SimpleNamespace(resources=Resources(resources), threads=1, name="job"),
                                  logger)

    toy_train = slurm_resources(unsized())
    assert partition(toy_train) == "cpu"
    assert partition({"mem_mb": profile["default-resources"]["mem_mb"], "runtime": 60, "cpus_per_task": 4}) == "cpu"
    assert partition(evaluation_resources([unsized()], "auto", checkpoints=3)) == "cpu"
    assert partition(slurm_resources(unsized(nodes=4, gpus_per_node=8))) == "gpu"
    assert partition(evaluation_resources([unsized(gpus_per_node=8)], "auto", checkpoints=3)) == "gpu"
    assert "slurm_partition" not in profile["default-resources"]  # it would override the selection
