"""The five DataComp tasks clip_benchmark does not score: their metrics, computed as DataComp's
evaluation code (``eval_utils/{wilds,fairness,wino}_eval.py``) defines them.

- iWildCam, ``F1-macro_all``: WILDS' macro F1 of the top-1 predictions, over the classes
  present in the ground truth (a class only ever predicted does not pull the mean down).
- FMoW ``acc_worst_region``, GeoDE ``acc_wg``: top-1 accuracy of the worst group (region),
  over the groups that have samples. DataComp's FMoW code would skip a group whose name holds
  "Other", but it groups by bare region codes, so no group is skipped; neither is one here.
- Dollar Street, ``acc_top5_wg``: top-5 accuracy of the worst income group (``income_ds``).
- WinoGAViL, ``jaccard_score_10-12``: per instance, the cue ("A"/"An" + the cue, lower-cased)
  picks as many candidate images as it has associations, by cosine similarity; the score is
  the Jaccard index of picked and true associations, averaged over the instances with 10 or
  12 candidates (DataComp's main metric; 5-6 and all are reported too).

The four WILDS/fairness sets are clip_benchmark webdataset sets whose samples also carry an
``npy``: one row of integer metadata per image, its columns named by the set's
``metadata_fields`` (DataComp's mirrors: iWildCam ``location, sequence, year, month, day,
hour, minute, second, y``; FMoW ``region, year, y``; Dollar Street ``income_ds, income_meta,
region``; GeoDE ``region, country``). WinoGAViL's set is a webdataset too, one sample per
instance (``WINOGAVIL_KEYS``), converted once from the hub's dataset by ``write_winogavil_set``.

The three sets DataComp reads through ``datasets.load_dataset("nlphuji/...")`` (Flickr30k's 1k
test split, MSCOCO 2014's 5k test split, WinoGAViL; ``eval_utils/retr_eval.py``,
``wino_eval.py``) are hub repos whose loading script ``datasets`` >= 4 no longer runs. The files
the script reads are plain: a CSV (one row per image or instance) and a zip of JPEGs
(``NLPHUJI_FILES``). ``fetch_nlphuji_set`` downloads those two files and writes them, once, as a
webdataset set evaluation reads offline: retrieval as clip_benchmark's retrieval layout (the
image's own bytes and a ``txt`` of its captions, one per line), WinoGAViL as above.
"""
from __future__ import annotations

import ast
import csv
import io
import json
import logging
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# main metric -> the top-k accuracy whose worst group it is
WORST_GROUP_METRICS = {"acc_wg": 1, "acc_worst_region": 1, "acc_top5_wg": 5}
MACRO_F1 = "F1-macro_all"
PREDICTION_METRICS = (*WORST_GROUP_METRICS, MACRO_F1)  # need every image's prediction, not only accuracy
WINOGAVIL_METRIC = "jaccard_score_10-12"
ASSOCIATION = "visual_association"  # the task name of WinoGAViL-style sets
# One WinoGAViL instance in its webdataset form: the cue, the candidates' names, the names of
# those associated with the cue, and image k of the candidates under "<k>.<ext>".
WINOGAVIL_KEYS = ("cue.txt", "candidates.json", "associations.json")
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")


class MetadataError(ValueError):
    """A set's metadata that cannot be matched to its images, or lacks a field a metric groups by."""


# ---------------------------------------------------------------- metrics on predictions

def topk_correct(logits, targets, k: int) -> np.ndarray:
    """Per image: is the true class among the k highest logits (k = 1: top-1)."""
    logits, targets = np.asarray(logits), np.asarray(targets)
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k] if k < logits.shape[1] else np.argsort(-logits, axis=1)
    return (top == targets[:, None]).any(axis=1)


def group_accuracies(correct, groups) -> dict[int, tuple[float, int]]:
    """{group: (accuracy, count)} over the groups that have samples."""
    correct, groups = np.asarray(correct, dtype=float), np.asarray(groups)
    return {int(group): (float(correct[groups == group].mean()), int((groups == group).sum()))
            for group in np.unique(groups)}


