"""Checks across files that ``load_experiment`` runs before the first job, naming the key.

The schema sees one YAML file; these look at what it points to:

* model names (``runs.*.model``, ``teachers.*.model``, the CoCa captioner, the teachers of the
  reinforcement JSON) against open_clip's registry and the project's ``model_configs/``;
* the reinforcement JSON (Apple's format), against the package's ``schemas/reinforce.schema.yaml``
  (its numbers finite: no NaN or Infinity) and one entry of ``pretrained`` per ``model_name``;
* ``distill.teacher_dimension`` of each DR run against the teachers' ``embed_dim``;
* ``syn_caption_regex`` of each DR run against the synthetic-caption sets the reinforcement
  writes (``reinforcement.captioner``) or, for shards on disk, their ``syn.json`` keys;
* DataCompDR shards the DAG does not make (published, fetched or local) already on disk,
  against the reinforcement JSON and the runs' widths (their per-shard manifests, and the
  embeddings of a few samples). ``train`` repeats the shard check when it starts, for shards
  that appeared after the DAG started (a fetch). The DAG's own shards (``generate: true``)
  are its reinforce job's to redo when a setting changes;
* local data (``data.source: local``): its folders hold shards;
* ``workers`` of each run without ``dataset_resampled``: every process x worker needs shards
  of its own, counted from the toy settings, the hub's shard spec or the local folder;
* benchmark sets: a root the DAG neither makes (the toy sets) nor fetches (``hub_repo``)
  exists, and a classification set already on disk names every label it has (and no blank class)
  (``benchmark_sets.check_class_names``; ``evaluate`` runs it again on every set). A hub
  experiment is planned before its data exist, wherever it is planned (the paper configs plan
  on a laptop), so its roots are checked when the DAG starts instead (``check_prerequisites``):
  a dry run warns, a real run is refused before its first job;
* hub credentials: where the DAG downloads from a gated hub repo (data or benchmark sets) and no
  Hugging Face token is set, ``check_prerequisites`` names the repo and its key, as for the roots.

None of this imports torch or open_clip (20 s on a 2-core machine): the registry is read
from the same JSON files open_clip reads, and shards only when some exist.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import jsonschema
import yaml

from mobileclip_repro.benchmark_sets import BenchmarkSetError, check_class_names, wds_shard_paths
from mobileclip_repro.config import (DEFAULT_REINFORCEMENT, REPO_ROOT, SCHEMA_DIR, ConfigError, captioner_sets,
                                     generated_benchmark, load_config, non_finite_message, non_finite_number,
                                     reinforcement_dr_dir, reinforcement_names, reinforcement_variant, run_world_size,
                                     strict_validator)
from mobileclip_repro.hub import expand_shard_spec
from mobileclip_repro.layout import Layout

REINFORCE_SCHEMA_PATH = SCHEMA_DIR / "reinforce.schema.yaml"
PROJECT_MODEL_CONFIGS = Path(__file__).parent / "model_configs"
# open_clip's own schemes: a config fetched from the hub or read from a folder at load time
UNCHECKED_MODEL_PREFIXES = ("hf-hub:", "local-dir:")
MANIFESTS_CHECKED = 64   # shard manifests read at most (evenly spread over the shards)
SAMPLES_PEEKED = 8       # samples decoded from the first and the last shard


# -- models -----------------------------------------------------------------------------------

def _open_clip_config_dir() -> Path:
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("open_clip is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model_configs"


@functools.lru_cache(maxsize=1)
def known_models() -> dict[str, dict]:
    """Model name -> open_clip config, as ``open_clip.list_models()`` sees them once the project's are added.

    Same rule as open_clip's ``_rescan_model_configs``: every ``*.json`` of its
    ``model_configs/`` and of ours holding ``embed_dim``, ``vision_cfg`` and ``text_cfg``.
    """
    models = {}
    for directory in (_open_clip_config_dir(), PROJECT_MODEL_CONFIGS):
        for path in sorted(directory.glob("*.json")):
            config = json.loads(path.read_text())
            if all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg")):
                models[path.stem] = config
    return models


def check_model(name: str, key: str, context: str = "") -> dict | None:
    """The model's open_clip config (None for an ``hf-hub:``/``local-dir:`` name); ConfigError if unknown."""
    if name.startswith(UNCHECKED_MODEL_PREFIXES):
        return None
    models = known_models()
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        ours = ", ".join(sorted(path.stem for path in PROJECT_MODEL_CONFIGS.glob("*.json")))
        raise ConfigError(f"config key '{key}': {context}unknown model {name!r}: not an open_clip architecture "
                          f"nor one of the project's model_configs ({ours}){hint}")
    return models[name]


