"""What every part of gpu_check shares: the paper run specs it measures, the device helpers."""
from __future__ import annotations

import gc
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREFETCH_FACTOR = 4  # the trainer's DataLoader prefetch_factor (train.segment_loader)
NUM_SYN = 5  # synthetic captions per image in the generated DataCompDR shards
FLOP_ROWS = 4  # rows of the MFU's FLOP count


def run_spec(data: str, model: str, args, device, data_info: dict, results_dir: Path, **overrides) -> dict:
    """A paper run's spec (DR: datacompdr12m, plain: datacomp12m) through the project's config loader;
    ``overrides``: run keys set last (accumulation: global_batch_size, seen_samples, accum_freq)."""
    import yaml

    from mobileclip_repro import config as config_lib

    path = REPO / "configs" / "paper" / {"dr": "datacompdr12m.yaml", "online": "datacompdr12m-online.yaml",
                                          "plain": "datacomp12m.yaml"}[data]
    raw = yaml.safe_load(path.read_text())
    (name, run), = raw["runs"].items()
    run.update(model=model, nodes=1, gpus_per_node=1 if device.type == "cuda" else 0,
               global_batch_size=args.batch_size, seen_samples=args.batch_size, num_checkpoints=1,
               workers=args.workers, warmup_steps=0)  # one step long (the config refuses longer warm-ups)
    if args.precision != "config":
        run["precision"] = args.precision
    if args.grad_checkpointing != "config":
        run["grad_checkpointing"] = args.grad_checkpointing == "on"
    run.update(overrides)
    raw["results_dir"] = str(results_dir)
    raw["data"]["datacomp_dir"] = str(data_info["datacomp_dir"])
    raw["data"]["dr_dir"] = str(data_info["dr_dir"])
    if data == "dr":
        raw["reinforcement"]["config"] = str(data_info["reinforce_config"])
    if data == "online":
        raw["reinforcement"]["config"] = str(data_info["online_reinforce_config"])
        import open_clip

        from mobileclip_repro.teachers import register_project_models

        register_project_models()  # toy-teacher
        run["distill"]["teacher_dimension"] = [int(open_clip.get_model_config(args.teacher_model)["embed_dim"])] * 2
    return config_lib.resolve_run(config_lib.load_config(raw), name)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def autocast_name(precision: str, device) -> str:
    import torch

    from mobileclip_repro.train import train

    context = train.autocast_for(precision, device)()
    return str(context.fast_dtype).replace("torch.", "") if isinstance(context, torch.autocast) else "off"
