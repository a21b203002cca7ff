"""Every config error before the first job, naming the key (issue 10, item 5).

Integers where the schema means integers, model names that exist, a reinforcement JSON in
Apple's format, teacher widths that match the teachers, DataCompDR shards on disk made with
the config's settings: each fails when the experiment loads (``preflight.load_experiment``, what the
DAG, ``validate-config``, ``plan``, ``cost`` and ``train --config`` call), so ``snakemake -n`` stops before
any job with a message naming the key. ``validate-config`` prints that message, not a
traceback, and ``train --config X --run-name Y`` passes through torchrun's parser.

So do values that validate but make no sense (issue 25, item 5): a negative gradient clip, a
warm-up longer than the run, retrieval without recall@1, more data workers than shards without
resampling, local data or benchmark roots that are not there, class names that miss labels.
"""
from __future__ import annotations

import copy
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from mobileclip_repro import preflight, shards
from mobileclip_repro.config import REPO_ROOT, ConfigError, read_yaml, resolve_run
from mobileclip_repro.preflight import load_experiment

TOY_JSON = json.loads((REPO_ROOT / "configs" / "reinforce" / "toy.json").read_text())


@pytest.fixture
def toy(tmp_path) -> dict:
    """configs/toy.yaml with its outputs under tmp_path (a JSON round trip unshares the YAML anchors)."""
    config = json.loads(json.dumps(yaml.safe_load((REPO_ROOT / "configs" / "toy.yaml").read_text())))
    config["results_dir"] = str(tmp_path / "results")
    return config


def _reinforce_json(tmp_path: Path, **changes) -> str:
    path = tmp_path / "reinforce.json"
    path.write_text(json.dumps({**TOY_JSON, **changes}))
    return str(path)


def _dr_shard(dr_dir: Path, *, num_samples: int = 5, width: int = 128, syn: int = 5,
              manifest: dict | None = None) -> Path:
    """One DataCompDR shard of 3 samples with these settings (and a reinforce-style manifest, if given)."""
    path = dr_dir / shards.shard_name(0)
    with shards.atomic_tar_writer(path, mtime=0) as writer:
        for index in range(3):
            writer.write(shards.dr_record(shards.sample_key(0, index), f"{index:032x}", "0" * 64, "http://x",
                                          [f"syn {s}" for s in range(syn)], [[[0, 0, 8, 8], []]] * num_samples,
                                          np.ones((num_samples, width), np.float32),
                                          np.ones((1 + syn, width), np.float32)))
    if manifest is not None:
        made_with = {"teachers": ["toy-teacher", "toy-teacher"], "pretrained_entries": ["teacher_a.pt", "teacher_b.pt"],
                     "num_samples": 5, "captioner": "world", "num_syn_captions": 5, "seed": 0, "dtype": "float32",
                     "dims": [64, 64]}
        shards.write_json_atomic(path.with_name(path.name + ".manifest.json"), {**made_with, **manifest})
    return path


