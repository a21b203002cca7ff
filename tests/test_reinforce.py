"""DataCompDR generation: each stored embedding is the teachers' view of its stored
augmentation, captions embedded in the documented order, bad samples dropped and counted,
reruns deterministic and resumable, and the CoCa path producing cut captions."""
from __future__ import annotations

import copy
import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from mobileclip_repro import cli, devices, replay, toyworld
from mobileclip_repro.reinforce import reinforce
from mobileclip_repro.models import create_model_and_transforms
from mobileclip_repro.shards import atomic_tar_writer, decode_reinforcement, iter_raw_samples, sha256_hex
from mobileclip_repro.seeding import seed_from
from mobileclip_repro.teachers import (CocaCaptioner, ReinforceConfig, TeacherEnsemble, _top_p_filtered,
                                       build_captioner, resolve_pretrained)

REPO = Path(__file__).resolve().parents[1]

NUM_SAMPLES = 3
NUM_SYN = 5
TEACHERS = ("teacher_a.pt", "teacher_b.pt")
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def _reinforce_json(pretrained: str = ",".join(TEACHERS), **overrides) -> dict:
    raw = {"model_name": "toy-teacher,toy-teacher", "num_samples": NUM_SAMPLES, "pretrained": pretrained,
           "reinforce": {"image_augmentation": {
               "normalize": {"mean": MEAN, "std": STD},
               "rand_augment": {"enable": True, "p": 1.0},
               "random_resized_crop": {"interpolation": "bicubic", "size": 32},
               "to_rgb": {"enable": True}, "to_tensor": {"enable": True}}}}
    raw.update(overrides)
    return raw


def _write_bad_shard(good_shard: Path, target: Path) -> None:
    """Four samples: one intact, one whose bytes changed after download, one that is not an
    image (its sha256 matches), one without a caption."""
    samples = list(iter_raw_samples(good_shard))[:4]
    intact, tampered, not_an_image, no_caption = (
        {k: v for k, v in s.items() if k != "__url__"} for s in samples)
    tampered["jpg"] = tampered["jpg"][:-10] + b"\x00" * 10
    not_an_image["jpg"] = b"<html>404 not found</html>"
    meta = json.loads(not_an_image["json"])
    meta["sha256"] = sha256_hex(not_an_image["jpg"])
    not_an_image["json"] = json.dumps(meta).encode()
    del no_caption["txt"]
    with atomic_tar_writer(target) as writer:
        for sample in (intact, tampered, not_an_image, no_caption):
            writer.write({"__key__": sample.pop("__key__"), **sample})


@pytest.fixture(scope="module")
def setup(tmp_path_factory, write_toy_teachers) -> dict:
    root = tmp_path_factory.mktemp("reinforce")
    toyworld.generate(root / "toy", train_samples=10, teacher_samples=1, benchmark_samples=1, samples_per_shard=5)
    datacomp = root / "toy" / "datacomp"
    _write_bad_shard(datacomp / "00000000.tar", datacomp / "00000002.tar")
    teachers = write_toy_teachers(root / "teachers", TEACHERS)
    config = root / "toy.json"
    config.write_text(json.dumps(_reinforce_json()))
    return {"root": root, "datacomp": datacomp, "teachers": teachers, "config": config}


def _run(setup: dict, out_dir: Path, *extra: str, datacomp: Path | None = None) -> int:
    return cli.main(["reinforce", "--datacomp-dir", str(datacomp or setup["datacomp"]), "--out-dir", str(out_dir),
                     "--reinforce-config", str(setup["config"]), "--pretrained-root", str(setup["teachers"]),
                     "--num-syn-captions", str(NUM_SYN), "--seed", "7", "--device", "cpu", *extra])


def _records(tar: Path) -> list:
    return [decode_reinforcement(sample) for sample in iter_raw_samples(tar)]


@pytest.fixture(scope="module")
def reinforced(setup) -> Path:
    out_dir = setup["root"] / "dr"
    # A batch of 4 images splits every shard over several teacher forwards.
    assert _run(setup, out_dir, "--captioner", "world", "--batch-size", "4") == 0
    return out_dir


@pytest.fixture(scope="module")
def ensemble(setup) -> TeacherEnsemble:
    return TeacherEnsemble(["toy-teacher"] * 2, list(TEACHERS), pretrained_root=setup["teachers"])