# -- the reinforcement JSON -------------------------------------------------------------------

def resolve_path(path: str | Path) -> Path | None:
    """A config's file path as the DAG reads it (relative to the working directory), else under the repository."""
    path = Path(path)
    for candidate in (path, REPO_ROOT / path) if not path.is_absolute() else (path,):
        if candidate.is_file():
            return candidate
    return None


def load_reinforce_json(path: str | Path, key: str = "reinforcement.config") -> dict:
    """Apple's reinforcement JSON, checked: schema, one pretrained entry per teacher, known teachers.

    Returns the raw JSON with ``model_names`` / ``pretrained_entries`` lists added.
    """
    found = resolve_path(path)
    if found is None:
        raise ConfigError(f"config key '{key}': reinforcement JSON {str(path)!r} not found "
                          f"(looked in {Path.cwd()} and {REPO_ROOT})")
    try:
        raw = json.loads(found.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"config key '{key}': {path} is not readable JSON: {error}") from None
    # json reads NaN and Infinity; the schema would call them only "not of type 'number'"
    non_finite = non_finite_number(raw)
    if non_finite is not None:
        inner, value = non_finite
        raise ConfigError(f"config key '{key}': {path}: '{'.'.join(map(str, inner))}': {non_finite_message(value)}")
    schema = yaml.safe_load(REINFORCE_SCHEMA_PATH.read_text())
    errors = list(strict_validator()(schema).iter_errors(raw))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        inner = ".".join(str(part) for part in best.absolute_path) or "<top level>"
        raise ConfigError(f"config key '{key}': {path}: '{inner}': {best.message} "
                          f"(Apple's format, {REINFORCE_SCHEMA_PATH.name})")
    model_names = [name.strip() for name in raw["model_name"].split(",")]
    pretrained = [entry.strip() for entry in raw["pretrained"].split(",")]
    if len(pretrained) != len(model_names):
        raise ConfigError(f"config key '{key}': {path}: 'pretrained' lists {len(pretrained)} entries for "
                          f"{len(model_names)} teachers in 'model_name' ({raw['model_name']!r}); one per teacher")
    if not all(model_names) or not all(pretrained):
        raise ConfigError(f"config key '{key}': {path}: an empty entry in 'model_name' or 'pretrained'")
    size = raw["reinforce"]["image_augmentation"]["random_resized_crop"]["size"]
    if isinstance(size, list) and size[0] != size[1]:
        raise ConfigError(f"config key '{key}': {path}: 'reinforce.image_augmentation.random_resized_crop.size' "
                          f"{size}: only square crops are supported")
    for name in model_names:
        check_model(name, key, f"{path}: 'model_name': ")
    return {**raw, "model_names": model_names, "pretrained_entries": pretrained}


def teacher_dims(reinforce: dict) -> list[int] | None:
    """Each teacher's embedding width (open_clip ``embed_dim``), None when one is not knowable here."""
    configs = [known_models().get(name) for name in reinforce["model_names"]]
    if any(config is None for config in configs):
        return None
    return [int(config["embed_dim"]) for config in configs]


# -- DataCompDR shards already on disk ----------------------------------------------------------

def _spread(items: list, limit: int) -> list:
    if len(items) <= limit:
        return items
    return [items[round(i * (len(items) - 1) / (limit - 1))] for i in range(limit)]