def _tar(path: Path, members: dict[str, bytes] | None = None) -> Path:
    """A tar with these members (name -> bytes), made with tarfile alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, data in (members or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _classification_set(root: Path, labels: list[int], classnames: list[str]) -> Path:
    """A zero-shot classification set in clip_benchmark's webdataset layout: one shard of these
    labels (the images are placeholders: the checks never decode them), these class names."""
    members = {}
    for index, label in enumerate(labels):
        members[f"s{index:04d}.jpg"] = b"not decoded"
        members[f"s{index:04d}.cls"] = str(label).encode()
    _tar(root / "test" / "0.tar", members)
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("".join(f"{name}\n" for name in classnames))
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    return root


def _with_benchmark(config: dict, **benchmark) -> dict:
    """``config`` with one more benchmark, a classification set at a root the DAG neither makes nor fetches."""
    config["evaluation"]["benchmarks"].append(
        {"name": "extra", "dataset": "wds/extra", "task": "zeroshot_classification", **benchmark})
    return config


def _set(config: dict, path: tuple, value) -> dict:
    target = config
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return config


# -- integers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path, value", [
    (("runs", "toy_dr", "global_batch_size"), 128.0),
    (("data", "toy", "train_samples"), 4000.0),
    (("runs", "toy_plain", "workers"), True),
    (("runs", "toy_dr", "distill", "teacher_dimension"), [64.0, 64]),
])
def test_an_integer_written_as_a_float_or_bool_is_refused(toy, path, value):
    key = ".".join(map(str, path)) + (".0" if isinstance(value, list) else "")
    with pytest.raises(ConfigError, match=rf"config key '{key}': {value[0] if isinstance(value, list) else value} "
                                          r"is not of type 'integer'"):
        load_experiment(_set(toy, path, value))


# -- NaN and infinities --------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("path, value, key, shown", [
    (("runs", "toy_dr", "lr"), NAN, "runs.toy_dr.lr", "nan"),
    (("runs", "toy_dr", "eps"), INF, "runs.toy_dr.eps", "inf"),
    (("runs", "toy_dr", "grad_clip_norm"), NAN, "runs.toy_dr.grad_clip_norm", "nan"),  # passes minimum: 0
    (("runs", "toy_plain", "distill", "loss_weights"), [0.0, INF], "runs.toy_plain.distill.loss_weights.1", "inf"),
    (("runs", "toy_dr", "distill", "logit_scale"), [100, NAN], "runs.toy_dr.distill.logit_scale.1", "nan"),
    (("teachers", "teacher_b.pt", "weight_decay"), -INF, "teachers.teacher_b.pt.weight_decay", "-inf"),
    (("data", "toy", "alt_text_mix", "full"), NAN, "data.toy.alt_text_mix.full", "nan"),
    (("reinforcement", "batch_size"), INF, "reinforcement.batch_size", "inf"),
    (("reinforcement", "variants"), {"weak": {"num_syn_captions": INF}},
     "reinforcement.variants.weak.num_syn_captions", "inf"),
    (("evaluation", "batch_size"), INF, "evaluation.batch_size", "inf"),
    (("report", "title"), NAN, "report.title", "nan"),
])
def test_nan_and_infinity_are_refused_anywhere_in_the_config_naming_the_key(toy, path, value, key, shown):
    """Every number, every section: a schema bound cannot catch NaN (it compares false with all),
    and no setting has a use for infinity."""
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}': {shown} is not a finite number"):
        load_experiment(_set(toy, path, value))


def test_yamls_nan_and_infinities_are_refused_when_a_config_file_loads(toy, tmp_path):
    for written, shown in ((".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf"), (".NaN", "nan")):
        text = yaml.safe_dump(toy).replace("lr: 0.002\n", f"lr: {written}\n", 1)
        assert f"lr: {written}" in text
        (tmp_path / "config.yaml").write_text(text)
        with pytest.raises(ConfigError, match=rf"config key 'runs.toy_dr.lr': {shown} is not a finite number"):
            load_experiment(tmp_path / "config.yaml")


def test_a_schema_number_is_finite_for_every_strict_validator():
    from mobileclip_repro.config import strict_validator

    number = strict_validator()({"type": "number", "minimum": 0})
    assert number.is_valid(0.5) and number.is_valid(3) and number.is_valid(10 ** 400)
    assert not any(number.is_valid(value) for value in (float("nan"), float("inf"), float("-inf"), True))


@pytest.mark.parametrize("augmentation, key, shown", [
    ({"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.26, NAN, 0.27]}}, "normalize.std.1", "nan"),
    ({"random_resized_crop": {"size": 32, "scale": [0.08, INF]}}, "random_resized_crop.scale.1", "inf"),
])
def test_nan_and_infinity_in_the_reinforcement_json_are_refused_naming_the_key(toy, tmp_path, augmentation, key,
                                                                              shown):
    image_augmentation = {**TOY_JSON["reinforce"]["image_augmentation"], **augmentation}
    toy["reinforcement"]["config"] = _reinforce_json(tmp_path, reinforce={"image_augmentation": image_augmentation})
    assert re.search(r"NaN|Infinity", Path(toy["reinforcement"]["config"]).read_text())  # what json writes and reads
    with pytest.raises(ConfigError, match=rf"config key 'reinforcement.config': .*reinforce\.json: "
                                          rf"'reinforce.image_augmentation.{re.escape(key)}': {shown} is not a "
                                          rf"finite number"):
        load_experiment(toy)


def test_a_run_spec_given_to_train_with_nan_is_refused_naming_the_key_and_run(toy, tmp_path, capsys):
    from mobileclip_repro import cli
    from mobileclip_repro.config import load_run_spec

    spec = resolve_run(load_experiment(toy), "toy_plain", seed=0)
    assert load_run_spec(json.dumps(spec)) == spec
    spec["grad_clip_norm"] = float("nan")
    text = json.dumps(spec)  # what a hand-written --spec may hold: NaN, which json reads
    with pytest.raises(ConfigError, match=r"config key 'grad_clip_norm' of run 'toy_plain' \(--spec\): nan is not "
                                          r"a finite number"):
        load_run_spec(text)
    spec["grad_clip_norm"], spec["distill"]["loss_weights"] = 1.0, [0.0, float("inf")]
    with pytest.raises(ConfigError, match=r"config key 'distill.loss_weights.1' of run 'toy_plain'"):
        load_run_spec(json.dumps(spec))
    # the command says so before any training: exit 2, no run folder
    assert cli.main(["train", "--spec", text, "--out-dir", str(tmp_path / "run")]) == 2
    assert "config key 'grad_clip_norm' of run 'toy_plain' (--spec): nan is not a finite number" in \
        capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# -- model names ------------------------------------------------------------------------------

@pytest.mark.parametrize("path, name, key", [
    (("runs", "toy_dr", "model"), "toy-studnet", "runs.toy_dr.model"),
    (("teachers", "teacher_a.pt", "model"), "ViT-B-17", "teachers.teacher_a.pt.model"),
    (("reinforcement", "captioner"), {"coca": {"model_name": "toy-cocoa", "pretrained": "coca.pt"}},
     "reinforcement.captioner.coca.model_name"),
])
def test_a_model_name_open_clip_does_not_know_is_refused(toy, path, name, key):
    with pytest.raises(ConfigError, match=rf"config key '{key}': unknown model '"):
        load_experiment(_set(toy, path, name))


def test_a_misspelt_model_name_gets_a_suggestion(toy):
    with pytest.raises(ConfigError, match=r"unknown model 'toy-studnet'.*did you mean 'toy-student'"):
        load_experiment(_set(toy, ("runs", "toy_dr", "model"), "toy-studnet"))


def test_open_clip_models_and_hub_names_pass(toy):
    toy["runs"]["toy_plain"]["model"] = "ViT-B-16"
    toy["runs"]["toy_dr"]["model"] = "hf-hub:timm/ViT-B-16-SigLIP"  # only knowable at load time
    load_experiment(toy)


def test_the_registry_is_open_clips_own_plus_the_project_configs():
    import open_clip

    from mobileclip_repro.models import register_project_models

    register_project_models()
    assert sorted(preflight.known_models()) == sorted(open_clip.list_models())
    assert preflight.known_models()["toy-teacher"]["embed_dim"] == open_clip.get_model_config("toy-teacher")["embed_dim"]


# -- the reinforcement JSON -------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"num_samples": "five"}, r"'num_samples': 'five' is not of type 'integer'"),
    ({"num_samples": 5.0}, r"'num_samples': 5\.0 is not of type 'integer'"),
    ({"num_samples": 0}, r"'num_samples': 0 is less than the minimum of 1"),
    ({"pretrained": "teacher_a.pt"}, r"'pretrained' lists 1 entries for 2 teachers in 'model_name'"),
    ({"pretrained": "teacher_a.pt,"}, r"'pretrained': 'teacher_a.pt,' does not match"),
    ({"model_name": "toy-teacher,toy-teachr"}, r"'model_name': unknown model 'toy-teachr'"),
    ({"reinforce": {"image_augmentation": {**TOY_JSON["reinforce"]["image_augmentation"],
                                           "random_resized_crop": {"size": 32, "interpolation": "cubic"}}}},
     r"'reinforce.image_augmentation.random_resized_crop.interpolation': 'cubic' is not one of"),
    ({"reinforce": {"image_augmentation": {**TOY_JSON["reinforce"]["image_augmentation"], "mixup": {}}}},
     r"'reinforce.image_augmentation': Additional properties are not allowed \('mixup'"),
    ({"reinforce": {}}, r"'reinforce': 'image_augmentation' is a required property"),
])
def test_a_reinforcement_json_not_in_apples_format_is_refused(toy, tmp_path, changes, message):
    toy["reinforcement"]["config"] = _reinforce_json(tmp_path, **changes)
    with pytest.raises(ConfigError, match=rf"config key 'reinforcement.config': .*reinforce\.json: {message}"):
        load_experiment(toy)


def test_a_reinforcement_json_that_does_not_exist_is_refused(toy, tmp_path):
    toy["reinforcement"]["config"] = str(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match=r"config key 'reinforcement.config': reinforcement JSON .*nope.json.* not found"):
        load_experiment(toy)


def test_the_shipped_reinforcement_jsons_pass_and_interpolations_are_torchvisions():
    from torchvision.transforms import InterpolationMode

    for path in sorted((REPO_ROOT / "configs" / "reinforce").glob("*.json")):
        assert preflight.load_reinforce_json(path)["num_samples"] >= 1
    schema = yaml.safe_load(preflight.REINFORCE_SCHEMA_PATH.read_text())
    crop = schema["properties"]["reinforce"]["properties"]["image_augmentation"]["properties"]["random_resized_crop"]
    assert crop["properties"]["interpolation"]["enum"] == [mode.value for mode in InterpolationMode]


# -- teacher widths -----------------------------------------------------------------------------

@pytest.mark.parametrize("dimension", [[768, 768], [32, 96], [64]])
def test_a_teacher_dimension_other_than_the_teachers_widths_is_refused(toy, dimension):
    toy["runs"]["toy_dr"]["distill"]["teacher_dimension"] = dimension
    with pytest.raises(ConfigError, match=r"config key 'runs.toy_dr.distill.teacher_dimension': .* does not match "
                                          r"the teachers of .*embed_dim 64 \+ 64\); set it to \[64, 64\]"):
        load_experiment(toy)


def test_the_paper_teachers_are_768_wide(repo_root):
    for name in ("datacompdr12m", "datacompdr1b"):
        config = load_experiment(repo_root / "configs" / "paper" / f"{name}.yaml")
        reinforce = preflight.load_reinforce_json(config["reinforcement"]["config"])
        assert preflight.teacher_dims(reinforce) == [768, 768]


# -- DataCompDR shards already on disk -------------------------------------------------------------

def _dr_dir(toy: dict) -> Path:
    return Path(toy["results_dir"]) / "data" / "datacompdr"


def _published(config: dict) -> dict:
    """``config`` training on DataCompDR shards the DAG does not make: local data, generate: false."""
    results = Path(config["results_dir"])
    config["data"].update(source="local", datacomp_dir=str(results / "data" / "datacomp"),
                          dr_dir=str(_dr_dir(config)))
    config["reinforcement"]["generate"] = False
    _tar(results / "data" / "datacomp" / shards.shard_name(0))  # local data is on disk
    # the toy sets are the toy world's: local data has none, so these runs evaluate on none
    config["evaluation"]["benchmarks"] = []
    return config


def test_dr_shards_made_with_the_configs_settings_pass(toy):
    _dr_shard(_dr_dir(toy), manifest={})
    load_experiment(_published(toy))


@pytest.mark.parametrize("shard, message", [
    (dict(manifest={"num_samples": 3}), r"'reinforcement.config': .* made with num_samples 3 \(.*manifest.json\), "
                                        r"the config has 5"),
    (dict(num_samples=3), r"'reinforcement.config': .* made with num_samples 3 \(.*00000000.tar, first samples\)"),
    (dict(manifest={"teachers": ["toy-student", "toy-teacher"]}), r"'reinforcement.config': .* made with teachers"),
    (dict(width=16), r"'runs.toy_dr.distill.teacher_dimension': .* made with 16-D embeddings"),
])
def test_shards_the_dag_does_not_make_are_refused_when_made_otherwise(toy, shard, message):
    """Published or local DataCompDR shards are not the DAG's to redo: other settings stop it at the start."""
    _dr_shard(_dr_dir(toy), **shard)
    with pytest.raises(ConfigError, match=rf"config key {message}"):
        load_experiment(_published(toy))