def test_every_shard_gets_a_dr_shard_with_the_same_keys_uids_and_hashes(setup, reinforced):
    for name in ("00000000.tar", "00000001.tar"):
        source = list(iter_raw_samples(setup["datacomp"] / name))
        records = _records(reinforced / name)
        assert [r.key for r in records] == [s["__key__"] for s in source]
        for record, sample in zip(records, source):
            meta = json.loads(sample["json"])
            assert (record.uid, record.sha256) == (meta["uid"], meta["sha256"])
            assert record.image_emb.shape == (NUM_SAMPLES, 128)
            assert record.text_emb.shape == (1 + NUM_SYN, 128)
            assert len(record.param_aug) == NUM_SAMPLES and len(record.syn_text) == NUM_SYN
            # the world captioner's clean descriptions, not the web alt-text
            assert record.syn_text == toyworld.WorldCaptioner()(meta, NUM_SYN, seed_from("captions", 7, record.key))
            for embeddings in (record.image_emb, record.text_emb):
                for member in (slice(0, 64), slice(64, 128)):
                    np.testing.assert_allclose(np.linalg.norm(embeddings[:, member], axis=1), 1.0, atol=1e-5)
        no_image_in_dr = next(iter_raw_samples(reinforced / name))
        assert "jpg" not in no_image_in_dr and "txt" not in no_image_in_dr


def test_image_emb_row_a_is_the_teachers_view_of_param_aug_a(setup, reinforced, ensemble):
    sample = list(iter_raw_samples(setup["datacomp"] / "00000001.tar"))[2]
    record = next(r for r in _records(reinforced / "00000001.tar") if r.key == sample["__key__"])
    image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
    views = torch.stack([replay.replay_tensor(image, entry, 32, "bicubic", MEAN, STD) for entry in record.param_aug])
    np.testing.assert_allclose(record.image_emb, ensemble.encode_images(views).numpy(), atol=1e-5)
    # the crops are random draws, not one crop repeated
    assert len({tuple(entry[0]) for entry in record.param_aug}) == NUM_SAMPLES


def test_views_travel_as_uint8_and_normalize_to_the_replay_bit_for_bit(setup):
    config = ReinforceConfig.from_dict(_reinforce_json())
    raw = next(iter_raw_samples(setup["datacomp"] / "00000001.tar"))
    prepared = reinforce.prepare_sample(raw, config, 7, keep_image=False)
    assert prepared.views.dtype == torch.uint8 and prepared.views.shape == (NUM_SAMPLES, 3, 32, 32)
    image = Image.open(io.BytesIO(raw["jpg"])).convert("RGB")
    expected = torch.stack([replay.replay_tensor(image, entry, 32, "bicubic", MEAN, STD)
                            for entry in prepared.param_aug])
    assert torch.equal(replay.normalize_views(prepared.views, MEAN, STD), expected)


def test_text_emb_is_ground_truth_caption_then_synthetic_ones(setup, reinforced, ensemble):
    sample = next(iter_raw_samples(setup["datacomp"] / "00000000.tar"))
    record = _records(reinforced / "00000000.tar")[0]
    expected = ensemble.encode_texts([sample["txt"].decode(), *record.syn_text]).numpy()
    np.testing.assert_allclose(record.text_emb, expected, atol=1e-5)


def test_bad_samples_are_skipped_and_counted_by_reason(setup, reinforced):
    records = _records(reinforced / "00000002.tar")
    assert len(records) == 1
    manifest = json.loads((reinforced / "00000002.tar.manifest.json").read_text())
    assert manifest["samples_in"] == 4 and manifest["written"] == 1
    assert manifest["skipped"] == {"sha256_mismatch": 1, "undecodable_image": 1, "missing_key": 1}
    assert 0 < manifest["teacher_seconds"] <= manifest["seconds"]