def worst_group_accuracy(logits, targets, groups, k: int = 1) -> tuple[float, dict[int, tuple[float, int]]]:
    """The top-k accuracy of the worst non-empty group, and every group's (accuracy, count)."""
    per_group = group_accuracies(topk_correct(logits, targets, k), groups)
    if not per_group:
        raise MetadataError("no samples to group")
    return min(accuracy for accuracy, _ in per_group.values()), per_group


def macro_f1(predictions, targets) -> float:
    """WILDS' ``F1(average="macro")``: sklearn's, over the labels present in ``targets``."""
    from sklearn.metrics import f1_score

    targets = np.asarray(targets)
    return float(f1_score(targets, np.asarray(predictions), average="macro", labels=np.unique(targets)))


def prediction_metrics(main_metric: str, logits, targets, metadata=None, metadata_fields=(),
                       group_by: str | None = None) -> dict[str, float]:
    """The DataComp metric ``main_metric`` and what it is made of (per-group accuracies and counts)."""
    logits, targets = np.asarray(logits), np.asarray(targets)
    if main_metric == MACRO_F1:
        return {MACRO_F1: macro_f1(logits.argmax(axis=1), targets)}
    if main_metric not in WORST_GROUP_METRICS:
        raise ValueError(f"{main_metric!r} is not one of DataComp's prediction metrics {PREDICTION_METRICS}")
    groups = metadata_column(metadata, metadata_fields, group_by)
    k = WORST_GROUP_METRICS[main_metric]
    worst, per_group = worst_group_accuracy(logits, targets, groups, k)
    name = "acc" if k == 1 else f"acc_top{k}"
    metrics = {main_metric: worst}
    for group, (accuracy, count) in per_group.items():
        metrics[f"{name}_{group_by}:{group}"] = accuracy
        metrics[f"count_{group_by}:{group}"] = float(count)
    return metrics


def metadata_column(metadata, metadata_fields, field: str | None) -> np.ndarray:
    metadata = np.asarray(metadata)
    fields = list(metadata_fields)
    if field not in fields:
        raise MetadataError(f"group_by {field!r} is not among the set's metadata_fields {fields}")
    if metadata.ndim != 2 or metadata.shape[1] != len(fields):
        raise MetadataError(f"metadata rows have shape {metadata.shape[1:]} but metadata_fields names {len(fields)} "
                            f"columns {fields}")
    return metadata[:, fields.index(field)].astype(np.int64)


# ---------------------------------------------------------------- the metadata of a webdataset set

def read_wds_metadata(root: str | os.PathLike, split: str, batch_size: int, num_workers: int):
    """Every image's (label, metadata row) of a clip_benchmark webdataset set, in the order the
    evaluation loader yields its images.

    The same shards, read by a loader with the same batch size and workers as clip_benchmark's
    (webdataset hands shard i to worker i mod n; the loader takes batches from the workers in
    turn), come out in the same order. The caller checks the labels against the evaluated ones,
    so an order that ever differed would be an error, not a silently shuffled grouping.
    """
    import torch
    import webdataset as wds

    from mobileclip_repro.benchmark_sets import wds_shard_paths

    paths = wds_shard_paths(root, split)
    if paths is None:
        raise MetadataError(f"{Path(root) / split / 'nshards.txt'} missing: not a webdataset set")
    pattern = os.path.join(str(root), split, "{0..%d}.tar" % (len(paths) - 1))
    # as clip_benchmark builds it (no shard shuffle, no node splitting), minus the image decode
    dataset = wds.WebDataset(pattern, nodesplitter=lambda src: src).to_tuple("cls", "npy", "__key__").map_tuple(
        _decode_int, _decode_npy, None)
    loader = torch.utils.data.DataLoader(dataset.batched(batch_size, collation_fn=_collate_metadata),
                                         batch_size=None, shuffle=False, num_workers=num_workers)
    labels, rows = [], []
    for batch_labels, batch_rows in loader:
        labels.extend(batch_labels)
        rows.extend(batch_rows)
    widths = {row.shape for row in rows}
    if len(widths) > 1:
        raise MetadataError(f"{root}: metadata rows of different shapes {sorted(widths)}")
    return np.asarray(labels, dtype=np.int64), np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int64)


