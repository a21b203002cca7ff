"""`report`: evaluation records -> CSV, Markdown, learning-efficiency figure (PNG/PDF), HTML."""
from __future__ import annotations

import csv
import html
import json

import pandas as pd
import pytest
from PIL import Image

from mobileclip_repro.cli import main
from mobileclip_repro.report.plots import same_architecture
from mobileclip_repro.report.report import PAPER_REFERENCES, load_paper_reference, run_summary
from mobileclip_repro.report.tables import RECORD_SCHEMA, load_records, long_table, wide_table

SEEN_PER_EPOCH = 8192
# (run, dr) -> acc1 and mean_recall@1 per epoch 1..3
RESULTS = {
    ("toy_dr", True): {"acc1": [0.312, 0.456, 0.587], "mean_recall@1": [0.20, 0.35, 0.41]},
    ("toy_plain", False): {"acc1": [0.105, 0.163, 0.222], "mean_recall@1": [0.05, 0.09, 0.125]},
}


def make_record(run, dr, epoch, benchmark, value):
    if benchmark == "toy_zeroshot":
        task, metric_name = "zeroshot_classification", "acc1"
        metrics = {"acc1": value, "acc5": min(1.0, value + 0.3), "mean_per_class_recall": value}
    else:
        task, metric_name = "zeroshot_retrieval", "mean_recall@1"
        metrics = {"image_retrieval_recall@1": value - 0.01, "text_retrieval_recall@1": value + 0.01,
                   "image_retrieval_recall@5": min(1.0, value + 0.4), "text_retrieval_recall@5": min(1.0, value + 0.45)}
    return {"schema": RECORD_SCHEMA, "run": run, "epoch": epoch, "seen_samples": epoch * SEEN_PER_EPOCH, "dr": dr,
            "model": "toy-student", "checkpoint": f"/ckpt/{run}/epoch_{epoch}.pt", "benchmark": benchmark,
            "dataset": f"wds/{benchmark}", "task": task, "split": "test", "metrics": metrics,
            "main_metric_name": metric_name, "main_metric": value, "num_samples": 500,
            "clip_benchmark_version": "1.6.2", "eval_seconds": 1.5,
            "run_spec": {"model": "toy-student", "data": "dr" if dr else "plain", "global_batch_size": 128,
                         "seen_samples": 3 * SEEN_PER_EPOCH}}


def all_records():
    return [make_record(run, dr, epoch, benchmark, values[metric][epoch - 1])
            for (run, dr), values in RESULTS.items()
            for epoch in (1, 2, 3)
            for benchmark, metric in (("toy_zeroshot", "acc1"), ("toy_retrieval", "mean_recall@1"))]


@pytest.fixture
def records_dir(tmp_path):
    directory = tmp_path / "evaluations"
    for record in all_records():
        path = directory / record["run"] / f"epoch_{record['epoch']}" / f"{record['benchmark']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    (directory / "benchmarks.json").write_text(json.dumps([{"name": "toy_zeroshot"}]))  # not a record
    return directory


@pytest.fixture
def report_dir(records_dir, tmp_path):
    chance = tmp_path / "chance.json"
    chance.write_text(json.dumps({"toy_zeroshot": 0.1}))
    out = tmp_path / "report"
    assert main(["report", "--records-dir", str(records_dir), "--out-dir", str(out), "--title", "Toy world",
                 "--chance-json", str(chance)]) == 0
    return out


def test_a_ledger_without_run_manifests_gives_an_empty_cost_table_not_a_crash(records_dir, tmp_path):
    """By hand, with the DAG's report spec (a benchmarks folder) but only records: nothing to cost."""
    out = tmp_path / "report"
    index = tmp_path / "records.json"
    index.write_text(json.dumps({"records": sorted(str(path) for path in records_dir.rglob("epoch_*/*.json")),
                                 "failed": []}))
    assert main(["report", "--records", str(index), "--out-dir", str(out),
                 "--benchmarks-dir", str(tmp_path / "no-benchmarks")]) == 0
    assert (out / "report.html").is_file() and (out / "learning_efficiency_compute.png").is_file()


def test_the_report_reads_the_records_its_indexes_list_and_no_others(records_dir, tmp_path):
    """How the DAG calls it: a run's folders left on disk after it left the config are not reported."""
    listed = sorted(str(path) for path in (records_dir / "toy_dr").rglob("*.json"))
    index = tmp_path / "toy_dr.records.json"
    index.write_text(json.dumps({"records": listed, "failed": []}))
    out = tmp_path / "report"
    assert main(["report", "--records", str(index), "--out-dir", str(out), "--run-manifests", "--job-benchmarks"]) == 0
    assert set(pd.read_csv(out / "results.csv")["run"]) == {"toy_dr"}
    assert "toy_plain" not in (out / "results.md").read_text() + (out / "report.html").read_text()
    assert json.loads((out / "efficiency.json").read_text()) == []


