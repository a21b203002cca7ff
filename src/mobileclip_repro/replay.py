"""DataCompDR augmentation replay: turn a stored ``param_aug`` entry back into pixels.

An entry is ``[[i, j, h, w], [[op, magnitude], ...]]``: a random-resized crop (top, left,
height, width in source pixels) followed by RandAugment ops with their signed magnitudes.
Replay is crop -> resize to the student's size -> the ops in order -> tensor -> normalize,
all done by torchvision's own functional ops so that the pixels match the reference
implementation (which subclasses the same torchvision transforms) bit for bit.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Sequence

import numpy as np
import PIL
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F
# The reference replays each op through this very function; calling it (rather than a
# copy of its dispatch) keeps the op semantics tied to the pinned torchvision.
from torchvision.transforms.autoaugment import _apply_op

from mobileclip_repro import shards

OP_NAMES = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
    "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)

# RandAugment's defaults, which DataCompDR used (docs/reference.md §2).
RAND_AUGMENT_NUM_OPS = 2
RAND_AUGMENT_MAGNITUDE = 9
RAND_AUGMENT_NUM_BINS = 31
# RandAugment's geometric ops resample with NEAREST and fill the uncovered area with 0.
OP_INTERPOLATION = InterpolationMode.NEAREST
OP_FILL = None

# Ops one entry may carry. DataCompDR draws 2 per augmentation; each op is a full pass over
# the image, so an entry with thousands of them would stall a data worker. 16 (8x Apple's 2)
# leaves room for num_ops experiments while keeping a hostile entry to a few milliseconds.
MAX_OPS = 16
# Published magnitudes are float32 bins rounded to 2 decimals, so a top bin can sit up to half
# a hundredth past torchvision's float32 bound (Brightness: 0.89999998 is stored as 0.9).
MAGNITUDE_SLACK = 0.005
TRANSLATE_OPS = (OP_NAMES.index("TranslateX"), OP_NAMES.index("TranslateY"))
# The size DataCompDR's augmentations were drawn for (random_resized_crop.size, docs/reference.md
# §2): its shifts are pixels of a 224 px image, whatever size a student replays them at.
AUGMENTED_SIZE = 224


@dataclass(frozen=True)
class ParamAug:
    """One decoded ``param_aug`` entry."""
    crop: tuple[int, int, int, int]  # top, left, height, width in source pixels
    ops: tuple[tuple[int, float], ...]  # (index into OP_NAMES, signed magnitude), applied in order

    @property
    def op_names(self) -> list[str]:
        return [OP_NAMES[index] for index, _ in self.ops]

    def to_entry(self) -> list:
        return [list(self.crop), [[index, magnitude] for index, magnitude in self.ops]]


def _integer(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if isinstance(value, Integral):
        return int(value)
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _magnitude(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return float(value)


@functools.lru_cache(maxsize=16)
def magnitude_ranges(height: int, width: int) -> tuple[tuple[float, float, float], ...]:
    """Per op (in OP_NAMES order), ``(low, high, slack)``: the magnitudes torchvision's
    RandAugment can draw for a ``height`` x ``width`` image, signed ops mirrored.

    Taken from torchvision's own space (any bin count gives the same end points), so the
    bounds follow the pinned torchvision like the ops do. Only the translations depend on
    the size. Continuous ranges get MAGNITUDE_SLACK; Posterize's integer bits and the
    magnitude-free ops' 0 are exact. Cached: a replay checks against it per sample.
    """
    ranges = []
    for magnitudes, signed in augmentation_space((height, width)).values():
        if magnitudes.ndim == 0:  # Identity, AutoContrast, Equalize: stored as 0.0
            ranges.append((0.0, 0.0, 0.0))
            continue
        low, high = float(magnitudes.min()), float(magnitudes.max())
        ranges.append((-high if signed else low, high,
                       MAGNITUDE_SLACK if magnitudes.is_floating_point() else 0.0))
    return tuple(ranges)


def _check_magnitude(position: int, index: int, magnitude: float, bounds: tuple[float, float, float],
                     size_note: str = "") -> None:
    low, high, slack = bounds
    if not low - slack <= magnitude <= high + slack:
        raise ValueError(f"param_aug op {position}: {OP_NAMES[index]} magnitude {magnitude!r} outside "
                         f"[{low:g}, {high:g}], the range torchvision's RandAugment gives it{size_note}")


def parse_param_aug(entry) -> ParamAug:
    """Decode an entry given as a list, a JSON string holding the list, or a ParamAug.

    Raises ValueError naming what is wrong: not JSON, wrong shape, non-numeric value,
    unknown op index, non-positive crop size, more than MAX_OPS ops, a magnitude outside
    the op's RandAugment range. Translations scale with the image the ops run on, so their
    range is checked at replay (``check_translations``), once the size is known.
    """
    if isinstance(entry, ParamAug):
        return entry
    if isinstance(entry, (bytes, bytearray)):
        entry = entry.decode("utf-8")
    if isinstance(entry, str):
        try:
            entry = json.loads(entry)
        except json.JSONDecodeError as error:
            raise ValueError(f"param_aug string is not JSON: {error}") from None
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise ValueError(f"param_aug entry must be [[i, j, h, w], [[op, magnitude], ...]], got {entry!r}")
    crop, ops = entry
    if not isinstance(crop, (list, tuple)) or len(crop) != 4:
        raise ValueError(f"param_aug crop must be 4 numbers [i, j, h, w], got {crop!r}")
    top, left, height, width = (_integer(v, f"crop {name}") for v, name in zip(crop, "ijhw"))
    if height <= 0 or width <= 0:
        raise ValueError(f"param_aug crop size must be positive, got h={height}, w={width}")
    # The reference stores None when RandAugment was skipped (its p < 1); it replays as no op.
    if ops is None:
        ops = []
    if not isinstance(ops, (list, tuple)):
        raise ValueError(f"param_aug ops must be a list of [op, magnitude] pairs, got {ops!r}")
    # Before looking at any op: a hostile list costs one len(), not one parse per element.
    if len(ops) > MAX_OPS:
        raise ValueError(f"param_aug has {len(ops)} ops, more than MAX_OPS={MAX_OPS} (DataCompDR draws 2)")
    ranges = magnitude_ranges(1, 1)  # the size-free bounds; translations are left to replay
    parsed_ops = []
    for position, op in enumerate(ops):
        if not isinstance(op, (list, tuple)) or len(op) != 2:
            raise ValueError(f"param_aug op {position} must be [op, magnitude], got {op!r}")
        index = _integer(op[0], f"op {position} index")
        if not 0 <= index < len(OP_NAMES):
            raise ValueError(f"param_aug op {position}: unknown op index {index} (valid: 0..{len(OP_NAMES) - 1})")
        magnitude = _magnitude(op[1], f"op {position} magnitude")
        if index not in TRANSLATE_OPS:
            _check_magnitude(position, index, magnitude, ranges[index])
        parsed_ops.append((index, magnitude))
    return ParamAug((top, left, height, width), tuple(parsed_ops))


def check_translations(param: ParamAug, height: int, width: int) -> None:
    """ValueError unless each translation lies in RandAugment's range (150/331 of the width
    or height) for the image it was drawn for, replayed at ``height`` x ``width``.

    A stored shift is in pixels of the image it was drawn for, which the entry does not
    record: DataCompDR's 224 px (AUGMENTED_SIZE), kept as is when a smaller student replays
    it, as in the reference; or, for data this project reinforces, the replay's own size.
    The bound takes the larger of the two per side, so neither kind is refused.
    """
    ranges = None
    for position, (index, magnitude) in enumerate(param.ops):
        if index in TRANSLATE_OPS:
            if ranges is None:
                height, width = max(height, AUGMENTED_SIZE), max(width, AUGMENTED_SIZE)
                ranges = magnitude_ranges(height, width)
            _check_magnitude(position, index, magnitude, ranges[index], f" on a {width}x{height} image")


def check_fits(param: ParamAug, width: int, height: int) -> None:
    """ValueError unless the crop lies inside a ``width`` x ``height`` image.

    PIL would silently pad a crop that sticks out with black, giving pixels the teacher
    never saw.
    """
    top, left, crop_height, crop_width = param.crop
    if top < 0 or left < 0 or top + crop_height > height or left + crop_width > width:
        raise ValueError(
            f"param_aug crop (top={top}, left={left}, h={crop_height}, w={crop_width}) lies outside "
            f"the {width}x{height} image")


def _size_hw(size: int | Sequence[int]) -> list[int]:
    if isinstance(size, Integral):
        hw = [int(size), int(size)]
    else:
        hw = [int(s) for s in size]
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return hw


def _interpolation(interpolation: InterpolationMode | str) -> InterpolationMode:
    if isinstance(interpolation, InterpolationMode):
        return interpolation
    try:
        return InterpolationMode(str(interpolation).lower())
    except ValueError:
        valid = [mode.value for mode in InterpolationMode]
        raise ValueError(f"unknown interpolation {interpolation!r} (valid: {valid})") from None


def replay_pil(image: Image.Image, entry, size: int | Sequence[int],
               interpolation: InterpolationMode | str = InterpolationMode.BICUBIC) -> Image.Image:
    """Crop, resize to ``size`` and apply the entry's RandAugment ops; returns an RGB PIL image."""
    param = parse_param_aug(entry)
    image = shards.to_rgb(image)
    check_fits(param, image.width, image.height)
    out_hw = _size_hw(size)
    check_translations(param, *out_hw)
    top, left, crop_height, crop_width = param.crop
    image = F.resized_crop(image, top, left, crop_height, crop_width, out_hw, _interpolation(interpolation))
    for index, magnitude in param.ops:
        image = _apply_op(image, OP_NAMES[index], magnitude, interpolation=OP_INTERPOLATION, fill=OP_FILL)
    return image


