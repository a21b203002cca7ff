"""The data stage's commands (workflow/rules/data.smk): `toy-data`, `fetch`, `local-data`, `select-subsets`.
Each command is a pair: `<name>_arguments(parser)` and `<name>_command(args)`; the library module a command
runs is imported inside it."""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from mobileclip_repro.cli import add_spec_option
from mobileclip_repro import shards
from mobileclip_repro.hub import select_group


def toy_data_arguments(parser: argparse.ArgumentParser) -> None:
    from mobileclip_repro import toyworld

    add_spec_option(parser, "toy_data")
    parser.add_argument("--out-dir", required=True, help="output root (datacomp/, teacher_data/, benchmarks/, manifest.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-samples", type=int, default=8000, help="DataComp-format samples with web-like alt-text")
    parser.add_argument("--teacher-samples", type=int, default=16000, help="samples with clean captions for the teachers")
    parser.add_argument("--benchmark-samples", type=int, default=500, help="images in each benchmark set")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--retrieval-captions", type=int, default=3, help="captions per retrieval image")
    for kind, fraction in toyworld.DEFAULT_ALT_TEXT_MIX.items():
        parser.add_argument(f"--alt-{kind}", type=float, default=fraction, help=f"fraction of {kind} alt-text")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out-dir")
    parser.add_argument("--workers", type=int, default=1, help="processes writing shards (output is identical)")


def toy_data_command(args: argparse.Namespace) -> int:
    from mobileclip_repro import toyworld

    start = time.perf_counter()
    manifest = toyworld.generate(
        args.out_dir, seed=args.seed, train_samples=args.train_samples, teacher_samples=args.teacher_samples,
        benchmark_samples=args.benchmark_samples, samples_per_shard=args.samples_per_shard,
        alt_text_mix={kind: getattr(args, f"alt_{kind}") for kind in toyworld.DEFAULT_ALT_TEXT_MIX},
        retrieval_captions=args.retrieval_captions, overwrite=args.overwrite, workers=args.workers)
    images = sum(output["samples"] for output in manifest["outputs"].values())
    print(f"toy world (seed {args.seed}): {images} images in {time.perf_counter() - start:.1f} s -> {args.out_dir}")
    for name, output in manifest["outputs"].items():
        print(f"  {name:<14} {output['samples']:>7} samples in {output['shards']} shards")
    return 0


def fetch_arguments(parser: argparse.ArgumentParser) -> None:
    from mobileclip_repro.data import fetch

    add_spec_option(parser, "fetch")
    parser.add_argument("--datacomp-repo", required=True, help="hub dataset with DataComp captions/URLs")
    parser.add_argument("--dr-repo", default=None,
                        help="hub dataset with DataCompDR shards (absent: no reinforcement is fetched)")
    parser.add_argument("--shard-spec", required=True,
                        help='shard ids in brace notation, as JSON: "{00000000..00001023}" or a list of such')
    parser.add_argument("--group", required=True, help="group index (e.g. 00003) among the spec's groups")
    parser.add_argument("--group-size", type=int, required=True, help="shards per group")
    parser.add_argument("--datacomp-dir", type=Path, required=True, help="where DataComp shards (with images) go")
    parser.add_argument("--dr-dir", type=Path, default=None, help="where DataCompDR shards go (with --dr-repo)")
    parser.add_argument("--manifest", type=Path, required=True, help="the group manifest to write")
    parser.add_argument("--processes", type=int, default=1, help="shards fetched in parallel (processes)")
    parser.add_argument("--threads", type=int, default=64, help="image downloads in flight per process")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds for a URL's answer (DNS lookup, connect, redirects, headers), and as many "
                             "more for its body")
    parser.add_argument("--retries", type=int, default=1,
                        help="extra tries of an image URL after a connection error or HTTP 429/5xx")
    parser.add_argument("--max-failed-shards", type=int, default=0,
                        help="shards that may stay failed with the group still done (data.hub.max_failed_shards; "
                             "default 0: any failed shard fails the group, and the next run retries it)")
    parser.add_argument("--hub-retries", type=int, default=4,
                        help="extra tries of a hub download or listing after HTTP 408/429/5xx, a connection error "
                             "or a timeout")
    parser.add_argument("--hub-backoff", type=float, default=2.0,
                        help="seconds before the first hub retry; each next wait doubles (jittered, at most 60 s)")
    parser.add_argument("--max-image-bytes", type=int, default=64 << 20)
    parser.add_argument("--datacomp-layout", choices=("auto", "shards", "parquet"), default="auto",
                        help="DataComp repo layout: per-shard tars or parquet metadata (auto: from its file list)")
    parser.add_argument("--datacomp-revision", type=_revision, default=None,
                        help="branch, tag or commit of --datacomp-repo (default: main); resolved to its commit once "
                             "per job")
    parser.add_argument("--dr-revision", type=_revision, default=None,
                        help="branch, tag or commit of --dr-repo (default: main); resolved to its commit once per job")
    parser.add_argument("--sha256", type=_sha256_policy, choices=fetch.SHA256_POLICIES, default=fetch.DEFAULT_SHA256_POLICY,
                        help="an image whose sha256 differs from the recorded one: strict drops it, same_size keeps "
                             "it when its decoded size equals the recorded original size, off keeps it")
    parser.add_argument("--min-join-rate", type=float, default=fetch.DEFAULT_MIN_JOIN_RATE,
                        help="fail when the DataComp source holds less than this fraction of a DataCompDR shard's uids")
    parser.add_argument("--staging-dir", type=Path, default=None,
                        help="hub downloads before they are checked (default: <datacomp-dir>/../.fetch-staging)")


