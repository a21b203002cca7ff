"""Experiment config: one schema (``schemas/config.schema.yaml`` in this package, linked from
workflow/schemas/ for Snakemake readers), defaults from it.

``load_config`` validates a YAML file or dict, fills the schema's defaults, and resolves
paths; ``resolve_run`` turns a run entry into the full spec the trainer consumes, with
the derived quantities (world size, per-GPU batch, steps) the run scripts compute in
shell. Errors name the offending key, e.g. ``runs.toy_dr.lr``.
"""
from __future__ import annotations

import copy
import json
import math
import numbers
import re
from pathlib import Path

import jsonschema
import yaml

from mobileclip_repro.layout import Layout

REPO_ROOT = Path(__file__).resolve().parents[2]
# Shipped inside the package, so an installed wheel validates configs without a checkout.
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SCHEMA_PATH = SCHEMA_DIR / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value is missing, mistyped or inconsistent; the message names the key."""


def strict_validator(validator_class=jsonschema.Draft202012Validator):
    """``validator_class`` where ``integer`` means an integer as written: 128.0 is not one, and
    ``number`` a finite one: NaN and infinities are not numbers.

    JSON Schema (Draft 2020-12, like jsonschema's default type checker) counts any number
    with a zero fractional part as an integer, so ``global_batch_size: 128.0`` would pass and
    break integer arithmetic later; booleans are not integers either. NaN passes every bound
    (it compares false with all), infinity every lower one (``non_finite_number`` says why
    neither is wanted).
    """
    checker = validator_class.TYPE_CHECKER.redefine(
        "integer", lambda _, instance: isinstance(instance, int) and not isinstance(instance, bool))
    checker = checker.redefine("number", lambda _, instance: (
        isinstance(instance, numbers.Number) and not isinstance(instance, bool)
        and not (isinstance(instance, float) and not math.isfinite(instance))))
    return jsonschema.validators.extend(validator_class, type_checker=checker)


def non_finite_number(instance, path: tuple = ()) -> tuple[tuple, float] | None:
    """(key path, value) of the first NaN or infinity in a nested mapping/list (depth first, in
    order), None if every number is finite.

    YAML reads ``.nan``, ``.inf`` and ``-.inf`` as floats, and Python's ``json`` reads
    ``NaN``, ``Infinity`` and ``-Infinity``. No setting of this project means anything with
    them, and a schema bound cannot catch them: NaN compares false with everything, so
    ``lr: .nan`` passes ``exclusiveMinimum: 0`` and a NaN ``grad_clip_norm`` stops the
    trainer only at its first step. Infinity is refused too: no number here has a use for
    it (``grad_clip_norm`` turns clipping off with null or 0).
    """
    if isinstance(instance, float) and not math.isfinite(instance):
        return path, instance
    children = instance.items() if isinstance(instance, dict) else (
        enumerate(instance) if isinstance(instance, (list, tuple)) else ())
    for key, child in children:
        found = non_finite_number(child, (*path, key))
        if found is not None:
            return found
    return None


def non_finite_message(value: float) -> str:
    return f"{value} is not a finite number (NaN and infinities are refused: no setting means anything with them)"


def check_finite(instance, prefix: str = "") -> None:
    """ConfigError naming the first key, under ``prefix``, whose number is NaN or infinite."""
    found = non_finite_number(instance)
    if found is not None:
        path, value = found
        where = ".".join(str(part) for part in [*filter(None, [prefix]), *path]) or "<top level>"
        raise ConfigError(f"config key '{where}': {non_finite_message(value)}")


def _with_defaults(validator_class):
    """A validator that fills ``default`` values while it validates (as Snakemake's validate does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key_path(error: jsonschema.ValidationError, prefix: str = "") -> str:
    return ".".join(str(part) for part in [*filter(None, [prefix]), *error.absolute_path]) or "<top level>"


def _describe(error: jsonschema.ValidationError, prefix: str = "") -> str:
    if error.validator == "additionalProperties":
        return (f"config key '{_key_path(error, prefix)}': {error.message} "
                f"(check the spelling against {SCHEMA_PATH.name})")
    return f"config key '{_key_path(error, prefix)}': {error.message}"


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


# YAML 1.2's (and JSON's, and Python's) exponent floats that PyYAML, a YAML 1.1 reader, leaves as
# strings: `2e-3`, `1E5`, `1.e-3`. (`2.0e-3` it already reads as a float.)
_EXPONENT_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")


def _read_exponent_floats(errors: list[jsonschema.ValidationError], instance) -> bool:
    """Where the schema wants a number and the config has a string such as ``2e-3``, put the float
    it means, in place: ``lr: 2e-3`` is ``lr: 2.0e-3`` is ``lr: 0.002``. Whether anything changed."""
    changed = False
    for error in errors:
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        if (error.validator == "type" and "number" in wanted and isinstance(error.instance, str)
                and _EXPONENT_FLOAT.fullmatch(error.instance.strip()) and error.absolute_path):
            *parents, key = error.absolute_path
            container = instance
            for part in parents:
                container = container[part]
            container[key] = float(error.instance)
            changed = True
    return changed


def _validate_against(schema: dict, instance, prefix: str = "") -> None:
    """Validate ``instance`` in place, filling defaults; ConfigError naming the first bad key."""
    # before the schema, which would call a NaN only "not of type 'number'" (strict_validator)
    check_finite(instance, prefix)
    validator = _with_defaults(strict_validator())(schema)
    errors = list(validator.iter_errors(instance))
    if _read_exponent_floats(errors, instance):
        check_finite(instance, prefix)  # `1e999` is a float too
        errors = list(validator.iter_errors(instance))
    errors = sorted(errors, key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        # the deepest error names the actual key; oneOf wrappers hide it otherwise
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_describe(best, prefix))


def validate(config: dict) -> dict:
    """Validate in place, filling defaults; raises ConfigError naming the first bad key."""
    _validate_against(load_schema(), config)
    _check_consistency(config)
    return config


def validate_benchmarks(benchmarks, where: str = "evaluation.benchmarks") -> list[dict]:
    """A benchmark list (``evaluate --benchmarks-json``, or the config's) checked against the
    schema's one benchmark definition, defaults filled in place; names must be unique."""
    schema = load_schema()
    _validate_against({"type": "array", "items": {"$ref": "#/$defs/benchmark"}, "$defs": schema["$defs"]},
                      benchmarks, where)
    names = [benchmark["name"] for benchmark in benchmarks]
    if len(names) != len(set(names)):
        raise ConfigError(f"config key '{where}': benchmark names must be unique")
    for position, benchmark in enumerate(benchmarks):
        # a retrieval record's number is mean_recall@1; without K = 1 the evaluate job fails after training
        if benchmark["task"] == "zeroshot_retrieval" and 1 not in benchmark["recall_k"]:
            raise ConfigError(f"config key '{where}.{position}.recall_k': {benchmark['recall_k']} has no 1; "
                              f"retrieval's main metric is mean_recall@1")
        if "group_by" in benchmark and benchmark["group_by"] not in benchmark.get("metadata_fields", []):
            raise ConfigError(f"config key '{where}.{position}.group_by': {benchmark['group_by']!r} is not one of "
                              f"its metadata_fields {benchmark.get('metadata_fields', [])}")
    return benchmarks


DEFAULT_REINFORCEMENT = "default"


def reinforcement_names(config: dict) -> list[str]:
    return [DEFAULT_REINFORCEMENT, *config["reinforcement"].get("variants", {})]


def reinforcement_variant(config: dict, name: str = DEFAULT_REINFORCEMENT) -> dict:
    """The settings of one named reinforcement: the default's, with the variant's keys replaced."""
    settings = {key: value for key, value in config["reinforcement"].items() if key != "variants"}
    if name != DEFAULT_REINFORCEMENT:
        settings.update(copy.deepcopy(config["reinforcement"]["variants"][name]))
    return settings


def reinforcement_dr_dir(config: dict, name: str = DEFAULT_REINFORCEMENT) -> str:
    """Where a named reinforcement's DataCompDR shards live: data.dr_dir, or data.dr_dir + _<name>."""
    dr_dir = config["data"]["dr_dir"]
    return dr_dir if name == DEFAULT_REINFORCEMENT else f"{dr_dir.rstrip('/')}_{name}"


def generated_benchmark(config: dict, benchmark: dict) -> bool:
    """Whether the DAG makes this benchmark set itself (the toy world's held-out sets, toy data only)."""
    return config["data"]["source"] == "toy" and benchmark["dataset"].startswith("wds/toy")


def _check_consistency(config: dict) -> None:
    for section in ("teachers", "runs"):
        for name, run in config.get(section, {}).items():
            _derived(run, f"{section}.{name}")
    uses_dr = any(run["data"] == "dr" for run in config["runs"].values())
    data = config["data"]
    if data["source"] == "local" and "datacomp_dir" not in data:
        raise ConfigError("config key 'data.datacomp_dir': local data needs the folder of its shards")
    if data["layout"] == "joined":
        if data["source"] != "local":
            raise ConfigError(f"config key 'data.layout': joined shards are read from local data, "
                              f"not made by the {data['source']} source (which writes the split layout)")
        generated = [name for name in reinforcement_names(config) if reinforcement_variant(config, name)["generate"]]
        if uses_dr and generated:
            raise ConfigError(f"config key 'data.layout': the DAG writes DataCompDR shards in the split layout; "
                              f"joined data cannot be reinforced here (reinforcement {generated[0]!r} has generate: true)")
    if uses_dr and config["data"]["source"] == "toy" and not config["reinforcement"]["generate"]:
        raise ConfigError("config key 'reinforcement.generate': toy data has no published DataCompDR shards; set it to true")
    mix = config["data"]["toy"]["alt_text_mix"]
    if abs(sum(mix.values()) - 1.0) > 1e-6:
        raise ConfigError(f"config key 'data.toy.alt_text_mix': fractions sum to {sum(mix.values()):g}, not 1")
    for position, pair in enumerate(config["report"].get("efficiency_pairs") or []):
        for role, name, dr in (("DR", pair[0], True), ("non-DR", pair[1], False)):
            if name not in config["runs"] or (config["runs"][name]["data"] == "dr") != dr:
                raise ConfigError(f"config key 'report.efficiency_pairs.{position}': {name!r} is not a {role} run "
                                  f"of this config")
    validate_benchmarks(config["evaluation"]["benchmarks"])
    schema = load_schema()
    reinforcement_schema = {**schema["properties"]["reinforcement"], "$defs": schema["$defs"]}
    for name, override in config["reinforcement"]["variants"].items():
        # a variant is the default reinforcement with some keys replaced: the same schema checks it
        if "variants" in override:
            raise ConfigError(f"config key 'reinforcement.variants.{name}.variants': variants do not nest")
        _validate_against(reinforcement_schema, reinforcement_variant(config, name), f"reinforcement.variants.{name}")
    for section in ("teachers", "runs"):
        for run_name, run in config.get(section, {}).items():
            wanted = run.get("reinforcement", DEFAULT_REINFORCEMENT)
            if wanted != DEFAULT_REINFORCEMENT and wanted not in config["reinforcement"]["variants"]:
                raise ConfigError(f"config key '{section}.{run_name}.reinforcement': no reinforcement {wanted!r} "
                                  f"(have: {', '.join(reinforcement_names(config))})")
            if (run.get("distill") or {}).get("online") and run["data"] != "dr":
                raise ConfigError(f"config key '{section}.{run_name}.distill.online': online distillation is a DR "
                                  f"run's (data: dr), this one has data: {run['data']}")
            if (run.get("distill") or {}).get("online") and (run["distill"].get("teachers", "all") != "all"
                                                             or not run["distill"]["synthetic_captions"]):
                raise ConfigError(f"config key '{section}.{run_name}.distill.online': the online arm distils from "
                                  f"every teacher with synthetic captions (distill.teachers: all, "
                                  f"synthetic_captions: true)")
            members = (run.get("distill") or {}).get("teachers", "all")
            count = len((run.get("distill") or {}).get("teacher_dimension", []))
            if members != "all" and max(members) >= count:
                raise ConfigError(f"config key '{section}.{run_name}.distill.teachers': member {max(members)} of an "
                                  f"ensemble of {count} (teacher_dimension has {count} widths)")
    ablation = config["report"].get("ablation")
    if ablation:
        known = {benchmark["name"] for benchmark in config["evaluation"]["benchmarks"]}
        for column, benchmark in ablation["benchmarks"].items():
            if benchmark not in known:
                raise ConfigError(f"config key 'report.ablation.benchmarks.{column}': {benchmark!r} is not a "
                                  f"benchmark of evaluation.benchmarks")
        for position, row in enumerate(ablation["rows"]):
            if row["run"] not in config["runs"]:
                raise ConfigError(f"config key 'report.ablation.rows.{position}.run': {row['run']!r} is not a run "
                                  f"of this config")


def _check_distill_scales(distill: dict, where: str) -> None:
    """A list of logit scales is one per teacher, and only means something when each teacher
    has its own softmax (docs/reference.md §9); a single number is every member's scale."""
    scales = distill["logit_scale"]
    if not isinstance(scales, list):
        return
    members = len(distill["teacher_dimension"])
    if len(scales) != members:
        raise ConfigError(f"config key '{where}.distill.logit_scale': {scales} gives {len(scales)} scales for "
                          f"{members} teachers (distill.teacher_dimension {distill['teacher_dimension']}); "
                          f"give one per teacher, or a single number for all")
    if not distill["average_after_softmax"]:
        raise ConfigError(f"config key '{where}.distill.logit_scale': a scale per teacher needs "
                          f"distill.average_after_softmax: true (without it the teachers share one softmax, "
                          f"so one scale)")


def run_world_size(run: dict) -> int:
    """The processes a run trains on: nodes x GPUs per node (one CPU process when gpus_per_node is 0)."""
    return run["nodes"] * max(run["gpus_per_node"], 1)


def _derived(run: dict, where: str) -> dict:
    world_size = run_world_size(run)
    global_batch = run["global_batch_size"]
    if global_batch % world_size:
        raise ConfigError(f"config key '{where}.global_batch_size': {global_batch} is not divisible by "
                          f"nodes x gpus_per_node = {world_size}")
    accum_freq = accumulation(run, where)
    total_steps, remainder = divmod(run["seen_samples"], global_batch)
    if remainder:
        raise ConfigError(f"config key '{where}.seen_samples': {run['seen_samples']} is not a whole number of "
                          f"global batches of {global_batch}")
    weights = run["distill"]["loss_weights"]
    if run["data"] == "dr" and sum(weights) <= 0:
        raise ConfigError(f"config key '{where}.distill.loss_weights': at least one weight must be positive")
    _check_distill_scales(run["distill"], where)
    try:
        re.compile(run["syn_caption_regex"])
    except re.error as error:
        raise ConfigError(f"config key '{where}.syn_caption_regex': {run['syn_caption_regex']!r} is not a regular "
                          f"expression: {error}") from None
    if len(run_seeds(run, where)) > 1 and where.startswith("teachers."):
        raise ConfigError(f"config key '{where}.seeds': a teacher is one checkpoint file; give it one seed")
    steps = checkpoint_steps(total_steps, run["num_checkpoints"], run["checkpoint_spacing"], where)
    if run["warmup_steps"] > total_steps:  # the learning rate would never reach lr, nor decay
        raise ConfigError(f"config key '{where}.warmup_steps': {run['warmup_steps']} warm-up steps are more than "
                          f"the run's {total_steps} steps (seen_samples / global_batch_size)")
    derived = {"world_size": world_size, "per_gpu_batch_size": global_batch // world_size,
               "accum_freq": accum_freq, "per_gpu_micro_batch_size": global_batch // (world_size * accum_freq),
               "total_steps": total_steps, "checkpoint_steps": steps}
    if run["checkpoint_spacing"] == "linear":
        derived["steps_per_checkpoint"] = steps[0]
        derived["samples_per_checkpoint"] = steps[0] * global_batch
    return derived


def accumulation(run: dict, where: str) -> int:
    """The run's micro-batches per optimizer step: ``accum_freq``, or under ``auto`` the smallest
    count that splits each process's share of the batch evenly into at most ``max_per_gpu_batch`` rows."""
    world_size = run_world_size(run)
    per_process = run["global_batch_size"] // world_size
    cap = run.get("max_per_gpu_batch")
    if run["accum_freq"] == "auto":
        if cap is None:
            raise ConfigError(f"config key '{where}.accum_freq': auto needs max_per_gpu_batch, the most rows "
                              f"a GPU takes in one forward")
        fits = [k for k in range(1, per_process + 1) if per_process % k == 0 and per_process // k <= cap]
        return fits[0]  # k = per_process always fits: one row per micro-batch
    accum_freq = run["accum_freq"]
    if per_process % accum_freq:
        raise ConfigError(f"config key '{where}.accum_freq': {accum_freq} micro-batches do not split a process's "
                          f"{per_process} rows (global_batch_size {run['global_batch_size']} / "
                          f"{world_size} processes) evenly")
    if cap is not None and per_process // accum_freq > cap:
        raise ConfigError(f"config key '{where}.max_per_gpu_batch': micro-batches of {per_process // accum_freq} rows "
                          f"(global_batch_size {run['global_batch_size']} / {world_size} processes / accum_freq "
                          f"{accum_freq}) exceed it; raise accum_freq or set it to auto")
    return accum_freq


def checkpoint_steps(total_steps: int, num_checkpoints: int, spacing: str, where: str = "run") -> list[int]:
    """The optimizer step after which each checkpoint is written (the last one at ``total_steps``).

    linear: equal pseudo-epochs (the run scripts' ``--epochs``); log: checkpoint k of n at
    ``total_steps / 2**(n - k)``, rounded, so that the curve has evenly spaced points on a log axis.
    """
    if spacing == "linear":
        if total_steps % num_checkpoints:
            raise ConfigError(f"config key '{where}.seen_samples': {total_steps} steps do not split into "
                              f"{num_checkpoints} equal pseudo-epochs (num_checkpoints)")
        return [total_steps // num_checkpoints * k for k in range(1, num_checkpoints + 1)]
    steps = [round(total_steps / 2 ** (num_checkpoints - k)) for k in range(1, num_checkpoints + 1)]
    if steps[0] < 1 or len(set(steps)) != len(steps):
        raise ConfigError(f"config key '{where}.num_checkpoints': {num_checkpoints} log-spaced checkpoints need at "
                          f"least {2 ** (num_checkpoints - 1)} steps, the run has {total_steps}")
    return steps


def captioner_sets(captioner) -> tuple[dict[str, str | dict], bool]:
    """(syn.json key -> one captioner's spec, whether the v1 layout) for ``reinforcement.captioner``.

    One captioner (``"world"`` or ``{"coca": {...}}``) writes v1's ``syn_text``, its embeddings
    appended to ``text_emb``; a mapping suffix -> captioner writes a ``syn_text_<suffix>`` set
    per entry, each with its own ``syn_text_<suffix>_emb`` array (v2, docs/reference.md §9),
    also when it has one entry.
    """
    if captioner == "world" or (isinstance(captioner, dict) and set(captioner) == {"coca"}):
        return {"syn_text": captioner}, True
    if not isinstance(captioner, dict) or not captioner:
        raise ValueError(f"captioner must be 'world', {{'coca': {{...}}}} or a mapping suffix -> one of those, "
                         f"got {captioner!r}")
    bad = [suffix for suffix in captioner if not re.fullmatch(r"[A-Za-z0-9_]+", str(suffix))]
    if bad:
        raise ValueError(f"captioner suffixes must be letters, digits and '_' (they name syn_text_<suffix>), got {bad}")
    return {f"syn_text_{suffix}": spec for suffix, spec in captioner.items()}, False


def run_seeds(run: dict, where: str = "run") -> list[int]:
    """A run's student seeds: ``seeds`` if given, else its single ``seed`` (default 0)."""
    if "seeds" in run and "seed" in run:
        raise ConfigError(f"config key '{where}.seeds': give either 'seed' or 'seeds', not both")
    return list(run.get("seeds") or [run.get("seed", 0)])


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no python tags) that also refuses a key given twice in one mapping,
    which safe_load resolves silently in favour of the last: a config shared between people
    must mean one thing. Keys a merge (``<<: *anchor``) brings in may be overridden, as YAML says."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the base constructor names it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (first given on line "
                                                            f"{first})", key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path):
    """A YAML file's content; any YAML problem (syntax, a python tag, a duplicate key) is a
    ConfigError naming the file, line and column."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(part for part in (error.context, error.problem) if part)
        raise ConfigError(f"{where}: {' '.join(what.split())}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: {' '.join(str(error).split())}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read ({error})") from None


def load_config(source: str | Path | dict) -> dict:
    """A config file (or mapping) validated against the schema, with the schema's defaults and the
    derived paths filled in; what it points to (models, reinforcement JSON, shards and sets on
    disk) is ``preflight.load_experiment``'s to check."""
    if isinstance(source, dict):
        config = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        config = read_yaml(path)
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys, got a "
                              f"{type(config).__name__}")
    if not isinstance(config, dict):
        raise ConfigError("config must be a mapping at the top level")
    validate(config)
    expand_subsets(config)
    config["results_dir"] = str(Path(config.get("results_dir") or f"results/{config['name']}"))
    layout = Layout(config["results_dir"])
    data = config["data"]
    data.setdefault("datacomp_dir", str(layout.toy_datacomp_dir))
    data.setdefault("dr_dir", str(layout.default_dr_dir))
    for benchmark in config["evaluation"]["benchmarks"]:
        benchmark.setdefault("root", str(layout.benchmark_root(benchmark["name"])))
    return config


def expand_subsets(config: dict) -> None:
    """``data.subsets``: each run becomes one run per size, ``<run>_n<size>`` (in place, in size
    order). A run that already has a ``subset_size`` (set by hand, or an expanded config loaded
    again) stays as it is."""
    sizes = sorted(config["data"].get("subsets") or [])
    data = config["data"]
    expanded = {}
    for name, run in config["runs"].items():
        if not sizes or "subset_size" in run:
            expanded[name] = run
            continue
        for size in sizes:
            subset_name = f"{name}_n{size}"
            if subset_name in config["runs"]:
                raise ConfigError(f"config key 'runs.{subset_name}': the name data.subsets gives run {name!r}'s "
                                  f"{size}-sample subset; rename the run")
            expanded[subset_name] = {**copy.deepcopy(run), "subset_size": size, "subset_of": name}
    config["runs"] = expanded
    pairs = config["report"].get("efficiency_pairs")
    if sizes and pairs:  # a pair of expanded runs is compared at each size
        rewritten = []
        for dr, plain in pairs:
            if f"{dr}_n{sizes[0]}" in expanded and f"{plain}_n{sizes[0]}" in expanded:
                rewritten += [[f"{dr}_n{size}", f"{plain}_n{size}"] for size in sizes]
            else:
                rewritten.append([dr, plain])
        config["report"]["efficiency_pairs"] = rewritten
    wanted = subset_sizes(config)
    if wanted and data["source"] == "toy" and max(wanted) > data["toy"]["train_samples"]:
        key = "data.subsets" if max(wanted) in sizes else next(
            f"runs.{name}.subset_size" for name, run in config["runs"].items() if run.get("subset_size") == max(wanted))
        raise ConfigError(f"config key '{key}': a subset of {max(wanted):,} samples, but the toy world has "
                          f"data.toy.train_samples = {data['toy']['train_samples']:,}")


def subset_sizes(config: dict) -> list[int]:
    """Every subset size a run trains on (what the subset ranking must cover)."""
    return sorted({run["subset_size"] for run in config["runs"].values() if run.get("subset_size")})


def subsets_file(config: dict) -> Path:
    return Layout(config["results_dir"]).subsets_file(config["data"]["subset_seed"])


def resolve_run(config: dict, name: str, section: str = "runs", seed: int | None = None) -> dict:
    """The full spec of one training job: schema values + derived quantities + where its data lives.

    A run with several ``seeds`` is one job per seed; ``seed`` picks it (a one-seed run needs none).
    """
    runs = config[section]
    if name not in runs:
        raise ConfigError(f"config key '{section}.{name}': no such run (have: {', '.join(runs)})")
    run = copy.deepcopy(runs[name])
    run.update(_derived(run, f"{section}.{name}"))
    seeds = run_seeds(run)
    if seed is None and len(seeds) > 1:
        raise ConfigError(f"config key '{section}.{name}.seeds': {seeds}; say which seed to resolve")
    if seed is not None and seed not in seeds:
        raise ConfigError(f"config key '{section}.{name}.seeds': {seeds} has no seed {seed}")
    run.pop("seeds", None)
    run["seed"] = seeds[0] if seed is None else seed
    run["name"] = name
    run["dr"] = run["data"] == "dr"
    data = config["data"]
    layout = Layout(config["results_dir"])
    if run["data"] == "teacher":
        run["datacomp_dir"] = str(layout.teacher_data_dir)
    else:
        run["datacomp_dir"] = data["datacomp_dir"]
    run["data_layout"] = data["layout"]
    if run.get("subset_size"):
        run["subset_file"] = str(subsets_file(config))
    if data["layout"] == "joined":  # each DataComp tar holds its DataCompDR keys too
        run["dr_dir"] = run["datacomp_dir"] if run["dr"] else None
    else:
        run["dr_dir"] = reinforcement_dr_dir(config, run["reinforcement"]) if run["dr"] else None
    if run["dr"]:
        variant = reinforcement_variant(config, run["reinforcement"])
        run["reinforcement_config"] = variant["config"]
        if run["distill"].get("online"):
            # the DAG's own teachers (toy), or None: the JSON's pretrained tags resolve through open_clip
            run["teachers_dir"] = str(layout.teachers_dir) if variant["generate"] else None
    return run


def load_run_spec(text: str) -> dict:
    """A resolved run spec given as JSON (``train --spec``, what the DAG's rules pass).

    A spec from ``resolve_run`` comes from a validated config; one written by hand does not,
    and Python's json reads ``NaN`` and ``Infinity``: a NaN ``grad_clip_norm`` or ``lr``
    would stop the trainer only at its first step. ConfigError names the key and the run.
    """
    try:
        spec = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"--spec is not JSON: {error}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"--spec must be a JSON object (a resolved run spec), got a {type(spec).__name__}")
    found = non_finite_number(spec)
    if found is not None:
        path, value = found
        raise ConfigError(f"config key '{'.'.join(map(str, path))}' of run {spec.get('name', '<unnamed>')!r} "
                          f"(--spec): {non_finite_message(value)}")
    return spec


def run_dir(config: dict, name: str, section: str = "runs", seed: int | None = None) -> Path:
    """A training job's folder: ``runs/<run>/seed_<seed>`` (``teachers/<stem>`` for a teacher)."""
    layout = Layout(config["results_dir"])
    if section == "teachers":
        return layout.teacher_dir(name)
    return layout.run_dir(name, resolve_run(config, name, seed=seed)["seed"])
