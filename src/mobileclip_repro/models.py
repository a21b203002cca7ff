"""Model factory: open_clip's, plus the project's toy architectures registered once.

The toy models are ordinary open_clip JSON configs (``model_configs/``), so every stage
builds them through ``open_clip.create_model_and_transforms`` exactly like ViT-B-16.
A model built without a pretrained tag (a student from scratch, a checkpoint file) still
preprocesses images as its architecture's released weights do (``own_preprocess``): a
MobileCLIP student replays DataCompDR augmentations at its own size and normalization, and
is evaluated with its own resizing too, not with open_clip's generic defaults.
Tools outside the package do not know those names: ``export-open-clip`` (``export``) writes
a checkpoint as a folder they load by the model name ``local-dir:<folder>``.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import open_clip
from open_clip.transform import PreprocessCfg

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_project_models() -> None:
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")  # the image size is the model config's


def own_preprocess(model_name: str) -> dict | None:
    """The preprocessing every open_clip pretrained tag of ``model_name`` agrees on, None when its
    tags disagree or it has none.

    A student trained from scratch should see images as the released weights of its
    architecture do, so that its checkpoints and those weights are evaluated alike: the
    MobileCLIP family's tags resize bilinearly, most with mean 0 and std 1 (MobileCLIP2-S3/S4 with
    CLIP's; MobileCLIP2-L-14 is CLIP's bicubic default). ViT-B-16's tags all use open_clip's
    defaults and ViT-L-14's disagree (laion2b uses mean 0.5), so those build as before.
    """
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if not tags:
        return None
    defaults = asdict(PreprocessCfg())
    variants = {tuple((key, _hashable(cfg.get(key, defaults[key]))) for key in PREPROCESS_KEYS)
                for cfg in (open_clip.get_pretrained_cfg(model_name, tag) for tag in tags)}
    return dict(variants.pop()) if len(variants) == 1 else None


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def create_model_and_transforms(model_name: str, pretrained: str | None = None, device: str = "cpu", **kwargs):
    """(model, train_transform, eval_transform); ``pretrained`` is an open_clip tag or a checkpoint path.

    With a tag open_clip applies that tag's preprocessing; otherwise the model gets its
    architecture's own (``own_preprocess``), unless the caller sets ``image_*`` itself.
    """
    register_project_models()
    if not (pretrained and open_clip.get_pretrained_cfg(model_name, pretrained)):
        for key, value in (own_preprocess(model_name) or {}).items():
            kwargs.setdefault(f"image_{key}", value)
    return open_clip.create_model_and_transforms(model_name, pretrained=pretrained or None, device=device, **kwargs)


def get_tokenizer(model_name: str):
    register_project_models()
    return open_clip.get_tokenizer(model_name)


class CachingTokenizer:
    """``tokenizer`` with a per-caption cache: open_clip's BPE tokenizer (ftfy, regex, merges)
    costs ~0.5 ms a caption on a CPU core, and training reads the same captions again and
    again (every pass over a shard; templated alt-text and synthetic captions). Same output
    as ``tokenizer``; at most ``max_entries`` captions are kept (per process)."""

    def __init__(self, tokenizer, max_entries: int = 200_000):
        self.tokenizer, self.max_entries, self.cache = tokenizer, max_entries, {}

    def __call__(self, texts: list[str]):
        import torch

        missing = [text for text in dict.fromkeys(texts) if text not in self.cache]
        if missing:
            if len(self.cache) + len(missing) > self.max_entries:
                self.cache.clear()
            self.cache.update(zip(missing, self.tokenizer(missing)))
        return torch.stack([self.cache[text] for text in texts])