def test_a_record_an_index_lists_but_that_is_gone_is_an_error_not_passed_over(records_dir, tmp_path):
    index = tmp_path / "records.json"
    index.write_text(json.dumps({"records": [str(records_dir / "toy_dr" / "epoch_9" / "toy_zeroshot.json")]}))
    with pytest.raises(FileNotFoundError, match="epoch_9/toy_zeroshot.json: an evaluation record listed but missing"):
        main(["report", "--records", str(index), "--out-dir", str(tmp_path / "report")])


def test_load_records_finds_nested_records_and_ignores_other_json(records_dir):
    records = load_records(records_dir)
    assert len(records) == 12
    assert {record["run"] for record in records} == {"toy_dr", "toy_plain"}


def test_malformed_record_is_an_error(records_dir):
    (records_dir / "broken.json").write_text(json.dumps({"schema": RECORD_SCHEMA, "run": "x"}))
    with pytest.raises(ValueError, match="broken.json: evaluation record is missing"):
        load_records(records_dir)


def test_wide_table_places_each_main_metric_in_its_cell():
    wide = wide_table(all_records())
    assert list(wide.columns) == ["run", "dr", "seed", "epoch", "seen_samples", "toy_zeroshot/acc1",
                                  "toy_retrieval/mean_recall@1"]
    assert len(wide) == 6
    row = wide[(wide["run"] == "toy_plain") & (wide["epoch"] == 2)].iloc[0]
    assert row["seen_samples"] == 2 * SEEN_PER_EPOCH and not row["dr"]
    assert row["toy_zeroshot/acc1"] == pytest.approx(0.163)
    assert row["toy_retrieval/mean_recall@1"] == pytest.approx(0.09)
    assert list(wide["seen_samples"][wide["run"] == "toy_dr"]) == [8192, 16384, 24576]


def test_long_table_keeps_every_metric():
    table = long_table(all_records())
    # classification: 3 metrics (acc1 is the main one); retrieval: 4 metrics + the derived main metric
    assert len(table) == 6 * 3 + 6 * 5
    cell = table[(table["run"] == "toy_dr") & (table["epoch"] == 3) & (table["metric"] == "text_retrieval_recall@1")]
    assert cell["value"].item() == pytest.approx(0.42)
    assert table[table["is_main"]]["metric"].value_counts().to_dict() == {"acc1": 6, "mean_recall@1": 6}


def test_duplicate_records_are_an_error():
    records = all_records()
    with pytest.raises(ValueError, match="two records for run 'toy_dr' seed 0 epoch 1"):
        wide_table(records + [records[0]])


def test_report_writes_all_outputs(report_dir):
    for name in ("results.csv", "results_long.csv", "results.md", "learning_efficiency.png",
                 "learning_efficiency.pdf", "report.html"):
        assert (report_dir / name).stat().st_size > 0, name


