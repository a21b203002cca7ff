"""DRClipLoss: the formula, its argument checks, and the distributed (local-loss) equivalence."""
from __future__ import annotations

import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mobileclip_repro.train.loss import DRClipLoss

MEMBERS = (16, 16)  # two small teacher members keep the test fast; the maths is width-agnostic
STUDENT_FEATURES = ("image_features", "text_features", "syn_text_features")


def make_batch(batch_size: int, seed: int = 0, dtype=torch.float64) -> dict:
    generator = torch.Generator().manual_seed(seed)

    def student():
        return F.normalize(torch.randn(batch_size, 8, generator=generator, dtype=dtype), dim=1)

    def teacher():
        # Correlated with the image rows so the targets are not uniform.
        members = [F.normalize(torch.randn(batch_size, w, generator=generator, dtype=dtype) + base[:, :w], dim=1)
                   for w in MEMBERS]
        return torch.cat(members, dim=1)

    base = 2 * torch.randn(batch_size, max(MEMBERS), generator=generator, dtype=dtype)
    return {"image_features": student(), "text_features": student(), "syn_text_features": student(),
            "dist_image_features": teacher(), "dist_text_features": teacher(),
            "dist_syn_text_features": teacher(), "logit_scale": torch.tensor(14.3, dtype=dtype)}


def explicit_pair_loss(image, text, scale, dist_image, dist_text, weights, member_scales):
    """The §5 formula written with cross_entropy's probability targets (an independent path)."""
    logits = scale * image @ text.T
    labels = torch.arange(len(image))
    contrastive = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    slices = torch.split(torch.arange(dist_image.shape[1]), list(MEMBERS))
    p_i2t = sum((s * dist_image[:, c] @ dist_text[:, c].T).softmax(1) for s, c in zip(member_scales, slices)) / 2
    p_t2i = sum((s * dist_text[:, c] @ dist_image[:, c].T).softmax(1) for s, c in zip(member_scales, slices)) / 2
    distill = (F.cross_entropy(logits, p_i2t) + F.cross_entropy(logits.T, p_t2i)) / 2
    return weights[0] * contrastive, weights[1] * distill


