"""Experiment config: one schema (workflow/schemas/config.schema.yaml), defaults from it.

``load_config`` validates a YAML file or dict, fills the schema's defaults, and resolves
paths; ``resolve_run`` turns a run entry into the full spec the trainer consumes, with
the derived quantities (world size, per-GPU batch, steps) the run scripts compute in
shell. Errors name the offending key, e.g. ``runs.toy_dr.lr``.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value is missing, mistyped or inconsistent; the message names the key."""


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


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return f"config key '{_key_path(error)}': {error.message} (check the spelling against {SCHEMA_PATH.name})"
    return f"config key '{_key_path(error)}': {error.message}"


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate(config: dict) -> dict:
    """Validate in place, filling defaults; raises ConfigError naming the first bad key."""
    schema = load_schema()
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        # the deepest error names the actual key; oneOf wrappers hide it otherwise
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_describe(best))
    _check_consistency(config)
    return config


def _check_consistency(config: dict) -> None:
    for section in ("teachers", "runs"):
        for name, run in config.get(section, {}).items():
            _derived(run, f"{section}.{name}")
    uses_dr = any(run["data"] == "dr" for run in config["runs"].values())
    if uses_dr and config["data"]["source"] == "toy" and not config["reinforcement"]["generate"]:
        raise ConfigError("config key 'reinforcement.generate': toy data has no published DataCompDR shards; set it to true")
    mix = config["data"]["toy"]["alt_text_mix"]
    if abs(sum(mix.values()) - 1.0) > 1e-6:
        raise ConfigError(f"config key 'data.toy.alt_text_mix': fractions sum to {sum(mix.values()):g}, not 1")
    names = [b["name"] for b in config["evaluation"]["benchmarks"]]
    if len(names) != len(set(names)):
        raise ConfigError("config key 'evaluation.benchmarks': benchmark names must be unique")


def _derived(run: dict, where: str) -> dict:
    world_size = run["nodes"] * max(run["gpus_per_node"], 1)
    global_batch = run["global_batch_size"]
    if global_batch % world_size:
        raise ConfigError(f"config key '{where}.global_batch_size': {global_batch} is not divisible by "
                          f"nodes x gpus_per_node = {world_size}")
    samples_per_checkpoint, remainder = divmod(run["seen_samples"], run["num_checkpoints"])
    if remainder or samples_per_checkpoint % global_batch:
        raise ConfigError(f"config key '{where}.seen_samples': {run['seen_samples']} must split into "
                          f"{run['num_checkpoints']} checkpoints of whole global batches of {global_batch}")
    weights = run["distill"]["loss_weights"]
    if run["data"] == "dr" and sum(weights) <= 0:
        raise ConfigError(f"config key '{where}.distill.loss_weights': at least one weight must be positive")
    return {
        "world_size": world_size,
        "per_gpu_batch_size": global_batch // world_size,
        "samples_per_checkpoint": samples_per_checkpoint,
        "steps_per_checkpoint": samples_per_checkpoint // global_batch,
        "total_steps": run["seen_samples"] // global_batch,
    }


def load_config(source: str | Path | dict) -> dict:
    if isinstance(source, dict):
        config = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ConfigError("config must be a mapping at the top level")
    validate(config)
    results = Path(config.get("results_dir") or f"results/{config['name']}")
    config["results_dir"] = str(results)
    data = config["data"]
    data.setdefault("datacomp_dir", str(results / "data" / "datacomp"))
    data.setdefault("dr_dir", str(results / "data" / "datacompdr"))
    for benchmark in config["evaluation"]["benchmarks"]:
        benchmark.setdefault("root", str(results / "data" / "benchmarks" / benchmark["name"]))
    return config


def resolve_run(config: dict, name: str, section: str = "runs") -> dict:
    """The full spec of one run: schema values + derived quantities + where its data lives."""
    runs = config[section]
    if name not in runs:
        raise ConfigError(f"config key '{section}.{name}': no such run (have: {', '.join(runs)})")
    run = copy.deepcopy(runs[name])
    run.update(_derived(run, f"{section}.{name}"))
    run["name"] = name
    run["dr"] = run["data"] == "dr"
    data = config["data"]
    results = Path(config["results_dir"])
    if run["data"] == "teacher":
        run["datacomp_dir"] = str(results / "data" / "teacher_data")
    else:
        run["datacomp_dir"] = data["datacomp_dir"]
    run["dr_dir"] = data["dr_dir"] if run["dr"] else None
    if run["dr"]:
        run["reinforcement_config"] = config["reinforcement"]["config"]
    return run


def run_dir(config: dict, name: str, section: str = "runs") -> Path:
    results = Path(config["results_dir"])
    return results / "teachers" / Path(name).stem if section == "teachers" else results / "runs" / name


def add_arguments(parser) -> None:
    parser.add_argument("configfile", help="experiment YAML")
    parser.add_argument("--run", help="print this run's resolved spec")


def command(args) -> int:
    config = load_config(args.configfile)
    if args.run:
        print(json.dumps(resolve_run(config, args.run), indent=2))
    else:
        for name in config["runs"]:
            spec = resolve_run(config, name)
            print(f"{name}: {spec['model']} data={spec['data']} world={spec['world_size']} "
                  f"batch={spec['global_batch_size']} ({spec['per_gpu_batch_size']}/proc) "
                  f"steps={spec['total_steps']} seen={spec['seen_samples']:,} checkpoints={spec['num_checkpoints']}")
    return 0