def _peek(shard: Path) -> tuple[tuple | None, set[str]]:
    """(augmentations, embedding width, synthetic captions per set) most of the first samples of a
    shard have, and the ``syn.json`` keys of those samples.

    Captions per set is a number when every set has as many, else the sorted distinct counts.
    """
    from mobileclip_repro import shards  # webdataset: only imported when there are shards to read

    seen, keys = Counter(), set()
    try:
        for _, raw in zip(range(SAMPLES_PEEKED), shards.iter_raw_samples(shard)):
            try:
                syn_json = json.loads(raw["syn.json"])
                keys.update(syn_json if isinstance(syn_json, dict) else ())
                record = shards.decode_reinforcement(raw, check_finite=False)
            except Exception:  # noqa: BLE001 - one broken sample is training's to count, not a setting
                continue
            counts = sorted({len(captions) for captions in record.syn_sets.values()})
            syn = counts[0] if len(counts) == 1 else tuple(counts)
            seen[(len(record.param_aug), int(record.image_emb.shape[1]), syn)] += 1
    except Exception:  # noqa: BLE001 - an unreadable shard is counted by training too
        pass
    return (seen.most_common(1)[0][0] if seen else None), keys


def _mismatch(key: str, dr_dir: Path, what: str, recorded, expected, source: Path) -> ConfigError:
    return ConfigError(f"config key '{key}': the DataCompDR shards in {dr_dir} were made with {what} "
                       f"{recorded!r} ({source}), the config has {expected!r}; delete them (and their "
                       f".manifest.json files) to reinforce again, or make the config match them")


def check_dr_shards(dr_dir: str | Path, settings: dict[str, tuple[str, object]],
                    dimensions: dict[str, list[int]], regexes: dict[str, str] | None = None) -> None:
    """DR shards on disk must have been made with the config's settings; nothing on disk passes.

    ``settings``: manifest field (``num_samples``, ``teachers``, ``seed``, ...) -> (config key,
    the value the config would reinforce with). ``dimensions``: config key of a run's
    ``distill.teacher_dimension`` -> its value. ``regexes``: config key of a run's
    ``syn_caption_regex`` -> its value, which must select a set the shards have. Per-shard
    manifests (``reinforce`` writes them) are compared field by field, and a few decoded
    samples of the first and last shard give the augmentations per image, the embedding
    width, the synthetic captions and their sets, for shards without a manifest (Apple's).
    """
    dr_dir = Path(dr_dir)
    if not dr_dir.is_dir():
        return
    tars = sorted(dr_dir.rglob("*.tar"))
    if not tars:
        return
    for tar in _spread(tars, MANIFESTS_CHECKED):
        manifest_path = tar.with_name(tar.name + ".manifest.json")
        try:
            manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
        except (OSError, ValueError):
            manifest = None  # a broken manifest makes reinforce redo the shard; nothing to compare
        if not isinstance(manifest, dict):
            continue
        for field, (key, expected) in settings.items():
            if field in manifest and manifest[field] != expected:
                raise _mismatch(key, dr_dir, field, manifest[field], expected, manifest_path)
        if isinstance(manifest.get("dims"), list):
            for key, dimension in dimensions.items():
                if manifest["dims"] != list(dimension):
                    raise _mismatch(key, dr_dir, "teachers of widths", manifest["dims"], list(dimension),
                                    manifest_path)
    for tar in dict.fromkeys((tars[0], tars[-1])):
        peeked, keys = _peek(tar)
        for key, regex in (regexes or {}).items():
            if keys and not any(re.match(regex, name) for name in keys):
                raise ConfigError(f"config key '{key}': {regex!r} selects none of the synthetic-caption sets of "
                                  f"the DataCompDR shards in {dr_dir} (syn.json keys of the first samples of "
                                  f"{tar}: {', '.join(sorted(keys))})")
        if peeked is None:
            continue
        augmentations, width, syn = peeked
        source = Path(f"{tar}, first samples")
        if "num_samples" in settings and augmentations != settings["num_samples"][1]:
            raise _mismatch(settings["num_samples"][0], dr_dir, "num_samples", augmentations,
                            settings["num_samples"][1], source)
        if "num_syn_captions" in settings and syn != settings["num_syn_captions"][1]:
            raise _mismatch(settings["num_syn_captions"][0], dr_dir, "num_syn_captions", syn,
                            settings["num_syn_captions"][1], source)
        for key, dimension in dimensions.items():
            if width != sum(dimension):
                raise _mismatch(key, dr_dir, f"{width}-D embeddings, i.e. a teacher_dimension summing to",
                                width, list(dimension), source)


