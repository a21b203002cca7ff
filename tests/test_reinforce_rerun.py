"""No finished work deleted (issue 10): the toy reinforce job, run by Snakemake, fails after its
first shard; Snakemake keeps that shard (the job's declared output is the group manifest, not
the DR directory), and the rerun reinforces only the shards that are missing.

A cut input shard is no success either (issue 31): the job fails naming it, and once the input
is fixed the rerun redoes that shard alone."""
import json
import shutil
import subprocess
import tarfile

from mobileclip_repro import toyworld

SHARDS = ["00000000", "00000001", "00000002"]


def made_upstream(results, write_toy_teachers) -> None:
    """What the stages before reinforce leave, in small (three DataComp shards of 8 samples;
    untrained teachers): Snakemake finds them done and runs the reinforce job alone."""
    toyworld.generate(results / "data", train_samples=24, samples_per_shard=8, teacher_samples=8,
                      benchmark_samples=4)
    write_toy_teachers(results / "teachers")


def run_reinforce(snakemake_cmd, repo_root, results, manifest) -> subprocess.CompletedProcess:
    return subprocess.run([*snakemake_cmd, "--cores", "2", "--configfile", "configs/toy-smoke.yaml",
                           "--config", f"results_dir={results}", "--", str(manifest)],
                          cwd=repo_root, capture_output=True, text=True, timeout=600)


def test_a_failed_reinforce_job_keeps_its_first_shard_and_the_rerun_does_only_the_rest(
        snakemake_cmd, repo_root, tmp_path, write_toy_teachers):
    results = tmp_path / "results"
    manifest, dr_dir = results / "data" / "reinforce" / "default" / "group_00000.json", results / "data" / "datacompdr"
    made_upstream(results, write_toy_teachers)
    upstream = {path: path.stat().st_mtime_ns
                for path in (results / "data" / "manifest.json", *(results / "teachers").glob("*.pt"))}

    def snakemake():
        return run_reinforce(snakemake_cmd, repo_root, results, manifest)

    # The failure: the second DR shard's path is taken by a directory, so the job reinforces the
    # first shard, then fails to move the second one into place.
    (dr_dir / f"{SHARDS[1]}.tar").mkdir(parents=True)
    failed = snakemake()
    assert failed.returncode != 0
    log = (results / "logs" / "reinforce" / "default" / "group_00000.log").read_text()
    assert "IsADirectoryError" in log and f"{SHARDS[1]}.tar" in log, log[-2000:]
    assert not manifest.exists() and not (dr_dir / f"{SHARDS[2]}.tar").exists()
    kept = {path: (path.read_bytes(), path.stat().st_mtime_ns)
            for path in (dr_dir / f"{SHARDS[0]}.tar", dr_dir / f"{SHARDS[0]}.tar.manifest.json")}

    (dr_dir / f"{SHARDS[1]}.tar").rmdir()
    rerun = snakemake()
    assert rerun.returncode == 0, (rerun.stdout[-3000:], rerun.stderr[-3000:])
    # the first shard is the one the failed job wrote, untouched; nothing upstream was redone
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in kept} == kept
    assert {path: path.stat().st_mtime_ns for path in upstream} == upstream
    log = (results / "logs" / "reinforce" / "default" / "group_00000.log").read_text()
    assert f"{SHARDS[0]}.tar: already reinforced, skipped" in log
    group = json.loads(manifest.read_text())
    assert [(entry["id"], entry["status"], entry.get("resumed", False)) for entry in group["shards"]] == [
        (SHARDS[0], "ok", True), (SHARDS[1], "ok", False), (SHARDS[2], "ok", False)]
    assert (group["totals"]["shards_resumed"], group["totals"]["shards_reinforced"]) == (1, 2)
    assert group["totals"]["written"] == 24
    assert sorted(p.name for p in dr_dir.glob("*.tar")) == [f"{shard}.tar" for shard in SHARDS]


def test_a_cut_input_shard_fails_the_reinforce_job_and_the_rerun_redoes_it_once_fixed(
        snakemake_cmd, repo_root, tmp_path, write_toy_teachers):
    results = tmp_path / "results"
    manifest, dr_dir = results / "data" / "reinforce" / "default" / "group_00000.json", results / "data" / "datacompdr"
    made_upstream(results, write_toy_teachers)
    # the second DataComp shard loses its last 3 samples and its end-of-archive blocks (an interrupted copy)
    cut = results / "data" / "datacomp" / f"{SHARDS[1]}.tar"
    intact = tmp_path / "intact.tar"
    shutil.copy(cut, intact)
    with tarfile.open(intact) as archive:
        members = archive.getmembers()
    keys = list(dict.fromkeys(member.name.partition(".")[0] for member in members))
    cut.write_bytes(intact.read_bytes()[:next(m.offset for m in members if m.name.startswith(f"{keys[5]}."))])

    def snakemake():
        return run_reinforce(snakemake_cmd, repo_root, results, manifest)

    failed = snakemake()
    assert failed.returncode != 0
    log = (results / "logs" / "reinforce" / "default" / "group_00000.log").read_text()
    assert f"error: {SHARDS[1]}.tar: the input shard is truncated" in log, log[-2000:]
    assert "error: 1 of 3 shards reinforced only in part" in log
    assert not manifest.exists(), "no group manifest, so nothing downstream trains on the partial shard"
    partial = json.loads((dr_dir / f"{SHARDS[1]}.tar.manifest.json").read_text())
    assert (partial["status"], partial["written"]) == ("partial", 5)

    shutil.copy(intact, cut)  # the input fixed
    rerun = snakemake()
    assert rerun.returncode == 0, (rerun.stdout[-3000:], rerun.stderr[-3000:])
    group = json.loads(manifest.read_text())
    assert [(entry["id"], entry["status"], entry.get("resumed", False)) for entry in group["shards"]] == [
        (SHARDS[0], "ok", True), (SHARDS[1], "ok", False), (SHARDS[2], "ok", True)]
    assert (group["totals"]["shards_partial"], group["totals"]["written"]) == (0, 24)
