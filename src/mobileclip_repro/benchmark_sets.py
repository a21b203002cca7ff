"""Benchmark sets from clip_benchmark's webdataset mirrors on the hub, into a local root.

clip_benchmark (``clip-benchmark/wds_<name>``) and DataComp (``djghosh/wds_<task>_test``, the
sets DataComp's own evaluation downloads) publish webdataset sets as dataset repos laid out as
``classnames.txt``, ``zeroshot_classification_templates.txt``, ``dataset_type.txt`` (for
retrieval sets) and ``<split>/nshards.txt`` + ``<split>/<i>.tar``. Downloading them ahead
of evaluation, into the root the config names, keeps evaluation jobs off the network:
GPU nodes of a cluster rarely have it, and clip_benchmark would otherwise start its own
download inside every job.

Files go through huggingface_hub (``HF_ENDPOINT``/``HF_TOKEN`` honoured), which writes
each one under a temporary name and renames it when complete, so an interrupted fetch
resumes and never leaves a truncated shard under its final name.

``check_class_names`` is what a classification set on disk must satisfy for its record to
mean something (every label named, no blank name, a template to say it with; names no label
uses are reported); the config's preflight runs it at DAG start on the sets already there,
``evaluate`` on every set before its first record.

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
import tarfile
import zipfile
from pathlib import Path

from mobileclip_repro.hub import hub_commit, hub_download

log = logging.getLogger(__name__)

CLASSIFICATION_FILES = ("classnames.txt", "zeroshot_classification_templates.txt")
OPTIONAL_FILES = ("dataset_type.txt",)


SOURCE_FILE = "hub_source.json"  # in a fetched set's root: where it came from (evaluate records it)

# One WinoGAViL instance in its webdataset form: the cue, the candidates' names, the names of
# those associated with the cue, and image k of the candidates under "<k>.<ext>".
WINOGAVIL_KEYS = ("cue.txt", "candidates.json", "associations.json")
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")


class MetadataError(ValueError):
    """A set's metadata that cannot be matched to its images, or lacks a field a metric groups by."""


# ---------------------------------------------------------------- metrics on predictions


def fetch_benchmark_set(repo_id: str, root: str | Path, split: str = "test", revision: str | None = None) -> dict:
    """Download one webdataset benchmark set (clip_benchmark's layout, e.g. DataComp's
    ``djghosh/wds_*_test``) at ``revision`` (None: main); returns what was fetched (the set's
    manifest, naming the requested revision and the commit it resolved to). DataComp's nlphuji
    sets (Flickr30k, MSCOCO, WinoGAViL) are not webdatasets: their files are converted into one."""
    from huggingface_hub.errors import EntryNotFoundError

    from mobileclip_repro import shards

    root = Path(root)
    converted = repo_id in NLPHUJI_FILES
    # every file at one commit: a push during the fetch cannot mix two versions, and records can name it
    commit = hub_commit(repo_id, revision)
    source = {"repo": repo_id, "revision": revision, "commit": commit}

    if converted:
        def download_source(filename: str) -> Path:
            return hub_download(repo_id, filename, root / SOURCE_FOLDER, revision=commit)

        fetched = fetch_nlphuji_set(repo_id, root, split, download_source)
        fetched["num_shards"] = len(wds_shard_paths(root, split) or [])
    else:
        def download(filename: str) -> Path:
            return hub_download(repo_id, filename, root, revision=commit)

        present = []
        for filename in (*OPTIONAL_FILES, *CLASSIFICATION_FILES):
            try:
                download(filename)
                present.append(filename)
            except EntryNotFoundError:
                pass  # retrieval sets have no class names; classification sets no dataset_type.txt
        dataset_type = (root / "dataset_type.txt").read_text().strip() if "dataset_type.txt" in present else "classification"
        missing = [f for f in CLASSIFICATION_FILES if f not in present]
        if dataset_type == "classification" and missing:
            raise FileNotFoundError(f"{repo_id}: a classification set without {missing}")
        nshards_text = download(f"{split}/nshards.txt").read_text().strip()
        if not nshards_text.isdigit() or int(nshards_text) < 1:
            raise ValueError(f"{repo_id}: {split}/nshards.txt holds {nshards_text!r}, not a shard count")
        num_shards = int(nshards_text)
        for shard in range(num_shards):
            download(f"{split}/{shard}.tar")
            log.info("%s: %s/%d.tar (%d/%d)", repo_id, split, shard, shard + 1, num_shards)
        fetched = {"repo": repo_id, "split": split, "dataset_type": dataset_type, "num_shards": num_shards,
                   "files": present + [f"{split}/nshards.txt"] + [f"{split}/{i}.tar" for i in range(num_shards)]}
    shards.write_json_atomic(root / SOURCE_FILE, source)
    return {**fetched, "revision": revision, "commit": commit}


def read_set_source(root: str | Path) -> dict | None:
    """``{"repo", "revision", "commit"}`` of a set fetched from the hub; None for a set made locally."""
    import json

    path = Path(root) / SOURCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class BenchmarkSetError(ValueError):
    """A benchmark set on disk that would give a meaningless record (or none); the message names the file."""