def _decode_int(data: bytes) -> int:
    return int(data.decode().strip())


def _decode_npy(data: bytes) -> np.ndarray:
    return np.atleast_1d(np.load(io.BytesIO(data), allow_pickle=False)).astype(np.int64)


def _collate_metadata(samples):
    return [label for label, _, _ in samples], [row for _, row, _ in samples]


def check_metadata_matches(labels, evaluated_targets, where: str) -> None:
    labels, evaluated_targets = np.asarray(labels), np.asarray(evaluated_targets)
    if labels.shape != evaluated_targets.shape or not (labels == evaluated_targets).all():
        raise MetadataError(f"{where}: the metadata pass read {len(labels)} labels that do not match the "
                            f"{len(evaluated_targets)} evaluated ones (images and metadata out of step)")


# ---------------------------------------------------------------- WinoGAViL

def clip_prompt(cue: str) -> str:
    """DataComp's (and WinoGAViL's) prompt for a cue: its article, then the cue in lower case."""
    cue = cue.strip().lower()
    return f"An {cue}" if cue[:1] in "aeiou" and cue else f"A {cue}"


def association_jaccard(similarities, is_association) -> float:
    """One instance: pick as many candidates as it has associations, the most similar first;
    the Jaccard index of picked and associated."""
    from sklearn.metrics import jaccard_score

    similarities = np.asarray(similarities, dtype=float)
    is_association = np.asarray(is_association, dtype=bool)
    picks = np.zeros(len(similarities), dtype=bool)
    count = int(is_association.sum())
    if count:
        picks[np.argsort(similarities)[-count:]] = True
    return float(jaccard_score(is_association, picks))


def winogavil_scores(scores, candidate_counts) -> dict[str, float]:
    """DataComp's WinoGAViL summary: the mean Jaccard overall and per candidate count (5, 6, 10,
    12) and range (5-6, 10-12); NaN where no instance has that many candidates."""
    scores, counts = np.asarray(scores, dtype=float), np.asarray(candidate_counts)

    def mean(mask):
        return float(scores[mask].mean()) if mask.any() else float("nan")

    return {"avg_jaccard_score": mean(np.ones(len(scores), dtype=bool)),
            **{f"jaccard_score_{n}": mean(counts == n) for n in (5, 6, 10, 12)},
            "jaccard_score_5-6": mean(counts <= 6), "jaccard_score_10-12": mean(counts >= 10)}


def read_winogavil_sample(sample: dict) -> tuple[str, list, np.ndarray]:
    """(cue, candidate images in order as PIL images, association mask) of one webdataset
    sample as read from its tar (undecoded bytes)."""
    from PIL import Image

    missing = [key for key in WINOGAVIL_KEYS if key not in sample]
    if missing:
        raise MetadataError(f"WinoGAViL sample {sample.get('__key__')!r} lacks {missing}")
    candidates = json.loads(sample["candidates.json"])
    associations = set(json.loads(sample["associations.json"]))
    unknown = associations - set(candidates)
    if unknown:
        raise MetadataError(f"WinoGAViL sample {sample['__key__']!r}: associations {sorted(unknown)} are not candidates")
    images = []
    for position in range(len(candidates)):
        found = [sample[f"{position}.{ext}"] for ext in IMAGE_EXTENSIONS if f"{position}.{ext}" in sample]
        if not found:
            raise MetadataError(f"WinoGAViL sample {sample['__key__']!r}: no image for candidate {position}")
        images.append(Image.open(io.BytesIO(found[0])).convert("RGB"))
    return sample["cue.txt"].decode().strip(), images, np.array([name in associations for name in candidates])