def test_results_csv_cells(report_dir):
    with open(report_dir / "results.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 6
    row = next(r for r in rows if r["run"] == "toy_dr" and r["epoch"] == "2")
    assert float(row["toy_zeroshot/acc1"]) == pytest.approx(0.456)
    assert float(row["toy_retrieval/mean_recall@1"]) == pytest.approx(0.35)
    assert row["seen_samples"] == "16384" and row["dr"] == "True"


def test_results_markdown_cells_in_percent(report_dir):
    lines = (report_dir / "results.md").read_text().splitlines()
    assert lines[0] == "# Toy world"
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    header, body = table[0], table[2:]
    assert header == ["run", "data", "epoch", "seen samples", "seeds", "toy_zeroshot/acc1",
                      "toy_retrieval/mean_recall@1"]
    assert ["toy_plain", "non-DR", "3", "24.58k", "1", "22.2", "12.5"] in body
    assert ["toy_dr", "DR", "1", "8.192k", "1", "31.2", "20.0"] in body


def test_figure_is_a_real_image(report_dir):
    with Image.open(report_dir / "learning_efficiency.png") as image:
        width, height = image.size
    # two subplots side by side at 200 dpi
    assert width > 1.5 * height and width >= 1500
    assert (report_dir / "learning_efficiency.pdf").read_bytes().startswith(b"%PDF")


def test_html_is_self_contained(report_dir):
    page = (report_dir / "report.html").read_text()
    assert "<h1>Toy world</h1>" in page
    assert 'src="data:image/png;base64,' in page
    assert "<td>45.6</td>" in page and "<td>toy_plain</td>" in page
    assert "http://" not in page and "https://" not in page


def test_run_summary():
    summary = run_summary(all_records()).set_index("run")
    assert summary.loc["toy_dr", "data"] == "DR" and summary.loc["toy_plain", "data"] == "non-DR"
    assert summary.loc["toy_dr", "checkpoints evaluated"] == 3
    assert summary.loc["toy_dr", "seen samples reached"] == "24.58k"


def test_paper_reference_points_are_fractions():
    points = load_paper_reference()
    dr_imagenet = {p["seen_samples"]: p["value"] for p in points
                   if p["dataset"] == "imagenet1k" and p["dr"] and p["source"] == "equal seen samples"}
    assert dr_imagenet == {370_000_000: pytest.approx(0.653), 1_480_000_000: pytest.approx(0.717)}
    table2 = [p for p in points if p["seen_samples"] == 30_000 * 8192 and p["dataset"] == "imagenet1k"]
    assert sorted(p["value"] for p in table2) == [pytest.approx(0.445), pytest.approx(0.617)]


def test_paper_reference_overlay_on_matching_benchmark(tmp_path):
    directory = tmp_path / "evaluations"
    directory.mkdir()
    for epoch, (dr_value, plain_value) in enumerate([(0.40, 0.20), (0.55, 0.33), (0.62, 0.44)], start=1):
        for run, dr, value in (("datacompdr12m", True, dr_value), ("datacomp12m", False, plain_value)):
            record = make_record(run, dr, epoch, "toy_zeroshot", value)
            record.update(benchmark="imagenet1k", dataset="imagenet1k", seen_samples=epoch * 81_920_000)
            (directory / f"{run}_{epoch}.json").write_text(json.dumps(record))
    out = tmp_path / "report"
    assert main(["report", "--records-dir", str(directory), "--out-dir", str(out), "--paper-reference"]) == 0
    assert (out / "learning_efficiency.png").stat().st_size > 0
    assert "DataCompDR-12M" in (out / "report.html").read_text()


def test_chance_for_unknown_benchmark_is_an_error(records_dir, tmp_path):
    chance = tmp_path / "chance.json"
    chance.write_text(json.dumps({"imagenet": 0.001}))
    with pytest.raises(ValueError, match="without records: \\['imagenet'\\]"):
        main(["report", "--records-dir", str(records_dir), "--out-dir", str(tmp_path / "out"),
              "--chance-json", str(chance)])


def test_chance_level_defaults_to_one_over_the_number_of_classes():
    from mobileclip_repro.report.report import chance_from_records

    records = [{"benchmark": "toy_zeroshot", "task": "zeroshot_classification", "num_classes": 48},
               {"benchmark": "toy_retrieval", "task": "zeroshot_retrieval"}]
    assert chance_from_records(records) == {"toy_zeroshot": 1 / 48}


# --- the data section: fetch group manifests (report --fetch-manifests-dir) -----------------

def make_fetch_manifest(group, kept, listed, tried, fetched, failed, mismatch, no_caption, shards_failed=0):
    from mobileclip_repro.report.tables import FETCH_MANIFEST_SCHEMA

    totals = {"shards": 4, "shards_ok": 4 - shards_failed, "shards_failed": shards_failed, "shards_resumed": 0,
              "samples_listed": listed, "no_caption": no_caption, "no_url": 0, "urls_tried": tried,
              "images_fetched": fetched, "sha256_mismatch": mismatch, "samples_kept": kept, "failed": failed}
    return {"schema": FETCH_MANIFEST_SCHEMA, "group": group, "totals": totals, "shards": []}


@pytest.fixture
def fetch_dir(tmp_path):
    directory = tmp_path / "data" / "fetch"
    directory.mkdir(parents=True)
    manifests = [
        make_fetch_manifest("00000", kept=70, listed=100, tried=98, fetched=80,
                            failed={"http_404": 10, "http_error": 2, "timeout": 4, "connection": 2}, mismatch=10,
                            no_caption=2),
        make_fetch_manifest("00001", kept=50, listed=60, tried=60, fetched=55,
                            failed={"http_404": 3, "http_error": 0, "timeout": 2, "connection": 0}, mismatch=5,
                            no_caption=0, shards_failed=1),
    ]
    for manifest in manifests:
        (directory / f"group_{manifest['group']}.json").write_text(json.dumps(manifest))
    (directory / "notes.json").write_text(json.dumps({"not": "a manifest"}))
    return directory


def test_fetch_counters_match_the_fetch_stage():
    from mobileclip_repro.data import fetch
    from mobileclip_repro.report import tables

    assert tables.FETCH_MANIFEST_SCHEMA == fetch.MANIFEST_SCHEMA
    assert tables.FETCH_COUNTERS == fetch.COUNTERS
    assert tables.FETCH_FAILURE_ORDER == fetch.FAILURE_REASONS


def test_report_data_section_totals_fetch_manifests(records_dir, fetch_dir, tmp_path):
    out = tmp_path / "report_with_data"
    assert main(["report", "--records-dir", str(records_dir), "--out-dir", str(out),
                 "--fetch-manifests-dir", str(fetch_dir)]) == 0
    with open(out / "data.csv") as stream:
        rows = {row["group"]: row for row in csv.DictReader(stream)}
    assert list(rows) == ["00000", "00001", "total"]
    total = rows["total"]
    counts = ("shards", "shards_failed", "samples_listed", "urls_tried", "images_fetched", "samples_kept")
    assert [int(total[name]) for name in counts] == [8, 1, 160, 158, 135, 120]
    # these manifests predate the sha256 policy: their sha256_mismatch images were all dropped
    assert (int(total["failed_http_404"]), int(total["failed_timeout"]), int(total["sha256_mismatch_dropped"]),
            int(total["sha256_mismatch_kept"]), int(total["no_caption"])) == (13, 6, 15, 0, 2)
    assert float(total["kept_fraction"]) == pytest.approx(120 / 160)
    assert float(rows["00001"]["fetched_fraction"]) == pytest.approx(55 / 60)
    markdown = (out / "results.md").read_text()
    assert "## Data" in markdown
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.split("## Data")[1].splitlines()
             if line.startswith("|")]
    header = table[0]
    assert "failed_opted_out" not in header  # reasons that never occurred are left out of the printed table
    row = dict(zip(header, table[-1]))
    assert row["group"] == "total" and row["samples_kept"] == "120" and row["kept %"] == "75.0"
    page = (out / "report.html").read_text()
    assert "<h2>Data</h2>" in page and "<td>total</td>" in page


