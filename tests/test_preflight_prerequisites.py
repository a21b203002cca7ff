"""What a DAG needs from outside it is named when it starts (``preflight.check_prerequisites``):
every benchmark root it neither makes nor fetches, and a Hugging Face token where it downloads
from a gated hub repo. A dry run plans before the data exist, so it warns; a real run is refused
before its first job, naming every missing thing, each with its config key."""
from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from mobileclip_repro import preflight
from mobileclip_repro.config import ConfigError
from mobileclip_repro.preflight import check_prerequisites, hub_repos, load_experiment

ROOT_MISSING = r"config key 'evaluation\.benchmarks\.{}\.root': benchmark '{}': .* does not exist"


@pytest.fixture
def hub_experiment(repo_root):
    """The paper's DataComp-12M experiment: hub data, three benchmark sets on no disk here."""
    return load_experiment(repo_root / "configs" / "paper" / "datacomp12m.yaml")


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    preflight.hub_gating.cache_clear()  # each test's hub answers afresh


def _hub_says(monkeypatch, gating: dict):
    asked = []
    monkeypatch.setattr(preflight, "hub_gating", lambda repo: asked.append(repo) or gating.get(repo, False))
    return asked


def test_the_repos_are_the_ones_the_jobs_to_run_download_from(hub_experiment):
    data = {"mlfoundations/DataComp-12M": "data.hub.datacomp_repo", "apple/DataCompDR-12M": "data.hub.dr_repo"}
    assert hub_repos(hub_experiment) == data
    assert hub_repos(hub_experiment, {"train", "evaluate"}) == {}, "no fetch job runs"
    with_set = {**hub_experiment, "evaluation": {**hub_experiment["evaluation"], "benchmarks": [
        {"name": "cars", "hub_repo": "djghosh/wds_cars_test", "root": "x"}]}}
    assert hub_repos(with_set, {"fetch_benchmark"}) == {"djghosh/wds_cars_test": "evaluation.benchmarks.0.hub_repo"}


def test_a_dry_run_names_every_missing_root_and_credential_as_warnings(hub_experiment, no_token, monkeypatch):
    _hub_says(monkeypatch, {"apple/DataCompDR-12M": "manual"})
    warnings = check_prerequisites(hub_experiment, dry_run=True)
    assert len(warnings) == 4, warnings
    for position, name in enumerate(["imagenet1k", "flickr30k", "mscoco"]):
        assert re.match(ROOT_MISSING.format(position, name), warnings[position])
    assert re.match(r"config key 'data\.hub\.dr_repo': apple/DataCompDR-12M is a gated repo on the hub \(manual "
                    r"approval\) and no Hugging Face token is set \(HF_TOKEN, or the token file .*no-token", warnings[3])
    assert all(line.endswith("a real run stops here, before its first job") for line in warnings)


def test_a_real_run_is_refused_naming_all_of_them(hub_experiment, no_token, monkeypatch):
    _hub_says(monkeypatch, {"apple/DataCompDR-12M": "auto"})
    with pytest.raises(ConfigError) as refused:
        check_prerequisites(hub_experiment, {"fetch", "train", "evaluate"})
    lines = str(refused.value).splitlines()
    assert len(lines) == 4 and "'data.hub.dr_repo'" in lines[3], lines


def test_roots_matter_only_where_evaluation_runs_and_a_token_only_where_a_fetch_does(hub_experiment, no_token,
                                                                                     monkeypatch):
    asked = _hub_says(monkeypatch, {"apple/DataCompDR-12M": "auto"})
    assert check_prerequisites(hub_experiment, {"train"}) == []
    assert asked == []


def test_with_a_token_the_hub_is_not_asked(hub_experiment, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    asked = _hub_says(monkeypatch, {"apple/DataCompDR-12M": "manual"})
    assert check_prerequisites(hub_experiment, {"fetch"}) == []
    assert asked == []


def test_a_hub_that_does_not_answer_is_a_warning_not_a_refusal(hub_experiment, no_token, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    warnings = check_prerequisites(hub_experiment, {"fetch"})
    assert len(warnings) == 1
    assert re.match(r"no Hugging Face token is set .* the hub did not say whether mlfoundations/DataComp-12M, "
                    r"apple/DataCompDR-12M are gated", warnings[0])


def test_toy_experiments_need_nothing_from_outside(repo_root, monkeypatch):
    asked = _hub_says(monkeypatch, {})
    toy = load_experiment(repo_root / "configs" / "toy.yaml")
    assert check_prerequisites(toy, dry_run=True) == [] and check_prerequisites(toy, {"evaluate"}) == []
    assert asked == []


# -- through Snakemake, the hub answering from 127.0.0.1 ------------------------------------------

@contextmanager
def hub_answering(gated: dict[str, str]):
    """A hub whose repo-info API says which dataset repos are gated (every other path: 404)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            match = re.fullmatch(r"/api/datasets/([^/]+/[^/?]+)(\?.*)?", self.path)
            if not match:
                self.send_error(404)
                return
            body = json.dumps({"id": match[1], "private": False, "gated": gated.get(match[1], False)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _snakemake(snakemake_cmd, repo_root, tmp_path, endpoint, *args):
    missing = tmp_path / "imagenet1k"
    overlay = {"results_dir": str(tmp_path / "results"), "evaluation": {"benchmarks": [
        {"name": "imagenet1k", "dataset": "imagenet1k", "task": "zeroshot_classification", "root": str(missing)}]}}
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    env = {key: value for key, value in os.environ.items() if key != "HF_TOKEN"}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1,localhost",
               HF_TOKEN_PATH=str(tmp_path / "no-token"))
    result = subprocess.run([*snakemake_cmd, *args, "--configfile", "configs/paper/datacomp12m.yaml",
                             str(tmp_path / "overlay.yaml")], cwd=repo_root, capture_output=True, text=True,
                            timeout=300, env=env)
    return result, result.stdout + result.stderr, missing


GATED_DR = (r"config key 'data\.hub\.dr_repo': apple/DataCompDR-12M is a gated repo on the hub \(manual "
            r"approval\) and no Hugging Face token is set")


def test_snakemake_dry_run_warns_of_the_missing_root_and_token_and_plans(snakemake_cmd, repo_root, tmp_path):
    with hub_answering({"apple/DataCompDR-12M": "manual"}) as endpoint:
        result, output, missing = _snakemake(snakemake_cmd, repo_root, tmp_path, endpoint, "-n")
    assert result.returncode == 0, output[-3000:]
    assert re.search(rf"benchmark 'imagenet1k': {re.escape(str(missing))} does not exist .*a real run stops here",
                     output), output[-3000:]
    assert re.search(GATED_DR, output), output[-3000:]
    assert "rule fetch" in output or "fetch" in output, "the plan is still printed"


def test_snakemake_refuses_a_real_run_before_its_first_job(snakemake_cmd, repo_root, tmp_path):
    with hub_answering({"apple/DataCompDR-12M": "manual"}) as endpoint:
        result, output, missing = _snakemake(snakemake_cmd, repo_root, tmp_path, endpoint, "--cores", "1")
    assert result.returncode != 0
    assert re.search(rf"invalid config: config key 'evaluation.benchmarks.0.root': benchmark 'imagenet1k': "
                     rf"{re.escape(str(missing))} does not exist", output), output[-3000:]
    assert re.search(GATED_DR, output), output[-3000:]
    assert not (tmp_path / "results" / "logs").exists(), "no job ran"
