"""Export for third-party clients: a training checkpoint as a folder plain open_clip (and so
clip_benchmark's CLI) loads by the model name ``local-dir:<folder>``, without this package."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip

from mobileclip_repro import models, shards
from mobileclip_repro.checkpoints import checkpoint_model_name, read_checkpoint_info

OPEN_CLIP_CONFIG = "open_clip_config.json"   # the file names open_clip's ``local-dir:`` loader looks for
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


def export_open_clip(checkpoint: str | Path, out_dir: str | Path, model_name: str | None = None) -> Path:
    """Write a training checkpoint as a folder that plain open_clip (and so clip_benchmark's CLI)
    loads by the model name ``local-dir:<out_dir>``, without this package:
    ``open_clip_config.json`` (open_clip's hub format: the architecture as ``model_cfg``, the
    eval preprocessing as ``preprocess_cfg``; plus the checkpoint's provenance) and the
    weights as ``open_clip_model.safetensors`` (no pickle).
    The toy architectures are registered only inside this package, so ``--model toy-student``
    means nothing to those tools; this folder does (docs/reference.md §7). Returns ``out_dir``."""
    import torch
    from safetensors.torch import save_file

    info = read_checkpoint_info(checkpoint)
    model_name = checkpoint_model_name(info, model_name, "export")
    # Loaded the way `evaluate` loads it (open_clip's strict load_checkpoint), so the export is what was evaluated.
    model, _, _ = models.create_model_and_transforms(model_name, pretrained=str(checkpoint))
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg.get("text_cfg", {}).get("hf_tokenizer_name"):
        # open_clip reads an HF tokenizer of a local-dir model from that folder.
        raise ValueError(f"{model_name}: exporting models with a Hugging Face tokenizer is not supported")
    out_dir = Path(out_dir)
    with shards.atomic_output(out_dir / OPEN_CLIP_WEIGHTS) as partial:
        save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, str(partial))
        partial.chmod(0o644)  # safetensors creates it owner-only; the folder is meant to be shared
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": dict(model.visual.preprocess_cfg),
        "mobileclip_repro": {"checkpoint": str(Path(checkpoint).resolve()), "model": model_name, "run": info.run,
                             "epoch": info.epoch, "seen_samples": info.seen_samples, "dr": info.dr,
                             "open_clip_version": open_clip.__version__, "torch_version": torch.__version__},
    }
    shards.write_json_atomic(out_dir / OPEN_CLIP_CONFIG, json.loads(json.dumps(config)), allow_nan=False)
    return out_dir