def test_report_data_section_counts_kept_mismatches_and_names_each_repos_commit(records_dir, tmp_path):
    directory = tmp_path / "fetch"
    directory.mkdir()
    commits = {"00000": ("a" * 40, "b" * 40), "00001": ("a" * 40, "b" * 40), "00002": ("a" * 40, "c" * 40)}
    for group, (datacomp_commit, dr_commit) in commits.items():
        manifest = make_fetch_manifest(group, kept=90, listed=100, tried=100, fetched=95, failed={}, mismatch=None,
                                       no_caption=0)
        manifest["totals"].update(sha256_mismatch_dropped=5, sha256_mismatch_kept=7)
        manifest.update(datacomp_repo="mlfoundations/DataComp-12M", datacomp_commit=datacomp_commit,
                        dr_repo="apple/DataCompDR-12M", dr_commit=dr_commit)
        (directory / f"group_{group}.json").write_text(json.dumps(manifest))
    out = tmp_path / "report"
    assert main(["report", "--records-dir", str(records_dir), "--out-dir", str(out),
                 "--fetch-manifests-dir", str(directory)]) == 0
    with open(out / "data.csv") as stream:
        total = {row["group"]: row for row in csv.DictReader(stream)}["total"]
    assert (int(total["sha256_mismatch_dropped"]), int(total["sha256_mismatch_kept"])) == (15, 21)
    markdown = (out / "results.md").read_text().split("## Data")[1]
    assert f"DataComp `mlfoundations/DataComp-12M` at commit `{'a' * 40}`" in markdown
    # one repo's groups at two commits: the dataset mixes two versions of it, and the report says so
    assert "**DataCompDR `apple/DataCompDR-12M` MIXES 2 commits**" in markdown
    assert f"`{'b' * 40}` (groups 00000, 00001); `{'c' * 40}` (groups 00002)" in markdown
    page = (out / "report.html").read_text()
    assert f"at commit <code>{'a' * 40}</code>" in page and "mixes 2 commits</strong>" in page
    assert "<th>sha256_mismatch_kept</th>" in page


def test_report_without_fetch_manifests_has_no_data_section(records_dir, tmp_path):
    for extra in ([], ["--fetch-manifests-dir", str(tmp_path / "does-not-exist")]):
        out = tmp_path / f"report{len(extra)}"
        assert main(["report", "--records-dir", str(records_dir), "--out-dir", str(out), *extra]) == 0
        assert not (out / "data.csv").exists()
        assert "## Data" not in (out / "results.md").read_text()
        assert "<h2>Data</h2>" not in (out / "report.html").read_text()


def test_suite_averages_follow_the_tags_of_each_benchmark():
    from mobileclip_repro.report.tables import suite_averages

    records = [make_record("toy_dr", True, 1, "toy_zeroshot", 0.4), make_record("toy_dr", True, 1, "toy_retrieval", 0.2)]
    extra = make_record("toy_dr", True, 1, "toy_zeroshot", 0.6)
    extra["benchmark"] = "toy_shift"
    records.append(extra)
    records[0]["tags"], records[1]["tags"], records[2]["tags"] = ["shifts"], ["retrieval"], ["shifts"]
    (row,) = suite_averages(records).to_dict("records")
    assert row["average (3)"] == pytest.approx(0.4)
    assert row["shifts (2)"] == pytest.approx(0.5) and row["retrieval (1)"] == pytest.approx(0.2)


def test_without_tags_there_is_no_averages_section(report_dir):
    # the table is still written, empty: the DAG declares it whenever the config's benchmarks carry tags
    assert len((report_dir / "suite_averages.csv").read_text().splitlines()) == 1  # its header
    assert "Averages over benchmark groups" not in (report_dir / "results.md").read_text()


