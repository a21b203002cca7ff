"""The models that reinforce a dataset: a CLIP teacher ensemble and a synthetic captioner.

Both are read from Apple's reinforcement JSON (docs/reference.md §2), whose
``"model_name": "A,B"`` / ``"pretrained": "tagA,tagB"`` name the ensemble members and whose
``reinforce.image_augmentation`` block fixes how each stored augmentation is drawn and
normalized before the teachers see it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from mobileclip_repro import devices
from mobileclip_repro.models import create_model_and_transforms, get_tokenizer, register_project_models
from mobileclip_repro.seeding import seed_from

# Transform names a reinforcement JSON may carry; to_rgb/to_tensor are implied by the
# replay (it always yields RGB tensors), the others are read below.
_KNOWN_AUGMENTATIONS = {"normalize", "random_resized_crop", "rand_augment", "to_rgb", "to_tensor"}


@dataclass(frozen=True)
class ReinforceConfig:
    """The parts of a reinforcement JSON that decide what ends up in a DataCompDR shard."""
    model_names: tuple[str, ...]
    pretrained: tuple[str, ...]
    num_samples: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_size: int
    interpolation: InterpolationMode
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rand_augment: bool = True
    rand_augment_p: float = 1.0
    rand_augment_num_ops: int = 2
    rand_augment_magnitude: int = 9
    rand_augment_num_magnitude_bins: int = 31

    @classmethod
    def from_dict(cls, raw: dict) -> "ReinforceConfig":
        def need(mapping: dict, key: str, where: str):
            if key not in mapping:
                raise ValueError(f"reinforcement config: missing {where + key!r}")
            return mapping[key]

        model_names = tuple(name.strip() for name in str(need(raw, "model_name", "")).split(","))
        pretrained = tuple(tag.strip() for tag in str(need(raw, "pretrained", "")).split(","))
        if len(model_names) != len(pretrained) or not all(model_names):
            raise ValueError(f"reinforcement config: model_name {raw['model_name']!r} and pretrained "
                             f"{raw['pretrained']!r} must list the same number of members")
        if not all(pretrained):
            # A random-init teacher is only for benchmarks (TeacherEnsemble(..., [None, ...]));
            # an empty entry in a config is a typo that would silently distil from noise.
            raise ValueError(f"reinforcement config: pretrained {raw['pretrained']!r} has an empty entry; name an "
                             f"open_clip pretrained tag or a checkpoint file for every teacher")
        num_samples = need(raw, "num_samples", "")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"reinforcement config: num_samples must be a positive integer, got {num_samples!r}")

        augmentation = need(need(raw, "reinforce", ""), "image_augmentation", "reinforce.")
        unknown = set(augmentation) - _KNOWN_AUGMENTATIONS
        if unknown:
            raise ValueError(f"reinforcement config: unsupported image augmentations {sorted(unknown)}; "
                             f"known: {sorted(_KNOWN_AUGMENTATIONS)}")
        where = "reinforce.image_augmentation."
        normalize = need(augmentation, "normalize", where)
        mean, std = tuple(need(normalize, "mean", where + "normalize.")), tuple(need(normalize, "std", where + "normalize."))
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"reinforcement config: normalize needs 3 means and 3 positive stds, got {mean}, {std}")

        crop = need(augmentation, "random_resized_crop", where)
        size = need(crop, "size", where + "random_resized_crop.")
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                raise ValueError(f"reinforcement config: only square crops are supported, got size {size}")
            size = size[0]
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"reinforcement config: random_resized_crop.size must be a positive integer, got {size!r}")
        interpolation_name = crop.get("interpolation", "bilinear")
        try:
            interpolation = InterpolationMode(interpolation_name)
        except ValueError:
            raise ValueError(f"reinforcement config: unknown interpolation {interpolation_name!r}; "
                             f"one of {[mode.value for mode in InterpolationMode]}") from None

        rand_augment = augmentation.get("rand_augment", {"enable": False})
        p = float(rand_augment.get("p", 1.0))
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"reinforcement config: rand_augment.p must lie in [0, 1], got {p}")
        return cls(
            model_names=model_names,
            pretrained=pretrained,
            num_samples=num_samples,
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            crop_size=size,
            interpolation=interpolation,
            crop_scale=tuple(crop.get("scale", (0.08, 1.0))),
            crop_ratio=tuple(crop.get("ratio", (3 / 4, 4 / 3))),
            rand_augment=bool(rand_augment.get("enable", False)),
            rand_augment_p=p,
            rand_augment_num_ops=int(rand_augment.get("num_ops", 2)),
            rand_augment_magnitude=int(rand_augment.get("magnitude", 9)),
            rand_augment_num_magnitude_bins=int(rand_augment.get("num_magnitude_bins", 31)),
        )

    def draw_param_aug(self, width: int, height: int, generator: torch.Generator) -> list:
        """One compressed augmentation (random-resized-crop + RandAugment, as this config sets
        them) for a ``width`` x ``height`` image: what reinforcement stores ``num_samples`` of per
        image, and what online distillation draws afresh at every step."""
        from mobileclip_repro import replay

        return replay.sample_param_aug(
            width, height, generator, size=self.crop_size, scale=self.crop_scale, ratio=self.crop_ratio,
            num_ops=self.rand_augment_num_ops if self.rand_augment else 0, magnitude=self.rand_augment_magnitude,
            num_magnitude_bins=self.rand_augment_num_magnitude_bins, p=self.rand_augment_p)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReinforceConfig":
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read reinforcement config {path}: {error}") from error
        return cls.from_dict(raw)


def resolve_pretrained(model_name: str, entry: str | None, pretrained_root: str | os.PathLike | None) -> str | None:
    """Where ``model_name``'s weights come from: an open_clip pretrained tag, a checkpoint file, or None.

    * an open_clip pretrained tag of ``model_name`` (``open_clip.get_pretrained_cfg`` knows it,
      e.g. ``openai`` or ``datacomp_xl_s13b_b90k`` for ``ViT-L-14``): returned unchanged, and
      open_clip's factory downloads the weights from the hub (or finds them in its cache).
      Tags win over files, as in open_clip's own factory.
    * anything else names a checkpoint file: absolute, or relative to ``pretrained_root``
      (the working directory without one). The toy DAG's ``teacher_a.pt`` is one. It must exist.
    * ``None``: random initialisation. Only the Python API can ask for it (benchmarks);
      a reinforcement JSON cannot, ``ReinforceConfig`` refuses empty entries.
    """
    if entry is None:
        return None
    if not entry:
        raise ValueError(f"empty pretrained entry for {model_name}: name an open_clip tag or a checkpoint file")
    if open_clip.get_pretrained_cfg(model_name, entry):
        return entry
    path = Path(entry)
    if not path.is_absolute() and pretrained_root is not None:
        path = Path(pretrained_root) / path
    if path.is_file():
        return str(path)
    looks_like_path = entry.endswith((".pt", ".pth", ".bin", ".safetensors")) or os.sep in entry
    if looks_like_path:
        raise ValueError(f"checkpoint {entry!r} for {model_name} not found (looked at {path})")
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    raise ValueError(f"pretrained {entry!r} for {model_name} is neither an open_clip pretrained tag of it "
                     f"(known: {tags or 'none'}) nor a checkpoint file (looked at {path})")


def load_model(model_name: str, pretrained: str | None, *, pretrained_root: str | os.PathLike | None = None,
               device: str | torch.device = "cpu"):
    """(model in eval mode without gradients, eval preprocess, resolved weights, quick_gelu) via open_clip's factory.

    ``pretrained`` as in ``resolve_pretrained``. For a tag, the tag's own settings are kept:
    open_clip 3.x no longer switches ``ViT-L-14`` to QuickGELU for ``openai`` weights (it
    only warns), so the tag's ``quick_gelu`` is forced here -- OpenAI's ViT-L-14 was trained
    with QuickGELU, and with plain GELU its embeddings would be off.
    """
    register_project_models()
    if open_clip.get_model_config(model_name) is None:
        raise ValueError(f"unknown open_clip architecture {model_name!r}")
    weights = resolve_pretrained(model_name, pretrained, pretrained_root)
    tag_cfg = open_clip.get_pretrained_cfg(model_name, weights) if weights is not None else {}
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    model, _, preprocess = create_model_and_transforms(model_name, pretrained=weights, device=str(device),
                                                       force_quick_gelu=quick_gelu)
    model.eval().requires_grad_(False)
    return model, preprocess, weights, quick_gelu


class TeacherEnsemble:
    """Frozen CLIP teachers whose L2-normalized features are concatenated in member order.

    Each member's slice is normalized on its own so that the distillation loss can take
    teacher k's features as slice k (docs/reference.md §5); member k's width is its open_clip
    ``embed_dim`` (768 + 768 for the paper's two ViT-L-14). Outputs are float32 on the CPU,
    ready to be stored. Inputs are cut into chunks of ``batch_size``; each chunk goes to the
    device once and through every member, in eval mode under ``torch.inference_mode`` and,
    when ``autocast_dtype`` is given (bf16/fp16 on CUDA), under autocast.

    ``pretrained`` entries as in ``resolve_pretrained``: open_clip tags, checkpoint files, or
    None for a random-init member (benchmarks only).
    """

    def __init__(self, model_names: Sequence[str], pretrained: Sequence[str | None], *,
                 pretrained_root: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 autocast_dtype: torch.dtype | None = None, batch_size: int = 256):
        if len(model_names) != len(pretrained) or not model_names:
            raise ValueError(f"need one pretrained entry per teacher, got {list(model_names)} / {list(pretrained)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        register_project_models()
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.batch_size = batch_size
        self.model_names = tuple(model_names)
        for name, entry in zip(self.model_names, pretrained):  # every entry checked before any model loads
            if open_clip.get_model_config(name) is None:
                raise ValueError(f"unknown teacher architecture {name!r}")
            resolve_pretrained(name, entry, pretrained_root)
        self.models, self.tokenizers, self._dims, resolved, quick_gelu = [], [], [], [], []
        for name, entry in zip(self.model_names, pretrained):
            model, _, weights, member_quick_gelu = load_model(name, entry, pretrained_root=pretrained_root,
                                                              device=self.device)
            self.models.append(model)
            self.tokenizers.append(get_tokenizer(name))
            self._dims.append(int(open_clip.get_model_config(name)["embed_dim"]))
            resolved.append(weights)
            quick_gelu.append(member_quick_gelu)
        self.pretrained = tuple(resolved)
        self.quick_gelu = tuple(quick_gelu)

    @classmethod
    def from_config(cls, config: ReinforceConfig, **kwargs) -> "TeacherEnsemble":
        ensemble = cls(config.model_names, config.pretrained, **kwargs)
        ensemble.check_image_size(config.crop_size)
        return ensemble

    @property
    def dims(self) -> list[int]:
        return list(self._dims)

    def check_image_size(self, size: int) -> None:
        """Fail early when a teacher cannot take the config's crops (ViT position embeddings are fixed)."""
        for name, model in zip(self.model_names, self.models):
            expected = getattr(model.visual, "image_size", None)
            if expected is None:
                continue
            expected = tuple(expected) if isinstance(expected, (tuple, list)) else (expected, expected)
            if expected != (size, size):
                raise ValueError(f"teacher {name} takes {expected[0]}x{expected[1]} images but the "
                                 f"reinforcement config crops to {size}x{size}")

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized images [N, 3, S, S] -> [N, sum(dims)]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, S, S], got {tuple(images.shape)}")
        return self._encode(len(images), lambda start, stop: images[start:stop].to(self.device),
                            lambda member, chunk: self.models[member].encode_image(chunk))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> [N, sum(dims)], each member with its own tokenizer."""
        # Captions repeat a lot (templated synthetic captions, stock alt-text): embed each once.
        unique = list(dict.fromkeys(texts))
        row_of = {text: row for row, text in enumerate(unique)}

        def forward(member: int, chunk: list[str]) -> torch.Tensor:
            return self.models[member].encode_text(self.tokenizers[member](chunk).to(self.device))

        features = self._encode(len(unique), lambda start, stop: unique[start:stop], forward)
        return features[[row_of[text] for text in texts]]

    def _encode(self, count: int, take, forward) -> torch.Tensor:
        chunks = []
        for start in range(0, count, self.batch_size):
            inputs = take(start, min(count, start + self.batch_size))
            members = []
            for member in range(len(self.models)):
                with devices.autocast(self.device, self.autocast_dtype):
                    features = forward(member, inputs)
                members.append(F.normalize(features.float(), dim=-1))
            chunks.append(torch.cat(members, dim=1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, sum(self._dims))


class SyntheticCaptioner(Protocol):
    num_captions: int
    needs_images: bool  # False lets the data pipeline drop decoded images early
    # Optional: PIL image -> model input, picklable and free of model state, so the data
    # pipeline can run it in its worker processes; caption_batch then gets its outputs.
    image_transform: Callable[[Image.Image], torch.Tensor] | None

    def caption_batch(self, images: list, metas: list[dict], seeds: list[int]) -> list[list[str]]:
        """``num_captions`` captions for each image (PIL, or ``image_transform``'s output);
        ``seeds`` makes the result reproducible."""


class CocaCaptioner:
    """Synthetic captions from an open_clip CoCa: nucleus sampling, cut at the first period.

    Generation follows ``CoCa.generate(generation_type="top_p", fixed_output_length=True)``
    (min length 5, the last position forced to end-of-text, a row stops at end-of-text or
    pad) but is run here through CoCa's public forward: open_clip 3.3.0's ``generate``
    refuses to run under transformers >= 5 (it imports the removed ``BeamSearchScorer``
    even for top-p), and it samples from the global RNG, whereas this loop takes a
    ``torch.Generator`` so reruns write the same captions.
    """

    min_seq_len = 5
    needs_images = True

    def __init__(self, model_name: str, pretrained: str, *, num_captions: int = 5, top_p: float = 0.9,
                 seq_len: int | None = None, device: str | torch.device = "cpu", pretrained_root=None,
                 autocast_dtype: torch.dtype | None = None):
        if num_captions < 1:
            raise ValueError(f"num_captions must be positive, got {num_captions}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
        if not pretrained:
            # Not only pointless: open_clip leaves a random-init CoCa's text_decoder.text_projection
            # as uninitialized memory, so its captions would depend on whatever was in RAM.
            raise ValueError(f"the {model_name} captioner needs pretrained weights (an open_clip tag or a checkpoint)")
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.model, self.preprocess, self.pretrained, _ = load_model(model_name, pretrained,
                                                                    pretrained_root=pretrained_root, device=self.device)
        if not hasattr(self.model, "text_decoder"):
            raise ValueError(f"{model_name} is not a CoCa model (no text decoder), it cannot caption")
        self.image_transform = self.preprocess  # torchvision transforms: run in the data workers
        context_length = int(self.model.context_length)
        # open_clip's default of 30 tokens, capped so every prefix fits the decoder's context.
        self.seq_len = min(30, context_length) if seq_len is None else seq_len
        if not self.min_seq_len < self.seq_len <= context_length:
            raise ValueError(f"seq_len must lie in ({self.min_seq_len}, {context_length}] for {model_name}, got {self.seq_len}")
        self.num_captions = num_captions
        self.top_p = top_p
        # open_clip.decode (used below) speaks the CLIP BPE vocabulary, as CoCa's tokenizer does.
        tokenizer = get_tokenizer(model_name)
        if not isinstance(tokenizer, open_clip.SimpleTokenizer):
            raise ValueError(f"{model_name} uses {type(tokenizer).__name__}; only CLIP-BPE CoCa models are supported")
        self.sot_id, self.eot_id = tokenizer.sot_token_id, tokenizer.eot_token_id
        self.pad_id = int(self.model.pad_id)

    def caption_batch(self, images: list, metas: list[dict], seeds: list[int]) -> list[list[str]]:
        generator = torch.Generator(device=self.device).manual_seed(seed_from("coca", *seeds))
        return self(images, generator=generator)

    @torch.inference_mode()
    def __call__(self, images: list, generator: torch.Generator | None = None) -> list[list[str]]:
        """Captions for PIL images, or for tensors that ``image_transform`` already made of them."""
        if not images:
            return []
        pixels = torch.stack([image if isinstance(image, torch.Tensor) else self.preprocess(image)
                              for image in images]).to(self.device)
        tokens = self._sample_tokens(pixels, generator)
        captions = [self._decode(row) for row in tokens.tolist()]
        n = self.num_captions
        return [captions[index * n:(index + 1) * n] for index in range(len(images))]

    def _sample_tokens(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        with devices.autocast(self.device, self.autocast_dtype):
            encoded = self.model(pixels)  # each image through the vision tower once
            # Each caption is an independent draw: every image's encoding repeated num_captions times.
            image_latent = encoded["image_features"].repeat_interleave(self.num_captions, dim=0)
            image_embs = encoded["image_embs"].repeat_interleave(self.num_captions, dim=0)
            rows = image_latent.shape[0]
            tokens = torch.full((rows, 1), self.sot_id, dtype=torch.long, device=self.device)
            finished = torch.zeros(rows, dtype=torch.bool, device=self.device)
            while tokens.shape[1] < self.seq_len and not finished.all():
                logits = self.model(None, tokens, image_latent=image_latent, image_embs=image_embs,
                                    output_labels=False)["logits"][:, -1].float()
                if tokens.shape[1] < self.min_seq_len:
                    logits[:, self.eot_id] = float("-inf")
                if tokens.shape[1] + 1 == self.seq_len:
                    next_tokens = torch.full((rows,), self.eot_id, dtype=torch.long, device=self.device)
                else:
                    probs = _top_p_filtered(logits, self.top_p).softmax(dim=-1)
                    next_tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                next_tokens = torch.where(finished, torch.full_like(next_tokens, self.pad_id), next_tokens)
                tokens = torch.cat([tokens, next_tokens[:, None]], dim=1)
                finished |= (next_tokens == self.eot_id) | (next_tokens == self.pad_id)
        return tokens.cpu()

    def _decode(self, token_ids: list[int]) -> str:
        body = []
        for token in token_ids[1:]:
            if token in (self.eot_id, self.pad_id):
                break
            body.append(token)
        text = open_clip.decode(torch.tensor(body, dtype=torch.long)) if body else ""
        text = text.replace("<start_of_text>", "").replace("<end_of_text>", "")
        return text.split(".", 1)[0].strip()


def _top_p_filtered(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits outside the smallest most-probable set with mass >= top_p set to -inf."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    mass_before = sorted_logits.softmax(dim=-1).cumsum(dim=-1) - sorted_logits.softmax(dim=-1)
    drop_sorted = mass_before >= top_p  # the top token always has mass_before 0 and stays
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class WorldSyntheticCaptioner:
    """The toy world's captioner behind the same batch interface as CoCa."""

    needs_images = False
    image_transform = None

    def __init__(self, num_captions: int = 5):
        from mobileclip_repro.toyworld import WorldCaptioner

        self.num_captions = num_captions
        self._captioner = WorldCaptioner()

    def caption_batch(self, images: list[Image.Image], metas: list[dict], seeds: list[int]) -> list[list[str]]:
        return [self._captioner(meta, self.num_captions, seed) for meta, seed in zip(metas, seeds)]


def build_captioner(spec: str | dict, *, num_captions: int = 5, device: str | torch.device = "cpu",
                    pretrained_root=None, autocast_dtype: torch.dtype | None = None) -> SyntheticCaptioner:
    """``"world"`` or ``{"coca": {"model_name": ..., "pretrained": ..., [top_p, seq_len]}}``."""
    if spec == "world":
        return WorldSyntheticCaptioner(num_captions)
    if isinstance(spec, dict) and set(spec) == {"coca"} and isinstance(spec["coca"], dict):
        options = dict(spec["coca"])
        if "model_name" not in options:
            raise ValueError(f"coca captioner spec needs a model_name: {spec}")
        allowed = {"model_name", "pretrained", "top_p", "seq_len"}
        if set(options) - allowed:
            raise ValueError(f"coca captioner spec: unknown keys {sorted(set(options) - allowed)}; allowed {sorted(allowed)}")
        return CocaCaptioner(options.pop("model_name"), options.pop("pretrained", None), num_captions=num_captions,
                             device=device, pretrained_root=pretrained_root, autocast_dtype=autocast_dtype, **options)
    raise ValueError(f"captioner spec must be 'world' or {{'coca': {{'model_name': ..., 'pretrained': ...}}}}, got {spec!r}")