def test_rerun_skips_finished_shards_and_redoes_broken_ones(setup, reinforced, capsys):
    finished = {name: (reinforced / name).read_bytes() for name in ("00000000.tar", "00000000.tar.manifest.json")}
    broken = reinforced / "00000001.tar"
    expected = _records(broken)
    broken.write_bytes(broken.read_bytes()[:700])  # as if the copy had been interrupted
    assert _run(setup, reinforced, "--captioner", "world", "--batch-size", "4") == 0
    assert "00000000.tar: already reinforced" in capsys.readouterr().out
    assert {name: (reinforced / name).read_bytes() for name in finished} == finished
    redone = _records(broken)
    # redone with the same draws: augmentations are seeded by (seed, key), not by run
    assert [(r.key, r.param_aug, r.syn_text) for r in redone] == [(r.key, r.param_aug, r.syn_text) for r in expected]
    for again, first in zip(redone, expected):
        np.testing.assert_array_equal(again.image_emb, first.image_emb)
        np.testing.assert_array_equal(again.text_emb, first.text_emb)


def test_bf16_writes_pth_gz_close_to_float32(setup, reinforced):
    out_dir = setup["root"] / "dr_bf16"
    assert _run(setup, out_dir, "--captioner", "world", "--dtype", "bf16", "--shards", "00000000.tar") == 0
    assert sorted(p.name for p in out_dir.glob("*.tar")) == ["00000000.tar"]
    raw = next(iter_raw_samples(out_dir / "00000000.tar"))
    assert "pth.gz" in raw and "npz" not in raw
    payload = torch.load(io.BytesIO(gzip.decompress(raw["pth.gz"])), weights_only=True)
    # each sample stores its own rows, not the storage of the whole teacher batch
    assert payload["image_emb"].untyped_storage().nbytes() == NUM_SAMPLES * 128 * 2
    for half, full in zip(_records(out_dir / "00000000.tar"), _records(reinforced / "00000000.tar")):
        assert half.param_aug == full.param_aug  # same seed, same draws, whatever the batch size
        np.testing.assert_allclose(half.image_emb, full.image_emb, atol=1e-2)
        np.testing.assert_allclose(half.text_emb, full.text_emb, atol=1e-2)


@pytest.fixture(scope="module")
def coca_checkpoint(setup) -> Path:
    torch.manual_seed(0)
    model, _, _ = create_model_and_transforms("toy-coca")
    # open_clip leaves a fresh CoCa's decoder projection uninitialized (real runs load
    # weights) and its MultimodalTransformer.init_parameters() is broken, so set it here.
    decoder = model.text_decoder
    torch.nn.init.normal_(decoder.text_projection, std=decoder.width ** -0.5)
    path = setup["teachers"] / "toy_coca.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def test_coca_captioner_gives_num_captions_cut_at_the_first_period(coca_checkpoint):
    captioner = CocaCaptioner("toy-coca", str(coca_checkpoint), num_captions=5)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 50, 3), dtype=np.uint8)) for i in range(3)]
    captions = captioner.caption_batch(images, [{}] * 3, [1, 2, 3])
    assert [len(per_image) for per_image in captions] == [5, 5, 5]
    assert all(isinstance(c, str) and "." not in c and "<" not in c for per_image in captions for c in per_image)
    assert sum(len(c) > 0 for per_image in captions for c in per_image) > 10  # real tokens, not empty strings
    assert captioner.caption_batch(images, [{}] * 3, [1, 2, 3]) == captions  # seeded, reproducible


def test_reinforce_with_a_coca_captioner(setup, coca_checkpoint):
    out_dir = setup["root"] / "dr_coca"
    spec = json.dumps({"coca": {"model_name": "toy-coca", "pretrained": coca_checkpoint.name}})
    # a worker process runs CoCa's preprocessing along with the replay
    assert _run(setup, out_dir, "--captioner-json", spec, "--shards", "00000001.tar", "--workers", "1") == 0
    records = _records(out_dir / "00000001.tar")
    assert len(records) == 5
    assert all(len(r.syn_text) == NUM_SYN and not any("." in t for t in r.syn_text) for r in records)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))
    kept = torch.isfinite(_top_p_filtered(logits, 0.7))
    assert kept.tolist() == [[False, True, False, True]]
    assert torch.isfinite(_top_p_filtered(logits, 0.4)).sum() == 1  # the top token always survives


@pytest.mark.parametrize("raw,reason", [
    (_reinforce_json(pretrained="a.pt"), "same number of members"),
    (_reinforce_json(num_samples=0), "num_samples must be a positive integer"),
    (_reinforce_json(pretrained=","), "has an empty entry"),
    ({k: v for k, v in _reinforce_json().items() if k != "reinforce"}, "missing 'reinforce'"),
])
def test_bad_reinforcement_configs_are_refused(raw, reason):
    with pytest.raises(ValueError, match=reason):
        ReinforceConfig.from_dict(raw)