@pytest.mark.parametrize("shard", [dict(manifest={"seed": 7}), dict(syn=2), dict(num_samples=3)])
def test_the_dags_own_shards_made_otherwise_are_left_to_its_reinforce_job(toy, shard):
    """With generate: true a changed setting reruns the reinforce job (its params), which redoes
    the shards made with the old one (tests/test_reinforce.py), so the config loads."""
    _dr_shard(_dr_dir(toy), **shard)
    load_experiment(toy)


def test_dr_shards_that_appear_later_are_checked_when_the_train_job_starts(toy):
    spec = resolve_run(load_experiment(toy), "toy_dr", seed=0)  # nothing on disk yet: the DAG starts
    _dr_shard(_dr_dir(toy), num_samples=3)          # then a fetch brings shards made otherwise
    with pytest.raises(ConfigError, match=r"config key 'reinforcement.config': .* made with num_samples 3"):
        preflight.check_run_shards(spec)


def test_the_manifest_fields_compared_are_ones_reinforce_records():
    from mobileclip_repro.reinforce.reinforce import CONTENT_SETTINGS

    config = load_experiment(REPO_ROOT / "configs" / "toy.yaml")
    reinforce = preflight.load_reinforce_json(config["reinforcement"]["config"])
    compared = preflight.json_settings(reinforce)
    assert set(compared) <= set(CONTENT_SETTINGS)