def write_webdataset_set(samples, root: str | os.PathLike, split: str, per_shard: int, dataset_type: str) -> int:
    """Samples (webdataset dicts with their ``__key__``) into ``<root>/<split>/{0..n-1}.tar``, ``per_shard``
    a tar, with clip_benchmark's ``nshards.txt`` and ``dataset_type.txt``; returns how many were written."""
    import webdataset as wds

    root = Path(root)
    split_dir = root / split
    split_dir.mkdir(parents=True, exist_ok=True)
    count, shard, writer = 0, 0, None
    try:
        for sample in samples:
            if count % per_shard == 0:
                if writer is not None:
                    writer.close()
                writer = wds.TarWriter(str(split_dir / f"{shard}.tar"))
                shard += 1
            writer.write(sample)
            count += 1
    finally:
        if writer is not None:
            writer.close()
    (split_dir / "nshards.txt").write_text(f"{shard}\n")
    (root / "dataset_type.txt").write_text(f"{dataset_type}\n")
    return count


def write_winogavil_set(rows, root: str | os.PathLike, split: str = "test", per_shard: int = 500) -> int:
    """Instances (``cue``, ``candidates``, ``associations``, ``candidate_images``) into a webdataset
    set under root; returns how many were written. A candidate image is a PIL image (stored as
    lossless PNG) or the ``(extension, bytes)`` of an image file (stored as it is: the pixels the
    hub's file holds, decoded by the evaluation as by DataComp's loader)."""
    def samples():
        for count, row in enumerate(rows):
            sample = {"__key__": f"{count:06d}", "cue.txt": str(row["cue"]),
                      "candidates.json": json.dumps(list(row["candidates"])),
                      "associations.json": json.dumps(list(row["associations"]))}
            for position, image in enumerate(row["candidate_images"]):
                if isinstance(image, tuple):
                    extension, data = image
                    sample[f"{position}.{extension}"] = data
                else:
                    buffer = io.BytesIO()
                    image.convert("RGB").save(buffer, format="PNG")
                    sample[f"{position}.png"] = buffer.getvalue()
            yield sample

    return write_webdataset_set(samples(), root, split, per_shard, "association")


# ---------------------------------------------------------------- the nlphuji sets, without their loading script

WINOGAVIL_REPO = "nlphuji/winogavil"
# repo -> (the CSV, the zip of images) its loading script reads, as the hub's file listings show them
NLPHUJI_FILES = {
    "nlphuji/flickr_1k_test_image_text_retrieval": ("test_1k_flickr.csv", "images_flickr_1k_test.zip"),
    "nlphuji/mscoco_2014_5k_test_image_text_retrieval": ("test_5k_mscoco_2014.csv", "images_mscoco_2014_5k_test.zip"),
    WINOGAVIL_REPO: ("winogavil_dataset.csv", "winogavil_images.zip"),
}
NLPHUJI_SPLIT = "test"  # the only split these repos have, and the one DataComp evaluates
SOURCE_FOLDER = "hub_files"  # under the set's root: the downloaded CSV and zip (a rerun downloads nothing)


def read_csv_rows(path: str | os.PathLike) -> list[dict]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a row's caption lists exceed csv's 128 kB default
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def parse_list_cell(text: str, where: str) -> list:
    """A CSV cell holding a list: JSON (the retrieval CSVs' ``raw``) or a Python literal
    (quoted with ' as pandas writes lists)."""
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, (list, tuple)):
            return list(value)
    raise MetadataError(f"{where}: {text[:80]!r} is not a list")