def test_unknown_augmentation_and_missing_teacher_are_refused(setup):
    raw = copy.deepcopy(_reinforce_json())
    raw["reinforce"]["image_augmentation"]["mixup"] = {"enable": True}
    with pytest.raises(ValueError, match="unsupported image augmentations \\['mixup'\\]"):
        ReinforceConfig.from_dict(raw)
    with pytest.raises(ValueError, match="checkpoint 'nope.pt' for toy-teacher not found"):
        TeacherEnsemble(["toy-teacher"], ["nope.pt"], pretrained_root=setup["teachers"])
    with pytest.raises(ValueError, match="crops to 48x48"):
        TeacherEnsemble.from_config(ReinforceConfig.from_dict(_reinforce_json(
            reinforce={"image_augmentation": {"normalize": {"mean": MEAN, "std": STD},
                                              "random_resized_crop": {"size": 48}}})),
            pretrained_root=setup["teachers"])


def test_workers_write_the_same_shard(setup, reinforced, tmp_path):
    assert _run(setup, tmp_path, "--captioner", "world", "--batch-size", "4", "--workers", "2",
                "--shards", "00000001.tar") == 0
    assert (tmp_path / "00000001.tar").read_bytes() == (reinforced / "00000001.tar").read_bytes()


def test_a_finished_shard_made_with_other_settings_stops_the_run(setup, reinforced):
    with pytest.raises(ValueError, match="was reinforced with seed = 7, this run has 8"):
        cli.main(["reinforce", "--datacomp-dir", str(setup["datacomp"]), "--out-dir", str(reinforced),
                  "--reinforce-config", str(setup["config"]), "--pretrained-root", str(setup["teachers"]),
                  "--captioner", "world", "--num-syn-captions", str(NUM_SYN), "--seed", "8"])


def test_the_dags_job_redoes_a_shard_made_with_other_settings(setup, reinforced, tmp_path, capsys):
    """--replace-other-settings (what the DAG's reinforce rule passes when a changed setting reruns
    it): the shard made with seed 7 is reinforced again with seed 8, the others as well."""
    out_dir = tmp_path / "dr"
    shutil.copytree(reinforced, out_dir)
    assert cli.main(["reinforce", "--datacomp-dir", str(setup["datacomp"]), "--out-dir", str(out_dir),
                     "--reinforce-config", str(setup["config"]), "--pretrained-root", str(setup["teachers"]),
                     "--captioner", "world", "--num-syn-captions", str(NUM_SYN), "--seed", "8", "--device", "cpu",
                     "--shards", "00000001.tar", "--replace-other-settings"]) == 0
    assert "was reinforced with seed = 7, this run has 8: reinforcing it again" in capsys.readouterr().out
    manifest = json.loads((out_dir / "00000001.tar.manifest.json").read_text())
    assert manifest["seed"] == 8
    assert (out_dir / "00000001.tar").read_bytes() != (reinforced / "00000001.tar").read_bytes()