def fetch_command(args: argparse.Namespace) -> int:
    from mobileclip_repro.data import fetch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.dr_repo and args.dr_dir is None:
        raise ValueError("--dr-repo needs --dr-dir")
    if args.processes < 1 or args.threads < 1 or args.timeout <= 0 or args.retries < 0 or args.hub_retries < 0 \
            or args.hub_backoff < 0 or args.max_failed_shards < 0 or not 0 <= args.min_join_rate <= 1:
        raise ValueError("--processes and --threads must be >= 1, --timeout > 0, --retries, --hub-retries, "
                         "--hub-backoff and --max-failed-shards >= 0, --min-join-rate between 0 and 1")
    index, group_shards = select_group(args.shard_spec, args.group, args.group_size)
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # one bar per hub file would drown the log; ours counts shards
    except ImportError:
        pass
    opts = fetch.FetchOptions(datacomp_repo=args.datacomp_repo, datacomp_dir=args.datacomp_dir, dr_repo=args.dr_repo or None,
                              dr_dir=args.dr_dir, layout=args.datacomp_layout, datacomp_revision=args.datacomp_revision,
                              dr_revision=args.dr_revision, staging_dir=args.staging_dir, processes=args.processes,
                              threads=args.threads, timeout=args.timeout, retries=args.retries,
                              max_image_bytes=args.max_image_bytes, hub_retries=args.hub_retries,
                              hub_backoff_s=args.hub_backoff, sha256_policy=args.sha256,
                              min_join_rate=args.min_join_rate)
    manifest = fetch.fetch_group(group_shards, opts)
    manifest.update(group=args.group, group_index=index, group_size=args.group_size,
                    options={key: str(value) if isinstance(value, Path) else value
                             for key, value in asdict(opts).items()})
    totals = manifest["totals"]
    failures = ", ".join(f"{reason} {n}" for reason, n in totals["failed"].items() if n) or "none"
    fetch.log.info("group %s: %d/%d shards ok (%d resumed); %d samples kept of %d listed; URLs: %d tried, %d fetched "
                   "(%.1f images/s this run), failed: %s; sha256 mismatches dropped %d, kept %d (policy %s); no caption %d",
                   args.group, totals["shards_ok"], totals["shards"], totals["shards_resumed"], totals["samples_kept"],
                   totals["samples_listed"], totals["urls_tried"], totals["images_fetched"], manifest["images_per_s"],
                   failures, totals["sha256_mismatch_dropped"], totals["sha256_mismatch_kept"], opts.sha256_policy,
                   totals["no_caption"])
    failed = [entry for entry in manifest["shards"] if entry.get("status") != "ok"]
    if failed and totals["shards_ok"] and len(failed) <= args.max_failed_shards:
        # data.hub.max_failed_shards: a loss the researcher accepted (a shard gone from the hub for
        # good), so the group is done; the manifest lists the lost shards and the report names them
        for entry in failed:
            fetch.log.warning("shard %s lost: %s", entry["shard"], entry.get("error", "unknown error"))
        fetch.log.warning("group %s: %d of %d shards lost, within --max-failed-shards %d: the group manifest is written "
                          "and the report names them", args.group, len(failed), totals["shards"], args.max_failed_shards)
        manifest["lost_shards"] = {entry["shard"]: entry.get("error", "unknown error") for entry in failed}
        manifest["max_failed_shards"] = args.max_failed_shards
    elif failed:
        # The group manifest is the workflow's mark of a complete group: written, it would stop every
        # later run from retrying the missing shards. The finished ones have their own manifests, so the
        # next run of this command skips them and fetches only these.
        for entry in failed:
            fetch.log.error("shard %s failed: %s", entry["shard"], entry.get("error", "unknown error"))
        hint = " (check the repo names, HF_ENDPOINT and HF_TOKEN)" if not totals["shards_ok"] else ""
        fetch.log.error("group %s: %d of %d shards failed%s; the %d complete ones are kept and a rerun fetches only the "
                        "failed ones; no group manifest written", args.group, len(failed), totals["shards"], hint,
                        totals["shards_ok"])
        args.manifest.unlink(missing_ok=True)  # one left by an earlier run would claim the group complete
        return 1
    manifest[shards.SHARD_FILES_KEY] = shards.relative_to_manifest(manifest[shards.SHARD_FILES_KEY], args.manifest)
    shards.write_json_atomic(args.manifest, manifest)
    print(args.manifest)
    return 0