class ZipImages:
    """A zip of images looked up by file name (the CSVs name images without the zip's folder)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.archive = zipfile.ZipFile(self.path)
        self.members = {}
        for name in self.archive.namelist():
            base = name.rpartition("/")[2]
            if base and not name.startswith("__MACOSX/"):
                self.members.setdefault(base, name)

    def read(self, filename: str) -> tuple[str, bytes]:
        """(extension, bytes) of the image named ``filename``."""
        member = self.members.get(filename)
        if member is None:
            raise MetadataError(f"{self.path}: no image {filename!r}")
        extension = filename.rpartition(".")[2].lower()
        if extension not in IMAGE_EXTENSIONS:
            raise MetadataError(f"{self.path}: {filename!r} is not one of the image types {IMAGE_EXTENSIONS}")
        return extension, self.archive.read(member)

    def close(self) -> None:
        self.archive.close()


def write_retrieval_set(samples, root: str | os.PathLike, split: str = "test", per_shard: int = 1000) -> int:
    """(key, extension, image bytes, captions) into clip_benchmark's webdataset retrieval layout
    (one sample per image: the image as it is, its captions in ``txt``, one per line); returns
    the number of images."""
    def records():
        for count, (key, extension, data, captions) in enumerate(samples):
            # clip_benchmark splits txt into captions with str.splitlines: a break inside a caption would make two
            lines = [" ".join(str(caption).splitlines()) for caption in captions]
            yield {"__key__": f"{count:06d}_{key}", extension: data, "txt": "\n".join(lines)}

    return write_webdataset_set(records(), root, split, per_shard, "retrieval")


def convert_retrieval_files(csv_path, zip_path, root, split: str = "test") -> int:
    """An nlphuji retrieval CSV (``filename``; ``raw``: the image's captions as a JSON list) and
    its zip of images into a webdataset retrieval set, in the CSV's order."""
    images = ZipImages(zip_path)
    try:
        def samples():
            for line, row in enumerate(read_csv_rows(csv_path), start=2):
                where = f"{csv_path} line {line}"
                if "filename" not in row or "raw" not in row:
                    raise MetadataError(f"{where}: needs the columns 'filename' and 'raw', has {sorted(row)}")
                captions = parse_list_cell(row["raw"], where)
                if not captions:
                    raise MetadataError(f"{where}: no captions for {row['filename']!r}")
                extension, data = images.read(row["filename"])
                yield row["filename"].rpartition(".")[0].replace(".", "_"), extension, data, captions

        return write_retrieval_set(samples(), root, split)
    finally:
        images.close()


def convert_winogavil_files(csv_path, zip_path, root, split: str = "test") -> int:
    """WinoGAViL's CSV (``cue``, ``candidates``, ``associations``: one instance a row) and its zip
    of candidate images (``<candidate>.jpg``) into the webdataset set ``run_association`` reads."""
    images = ZipImages(zip_path)
    try:
        def rows():
            for line, row in enumerate(read_csv_rows(csv_path), start=2):
                where = f"{csv_path} line {line}"
                missing = [column for column in ("cue", "candidates", "associations") if column not in row]
                if missing:
                    raise MetadataError(f"{where}: lacks the columns {missing}")
                candidates = [str(name) for name in parse_list_cell(row["candidates"], where)]
                yield {"cue": row["cue"], "candidates": candidates,
                       "associations": [str(name) for name in parse_list_cell(row["associations"], where)],
                       "candidate_images": [images.read(f"{name}.jpg") for name in candidates]}

        return write_winogavil_set(rows(), root, split)
    finally:
        images.close()


def fetch_nlphuji_set(repo_id: str, root: str | os.PathLike, split: str, download) -> dict:
    """One of DataComp's nlphuji sets into a webdataset set under root: its CSV and zip through
    ``download(filename)`` (hub files of the commit the caller resolved), converted once."""
    if split != NLPHUJI_SPLIT:
        raise ValueError(f"{repo_id}: has only the {NLPHUJI_SPLIT!r} split, not {split!r}")
    csv_name, zip_name = NLPHUJI_FILES[repo_id]
    csv_path, zip_path = download(csv_name), download(zip_name)
    if repo_id == WINOGAVIL_REPO:
        count, dataset_type = convert_winogavil_files(csv_path, zip_path, root, split), "association"
    else:
        count, dataset_type = convert_retrieval_files(csv_path, zip_path, root, split), "retrieval"
    log.info("%s: %d %s into %s", repo_id, count, "instances" if dataset_type == "association" else "images", root)
    return {"repo": repo_id, "split": split, "dataset_type": dataset_type, "samples": count,
            "source_files": [csv_name, zip_name]}