def test_one_group_of_nested_hub_shards_with_a_missing_one(setup, tmp_path, capsys):
    datacomp = tmp_path / "datacomp"
    for shard, source in (("00/00000000", "00000000.tar"), ("00/00000001", "00000001.tar"),
                          ("01/00000001", "00000000.tar")):
        (datacomp / shard).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(setup["datacomp"] / source, datacomp / f"{shard}.tar")
    # 00/0, 00/1, 01/0, 01/1 in groups of 3: group 0 is 00/0, 00/1 and 01/0, which the fetch lost
    out_dir, manifest_path = tmp_path / "dr", tmp_path / "reinforce" / "group_00000.json"
    group = ["--shard-spec", json.dumps(["{00..01}/{00000000..00000001}"]), "--group", "00000",
             "--group-size", "3", "--manifest", str(manifest_path), "--captioner", "world"]
    assert _run(setup, out_dir, *group, datacomp=datacomp) == 0
    assert sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.tar")) == [
        "00/00000000.tar", "00/00000001.tar"]  # group 1's 01/00000001 is another job's
    for shard in ("00/00000000", "00/00000001"):
        keys = [s["__key__"] for s in iter_raw_samples(datacomp / f"{shard}.tar")]
        assert [r.key for r in _records(out_dir / f"{shard}.tar")] == keys
    manifest = json.loads(manifest_path.read_text())
    assert [(e["id"], e["status"]) for e in manifest["shards"]] == [
        ("00/00000000", "ok"), ("00/00000001", "ok"), ("01/00000000", "missing")]
    totals = manifest["totals"]
    assert {k: totals[k] for k in ("shards", "shards_reinforced", "shards_resumed", "shards_missing",
                                   "samples_in", "written", "skipped")} == {
        "shards": 3, "shards_reinforced": 2, "shards_resumed": 0, "shards_missing": 1,
        "samples_in": 10, "written": 10, "skipped": {}}
    assert 0 < totals["teacher_seconds"] <= totals["seconds"]
    assert totals["teacher_share"] == pytest.approx(totals["teacher_seconds"] / totals["seconds"], abs=1e-3)
    assert manifest["run"]["teachers"] == ["toy-teacher", "toy-teacher"] and manifest["run"]["dims"] == [64, 64]

    finished = {p: p.read_bytes() for p in out_dir.rglob("*.tar")}
    capsys.readouterr()
    assert _run(setup, out_dir, *group, datacomp=datacomp) == 0
    assert "00/00000001.tar: already reinforced" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in out_dir.rglob("*.tar")} == finished
    again = json.loads(manifest_path.read_text())["totals"]
    assert (again["shards_reinforced"], again["shards_resumed"], again["written"]) == (0, 2, 10)
    # this job paid nothing; the shards still cost what the first job counted (the reinforcement's
    # one-time cost in the report's compute ledger)
    assert again["flops"]["total"] == 0 and totals["flops"]["total"] > 0
    assert again["shards_flops"] == totals["shards_flops"] == totals["flops"]["total"]


@pytest.mark.parametrize("extra,reason", [
    (["--group", "00000", "--group-size", "2"], "go with --shard-spec"),
    (["--shard-spec", '"{00000000..00000001}"'], "needs --group and --group-size"),
    (["--shard-spec", '"{00000000..00000001}"', "--group", "00001", "--group-size", "2"], "has 1 groups of 2"),
])
def test_bad_group_arguments_are_refused(setup, tmp_path, extra, reason):
    with pytest.raises(ValueError, match=reason):
        _run(setup, tmp_path, "--captioner", "world", *extra)


def test_amp_and_workers_defaults_keep_the_cpu_in_fp32_without_workers():
    cpu = torch.device("cpu")
    assert devices.autocast_dtype("auto", cpu) is None and reinforce.resolve_workers("auto", cpu) == 0
    assert devices.autocast_dtype("bf16", cpu) is torch.bfloat16 and devices.autocast_dtype("off", cpu) is None


# --- pretrained tags go through open_clip's factory --------------------------------------------

@pytest.fixture
def hub_tags(monkeypatch):
    """A pretrained tag registered for a toy architecture, its hub download served from a local file."""
    downloads = []
    served = {}

    def register(model_name: str, tag: str, checkpoint: Path) -> None:
        cfg = open_clip.pretrained._pcfg(hf_hub=f"test-org/{model_name}-{tag}/")
        monkeypatch.setitem(open_clip.pretrained._PRETRAINED, model_name, {tag: cfg})
        served[cfg["hf_hub"]] = str(checkpoint)

    def download_pretrained(cfg, prefer_hf_hub=True, cache_dir=None):
        downloads.append(cfg["hf_hub"])
        return served[cfg["hf_hub"]]

    monkeypatch.setattr(open_clip.factory, "download_pretrained", download_pretrained)
    register.downloads = downloads
    return register


def test_a_teacher_tag_loads_the_weights_open_clip_downloads_for_it(setup, ensemble, hub_tags):
    hub_tags("toy-teacher", "test_tag", setup["teachers"] / "teacher_a.pt")
    tagged = TeacherEnsemble(["toy-teacher"], ["test_tag"], pretrained_root=setup["teachers"])
    assert hub_tags.downloads == ["test-org/toy-teacher-test_tag/"] and tagged.pretrained == ("test_tag",)
    views = torch.randn(3, 3, 32, 32)
    np.testing.assert_allclose(tagged.encode_images(views), ensemble.encode_images(views)[:, :64], atol=1e-6)
    random_init = TeacherEnsemble(["toy-teacher"], [None])
    assert not torch.allclose(random_init.encode_images(views), tagged.encode_images(views), atol=1e-3)