def test_loss_is_the_sum_of_the_real_and_synthetic_caption_pairs():
    batch = make_batch(6)
    loss = DRClipLoss(loss_weights=(0.25, 0.75), teacher_dimension=MEMBERS, dist_logit_scale=[70.0, 60.0])
    out = loss(**batch)
    real = explicit_pair_loss(batch["image_features"], batch["text_features"], batch["logit_scale"],
                              batch["dist_image_features"], batch["dist_text_features"], (0.25, 0.75), (70.0, 60.0))
    syn = explicit_pair_loss(batch["image_features"], batch["syn_text_features"], batch["logit_scale"],
                             batch["dist_image_features"], batch["dist_syn_text_features"], (0.25, 0.75), (70.0, 60.0))
    torch.testing.assert_close(out["contrastive_loss"], real[0] + syn[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(out["distill_loss"], real[1] + syn[1], rtol=1e-12, atol=0)


def test_without_synthetic_captions_only_the_real_pair_counts():
    batch = make_batch(6)
    loss = DRClipLoss(loss_weights=(0.0, 1.0), teacher_dimension=MEMBERS)
    out = loss(**{**batch, "syn_text_features": None, "dist_syn_text_features": None})
    real = explicit_pair_loss(batch["image_features"], batch["text_features"], batch["logit_scale"],
                              batch["dist_image_features"], batch["dist_text_features"], (0.0, 1.0), (100, 100))
    assert out["contrastive_loss"] == 0
    torch.testing.assert_close(out["distill_loss"], real[1], rtol=1e-12, atol=0)


def test_without_average_after_softmax_one_softmax_spans_all_members():
    batch = make_batch(6)
    out = DRClipLoss(loss_weights=(0.0, 1.0), teacher_dimension=MEMBERS, average_after_softmax=False)(
        **{**batch, "syn_text_features": None, "dist_syn_text_features": None})
    logits = batch["logit_scale"] * batch["image_features"] @ batch["text_features"].T
    teacher = 100 * batch["dist_image_features"] @ batch["dist_text_features"].T
    expected = (F.cross_entropy(logits, teacher.softmax(1)) + F.cross_entropy(logits.T, teacher.T.softmax(1))) / 2
    torch.testing.assert_close(out["distill_loss"], expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kwargs,reason", [
    ({"dist_logit_scale": [100.0, 100.0], "average_after_softmax": False}, "per-member"),
    ({"dist_logit_scale": [100.0]}, "one number per teacher member"),
    ({"dist_logit_scale": None}, "dist_logit_scale"),
    ({"loss_weights": (1.0,)}, "loss_weights"),
    ({"teacher_dimension": [768, 0]}, "teacher_dimension"),
])
def test_bad_configuration_is_refused(kwargs, reason):
    with pytest.raises(ValueError, match=reason):
        DRClipLoss(**{"teacher_dimension": MEMBERS, **kwargs})


def test_mismatched_inputs_are_refused():
    batch = make_batch(4)
    loss = DRClipLoss(teacher_dimension=MEMBERS)
    with pytest.raises(ValueError, match="teacher_dimension"):
        DRClipLoss(teacher_dimension=(768, 768))(**batch)
    with pytest.raises(ValueError, match="together"):
        loss(**{**batch, "dist_syn_text_features": None})
    with pytest.raises(ValueError, match="rows"):
        loss(**{**batch, "dist_text_features": batch["dist_text_features"][:3]})


# -- two processes with --local-loss --gather-with-grad vs one process ------------------------

WORLD_SIZE = 2
PER_RANK = 4
CONFIGS = {"local": True, "global": False}  # name -> local_loss; gather_with_grad is on in both


def run_loss(batch: dict, local_loss: bool, rank: int = 0, world_size: int = 1) -> dict:
    """Loss terms and gradients w.r.t. the student features and logit scale."""
    loss = DRClipLoss(loss_weights=(0.25, 0.75), teacher_dimension=MEMBERS, dist_logit_scale=100,
                      local_loss=local_loss, gather_with_grad=True, cache_labels=True,
                      rank=rank, world_size=world_size)
    leaves = {k: batch[k].clone().requires_grad_(True) for k in (*STUDENT_FEATURES, "logit_scale")}
    out = loss(**{**batch, **leaves})
    sum(out.values()).backward()
    return {**{k: v.detach() for k, v in out.items()}, **{f"grad_{k}": v.grad for k, v in leaves.items()}}


def _rank_main(rank: int, port: int, batch: dict, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE, timeout=timedelta(seconds=60))
    try:
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        local_batch = {k: (v if k == "logit_scale" else v[rows]) for k, v in batch.items()}
        results = {name: run_loss(local_batch, local_loss, rank, WORLD_SIZE) for name, local_loss in CONFIGS.items()}
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_two_ranks_match_one_process_on_the_global_batch(tmp_path):
    """Two gloo ranks, each holding half the batch, against one process holding all of it.

    Loss: under local loss rank r averages over its own rows (scored against all columns),
    so the mean of the per-rank losses is the global loss; without local loss every rank
    computes the global loss itself.
    Gradients: gather-with-grad's all_gather backward sums, over ranks, the gradients that
    every rank's loss sends to the gathered rows. Rank r's feature gradient is therefore
    d(sum_k L_k)/d x_r = W * dL_global/d x_r under local loss, and also W * dL/d x_r without
    it (each of the W identical losses contributes once). DDP then averages parameter
    gradients over ranks, which turns this W back into 1; the logit scale is such a
    parameter (not gathered), so its averaged gradient equals the global one.
    """
    batch = make_batch(WORLD_SIZE * PER_RANK, seed=3)
    mp.spawn(_rank_main, args=(free_port(), batch, str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    for name, local_loss in CONFIGS.items():
        single = run_loss(batch, local_loss=local_loss)
        per_rank = [r[name] for r in ranks]
        for term in ("contrastive_loss", "distill_loss"):
            mean = torch.stack([r[term] for r in per_rank]).mean()
            torch.testing.assert_close(mean, single[term], rtol=1e-12, atol=1e-14, msg=f"{name} {term}")
            if not local_loss:
                for r in per_rank:
                    torch.testing.assert_close(r[term], single[term], rtol=1e-12, atol=1e-14)
        for feature in STUDENT_FEATURES:
            stitched = torch.cat([r[f"grad_{feature}"] for r in per_rank]) / WORLD_SIZE
            torch.testing.assert_close(stitched, single[f"grad_{feature}"], rtol=1e-10, atol=1e-14,
                                       msg=f"{name} grad {feature}")
        averaged = torch.stack([r["grad_logit_scale"] for r in per_rank]).mean()
        torch.testing.assert_close(averaged, single["grad_logit_scale"], rtol=1e-10, atol=1e-14,
                                   msg=f"{name} grad logit_scale")