def replay_tensor(image: Image.Image, entry, size: int | Sequence[int],
                  interpolation: InterpolationMode | str = InterpolationMode.BICUBIC,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> torch.Tensor:
    """Replay to a float32 CHW tensor in [0, 1], normalized when ``mean`` and ``std`` are given."""
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    tensor = F.to_tensor(replay_pil(image, entry, size, interpolation))
    if mean is not None:
        tensor = F.normalize(tensor, list(mean), list(std))
    return tensor


@dataclass(frozen=True)
class ReplayTransform:
    """The student's view of a stored augmentation: its own size, interpolation, mean and std."""
    size: tuple[int, int]
    interpolation: InterpolationMode
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, image: Image.Image, entry) -> torch.Tensor:
        return replay_tensor(image, entry, self.size, self.interpolation, self.mean, self.std)

    @classmethod
    def from_train_transform(cls, transform) -> "ReplayTransform":
        """Take size and interpolation from the RandomResizedCrop, mean/std from the Normalize.

        This is how the reference reads a student's open_clip train transform.
        """
        steps = getattr(transform, "transforms", [transform])
        crops = [t for t in steps if isinstance(t, T.RandomResizedCrop)]
        normalizes = [t for t in steps if isinstance(t, T.Normalize)]
        if len(crops) != 1 or len(normalizes) != 1:
            raise ValueError(
                f"train transform needs exactly one RandomResizedCrop and one Normalize, got {transform!r}")
        crop, normalize = crops[0], normalizes[0]
        return cls(tuple(_size_hw(crop.size)), crop.interpolation,
                   tuple(float(m) for m in normalize.mean), tuple(float(s) for s in normalize.std))

    @classmethod
    def from_open_clip(cls, model) -> "ReplayTransform":
        """From an open_clip model's preprocessing config, via open_clip's own train transform."""
        from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

        preprocess_cfg = getattr(model.visual, "preprocess_cfg", None)
        if not preprocess_cfg:
            raise ValueError("model.visual has no preprocess_cfg; build the model with open_clip's factory")
        cfg = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), preprocess_cfg))
        return cls.from_train_transform(image_transform_v2(cfg, is_train=True))