def test_the_paper_teachers_are_requested_by_tag_with_openai_in_quickgelu(tmp_path, monkeypatch):
    config = ReinforceConfig.load(REPO / "configs" / "reinforce" / "datacompdr12m.json")
    assert config.model_names == ("ViT-L-14", "ViT-L-14")
    assert config.pretrained == ("openai", "datacomp_xl_s13b_b90k")
    assert open_clip.get_pretrained_cfg("ViT-L-14", "openai")["quick_gelu"] is True
    calls = []
    real = open_clip.create_model_and_transforms

    def spy(model_name, pretrained=None, **kwargs):
        calls.append((model_name, pretrained, kwargs.get("force_quick_gelu", False)))
        return real("toy-teacher")  # stands in for the two 428M-parameter downloads

    monkeypatch.setattr(open_clip, "create_model_and_transforms", spy)
    ensemble = TeacherEnsemble(config.model_names, config.pretrained, pretrained_root=tmp_path)
    assert calls == [("ViT-L-14", "openai", True), ("ViT-L-14", "datacomp_xl_s13b_b90k", False)]
    assert ensemble.pretrained == config.pretrained and ensemble.dims == [768, 768]
    with pytest.raises(ValueError, match="neither an open_clip pretrained tag of it"):
        TeacherEnsemble(["ViT-L-14"], ["opnai"], pretrained_root=tmp_path)
    assert len(calls) == 2  # refused before any model was built
    coca_tag = "mscoco_finetuned_laion2b_s13b_b90k"  # the paper captioner's tag stays a tag for the factory
    assert resolve_pretrained("coca_ViT-L-14", coca_tag, tmp_path) == coca_tag


def test_a_coca_tag_goes_through_the_same_factory(coca_checkpoint, hub_tags):
    hub_tags("toy-coca", "test_tag", coca_checkpoint)
    tagged = build_captioner({"coca": {"model_name": "toy-coca", "pretrained": "test_tag"}}, num_captions=2)
    assert hub_tags.downloads == ["test-org/toy-coca-test_tag/"]
    from_file = CocaCaptioner("toy-coca", str(coca_checkpoint), num_captions=2)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    assert tagged.caption_batch([image], [{}], [4]) == from_file.caption_batch([image], [{}], [4])