# -- training data the DAG does not make --------------------------------------------------------

def _tars(directory: str | Path) -> list[Path]:
    """shards.list_shards' rule (every .tar, nested ones too), without importing webdataset (and torch)."""
    return sorted(Path(directory).rglob("*.tar")) if Path(directory).is_dir() else []


def _require_shards(directory: str | Path, key: str, what: str) -> None:
    if not Path(directory).is_dir():
        raise ConfigError(f"config key '{key}': {what} {directory} does not exist")
    if not _tars(directory):
        raise ConfigError(f"config key '{key}': {what} {directory} holds no .tar shards")


def check_local_data(config: dict) -> None:
    """Local data is read, not made: its DataComp folder (and, for DR runs on shards the DAG does
    not reinforce, the DataCompDR one beside it) must hold shards before the first job."""
    data = config["data"]
    if data["source"] != "local":
        return
    _require_shards(data["datacomp_dir"], "data.datacomp_dir", "the local DataComp shards' folder")
    if data["layout"] == "joined":  # the DataCompDR keys are in the same tars
        return
    trained_on = {run["reinforcement"] for section in ("teachers", "runs")
                  for run in config.get(section, {}).values() if run["data"] == "dr"}
    for name in reinforcement_names(config):
        if name in trained_on and not reinforcement_variant(config, name)["generate"]:
            _require_shards(reinforcement_dr_dir(config, name), "data.dr_dir",
                            f"the DataCompDR shards' folder of reinforcement {name!r}")