# -- values that validate but make no sense (issue 25, item 5) ---------------------------------------

@pytest.mark.parametrize("norm", [None, 0, 0.5])
def test_no_clipping_or_a_positive_grad_clip_norm_passes(toy, norm):
    assert load_experiment(_set(toy, ("runs", "toy_dr", "grad_clip_norm"), norm))["runs"]["toy_dr"]["grad_clip_norm"] == norm


def test_a_negative_grad_clip_norm_is_refused(toy):
    """clip_grad_norm_ scales the gradient by max_norm / norm: a negative one flips every step."""
    with pytest.raises(ConfigError, match=r"config key 'runs.toy_dr.grad_clip_norm': -1 is less than the minimum of 0"):
        load_experiment(_set(toy, ("runs", "toy_dr", "grad_clip_norm"), -1))


@pytest.mark.parametrize("path, key, steps", [
    (("runs", "toy_dr", "warmup_steps"), "runs.toy_dr.warmup_steps", 256),  # 32768 / 128
    (("teachers", "teacher_b.pt", "warmup_steps"), "teachers.teacher_b.pt.warmup_steps", 192),  # 24576 / 128
])
def test_a_warmup_longer_than_the_run_is_refused(toy, path, key, steps):
    load_experiment(_set(toy, path, steps))  # warming up for the whole run still reaches lr
    with pytest.raises(ConfigError, match=rf"config key '{key}': {steps + 1} warm-up steps are more than the "
                                          rf"run's {steps} steps"):
        load_experiment(_set(toy, path, steps + 1))