def test_tagged_records_get_an_averages_section(records_dir, tmp_path):
    for path in records_dir.glob("*/*/*.json"):
        record = json.loads(path.read_text())
        record["tags"] = ["retrieval"] if record["task"] == "zeroshot_retrieval" else []
        path.write_text(json.dumps(record))
    out = tmp_path / "tagged"
    assert main(["report", "--records-dir", str(records_dir), "--out-dir", str(out)]) == 0
    assert "Averages over benchmark groups" in (out / "results.md").read_text()
    assert "Averages over benchmark groups" in (out / "report.html").read_text()
    with open(out / "suite_averages.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 6 and set(rows[0]) >= {"average (2)", "retrieval (1)"}


# DataComp's aggregate_scores.py groups, by its display names, mapped to the suite's benchmark names
DATACOMP_DIST_SHIFTS = ["imagenet_sketch", "imagenetv2", "imagenet_a", "imagenet_o", "imagenet_r", "objectnet"]
DATACOMP_VTAB = ["caltech101", "cifar100", "clevr_count_all", "clevr_closest_object_distance", "dtd", "eurosat",
                 "kitti_closest_vehicle_distance", "flowers", "pets", "pcam", "resisc45", "svhn", "sun397"]
DATACOMP_RETRIEVAL = ["flickr30k", "mscoco", "winogavil"]


def _suite_records(repo_root, skip=()):
    """One hand-made record per task of the 38-task suite, task i scoring (i + 1) / 100."""
    import yaml

    suite = yaml.safe_load((repo_root / "configs" / "eval" / "datacomp_suite.yaml").read_text())
    records, values = [], {}
    for position, spec in enumerate(suite["evaluation"]["benchmarks"]):
        values[spec["name"]] = (position + 1) / 100
        if spec["name"] in skip:
            continue
        record = make_record("dr", True, 1, "toy_zeroshot", values[spec["name"]])
        record.update(benchmark=spec["name"], task=spec["task"], tags=spec.get("tags", []), seed=0,
                      main_metric_name="acc1")
        records.append(record)
    return records, values


def test_the_suite_averages_are_datacomps_aggregate_scores(repo_root):
    """ImageNet, ImageNet dist. shifts, VTAB, Retrieval and the average over 38, as DataComp's
    aggregate_scores.py computes them from the same 38 numbers."""
    from mobileclip_repro.report.tables import suite_averages

    records, values = _suite_records(repo_root)
    assert len(records) == 38
    (row,) = suite_averages(records).to_dict("records")
    assert row["imagenet (1)"] == pytest.approx(values["imagenet1k"])
    assert row["imagenet_dist_shifts (6)"] == pytest.approx(sum(values[n] for n in DATACOMP_DIST_SHIFTS) / 6)
    assert row["vtab (13)"] == pytest.approx(sum(values[n] for n in DATACOMP_VTAB) / 13)
    assert row["retrieval (3)"] == pytest.approx(sum(values[n] for n in DATACOMP_RETRIEVAL) / 3)
    assert row["average (38)"] == pytest.approx(sum(range(1, 39)) / 100 / 38)
    columns = list(suite_averages(records).columns)
    assert columns[5:10] == ["average (38)", "imagenet (1)", "imagenet_dist_shifts (6)", "vtab (13)", "retrieval (3)"]


def test_a_task_that_failed_is_named_and_left_out_of_the_averages(repo_root, tmp_path):
    records, values = _suite_records(repo_root, skip=("winogavil",))
    directory = tmp_path / "eval"
    for record in records:
        path = directory / "dr" / "seed_0" / "epoch_1" / f"{record['benchmark']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    (directory / "dr" / "seed_0" / "epoch_1" / "winogavil.failed.json").write_text(json.dumps(
        {"schema": "mobileclip_repro/eval-failure/1", "run": "dr", "role": "student", "seed": 0, "epoch": 1,
         "seen_samples": SEEN_PER_EPOCH, "dr": True, "checkpoint": "/ckpt", "benchmark": "winogavil",
         "error": "FileNotFoundError: benchmark 'winogavil': dataset root /x does not exist"}))
    out = tmp_path / "report"
    assert main(["report", "--records-dir", str(directory), "--out-dir", str(out)]) == 0
    with open(out / "suite_averages.csv") as stream:
        (row,) = list(csv.DictReader(stream))
    assert float(row["average (37)"]) == pytest.approx((sum(values.values()) - values["winogavil"]) / 37)
    assert float(row["retrieval (2)"]) == pytest.approx((values["flickr30k"] + values["mscoco"]) / 2)
    text = (out / "results.md").read_text()
    assert "Left out: benchmarks that failed to evaluate" in text
    assert "- winogavil: dr seed 0, epoch 1" in text and "dataset root /x does not exist" in text
    assert "winogavil: dr seed 0, epoch 1" in (out / "report.html").read_text()


# --- seeds, teachers and the efficiency multiplier -------------------------------------------

@pytest.fixture
def seeded_records_dir(tmp_path):
    """Two seeds per run (seed 1 = seed 0 + 0.02), and two teachers with their ensemble."""
    directory = tmp_path / "evaluations"
    for seed in (0, 1):
        for record in all_records():
            record = {**record, "seed": seed, "role": "student", "main_metric": record["main_metric"] + 0.02 * seed}
            path = directory / record["run"] / f"seed_{seed}" / f"epoch_{record['epoch']}" / f"{record['benchmark']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record))
    for member, role, value in (("teacher_a", "teacher", 0.81), ("teacher_b", "teacher", 0.83),
                                ("ensemble", "ensemble", 0.86)):
        for benchmark in ("toy_zeroshot", "toy_retrieval"):
            record = {**make_record(member, False, 0, benchmark, value), "role": role, "seed": None,
                      "seen_samples": 0, "model": "toy-teacher"}
            path = directory / "teachers" / member / f"{benchmark}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record))
    return directory