def training_shards(config: dict, run: dict) -> tuple[int, str] | None:
    """(how many shards a run reads, where that number comes from), None when not knowable yet."""
    data = config["data"]
    toy = data["toy"]
    if data["source"] == "toy":  # toyworld.generate: ceil(samples / samples_per_shard) shards per set
        samples, key = ((toy["teacher_samples"], "teacher_samples") if run["data"] == "teacher"
                        else (toy["train_samples"], "train_samples"))
        return -(-samples // toy["samples_per_shard"]), f"data.toy.{key} / data.toy.samples_per_shard"
    if run["data"] == "teacher":  # the toy world's teacher set; elsewhere whatever is on disk
        directory = Layout(config["results_dir"]).teacher_data_dir
        tars = _tars(directory)
        return (len(tars), str(directory)) if tars else None
    if data["source"] == "hub":
        try:
            return len(expand_shard_spec(data["hub"]["shards"])), "data.hub.shards"
        except ValueError as error:
            raise ConfigError(f"config key 'data.hub.shards': {error}") from None
    return len(_tars(data["datacomp_dir"])), data["datacomp_dir"]


def check_workers(config: dict) -> None:
    """Without resampling each rank x worker streams a disjoint slice of the shards
    (``samples.shard_stream``), and an empty slice stops the train job; refuse it here."""
    for section in ("teachers", "runs"):
        for name, run in config.get(section, {}).items():
            if run["dataset_resampled"]:
                continue
            counted = training_shards(config, run)
            if counted is None:
                continue
            shards, source = counted
            processes = run_world_size(run)
            workers = max(run["workers"], 1)  # workers: 0 reads in the process itself, one stream
            if shards < processes * workers:
                fix = (f"at most {shards // processes} workers, " if shards >= processes else "")
                raise ConfigError(f"config key '{section}.{name}.workers': {run['workers']} workers x {processes} "
                                  f"processes need {processes * workers} shards without resampling (each "
                                  f"streams shards of its own), the run has {shards} ({source}); use {fix}"
                                  f"more shards or dataset_resampled: true")


# -- benchmark sets ---------------------------------------------------------------------------------

def missing_benchmark_roots(config: dict) -> list[str]:
    """Every benchmark root the DAG neither makes nor fetches that is not there, one line each."""
    return [f"config key 'evaluation.benchmarks.{position}.root': benchmark {benchmark['name']!r}: "
            f"{benchmark['root']} does not exist (the DAG neither makes nor fetches it: give hub_repo, "
            f"or put the set there)"
            for position, benchmark in enumerate(config["evaluation"]["benchmarks"])
            if not (generated_benchmark(config, benchmark) or benchmark.get("hub_repo"))
            and not Path(benchmark["root"]).is_dir()]


def check_benchmark_roots(config: dict) -> None:
    """A benchmark root the DAG neither makes nor fetches exists (else evaluation fails after training)."""
    missing = missing_benchmark_roots(config)
    if missing:
        raise ConfigError("\n".join(missing))


def check_benchmark_sets(config: dict) -> None:
    """Classification sets already on disk that the DAG does not make name every label they have.

    The toy sets are rewritten by the DAG when their settings change, and checked by
    ``evaluate`` when it starts, as a fetched set still being fetched is.
    """
    for position, benchmark in enumerate(config["evaluation"]["benchmarks"]):
        root = Path(benchmark["root"])
        if (benchmark["task"] != "zeroshot_classification" or not benchmark["dataset"].startswith("wds/")
                or generated_benchmark(config, benchmark) or not root.is_dir()):
            continue
        type_file = root / "dataset_type.txt"
        if type_file.is_file() and type_file.read_text().strip().lower() != "classification":
            continue  # multilabel (npy labels) or a task mismatch: evaluate says which
        shard_paths = wds_shard_paths(root, benchmark["split"])
        if benchmark.get("hub_repo") and (shard_paths is None or not all(path.is_file() for path in shard_paths)):
            continue  # a fetch under way: its job finishes it, evaluate checks it
        try:
            check_class_names(root, benchmark["split"])
        except BenchmarkSetError as error:
            raise ConfigError(f"config key 'evaluation.benchmarks.{position}.root': benchmark "
                              f"{benchmark['name']!r}: {error}") from None


def check_report_to(config: dict) -> None:
    """A telemetry sink whose package is missing fails before any job, not at a job's first log step."""
    from mobileclip_repro.telemetry import missing_report_to

    for section in ("teachers", "runs"):
        for name, run in config.get(section, {}).items():
            missing = missing_report_to(run.get("report_to", []))
            if missing:
                raise ConfigError(f"{section}.{name}.report_to: {', '.join(missing)} requested but not installed "
                                  f"(wandb is the optional extra: pip install -e '.[wandb]'; or drop it from report_to)")

# -- what the DAG needs from outside it, named when it starts ------------------------------------

EVALUATING_RULES = frozenset({"evaluate", "evaluate_teachers"})
HUB_ANSWER_SECONDS = 10   # per repo; the repos are asked at once
HUB_QUESTIONS_AT_ONCE = 8


def hub_repos(config: dict, rules: set[str] | None = None) -> dict[str, str]:
    """Hub repo -> the config key naming it, for the repos the DAG downloads from: the data's
    (``fetch``: data.hub.datacomp_repo, and data.hub.dr_repo where the DataCompDR shards are
    fetched, not generated) and the benchmark sets' (``fetch_benchmark``: hub_repo).
    ``rules``: the rules that will run (None: every rule the DAG has, as planned)."""
    repos = {}
    data = config["data"]
    if data["source"] == "hub" and (rules is None or "fetch" in rules):
        repos[data["hub"]["datacomp_repo"]] = "data.hub.datacomp_repo"
        if not reinforcement_variant(config)["generate"]:
            repos.setdefault(data["hub"]["dr_repo"], "data.hub.dr_repo")
    if rules is None or "fetch_benchmark" in rules:
        for position, benchmark in enumerate(config["evaluation"]["benchmarks"]):
            if benchmark.get("hub_repo"):
                repos.setdefault(benchmark["hub_repo"], f"evaluation.benchmarks.{position}.hub_repo")
    return repos


@functools.lru_cache(maxsize=None)
def hub_gating(repo: str) -> str | bool | None:
    """Whether a dataset repo is gated (``auto``/``manual``: its files need a token of a user who
    accepted its terms), as the hub says without a token; None when the hub does not answer
    (offline, HF_HUB_OFFLINE, no such repo). Asked once per process."""
    from huggingface_hub import HfApi  # imported here: only a DAG that downloads asks

    try:
        return HfApi().dataset_info(repo, token=False, timeout=HUB_ANSWER_SECONDS).gated or False
    except Exception:  # noqa: BLE001 - any failure to ask is "not known", the fetch job will say more
        return None


def hub_credential_problems(repos: dict[str, str]) -> tuple[list[str], list[str]]:
    """(missing credentials, unverified repos) of the repos a DAG downloads from, one line each.

    huggingface_hub reads the token (``HF_TOKEN``, else the file ``hf auth login`` writes, at
    ``HF_TOKEN_PATH``) in every fetch job; without one a gated repo answers 401 after the DAG has
    started. With a token nothing is asked here (whether its user accepted a repo's terms, only
    the download can tell). Without one the hub is asked which repos are gated; where it does
    not answer the repos are named as not verified."""
    if not repos:
        return [], []
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub import constants, get_token

    if get_token():
        return [], []
    with ThreadPoolExecutor(max_workers=HUB_QUESTIONS_AT_ONCE) as pool:
        gating = dict(zip(repos, pool.map(hub_gating, repos)))
    where = f"HF_TOKEN, or the token file {constants.HF_TOKEN_PATH} that `hf auth login` writes"
    missing = [f"config key '{key}': {repo} is a gated repo on the hub ({gating[repo]} approval) and no "
               f"Hugging Face token is set ({where}): accept its terms on the hub, then set a token"
               for repo, key in repos.items() if gating[repo]]
    unknown = [repo for repo in repos if gating[repo] is None]
    unverified = [f"no Hugging Face token is set ({where}) and the hub did not say whether "
                  f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} gated (offline?): a gated repo "
                  f"fails its fetch job with 401"] if unknown else []
    return missing, unverified