def wds_shard_paths(root: str | Path, split: str = "test") -> list[Path] | None:
    """The shards clip_benchmark reads, ``<root>/<split>/{0..n-1}.tar`` for n in ``nshards.txt``;
    None when there is no readable count (not, or not yet, a complete webdataset set)."""
    nshards = Path(root) / split / "nshards.txt"
    text = nshards.read_text().strip() if nshards.is_file() else ""
    if not text.isdigit():
        return None
    return [Path(root) / split / f"{shard}.tar" for shard in range(int(text))]


def read_lines(path: Path) -> list[str]:
    """A text file's entries as clip_benchmark reads classnames.txt and the templates: one per line, stripped."""
    return [line.strip() for line in path.read_text().splitlines()]


def wds_labels(shard_paths: list[Path]) -> dict[int, str]:
    """Each class index the shards' ``cls`` members hold -> the first member holding it.

    From tar headers and the few bytes of each ``cls`` member: images are never read.
    """
    labels: dict[int, str] = {}
    for shard in shard_paths:
        with tarfile.open(shard) as archive:
            for member in archive:
                # webdataset's rule (shards.member_key): the extension is the name after its first dot
                extension = member.name.rpartition("/")[2].partition(".")[2]
                if not member.isfile() or extension.lower() != "cls":
                    continue
                text = archive.extractfile(member).read().decode("utf-8", "replace").strip()
                try:
                    label = int(text)
                except ValueError:
                    raise BenchmarkSetError(f"{shard}: {member.name} holds {text!r}, not a class index") from None
                labels.setdefault(label, f"{shard}: {member.name}")
    return labels


def check_class_names(root: str | Path, split: str = "test") -> dict:
    """A zero-shot classification set in clip_benchmark's webdataset layout names every label it
    has, and names no empty class; returns ``{"class_names": n, "labels_used": m}``.

    clip_benchmark builds one classifier row per line of ``classnames.txt`` and scores label i
    against row i: with a shorter list a label past its end is never predicted, and the record
    still gives a number; an empty list (or no templates) fails inside clip_benchmark.
    BenchmarkSetError names the file.

    The other direction, names that no label of the split uses, is reported, not refused. The
    layout declares its classes in ``classnames.txt`` alone (``nshards.txt`` and DataComp's
    ``count.txt`` count shards and samples), and every name is a row of the classifier, a
    distractor even when no image has its label: the list is the set's label space, and a
    split without every class is legitimate (DataComp's WILDS sets; a small subset, such as a
    toy set with fewer images than its 32 classes). So extra names are a warning with both
    counts and the first unused names, where a file from another set would show. What always
    makes a name wrong is a blank line: clip_benchmark reads it as a class named "" (a row any
    image can fall to), and one before other names shifts each of them off its label; that is
    an error.
    """
    root = Path(root)
    classnames = root / "classnames.txt"
    if not classnames.is_file():
        raise BenchmarkSetError(f"{classnames} missing")
    names = read_lines(classnames)
    if not any(names):
        raise BenchmarkSetError(f"{classnames} lists no class names")
    blank = [line for line, name in enumerate(names, start=1) if not name]
    if blank:
        shown = ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else "")
        raise BenchmarkSetError(f"{classnames} lists {len(names)} class names, {len(blank)} of them blank "
                                f"(line {shown}): clip_benchmark reads a blank line as a class named '' (and one "
                                f"before other names shifts them off their labels); remove it")
    templates = root / "zeroshot_classification_templates.txt"
    if templates.is_file() and not any(read_lines(templates)):
        raise BenchmarkSetError(f"{templates} lists no templates")
    shard_paths = wds_shard_paths(root, split)
    if shard_paths is None:
        raise BenchmarkSetError(f"{root / split / 'nshards.txt'} missing or not a shard count")
    missing = [path for path in shard_paths if not path.is_file()]
    if missing:
        raise BenchmarkSetError(f"{missing[0]} missing ({root / split / 'nshards.txt'} lists {len(shard_paths)} shards)")
    labels = wds_labels(shard_paths)
    outside = [label for label in labels if not 0 <= label < len(names)]
    if outside:
        label = max(outside, key=abs)  # the one farthest out
        raise BenchmarkSetError(f"{classnames} lists {len(names)} class names, but {labels[label]} has label {label} "
                                f"(labels index the list from 0)")
    unused = [name for index, name in enumerate(names) if index not in labels]
    if unused:
        shown = ", ".join(map(repr, unused[:5])) + (", ..." if len(unused) > 5 else "")
        log.warning("%s lists %d class names, the %s split's labels use %d of them: the other %d (%s) stay in the "
                    "classifier as distractors (fine for a split without every class; wrong if the file is "
                    "another set's)", classnames, len(names), split, len(labels), len(unused), shown)
    return {"class_names": len(names), "labels_used": len(labels)}


# -- DataComp's nlphuji sets, converted once into webdataset sets

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