def augmentation_space(size: int | Sequence[int], num_magnitude_bins: int = RAND_AUGMENT_NUM_BINS) -> dict:
    """torchvision's RandAugment space ``{op: (magnitudes, signed)}`` for a ``size`` image."""
    height, width = _size_hw(size)
    space = T.RandAugment(num_magnitude_bins=num_magnitude_bins)._augmentation_space(
        num_magnitude_bins, (height, width))
    if tuple(space) != OP_NAMES:
        raise RuntimeError(f"torchvision's RandAugment ops {tuple(space)} differ from the DataCompDR order {OP_NAMES}")
    return space


def sample_param_aug(width: int, height: int, generator: torch.Generator, *,
                     size: int | Sequence[int] = 224,
                     scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                     num_ops: int = RAND_AUGMENT_NUM_OPS, magnitude: int = RAND_AUGMENT_MAGNITUDE,
                     num_magnitude_bins: int = RAND_AUGMENT_NUM_BINS, p: float = 1.0) -> list:
    """Draw one compressed entry ``[[i, j, h, w], [[op, magnitude], ...]]`` for a source image.

    Draws happen in the reference generator's order (crop, RandAugment's ``rand(1) > p``
    skip test, then per op an op index and, for signed ops, a sign), so a generator seeded
    with N gives what the reference gives after ``torch.manual_seed(N)``. Magnitudes come
    from torchvision's space for the image after the resize to ``size`` (RandAugment runs
    after the resize) and are rounded to 2 decimals like the published data. A skipped
    RandAugment (``p < 1``) is stored as None, as the reference stores it.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator, got {generator.device}")
    if not 0 <= magnitude < num_magnitude_bins:
        raise ValueError(f"magnitude {magnitude} outside 0..{num_magnitude_bins - 1}")
    if not 0 <= num_ops <= MAX_OPS:  # replay would refuse every entry drawn
        raise ValueError(f"num_ops {num_ops} outside 0..{MAX_OPS} (MAX_OPS)")
    space = augmentation_space(size, num_magnitude_bins)
    # torchvision's samplers read the global generator; run them on a copy of ours, then
    # advance ours by what they consumed, leaving the global state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(generator.get_state())
        # get_params only reads the dimensions: an expanded view allocates no pixels.
        dimensions_only = torch.empty(1, 1, 1).expand(3, height, width)
        crop = T.RandomResizedCrop.get_params(dimensions_only, list(scale), list(ratio))
        ops: list | None = None
        if not torch.rand(1) > p:
            ops = []
            for _ in range(num_ops):
                index = int(torch.randint(len(OP_NAMES), (1,)).item())
                magnitudes, signed = space[OP_NAMES[index]]
                value = float(magnitudes[magnitude].item()) if magnitudes.ndim > 0 else 0.0
                if signed and torch.randint(2, (1,)):
                    value *= -1.0
                ops.append([index, round(value, 2)])
        generator.set_state(torch.get_rng_state())
    return [[int(v) for v in crop], ops]


# -- comparison against a folder of reference outputs (fixtures/paug_replay format) ----------

def _pillow_major() -> int:
    return int(PIL.__version__.split(".")[0])


def load_replay_cases(folder: str | Path) -> list[dict]:
    return json.loads((Path(folder) / "manifest.json").read_text())


def expected_replay_output(folder: str | Path, case: dict) -> np.ndarray:
    """The reference tensor for a case, for the Pillow version installed here.

    Pillow 13 changed the resize pass order for some crops; those cases carry the output
    of older Pillow separately.
    """
    key, file_name = case["expected"], case["expected_file"]
    if case.get("pillow13_vertical_pass_first") and _pillow_major() < 13:
        key, file_name = case["expected_pillow_le12"], case["expected_pillow_le12_file"]
    with np.load(Path(folder) / file_name, allow_pickle=False) as expected:
        return expected[key]


def replay_case_max_diff(folder: str | Path, case: dict) -> float:
    """max |replay - reference| over both entry forms (list and JSON string)."""
    folder = Path(folder)
    expected = expected_replay_output(folder, case)
    with Image.open(folder / case["image"]) as image:
        image.load()
        outputs = [replay_tensor(image, case[form], expected.shape[-2:])
                   for form in ("param_aug", "param_aug_json_string")]
    return max(float(np.abs(out.numpy() - expected).max()) for out in outputs)


def replay_max_diffs(folder: str | Path) -> dict[str, float]:
    """Per-case max |diff| against a reference folder; its max is the headline replay error."""
    return {case["case"]: replay_case_max_diff(folder, case) for case in load_replay_cases(folder)}


def normalize_views(views: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 views [N, 3, S, S] -> float32, scaled to [0, 1] and normalized, on ``views``' device.

    The same float32 operations as ``replay.replay_tensor`` (torchvision's to_tensor, then
    normalize), in the same order, so the result is that function's, bit for bit.
    """
    tensor = views.to(torch.float32).div(255)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=views.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=views.device).view(1, -1, 1, 1)
    return tensor.sub_(mean).div_(std)