def check_prerequisites(config: dict, rules: set[str] | None = None, *, dry_run: bool = False) -> list[str]:
    """What the DAG needs from outside it and has not, named when it starts: every benchmark root
    it neither makes nor fetches, where evaluation runs, and every hub credential its downloads need.

    ``rules``: the rules that will run (a real run knows them when it starts; None for a plan).
    A dry run plans before data exist (the paper configs plan on a laptop): everything missing
    comes back as warnings, one line each, saying that a real run stops there. A real run is refused before its first job
    (ConfigError, every missing thing on its own line); what could not be verified (the hub not
    answering) comes back as warnings. Toy and local experiments had their roots checked when
    they loaded (``check_config``), so theirs are named there, before any plan."""
    missing = []
    if rules is None or rules & EVALUATING_RULES:
        missing += missing_benchmark_roots(config)
    credentials, unverified = hub_credential_problems(hub_repos(config, rules))
    missing += credentials
    if missing and not dry_run:
        raise ConfigError("\n".join(missing))
    return [f"{line}; a real run stops here, before its first job" for line in missing] + unverified


# -- the whole config ---------------------------------------------------------------------------

def check_config(config: dict) -> None:
    """Every check above on a validated config with its paths resolved (``load_config``'s last step)."""
    for section in ("teachers", "runs"):
        for name, run in config.get(section, {}).items():
            check_model(run["model"], f"{section}.{name}.model")
    captioner = config["reinforcement"]["captioner"]
    several = isinstance(captioner, dict) and set(captioner) != {"coca"}  # suffix -> captioner
    for where, member in (captioner.items() if several else [(None, captioner)]):
        if isinstance(member, dict):
            key = ".".join(filter(None, ["reinforcement.captioner", where, "coca.model_name"]))
            check_model(member["coca"]["model_name"], key)
    dr_runs = {f"{section}.{name}": run for section in ("teachers", "runs")
               for name, run in config.get(section, {}).items() if run["data"] == "dr"}
    for name in reinforcement_names(config):
        runs = {where: run for where, run in dr_runs.items() if run["reinforcement"] == name}
        if runs:
            _check_reinforcement(config, name, runs)
    check_local_data(config)
    check_workers(config)
    check_report_to(config)
    if config["data"]["source"] != "hub":  # toy and local experiments are planned where they run
        check_benchmark_roots(config)
    check_benchmark_sets(config)


