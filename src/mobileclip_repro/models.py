"""Model factory: open_clip's, plus the project's toy architectures registered once.

The toy models are ordinary open_clip JSON configs (``model_configs/``), so every stage
builds them through ``open_clip.create_model_and_transforms`` exactly like ViT-B-16.
"""
from __future__ import annotations

from pathlib import Path

import open_clip

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_project_models() -> None:
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def create_model_and_transforms(model_name: str, pretrained: str | None = None, device: str = "cpu", **kwargs):
    """(model, train_transform, eval_transform); ``pretrained`` is an open_clip tag or a checkpoint path."""
    register_project_models()
    return open_clip.create_model_and_transforms(model_name, pretrained=pretrained or None, device=device, **kwargs)


def get_tokenizer(model_name: str):
    register_project_models()
    return open_clip.get_tokenizer(model_name)