def test_a_cut_input_shard_keeps_its_readable_samples_but_is_partial_and_fails_the_command(setup, tmp_path):
    source = tmp_path / "datacomp"
    source.mkdir()
    data = (setup["datacomp"] / "00000000.tar").read_bytes()
    (source / "00000000.tar").write_bytes(data[: len(data) * 3 // 5])  # inside a member
    assert _run(setup, tmp_path / "dr", "--captioner", "world", datacomp=source) == 1
    manifest = json.loads((tmp_path / "dr" / "00000000.tar.manifest.json").read_text())
    assert manifest["skipped"].get("unreadable_shard") == 1
    assert manifest["status"] == "partial" and "the input shard is unreadable past some point" in manifest["reason"]
    assert 1 <= manifest["written"] < 5 and len(_records(tmp_path / "dr" / "00000000.tar")) == manifest["written"]


def _cut_before_sample(shard: Path, target: Path, sample: int) -> None:
    """``shard`` cut at the header of sample ``sample``'s first member, as an interrupted copy at a
    member boundary leaves it: every member before it reads, the end-of-archive blocks are gone."""
    with tarfile.open(shard) as archive:
        members = archive.getmembers()
    keys = list(dict.fromkeys(member.name.partition(".")[0] for member in members))
    first = next(member for member in members if member.name.partition(".")[0] == keys[sample])
    target.write_bytes(shard.read_bytes()[:first.offset])


def test_a_truncated_input_shard_is_partial_in_the_group_and_redone_once_the_input_is_fixed(setup, tmp_path,
                                                                                           capsys):
    """A shard cut at a member boundary (truncated_shard): its DR shard keeps the 3 samples before
    the cut but is not "ok"; the command fails, naming it; the rerun after the fix redoes it in full."""
    source, out_dir, manifest_path = tmp_path / "datacomp", tmp_path / "dr", tmp_path / "group.json"
    source.mkdir()
    _cut_before_sample(setup["datacomp"] / "00000001.tar", source / "00000001.tar", 3)
    shutil.copy(setup["datacomp"] / "00000000.tar", source / "00000000.tar")
    group = ["--captioner", "world", "--manifest", str(manifest_path)]

    assert _run(setup, out_dir, *group, datacomp=source) == 1
    output = capsys.readouterr().out
    shard_manifest = json.loads((out_dir / "00000001.tar.manifest.json").read_text())
    assert shard_manifest["skipped"] == {"truncated_shard": 1}
    assert (shard_manifest["status"], shard_manifest["written"]) == ("partial", 3)
    assert shard_manifest["reason"].startswith("the input shard is truncated (cut before its end-of-archive blocks): "
                                               "this DR shard holds only the 3 samples written from the part before it")
    assert len(_records(out_dir / "00000001.tar")) == 3  # kept: a faithful reinforcement of what could be read
    assert f"error: 00000001.tar: {shard_manifest['reason']}" in output
    assert f"error: 1 of 2 shards reinforced only in part: their input shards in {source} are cut" in output
    group_manifest = json.loads(manifest_path.read_text())
    assert [(entry["id"], entry["status"]) for entry in group_manifest["shards"]] == [
        ("00000000", "ok"), ("00000001", "partial")]
    totals = group_manifest["totals"]
    assert (totals["shards_reinforced"], totals["shards_partial"], totals["written"]) == (1, 1, 5 + 3)

    # not fixed yet: a manifest from before the partial status (ok, counting the cut) is no finished shard either
    (out_dir / "00000001.tar.manifest.json").write_text(json.dumps(
        {key: value for key, value in shard_manifest.items() if key != "reason"} | {"status": "ok"}))
    assert _run(setup, out_dir, *group, datacomp=source) == 1
    assert "00000001.tar: already reinforced" not in capsys.readouterr().out

    shutil.copy(setup["datacomp"] / "00000001.tar", source / "00000001.tar")  # the input fixed
    assert _run(setup, out_dir, *group, datacomp=source) == 0
    output = capsys.readouterr().out
    assert "00000000.tar: already reinforced" in output and "00000001.tar: already reinforced" not in output
    shard_manifest = json.loads((out_dir / "00000001.tar.manifest.json").read_text())
    assert (shard_manifest["status"], shard_manifest["written"], shard_manifest["skipped"]) == ("ok", 5, {})
    assert "reason" not in shard_manifest and len(_records(out_dir / "00000001.tar")) == 5
    totals = json.loads(manifest_path.read_text())["totals"]
    assert (totals["shards_reinforced"], totals["shards_resumed"], totals["shards_partial"]) == (1, 1, 0)


@pytest.mark.parametrize("option, value, message", [
    ("--reinforce-config", _reinforce_json(reinforce={"image_augmentation": {
        "normalize": {"mean": MEAN, "std": [STD[0], float("nan"), STD[2]]}, "random_resized_crop": {"size": 32}}}),
     r"--reinforce-config .*nan\.json: 'reinforce.image_augmentation.normalize.std.1': nan is not a finite number"),
    ("--captioner-json", {"coca": {"model_name": "toy-coca", "pretrained": "c.pt", "top_p": float("inf")}},
     r"--captioner-json: 'coca.top_p': inf is not a finite number"),
])
def test_nan_and_infinity_given_to_the_reinforce_command_are_refused_naming_the_key(setup, tmp_path, option, value,
                                                                                      message):
    config = setup["config"]
    if option == "--reinforce-config":
        config = tmp_path / "nan.json"
        config.write_text(json.dumps(value))  # json writes NaN, and reads it back
        extra = []
    else:
        extra = ["--captioner-json", json.dumps(value)]
    with pytest.raises(ValueError, match=message):
        cli.main(["reinforce", "--datacomp-dir", str(setup["datacomp"]), "--out-dir", str(tmp_path / "dr"),
                  "--reinforce-config", str(config), "--pretrained-root", str(setup["teachers"]), *extra])
    assert not (tmp_path / "dr").exists()