@pytest.fixture
def seeded_report(seeded_records_dir, tmp_path):
    out = tmp_path / "seeded_report"
    assert main(["report", "--records-dir", str(seeded_records_dir), "--out-dir", str(out)]) == 0
    return out


def test_results_are_the_mean_over_seeds_with_min_and_max(seeded_report):
    with open(seeded_report / "results.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 6  # (run, checkpoint); teachers are not rows here
    row = next(r for r in rows if r["run"] == "toy_dr" and r["epoch"] == "2")
    assert row["seeds"] == "2"
    assert float(row["toy_zeroshot/acc1"]) == pytest.approx(0.466)
    assert float(row["toy_zeroshot/acc1 min"]) == pytest.approx(0.456)
    assert float(row["toy_zeroshot/acc1 max"]) == pytest.approx(0.476)
    markdown = (seeded_report / "results.md").read_text()
    assert "| toy_dr | DR | 2 | 16.38k | 2 | 46.6 (45.6–47.6) |" in markdown
    with open(seeded_report / "results_per_seed.csv") as stream:
        assert len(list(csv.DictReader(stream))) == 12


def test_teachers_are_listed_and_drawn_as_the_ceiling(seeded_report):
    with open(seeded_report / "teachers.csv") as stream:
        rows = {row["teacher"]: row for row in csv.DictReader(stream)}
    assert set(rows) == {"teacher_a", "teacher_b", "ensemble"}
    assert rows["ensemble"]["role"] == "ensemble" and float(rows["ensemble"]["toy_zeroshot/acc1"]) == 0.86
    assert "## Teachers" in (seeded_report / "results.md").read_text()
    assert "<h2>Teachers</h2>" in (seeded_report / "report.html").read_text()


def test_efficiency_json_and_its_sentence(seeded_report):
    results = {r["benchmark"]: r for r in json.loads((seeded_report / "efficiency.json").read_text())}
    zeroshot = results["toy_zeroshot"]
    assert set(zeroshot) >= {"dr_run", "plain_run", "benchmark", "metric", "multiplier", "per_seed", "lower_bound"}
    assert zeroshot["dr_run"] == "toy_dr" and zeroshot["plain_run"] == "toy_plain"
    assert [entry["dr_seed"] for entry in zeroshot["per_seed"]] == [0, 1]
    # DR's first point (31%) already beats non-DR's last (22-24%): at least 3x (24,576 / 8,192), a bound
    assert zeroshot["lower_bound"] and zeroshot["multiplier"] == pytest.approx(3.0)
    sentence = "DR (toy_dr) reaches non-DR's (toy_plain) final toy_zeroshot acc1 (23.2%) with ≥ 3.0× fewer"
    assert sentence in (seeded_report / "results.md").read_text()
    assert sentence in html.unescape((seeded_report / "report.html").read_text())


def test_every_benchmark_gets_a_multiplier(seeded_report):
    results = json.loads((seeded_report / "efficiency.json").read_text())
    assert sorted(r["benchmark"] for r in results) == ["toy_retrieval", "toy_zeroshot"]


def test_the_mobileclip2_set_lists_the_released_models_numbers():
    points = load_paper_reference(PAPER_REFERENCES["mobileclip2"])
    imagenet = {p["label"]: p["value"] for p in points if p["dataset"] == "imagenet1k"}
    # docs/reference.md §9: v2 and v1 zero-shot IN-1k of the released models
    assert imagenet["MobileCLIP2-B"] == pytest.approx(0.794) and imagenet["MobileCLIP-B"] == pytest.approx(0.768)
    assert imagenet["MobileCLIP2-S0"] == pytest.approx(0.715) and imagenet["MobileCLIP2-L-14"] == pytest.approx(0.819)
    assert all(p["seen_samples"] is None for p in points)  # training lengths differ and are not all given


@pytest.mark.parametrize("label, model, same", [
    ("MobileCLIP2-B", "MobileCLIP-B", True), ("MobileCLIP-B (LT)", "MobileCLIP-B", True),
    ("MobileCLIP2-S0", "MobileCLIP-B", False), ("MobileCLIP2-S2", "MobileCLIP-S2", True), ("MobileCLIP2-B", "", False),
])
def test_released_models_are_drawn_beside_students_of_their_size(label, model, same):
    assert same_architecture(label, model) is same


def test_the_mobileclip2_overlay_reports_beside_a_mobileclip_b_student(tmp_path):
    directory = tmp_path / "evaluations"
    directory.mkdir()
    for epoch, value in enumerate([0.40, 0.55, 0.62], start=1):
        record = make_record("dfndr12m_mobileclip_b", True, epoch, "toy_zeroshot", value)
        record.update(benchmark="imagenet1k", dataset="imagenet1k", seen_samples=epoch * 12_288_000,
                      run_spec={"model": "MobileCLIP-B"})
        (directory / f"run_{epoch}.json").write_text(json.dumps(record))
    out = tmp_path / "report"
    assert main(["report", "--records-dir", str(directory), "--out-dir", str(out),
                 "--paper-reference", "mobileclip2"]) == 0
    assert (out / "learning_efficiency.png").stat().st_size > 0
    page = (out / "report.html").read_text()
    assert "MobileCLIP2-B" in page and "79.4" in page


# -- a report you would publish: the multipliers on the figures, readable units, provenance --------

def _capture_figures(monkeypatch):
    """The figures the report's plots save, kept open for a look at their axes."""
    from mobileclip_repro.report import plots

    figures = []
    original = plots.save_figure

    def keep(figure, out_stem):
        figures.append({"stem": str(out_stem), "axes": [
            {"title": axis.get_title(), "ylabel": axis.get_ylabel(), "lines": len(axis.get_lines()),
             "texts": [text.get_text() for text in axis.texts if text.get_text()], "visible": axis.get_visible()}
            for axis in figure.axes]})
        return original(figure, out_stem)

    monkeypatch.setattr(plots, "save_figure", keep)
    return figures


def test_the_multiplier_is_drawn_where_it_is_read(seeded_records_dir, tmp_path, monkeypatch):
    figures = _capture_figures(monkeypatch)
    out = tmp_path / "report"
    assert main(["report", "--records-dir", str(seeded_records_dir), "--out-dir", str(out)]) == 0
    results = {r["benchmark"]: r for r in json.loads((out / "efficiency.json").read_text())}
    retrieval = results["toy_retrieval"]
    # the arrow's ends: where each arm is at the target; their ratio is the multiplier
    assert retrieval["plain_seen"] / retrieval["dr_seen"] == pytest.approx(retrieval["multiplier"])
    (figure,) = [f for f in figures if f["stem"].endswith("learning_efficiency")]
    texts = {axis["title"]: axis["texts"] for axis in figure["axes"]}
    assert texts["toy_zeroshot"] == ["≥ 3.0× fewer seen samples"]
    assert texts["toy_retrieval"] == [f"{'≥ ' if retrieval['lower_bound'] else ''}{retrieval['multiplier']:.1f}× "
                                      "fewer seen samples"]


def test_the_compute_figure_draws_the_amortized_reinforcement_as_its_own_curve():
    from mobileclip_repro.report import cost
    from mobileclip_repro.report.efficiency import multiplier
    from mobileclip_repro.report.report import amortized_records, compute_arrows

    runs = {"dr": {"run": "dr", "arm": "DR", "seeds": 2, "reinforcement": "default", "flops_per_sample": 3e7,
                   "seen_samples": 32768},
            "plain": {"run": "plain", "arm": "plain", "seeds": 2, "reinforcement": None, "flops_per_sample": 2e7,
                      "seen_samples": 32768}}
    record = {"dr_run": "dr", "plain_run": "plain", "benchmark": "b",
              **multiplier([(8192, 0.2), (16384, 0.4), (32768, 0.6)], [(8192, 0.1), (16384, 0.2), (32768, 0.3)])}
    reinforcements = {"default": 5.5e11}
    cost.add_compute_multipliers([record], runs, reinforcements)
    shares = cost.reinforcement_per_job(runs, reinforcements)
    assert shares == {"dr": pytest.approx(2.75e11)}  # once, over the two DR training jobs
    in_flops = [{"run": "dr", "dr": True, "role": "student", "seen_samples": 8192 * 3e7}]
    (shifted,) = amortized_records(in_flops, shares)
    assert shifted["amortized_of"] == "dr" and shifted["seen_samples"] == pytest.approx(8192 * 3e7 + 2.75e11)
    dotted, solid = compute_arrows([record], runs, shares)
    assert solid["plain"] / solid["dr"] == pytest.approx(record["compute_multiplier"])
    assert dotted["below"] and dotted["plain"] / dotted["dr"] == pytest.approx(
        record["compute_multiplier_with_reinforcement"])
    assert f"{record['compute_multiplier_with_reinforcement']:.1f}× with reinforcement" in solid["text"]


def _metrics(seen, **losses):
    return {"step": seen // 128, "seen_samples": seen, "samples_per_second": 500.0, "data_wait_share": 0.1, **losses}


def test_training_curves_put_each_loss_family_on_its_own_labelled_axes(tmp_path, monkeypatch):
    from mobileclip_repro.report.plots import plot_training_curves

    figures = _capture_figures(monkeypatch)
    dr = [_metrics(seen, loss=8 - seen / 1e4, contrastive_loss=0.0, distill_loss=8 - seen / 1e4,
                   **{"loss/clip_real": 0.0, "loss/distill_i2t_real": 2 - seen / 4e4, "loss/distill_t2i_real": 2.1})
          for seen in (2560, 5120, 7680)]
    plain = [_metrics(seen, loss=4.8 - seen / 1e5, contrastive_loss=4.8 - seen / 1e5) for seen in (2560, 5120, 7680)]
    plot_training_curves({"dr": {0: dr}, "plain": {0: plain}}, tmp_path / "training_curves")
    panels = [axis for axis in figures[0]["axes"] if axis["visible"]]
    assert [axis["title"] for axis in panels] == [
        "contrastive loss", "distillation loss", "distillation term: image→text, real",
        "distillation term: text→image, real", "throughput per job"]
    # no total mixing the families, no flat-zero term, one run per family panel, a y label on every panel
    assert [axis["lines"] for axis in panels[:4]] == [1, 1, 1, 1]
    assert all(axis["ylabel"] for axis in panels)
    assert panels[0]["ylabel"] == "contrastive loss (CE, nats)"


def test_the_page_says_what_made_it_in_readable_units_without_markdown(seeded_records_dir, tmp_path, monkeypatch):
    import re

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1765000000")
    out = tmp_path / "report"
    assert main(["report", "--records-dir", str(seeded_records_dir), "--out-dir", str(out),
                 "--config-digest", "3f2a9c"]) == 0
    page = re.sub(r'src="data:image/png;base64,[^"]*"', "", (out / "report.html").read_text())
    assert "config digest <code>3f2a9c</code>" in page and "2025-12-06 05:46 UTC" in page
    for name in ("python", "torch", "open_clip", "clip_benchmark", "snakemake", "mobileclip-repro"):
        assert f"<td>{name}</td>" in page
    assert "`" not in page and "**" not in page
    assert "- config digest: 3f2a9c" in (out / "results.md").read_text()


def test_without_git_or_a_digest_the_provenance_says_so(monkeypatch):
    from mobileclip_repro.report import report

    monkeypatch.setattr(report, "_git", lambda *args: None)
    found = report.provenance()
    assert found["commit"] == "unknown" and found["config digest"].startswith("not given")


@pytest.mark.parametrize("flops, text", [(547628898461, "548 GFLOPs"), (30089216.0, "30.1 MFLOPs"),
                                         (1.2e21, "1.2 ZFLOPs"), (512, "512 FLOPs"), (None, "n/a")])
def test_flops_are_printed_with_an_si_prefix(flops, text):
    from mobileclip_repro.report.cost import format_flops

    assert format_flops(flops) == text


def test_the_cost_table_on_the_page_is_in_readable_units():
    from mobileclip_repro.report.report import display_run_costs

    table = pd.DataFrame([{"run": "toy_dr", "arm": "DR", "seeds": 3, "FLOPs / seen sample": 30089216.0,
                           "wall s / seen sample": 0.001974, "CPU s / seen sample": None}])
    row = display_run_costs(table).iloc[0].to_dict()
    assert row == {"run": "toy_dr", "arm": "DR", "seeds": 3, "FLOPs / seen sample": "30.1 MFLOPs",
                   "wall time / seen sample": "1.97 ms", "CPU time / seen sample": "n/a"}


def test_several_dr_runs_against_one_baseline_list_their_multipliers_in_their_colours(tmp_path, monkeypatch):
    from mobileclip_repro.report.efficiency import default_pairs, efficiency_records
    from mobileclip_repro.report.plots import plot_learning_efficiency
    from mobileclip_repro.report.report import sample_arrows

    figures = _capture_figures(monkeypatch)
    records = all_records() + [{**record, "run": "toy_dr2", "main_metric": record["main_metric"] - 0.05}
                               for record in all_records() if record["run"] == "toy_dr"]
    multipliers = efficiency_records(records, default_pairs(records))
    plot_learning_efficiency(records, tmp_path / "learning_efficiency", arrows=sample_arrows(multipliers))
    zeroshot = next(axis for axis in figures[0]["axes"] if axis["title"] == "toy_zeroshot")
    assert [text.split(":")[0] for text in zeroshot["texts"]] == ["toy_dr vs toy_plain", "toy_dr2 vs toy_plain"]


def test_the_data_multiplier_is_drawn_from_the_dr_size_to_the_non_dr_size_that_matches_it():
    from mobileclip_repro.report.report import data_arrows

    matched = {"benchmark": "b", "dr_run": "dr", "plain_run": "plain", "target": 0.3, "dr_subset_size": 1000,
               "plain_size_needed": 10_100.0, "multiplier": 10.1, "lower_bound": False, "upper_bound": False}
    never = {**matched, "dr_subset_size": 16000, "plain_size_needed": 16000, "multiplier": 1.0, "lower_bound": True}
    (arrow,) = data_arrows([matched, never])  # non-DR never gets there at DR's largest size: nothing to draw
    assert (arrow["dr"], arrow["plain"], arrow["level"]) == (1000, 10_100.0, 0.3)
    assert arrow["text"] == "non-DR needs 10.1× the data"