def test_a_retrieval_benchmark_without_recall_at_1_is_refused_in_a_config_and_on_the_command_line(toy):
    from mobileclip_repro.evaluate.evaluate import parse_benchmark_specs

    with pytest.raises(ConfigError, match=r"config key 'evaluation.benchmarks.1.recall_k': \[5, 10\] has no 1; "
                                          r"retrieval's main metric is mean_recall@1"):
        load_experiment(_set(toy, ("evaluation", "benchmarks", 1, "recall_k"), [5, 10]))
    spec = {"name": "r", "dataset": "wds/r", "task": "zeroshot_retrieval", "root": "r", "recall_k": [5]}
    with pytest.raises(ConfigError, match=r"config key 'benchmarks.0.recall_k': \[5\] has no 1"):
        parse_benchmark_specs([spec])
    # classification ignores recall_k
    parse_benchmark_specs([{**spec, "dataset": "wds/c", "task": "zeroshot_classification"}])


def test_a_benchmark_root_the_dag_neither_makes_nor_fetches_must_exist(toy, tmp_path):
    missing = tmp_path / "sets" / "extra"
    with pytest.raises(ConfigError, match=rf"config key 'evaluation.benchmarks.2.root': benchmark 'extra': "
                                          rf"{re.escape(str(missing))} does not exist"):
        load_experiment(_with_benchmark(copy.deepcopy(toy), root=str(missing)))
    # a root that a fetch_benchmark job fills, and one that is there, pass
    load_experiment(_with_benchmark(copy.deepcopy(toy), root=str(missing), hub_repo="clip-benchmark/wds_extra"))
    load_experiment(_with_benchmark(toy, root=str(_classification_set(missing, [0, 1], ["a", "b"]))))


def test_a_hub_experiment_loads_before_its_benchmark_roots_exist(repo_root):
    """Planned wherever it is planned (tests/test_dag.py plans the paper configs here); its roots
    are checked when the DAG is about to run an evaluation (the next test)."""
    config = load_experiment(repo_root / "configs" / "paper" / "datacomp12m.yaml")
    assert not any(Path(benchmark["root"]).exists() for benchmark in config["evaluation"]["benchmarks"])


