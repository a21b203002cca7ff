"""The DataCompDR training loss: CLIP loss plus distillation from a teacher ensemble.

For a pair (student image I, student text T, teacher image I', teacher text T'):
  contrastive = w_clip * (CE(s I T^T, diag) + CE(s T I^T, diag)) / 2
  distill     = w_distill * (H(P_i2t, s I T^T) + H(P_t2i, s T I^T)) / 2
with H(P, L) = -mean_rows sum_cols P * log_softmax(L) and the teacher targets
  average_after_softmax: P_i2t = mean_k softmax(scale_k * I'_k T'_k^T), k over members
                         (each member a slice of ``teacher_dimension`` columns)
  otherwise:             P_i2t = softmax(scale * I' T'^T) over the whole vector.
The loss sums the ground-truth-caption pair and, when given, the synthetic-caption pair.
Nothing is normalized here: features arrive as the dataset and the model produce them.
"""
from __future__ import annotations

import json
from numbers import Real
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, gather_features


class DRClipLoss(ClipLoss):
    """Returns ``{"contrastive_loss", "distill_loss"}``, already weighted; the trainer sums them.
    ``terms`` (after a call): the same loss split as telemetry shows it, detached and weighted:
    ``clip``, ``distill_i2t`` and ``distill_t2i`` on the real (``_real``) and synthetic (``_syn``) captions.

    Under ``local_loss`` each rank scores its own rows against columns gathered from all
    ranks, for the student (open_clip's ClipLoss.get_logits) and the teachers alike, so the
    mean of the per-rank losses is the loss of the global batch.
    """

    def __init__(self, loss_weights: Sequence[float] = (0.0, 1.0),
                 teacher_dimension: Sequence[int] = (768, 768),
                 dist_logit_scale: float | Sequence[float] = 100,
                 average_after_softmax: bool = True,
                 local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1):
        super().__init__(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=cache_labels,
                         rank=rank, world_size=world_size)
        weights = [float(w) for w in loss_weights]
        if len(weights) != 2:
            raise ValueError(f"loss_weights must be (w_clip, w_distill), got {loss_weights!r}")
        self.loss_weights = tuple(weights)
        dims = [int(d) for d in teacher_dimension]
        if not dims or min(dims) <= 0:
            raise ValueError(f"teacher_dimension must list positive member widths, got {teacher_dimension!r}")
        self.teacher_dimension = tuple(dims)
        self.average_after_softmax = bool(average_after_softmax)
        self.member_logit_scales = self._member_scales(dist_logit_scale)

    def _member_scales(self, dist_logit_scale) -> tuple[float, ...] | float:
        if isinstance(dist_logit_scale, bool) or dist_logit_scale is None:
            raise ValueError(f"dist_logit_scale must be a number or a list of numbers, got {dist_logit_scale!r}")
        if isinstance(dist_logit_scale, Real):
            if not self.average_after_softmax:
                return dist_logit_scale
            # One scale for every member, as the v1 patch's integer --distill-logit-scale.
            return (dist_logit_scale,) * len(self.teacher_dimension)
        scales = list(dist_logit_scale)
        if not self.average_after_softmax:
            raise ValueError("per-member dist_logit_scale needs average_after_softmax: "
                             "without it the members share one softmax and one scale")
        if len(scales) != len(self.teacher_dimension) or not all(
                isinstance(s, Real) and not isinstance(s, bool) for s in scales):
            raise ValueError(f"dist_logit_scale {dist_logit_scale!r} needs one number per teacher member "
                             f"({len(self.teacher_dimension)})")
        return tuple(scales)

    def teacher_targets(self, dist_image_features: torch.Tensor, dist_text_features: torch.Tensor):
        """(P_i2t, P_t2i): the teachers' row distributions over the (gathered) columns."""
        if dist_image_features.shape[-1] != sum(self.teacher_dimension):
            raise ValueError(f"teacher features have {dist_image_features.shape[-1]} columns, "
                             f"teacher_dimension {list(self.teacher_dimension)} sums to {sum(self.teacher_dimension)}")
        local_image, local_text = dist_image_features, dist_text_features
        if self.world_size > 1:
            all_image, all_text = gather_features(
                local_image, local_text, local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
                rank=self.rank, world_size=self.world_size)
            if not self.local_loss:
                local_image, local_text = all_image, all_text
        else:
            all_image, all_text = local_image, local_text
        return (self._target(local_image, all_text), self._target(local_text, all_image))

    def _target(self, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        if not self.average_after_softmax:
            return (self.member_logit_scales * rows @ columns.T).softmax(dim=1)
        probabilities = 0
        start = 0
        for width, scale in zip(self.teacher_dimension, self.member_logit_scales):
            member = slice(start, start + width)
            probabilities = probabilities + (scale * (rows[:, member] @ columns[:, member].T)).softmax(dim=1)
            start += width
        return probabilities / len(self.teacher_dimension)

    @staticmethod
    def soft_cross_entropy(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean(dim=0)

    def pair_loss(self, image_features, text_features, logit_scale, dist_image_features, dist_text_features):
        """(contrastive, distill) for one (image, caption) pair of feature batches, weighted."""
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale)
        labels = self.get_ground_truth(image_features.device, logits_per_image.shape[0])
        contrastive = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        with torch.no_grad():
            targets_i2t, targets_t2i = self.teacher_targets(dist_image_features, dist_text_features)
        distill_i2t = self.soft_cross_entropy(targets_i2t, logits_per_image)
        distill_t2i = self.soft_cross_entropy(targets_t2i, logits_per_text)
        distill = (distill_i2t + distill_t2i) / 2
        # what telemetry shows of this pair, each term as it enters the loss (weighted); not a result
        self._pair_terms = {"clip": contrastive.detach() * self.loss_weights[0],
                            "distill_i2t": distill_i2t.detach() * self.loss_weights[1] / 2,
                            "distill_t2i": distill_t2i.detach() * self.loss_weights[1] / 2}
        return contrastive * self.loss_weights[0], distill * self.loss_weights[1]

    def forward(self, image_features, text_features, logit_scale, dist_image_features, dist_text_features,
                syn_text_features=None, dist_syn_text_features=None) -> dict:
        if (syn_text_features is None) != (dist_syn_text_features is None):
            raise ValueError("syn_text_features and dist_syn_text_features must be given together")
        pairs = {"image": (image_features, dist_image_features), "text": (text_features, dist_text_features),
                 "syn_text": (syn_text_features, dist_syn_text_features)}
        for name, (student, teacher) in pairs.items():
            if student is not None and not len(student) == len(teacher) == len(image_features):
                raise ValueError(f"{name}: {len(student)} student and {len(teacher)} teacher rows "
                                 f"for {len(image_features)} images")
        contrastive, distill = self.pair_loss(image_features, text_features, logit_scale,
                                              dist_image_features, dist_text_features)
        self.terms = {f"{name}_real": value for name, value in self._pair_terms.items()}
        if syn_text_features is not None:
            syn_contrastive, syn_distill = self.pair_loss(image_features, syn_text_features, logit_scale,
                                                          dist_image_features, dist_syn_text_features)
            contrastive, distill = contrastive + syn_contrastive, distill + syn_distill
            self.terms.update({f"{name}_syn": value for name, value in self._pair_terms.items()})
        return {"contrastive_loss": contrastive, "distill_loss": distill}


# -- comparison against a folder of reference values (fixtures/dr_loss format) ---------------

FIXTURE_FEATURES = ("image_features", "text_features", "dist_image_features", "dist_text_features",
                    "syn_text_features", "dist_syn_text_features")


def load_loss_cases(folder: str | Path) -> list[dict]:
    return json.loads((Path(folder) / "expected.json").read_text())["cases"]


def loss_from_config(config: dict) -> DRClipLoss:
    """DRClipLoss from a fixture case's ``config`` (the reference's create_loss arguments)."""
    return DRClipLoss(loss_weights=config["distill_loss_weights"], teacher_dimension=config["teacher_dimension"],
                      dist_logit_scale=config["dist_logit_scale"],
                      average_after_softmax=config["average_after_softmax"],
                      local_loss=config.get("local_loss", False),
                      gather_with_grad=config.get("gather_with_grad", False),
                      cache_labels=config.get("cache_labels", False),
                      rank=config.get("rank", 0), world_size=config.get("world_size", 1))


def case_inputs(folder: str | Path, case: dict, dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
    """The case's forward() keyword arguments at ``dtype``; syn features None when the case has none."""
    with np.load(Path(folder) / case["inputs"], allow_pickle=False) as arrays:
        inputs = {name: torch.from_numpy(arrays[name]).to(dtype) for name in FIXTURE_FEATURES}
    if not case.get("use_syn_text", True):
        inputs["syn_text_features"] = inputs["dist_syn_text_features"] = None
    inputs["logit_scale"] = torch.tensor(case["logit_scale"], dtype=dtype)
    return inputs


def loss_for_case(folder: str | Path, case: dict, dtype: torch.dtype) -> dict[str, float]:
    """Run DRClipLoss on a fixture case at ``dtype``; contrastive, distill and total as floats."""
    with torch.no_grad():
        out = loss_from_config(case["config"])(**case_inputs(folder, case, dtype))
    values = {name: float(value) for name, value in out.items()}
    values["total_loss"] = values["contrastive_loss"] + values["distill_loss"]
    return values


def relative_error(value: float, expected: float) -> float:
    if expected == 0:
        return abs(value)
    return abs(value - expected) / abs(expected)


def loss_relative_errors(folder: str | Path, dtype: torch.dtype) -> dict[str, float]:
    """Per case with an expectation at ``dtype``, the max relative error over its loss terms."""
    precision = str(dtype).removeprefix("torch.")
    errors = {}
    for case in load_loss_cases(folder):
        if precision in case["expected"]:
            expected = case["expected"][precision]
            values = loss_for_case(folder, case, dtype)
            errors[case["case"]] = max(relative_error(values[k], expected[k]) for k in expected)
    return errors
