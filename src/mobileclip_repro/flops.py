"""FLOPs, counted by torch's own ``FlopCounterMode`` on real calls of the models, never estimated
from a formula: one call (``count_flops``), or one model entry point over a job
(``PerItemFlops``: the first call counted, later ones scaled by the items they carry).
FlopCounterMode counts matrix products and convolutions (attention included), the ops that
dominate a transformer; elementwise work is left out, as in the usual 6ND accounting.

The same counting on the meta device (shapes, no weights) projects a config to the paper's
scale: FLOPs per seen sample of plain, DR and online-distillation training, the one-time
reinforcement, and GPU-hours (``paper_projection``; the ``cost`` command).
"""
from __future__ import annotations

from collections.abc import Callable


def count_flops(fn: Callable, *args, **kwargs) -> tuple[object, int]:
    """``fn(*args, **kwargs)`` and the FLOPs it spent (forward and, if it runs one, backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return result, int(counter.get_total_flops())


class PerItemFlops:
    """Wraps one model entry point (``encode_image``, a teacher forward): the first call is counted
    with FlopCounterMode and divided by its batch size; every call adds that per item times its
    batch, so a long job pays for counting once. ``total`` and ``items`` accumulate."""

    def __init__(self, fn: Callable, batch_size: Callable = len):
        self.fn, self.batch_size = fn, batch_size
        self.per_item: float | None = None
        self.total, self.items = 0.0, 0

    def __call__(self, batch, *args, **kwargs):
        size = self.batch_size(batch)
        if self.per_item is None and size:
            result, flops = count_flops(self.fn, batch, *args, **kwargs)
            self.per_item = flops / size
        else:
            result = self.fn(batch, *args, **kwargs)
        self.total += (self.per_item or 0.0) * size
        self.items += size
        return result


# -- the paper's scale, projected: FLOPs counted on the meta device (shapes, no weights) ---------

# Dense bf16 peak of one GPU (vendor figures); MFU: the share of it a well-tuned CLIP training reaches.
PEAK_BF16_FLOPS = {"A100": 312e12, "H100/H200": 989e12}
DEFAULT_MFU = 0.4
CAPTION_TOKENS = 30  # the CoCa captioner's default caption length (teachers.CocaCaptioner)


def meta_model(name: str):
    from mobileclip_repro.models import create_model_and_transforms

    model, _, _ = create_model_and_transforms(name, device="meta", output_dict=True)
    return model


def _image_size(model) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def _inputs(model, images: int, texts: int):
    import torch

    size = _image_size(model)
    return (torch.empty(images, 3, size, size, device="meta"),
            torch.zeros(texts, model.context_length, dtype=torch.long, device="meta"))


def training_flops_per_sample(model, captions_per_image: int) -> float:
    """One seen sample of a training step: the student's forward on its image and
    ``captions_per_image`` captions and the backward of both towers (the contrastive and
    distillation heads' B x B logits left out: under local loss they are a few MFLOPs)."""
    batch = 2
    images, texts = _inputs(model, batch, batch * captions_per_image)
    model.train()

    def step():
        out = model(images, texts)
        (out["image_features"].sum() + out["text_features"].sum()).backward()

    _, flops = count_flops(step)
    model.zero_grad(set_to_none=True)
    return flops / batch


def forward_flops(model, images: int = 0, texts: int = 0) -> float:
    """Inference FLOPs of ``images`` images and ``texts`` captions through ``model``'s towers."""
    import torch

    image_batch, text_batch = _inputs(model, max(images, 1), max(texts, 1))
    model.eval()  # as the teachers run (a batch norm counts the same either way, but refuses one image in training)
    total = 0.0
    with torch.no_grad():
        if images:
            total += count_flops(model.encode_image, image_batch)[1] * images / max(images, 1)
        if texts:
            total += count_flops(model.encode_text, text_batch)[1] * texts / max(texts, 1)
    return total


def captioner_flops_per_image(model_name: str, captions: int, tokens: int = CAPTION_TOKENS) -> float:
    """A CoCa writing ``captions`` captions of ``tokens`` tokens for one image, as the reinforce
    job's sampling loop runs it: the image tower once, then the text towers on every prefix
    (no key-value cache, as open_clip's CoCa forward has none)."""
    import torch

    model = meta_model(model_name)
    size = _image_size(model)
    with torch.no_grad():
        encoded, image_flops = count_flops(model, torch.empty(1, 3, size, size, device="meta"))
        latent = encoded["image_features"].repeat_interleave(captions, dim=0)
        embs = encoded["image_embs"].repeat_interleave(captions, dim=0)
        decoding = 0
        for length in range(1, tokens):
            prefix = torch.zeros(captions, length, dtype=torch.long, device="meta")
            decoding += count_flops(model, None, prefix, image_latent=latent, image_embs=embs, output_labels=False)[1]
    return image_flops + decoding


def paper_projection(config: dict, mfu: float = DEFAULT_MFU) -> dict:
    """FLOPs per seen sample of plain, DR and online-distillation training for each run of
    ``config``, the one-time reinforcement FLOPs of its dataset, and GPU-hours at ``mfu``."""
    from mobileclip_repro.config import accumulation, reinforcement_variant
    from mobileclip_repro.teachers import ReinforceConfig

    reinforcement = reinforcement_variant(config)
    reinforce_config = ReinforceConfig.load(reinforcement["config"])
    teachers = [meta_model(name) for name in reinforce_config.model_names]
    captions = reinforcement["num_syn_captions"]
    captioner = reinforcement["captioner"]
    if reinforcement["generate"] and captioner == "world":  # the toy world's oracle captions: no model runs
        captioner_name, caption_flops, one_caption = "world (the toy's oracle, no model)", 0.0, 0.0
    else:
        # a published reinforcement, or several caption sets: Apple's open_clip CoCa ViT-L-14 wrote v1's captions
        captioner_name = captioner["coca"]["model_name"] if isinstance(captioner, dict) and "coca" in captioner \
            else "coca_ViT-L-14"
        caption_flops = captioner_flops_per_image(captioner_name, captions)
        one_caption = captioner_flops_per_image(captioner_name, 1)
    teacher_online = sum(forward_flops(t, images=1, texts=2) for t in teachers)  # its image, real + synthetic caption
    per_image_reinforcement = {
        "teachers": sum(forward_flops(t, images=reinforce_config.num_samples, texts=1 + captions) for t in teachers),
        "captioner": caption_flops}
    runs = {}
    for name, run in config["runs"].items():
        student = meta_model(run["model"])
        plain, dr = training_flops_per_sample(student, 1), training_flops_per_sample(student, 2)
        accum_freq = accumulation(run, f"runs.{name}")
        if accum_freq > 1:  # exact accumulation forwards every micro-batch once more, without gradients
            plain += forward_flops(student, images=1, texts=1)
            dr += forward_flops(student, images=1, texts=2)
        # online: the teachers on a fresh augmentation and both captions each step, captions from syn.json
        # (once per micro-batch under accumulation); online + captioning: one fresh synthetic caption per seen sample too
        arms = {"plain": plain, "DR": dr, "online": dr + teacher_online,
                "online + captioning": dr + teacher_online + one_caption}
        epoch = 12.8e6  # the paper's epoch-time table is per DataComp-12M epoch, on 8 GPUs
        runs[name] = {"model": run["model"], "seen_samples": run["seen_samples"], "accum_freq": accum_freq,
                      "flops_per_sample": arms,
                      "ratios": {"DR/plain": dr / plain, "online/DR": arms["online"] / dr},
                      "epoch_hours_8_gpus": {gpu: {arm: epoch * flops / (8 * peak * mfu) / 3600
                                                   for arm, flops in arms.items()}
                                             for gpu, peak in PEAK_BF16_FLOPS.items()},
                      "run_gpu_hours": {gpu: {arm: run["seen_samples"] * flops / (peak * mfu) / 3600
                                              for arm, flops in arms.items()}
                                        for gpu, peak in PEAK_BF16_FLOPS.items()}}
    per_image = sum(per_image_reinforcement.values())
    datasets = {"12.8M images (DataComp-12M)": 12.8e6, "1.28B images (DataComp-1B)": 1.28e9}
    return {"mfu": mfu, "teachers": list(reinforce_config.model_names), "augmentations": reinforce_config.num_samples,
            "synthetic_captions": captions, "captioner": captioner_name, "runs": runs,
            "reinforcement_flops_per_image": {**per_image_reinforcement, "total": per_image},
            "reinforcement_gpu_hours": {dataset: {gpu: images * per_image / (peak * mfu) / 3600
                                                  for gpu, peak in PEAK_BF16_FLOPS.items()}
                                        for dataset, images in datasets.items()},
            "paper_epoch_hours_8xA100": {"plain": 1.3, "DR": 1.3, "online": 21.1}}


def describe_projection(projection: dict) -> str:
    lines = [f"Projected from FLOPs counted on the meta device (FlopCounterMode), at {100 * projection['mfu']:.0f}% "
             f"MFU of the dense bf16 peak; teachers {', '.join(projection['teachers'])} "
             f"({projection['augmentations']} stored augmentations, {projection['synthetic_captions']} captions "
             f"by {projection['captioner']})."]
    paper = projection["paper_epoch_hours_8xA100"]
    for name, run in projection["runs"].items():
        flops = run["flops_per_sample"]
        accumulating = f", accum_freq {run['accum_freq']} (one more forward)" if run.get("accum_freq", 1) > 1 else ""
        lines.append(f"{name} ({run['model']}{accumulating}): training GFLOPs per seen sample: "
                     f"plain {flops['plain'] / 1e9:.1f}, "
                     f"DR {flops['DR'] / 1e9:.1f} (x{run['ratios']['DR/plain']:.2f}), online distillation "
                     f"{flops['online'] / 1e9:.1f} (x{run['ratios']['online/DR']:.2f} of DR), online with a fresh "
                     f"caption {flops['online + captioning'] / 1e9:.1f}")
        a100 = run["epoch_hours_8_gpus"]["A100"]
        lines.append(f"  one DataComp-12M epoch on 8xA100: plain {a100['plain']:.2f} h, DR {a100['DR']:.2f} h, "
                     f"online {a100['online']:.2f} h, online + captioning {a100['online + captioning']:.2f} h "
                     f"(paper, measured: {paper['plain']} / {paper['DR']} / {paper['online']} h online)")
        hours = run["run_gpu_hours"]
        lines.append(f"  the whole run ({run['seen_samples']:,} seen samples): " + "; ".join(
            f"{gpu} plain {h['plain']:,.0f}, DR {h['DR']:,.0f}, online {h['online']:,.0f} GPU-h" for gpu, h in hours.items()))
    per_image = projection["reinforcement_flops_per_image"]
    lines.append(f"reinforcement at this config's settings, once per image: teachers {per_image['teachers'] / 1e9:.0f} "
                 f"GFLOPs, captioner {per_image['captioner'] / 1e9:.0f} GFLOPs")
    for dataset, hours in projection["reinforcement_gpu_hours"].items():
        lines.append(f"  {dataset}: " + ", ".join(f"{gpu} {h:,.0f} GPU-h" for gpu, h in hours.items()))
    return "\n".join(lines)