def test_a_hub_experiment_with_a_missing_benchmark_root_is_refused_before_its_first_job(repo_root, snakemake_cmd,
                                                                                       tmp_path):
    missing = tmp_path / "imagenet1k"
    overlay = {"results_dir": str(tmp_path / "results"), "evaluation": {"benchmarks": [
        {"name": "imagenet1k", "dataset": "imagenet1k", "task": "zeroshot_classification", "root": str(missing)}]}}
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    result = subprocess.run([*snakemake_cmd, "--cores", "1", "--configfile", "configs/paper/datacomp12m.yaml",
                             str(tmp_path / "overlay.yaml")], cwd=repo_root, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # a fetch, if one ran, fails fast
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert re.search(rf"invalid config: config key 'evaluation.benchmarks.0.root': benchmark 'imagenet1k': "
                     rf"{re.escape(str(missing))} does not exist", output), output[-3000:]
    assert "rule fetch" not in output and not (tmp_path / "results" / "logs").exists(), "no job ran"


@pytest.mark.parametrize("resampled, passes", [(False, False), (True, True)])
def test_more_workers_than_the_shards_allow_are_refused_without_resampling(toy, resampled, passes):
    toy["runs"]["toy_plain"].update(workers=5, dataset_resampled=resampled)  # 4000 samples / 1000 per shard
    if passes:
        load_experiment(toy)
        return
    with pytest.raises(ConfigError, match=r"config key 'runs.toy_plain.workers': 5 workers x 1 processes need 5 "
                                          r"shards .* the run has 4 \(data.toy.train_samples / "
                                          r"data.toy.samples_per_shard\); use at most 4 workers"):
        load_experiment(toy)


def test_workers_are_counted_against_the_hub_spec_and_the_local_folder(toy, tmp_path):
    toy["runs"]["toy_plain"].update(workers=2, dataset_resampled=False, gpus_per_node=2)
    toy["runs"]["toy_dr"]["dataset_resampled"] = True
    hub = _set(copy.deepcopy(toy), ("data", "source"), "hub")
    hub["data"]["hub"] = {"shards": "{00000000..00000002}"}
    hub["reinforcement"]["generate"] = True
    with pytest.raises(ConfigError, match=r"'runs.toy_plain.workers': 2 workers x 2 processes need 4 shards .*"
                                          r"the run has 3 \(data.hub.shards\); use at most 1 workers"):
        load_experiment(hub)
    local = _published(toy)
    _dr_shard(_dr_dir(local), manifest={})
    with pytest.raises(ConfigError, match=r"'runs.toy_plain.workers': .* the run has 1 \(.*datacomp\); use more "
                                          r"shards or dataset_resampled: true"):
        load_experiment(local)


@pytest.mark.parametrize("make, message", [
    (lambda folder: None, "does not exist"),
    (lambda folder: folder.mkdir(parents=True), "holds no .tar shards"),
])
def test_local_data_must_be_on_disk_when_the_config_loads(toy, tmp_path, make, message):
    config = _published(toy)
    folder = tmp_path / "elsewhere"
    make(folder)
    config["data"]["datacomp_dir"] = str(folder)
    with pytest.raises(ConfigError, match=rf"config key 'data.datacomp_dir': the local DataComp shards' folder "
                                          rf"{re.escape(str(folder))} {message}"):
        load_experiment(config)


def test_local_dr_runs_need_the_datacompdr_folder_too(toy):
    config = _published(toy)  # no DataCompDR shard written
    with pytest.raises(ConfigError, match=r"config key 'data.dr_dir': the DataCompDR shards' folder of "
                                          r"reinforcement 'default' .*datacompdr does not exist"):
        load_experiment(config)


@pytest.mark.parametrize("classnames, message", [
    (["a", "b"], r"lists 2 class names, but .*0.tar: s0003.cls has label 3 \(labels index the list from 0\)"),
    ([], r"lists no class names"),
])
def test_a_classification_set_whose_class_names_do_not_cover_its_labels_is_refused(toy, tmp_path, classnames,
                                                                                  message):
    root = _classification_set(tmp_path / "extra", [0, 1, 2, 3], classnames)
    with pytest.raises(ConfigError, match=rf"config key 'evaluation.benchmarks.2.root': benchmark 'extra': "
                                          rf"{re.escape(str(root / 'classnames.txt'))} {message}"):
        load_experiment(_with_benchmark(toy, root=str(root)))


def test_a_set_being_fetched_is_left_to_its_fetch_and_evaluate_jobs(toy, tmp_path):
    root = _classification_set(tmp_path / "extra", [0, 3], ["a"])
    (root / "test" / "nshards.txt").write_text("2\n")  # shard 1 not there yet
    load_experiment(_with_benchmark(toy, root=str(root), hub_repo="clip-benchmark/wds_extra"))


# -- the command line -----------------------------------------------------------------------------

def test_validate_config_prints_the_message_not_a_traceback(toy, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_set(toy, ("runs", "toy_dr", "global_batch_size"), 128.0)))
    result = subprocess.run([sys.executable, "-m", "mobileclip_repro", "validate-config", str(path)],
                            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == ("invalid config: config key 'runs.toy_dr.global_batch_size': "
                                     "128.0 is not of type 'integer'")
    assert "Traceback" not in result.stdout + result.stderr


MALFORMED_FILES = {
    "a YAML syntax error": ("name: toy\nruns:\n  toy_dr: {model: toy-student\n", r":4:1: while parsing a flow mapping"),
    "a python tag": ("name: !!python/object/apply:os.system ['echo ran']\n",
                     r":1:7: could not determine a constructor for the tag .*python/object/apply"),
    "a list at the top level": ("- name: toy\n", r": the top level must be a mapping of config keys, got a list"),
    "a key given twice": ("name: toy\nresults_dir: a\nname: other\n",
                          r":3:1: duplicate key 'name' \(first given on line 1\)"),
}


@pytest.mark.parametrize("case", list(MALFORMED_FILES))
@pytest.mark.parametrize("command", ["validate-config", "train"])
def test_a_malformed_config_file_is_one_line_naming_file_and_line(tmp_path, case, command):
    text, message = MALFORMED_FILES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    argv = [str(path)] if command == "validate-config" else ["--config", str(path), "--run-name", "toy_dr",
                                                              "--out-dir", str(tmp_path / "run")]
    result = subprocess.run([sys.executable, "-m", "mobileclip_repro", command, *argv],
                            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert re.fullmatch(rf"(mobileclip-repro train: )?invalid config: {re.escape(str(path))}{message}.*", line), line
    assert not (tmp_path / "run").exists()


def test_merge_keys_may_override_what_they_bring_in(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {model: toy-student, lr: 0.1}\nother:\n  <<: *base\n  lr: 0.2\n")
    assert read_yaml(path)["other"] == {"model": "toy-student", "lr": 0.2}


def test_a_key_given_twice_in_a_configfile_stops_the_dag_naming_the_line(snakemake_cmd, repo_root, tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("report:\n  title: one\n  title: two\n")
    result = subprocess.run([*snakemake_cmd, "-n", "--configfile", "configs/toy-smoke.yaml", str(overlay)],
                            cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"invalid config: {overlay}:3:3: duplicate key 'title' (first given on line 2)" in result.stdout + result.stderr


def test_torchrun_hands_every_train_option_to_the_trainer_unchanged():
    """torchrun parses the whole command line first, abbreviations included (its --run-path took --run)."""
    import argparse

    from torch.distributed.run import get_args_parser

    from mobileclip_repro.train.cli import train_arguments

    def launch(*script_args):
        return get_args_parser().parse_args(["--standalone", "--nproc-per-node", "1", "-m", "mobileclip_repro",
                                             "train", *script_args])

    parser = argparse.ArgumentParser()
    train_arguments(parser)
    command = ["--config", "configs/toy.yaml", "--run-name", "toy_dr", "--out-dir", "runs/x"]
    launched = launch(*command)
    assert launched.module and launched.training_script == "mobileclip_repro"
    assert launched.training_script_args == ["train", *command]
    assert parser.parse_args(launched.training_script_args[1:]).run == "toy_dr"
    # every other option of the trainer passes through as well
    ours = [option for action in parser._actions for option in action.option_strings
            if option.startswith("--") and option not in ("--help", "--run")]
    assert "--run-name" in ours
    everything = [arg for option in ours for arg in (option, "x")]
    assert launch(*everything).training_script_args == ["train", *everything]


# -- at DAG start ---------------------------------------------------------------------------------

BAD_CONFIGS = {
    # name: (change to configs/toy.yaml, what the message must name)
    "integer written as float": (lambda c, tmp: _set(c, ("runs", "toy_dr", "global_batch_size"), 128.0),
                                 r"'runs.toy_dr.global_batch_size': 128.0 is not of type 'integer'"),
    "unknown model": (lambda c, tmp: _set(c, ("runs", "toy_dr", "model"), "toy-studnet"),
                      r"'runs.toy_dr.model': unknown model 'toy-studnet'"),
    "num_samples not an integer": (
        lambda c, tmp: _set(c, ("reinforcement", "config"), _reinforce_json(tmp, num_samples="five")),
        r"'reinforcement.config': .*'num_samples': 'five' is not of type 'integer'"),
    "reinforcement JSON missing": (lambda c, tmp: _set(c, ("reinforcement", "config"), str(tmp / "nope.json")),
                                   r"'reinforcement.config': reinforcement JSON .*nope.json.* not found"),
    "teacher_dimension not the teachers'": (
        lambda c, tmp: _set(c, ("runs", "toy_dr", "distill", "teacher_dimension"), [768, 768]),
        r"'runs.toy_dr.distill.teacher_dimension': \[768, 768\] does not match the teachers"),
    "published DR shards with another num_samples": (
        lambda c, tmp: _dr_shard(_dr_dir(c), num_samples=3) and _published(c),
        r"'reinforcement.config': the DataCompDR shards in .* were made with num_samples 3"),
    # values that validate but make no sense (issue 25, item 5)
    "negative grad_clip_norm": (lambda c, tmp: _set(c, ("runs", "toy_dr", "grad_clip_norm"), -1),
                                r"'runs.toy_dr.grad_clip_norm': -1 is less than the minimum of 0"),
    "warm-up longer than the run": (lambda c, tmp: _set(c, ("runs", "toy_dr", "warmup_steps"), 300),
                                    r"'runs.toy_dr.warmup_steps': 300 warm-up steps are more than the run's 256"),
    "recall_k without 1": (lambda c, tmp: _set(c, ("evaluation", "benchmarks", 1, "recall_k"), [5, 10]),
                           r"'evaluation.benchmarks.1.recall_k': \[5, 10\] has no 1"),
    "benchmark root missing": (lambda c, tmp: _with_benchmark(c, root=str(tmp / "nope")),
                               r"'evaluation.benchmarks.2.root': benchmark 'extra': .*nope does not exist"),
    "more workers than shards": (
        lambda c, tmp: _set(c, ("runs", "toy_plain"), {**c["runs"]["toy_plain"], "workers": 5,
                                                       "dataset_resampled": False}),
        r"'runs.toy_plain.workers': 5 workers x 1 processes need 5 shards"),
    "local data folder missing": (
        lambda c, tmp: _set(c, ("data",), {"source": "local", "datacomp_dir": str(tmp / "nope")}),
        r"'data.datacomp_dir': the local DataComp shards' folder .*nope does not exist"),
    "classnames.txt shorter than the labels": (
        lambda c, tmp: _with_benchmark(c, root=str(_classification_set(tmp / "extra", [0, 1, 2], ["a", "b"]))),
        r"'evaluation.benchmarks.2.root': benchmark 'extra': .*extra/classnames.txt lists 2 class names, "
        r"but .* has label 2"),
    "classnames.txt empty": (
        lambda c, tmp: _with_benchmark(c, root=str(_classification_set(tmp / "extra", [0], []))),
        r"'evaluation.benchmarks.2.root': benchmark 'extra': .*extra/classnames.txt lists no class names"),
}


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory, snakemake_cmd, repo_root):
    """``snakemake -n`` on every bad config, started together (each spends ~6 s importing Snakemake)."""
    running = {}
    for name, (change, _) in BAD_CONFIGS.items():
        tmp = tmp_path_factory.mktemp("bad")
        config = json.loads(json.dumps(yaml.safe_load((repo_root / "configs" / "toy.yaml").read_text())))
        config["results_dir"] = str(tmp / "results")
        (tmp / "config.yaml").write_text(yaml.safe_dump(change(config, tmp)))
        running[name] = subprocess.Popen([*snakemake_cmd, "-n", "--configfile", str(tmp / "config.yaml")],
                                         cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return {name: (process.communicate(timeout=600)[0], process.returncode) for name, process in running.items()}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_each_bad_config_fails_snakemake_dry_run_naming_the_key(dry_runs, name):
    output, returncode = dry_runs[name]
    assert returncode != 0
    assert "invalid config: config key " in output, output[-2000:]
    assert re.search(BAD_CONFIGS[name][1], output), output[-2000:]
    assert "Job stats" not in output, "no job was planned"