def _revision(text: str) -> str | None:
    """``--*-revision``: empty means the main branch (the workflow passes a null config value so)."""
    return text.strip() or None


def _sha256_policy(text: str) -> str:
    """``--sha256``: a policy name; YAML reads a bare ``off`` in a config as false, so "False" means off too."""
    return "off" if text.strip().lower() in ("false", "off") else text.strip()


def local_data_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_option(parser, "local_data")
    parser.add_argument("--folder", nargs="+", type=Path, required=True,
                        help="folders of shards (data.datacomp_dir, and data.dr_dir where DR shards are given)")
    parser.add_argument("--out", type=Path, required=True, help="the manifest to write")
    parser.add_argument("--listing", default="", help="the DAG's folder_listing (recorded; it reruns this job)")


def local_data_command(args: argparse.Namespace) -> int:
    from mobileclip_repro.data import local_data

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    start = time.monotonic()
    # Snakemake deletes a job's outputs before it runs: the digests are kept beside, for the next run
    cache = args.out.with_name(args.out.stem + ".digests.json")
    previous = None
    if cache.is_file():
        try:
            previous = json.loads(cache.read_text())
        except ValueError:
            previous = None
    manifest = local_data.describe(args.folder, previous)
    manifest["listing"] = args.listing
    shards.write_json_atomic(cache, {shards.SHARD_FILES_KEY: manifest[shards.SHARD_FILES_KEY]})
    manifest[shards.SHARD_FILES_KEY] = shards.relative_to_manifest(manifest[shards.SHARD_FILES_KEY], args.out)
    shards.write_json_atomic(args.out, manifest)
    local_data.log.info("wrote %s in %.1f s", args.out, time.monotonic() - start)
    return 0


def select_subsets_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_option(parser, "select_subsets")
    parser.add_argument("--datacomp-dir", required=True, type=Path, help="DataComp shards (json with uid)")
    parser.add_argument("--sizes", required=True, type=int, nargs="+", help="subset sizes (data.subsets)")
    parser.add_argument("--seed", type=int, default=0, help="the hash's seed (data.subset_seed)")
    parser.add_argument("--out", required=True, type=Path, help="subsets.json to write")
    parser.add_argument("--data-manifests", nargs="*", type=Path, default=None,
                        help="the data stage's manifests: rank the shards they list (default: every shard)")


def select_subsets_command(args) -> int:
    from mobileclip_repro import subsets

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    selection = subsets.select(args.datacomp_dir, args.sizes, args.seed, args.data_manifests)
    shards.write_json_atomic(args.out, selection)
    subsets.log.info("ranked %d distinct uids of %d samples (seed %d); subsets %s -> %s", selection["distinct_uids"],
                     selection["samples"], args.seed, selection["sizes"], args.out)
    return 0