def _check_reinforcement(config: dict, name: str, dr_runs: dict[str, dict]) -> None:
    """One named reinforcement against the DR runs that train on it: teacher widths, caption
    sets, and the shards already on disk (made with the same settings, or none yet)."""
    reinforcement = reinforcement_variant(config, name)
    prefix = "reinforcement" if name == DEFAULT_REINFORCEMENT else f"reinforcement.variants.{name}"
    reinforce = load_reinforce_json(reinforcement["config"], f"{prefix}.config")
    dims = teacher_dims(reinforce)
    dimensions = {f"{where}.distill.teacher_dimension": run["distill"]["teacher_dimension"]
                  for where, run in dr_runs.items()}
    if dims is not None:
        for key, dimension in dimensions.items():
            if list(dimension) != dims:
                raise ConfigError(
                    f"config key '{key}': {list(dimension)} does not match the teachers of "
                    f"{reinforcement['config']} ({', '.join(reinforce['model_names'])}: embed_dim "
                    f"{' + '.join(map(str, dims))}); set it to {dims}")
    regexes = {f"{where}.syn_caption_regex": run["syn_caption_regex"] for where, run in dr_runs.items()}
    if reinforcement["generate"]:
        written = list(captioner_sets(reinforcement["captioner"])[0])
        for key, regex in regexes.items():
            if not any(re.match(regex, caption_set) for caption_set in written):
                raise ConfigError(f"config key '{key}': {regex!r} selects none of the synthetic-caption sets "
                                  f"{prefix}.captioner writes ({', '.join(written)})")
        # The DAG's own shards are not checked: a changed setting changes the reinforce job's
        # params, and the rerun job redoes every shard made with the old one.
        return
    # An online run reads only the shards' syn.json (its teachers embed a fresh augmentation each
    # step): what the stored embeddings were made with is the stored-reinforcement runs' concern.
    stored = {where for where, run in dr_runs.items() if not (run.get("distill") or {}).get("online")}
    if not stored:
        return
    settings = json_settings(reinforce, f"{prefix}.config")
    check_dr_shards(reinforcement_dr_dir(config, name), settings,
                    {key: value for key, value in dimensions.items() if key.rsplit(".distill.", 1)[0] in stored},
                    {key: value for key, value in regexes.items() if key.rsplit(".syn_caption_regex", 1)[0] in stored})


def json_settings(reinforce: dict, key: str = "reinforcement.config") -> dict[str, tuple[str, object]]:
    """The shard-manifest fields the reinforcement JSON fixes, with the key that names them."""
    return {"teachers": (key, reinforce["model_names"]),
            "pretrained_entries": (key, reinforce["pretrained_entries"]),
            "num_samples": (key, reinforce["num_samples"])}


def check_run_shards(spec: dict) -> None:
    """At a DR train job's start: the shards it is about to read match its reinforcement JSON and widths."""
    if not spec.get("dr"):
        return
    reinforce = load_reinforce_json(spec["reinforcement_config"])
    key = f"distill.teacher_dimension' of run '{spec['name']}"  # reads: config key '...' of run '...'
    regex = spec.get("syn_caption_regex")
    check_dr_shards(spec["dr_dir"], json_settings(reinforce), {key: spec["distill"]["teacher_dimension"]},
                    {f"syn_caption_regex' of run '{spec['name']}": regex} if regex else None)


def load_experiment(source: str | Path | dict) -> dict:
    """An experiment as the DAG runs it: the config (``config.load_config``: the schema, its
    defaults) and every check above (models, the reinforcement JSON, teacher widths, shards and
    benchmark sets on disk), each naming the key it is about."""
    config = load_config(source)
    check_config(config)
    return config
