"""Replay of stored param_aug entries: parsing, checks, sampling and the student transform."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

from mobileclip_repro import replay
from mobileclip_repro.replay import OP_NAMES, ParamAug


@pytest.fixture(scope="module")
def image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    return Image.fromarray(pixels)  # 120 wide, 90 high


def test_op_names_follow_torchvision_randaugment_order():
    assert len(OP_NAMES) == 14
    assert tuple(replay.augmentation_space(224)) == OP_NAMES


@pytest.mark.parametrize("form", [list, json.dumps])
def test_parse_accepts_list_and_json_string(form):
    param = replay.parse_param_aug(form([[45, 20, 54, 64], [[11, 178.5], [12, 0.0]]]))
    assert param == ParamAug((45, 20, 54, 64), ((11, 178.5), (12, 0.0)))
    assert param.op_names == ["Solarize", "AutoContrast"]
    assert replay.parse_param_aug(json.dumps(param.to_entry())) == param


@pytest.mark.parametrize("entry,reason", [
    ([[0, 0, 10, 10], [[14, 0.0]]], "unknown op index 14"),
    ([[0, 0, 10, 10], [[-1, 0.0]]], "unknown op index -1"),
    ([[0, 0, 10, 10]], "must be \\[\\[i, j, h, w\\]"),
    ([[0, 0, 10], [[0, 0.0]]], "crop must be 4 numbers"),
    ([[0, 0, 10, 10], [[0, 0.0, 1]]], "op 0 must be \\[op, magnitude\\]"),
    ([[0, 0, 10, 10], [[1, "0.09"]]], "op 0 magnitude must be a number"),
    ([[0, "a", 10, 10], [[0, 0.0]]], "crop j must be a number"),
    ([[0, 0.5, 10, 10], [[0, 0.0]]], "crop j must be an integer"),
    ([[0, 0, 0, 10], [[0, 0.0]]], "crop size must be positive"),
    ([[0, 0, 10, -3], [[0, 0.0]]], "crop size must be positive"),
    ([[0, 0, 10, 10], [[1, float("nan")]]], "must be finite"),
    ([[0, 0, 10, 10], {"op": 1}], "ops must be a list"),
    ("[[0, 0, 10, 10], [[0, 0.0]]", "not JSON"),
    ("garbage", "not JSON"),
    ("{}", "must be \\[\\[i, j, h, w\\]"),
])
def test_malformed_entries_are_refused_with_a_reason(entry, reason):
    with pytest.raises(ValueError, match=reason):
        replay.parse_param_aug(entry)


@pytest.mark.parametrize("crop", [[0, 0, 91, 120], [0, 0, 90, 121], [-1, 0, 10, 10], [80, 110, 11, 10],
                                  [0, 0, 10 ** 9, 10 ** 9]])
def test_crop_outside_the_image_is_refused(image, crop):
    with pytest.raises(ValueError, match="outside the 120x90 image"):
        replay.replay_tensor(image, [crop, [[0, 0.0]]], 32)


# -- bounded work: magnitudes in RandAugment's ranges, at most MAX_OPS ops (issue 25 item 6) --

# Just past each op's range (torchvision's RandAugment: Shear +-0.3, Rotate +-30 degrees,
# Brightness/Color/Contrast/Sharpness +-0.9, Posterize 4..8 bits, Solarize 0..255, the
# magnitude-free ops 0), on both sides where the op has two.
OUT_OF_RANGE = [
    ("Identity", 1.0), ("ShearX", 0.31), ("ShearX", -0.5), ("ShearY", -0.31), ("ShearY", 2.0),
    ("Rotate", 30.5), ("Rotate", -90.0), ("Brightness", 0.91), ("Brightness", -1.0), ("Color", 0.95),
    ("Color", -0.95), ("Contrast", 1.0), ("Contrast", -5.0), ("Sharpness", 0.92), ("Sharpness", -1e6),
    ("Posterize", 3.0), ("Posterize", 9.0), ("Posterize", -7.0), ("Solarize", -1.0), ("Solarize", 256.0),
    ("Solarize", -178.5), ("AutoContrast", 0.5), ("Equalize", -2.0),
]


@pytest.mark.parametrize("op,magnitude", OUT_OF_RANGE, ids=[f"{op}={m:g}" for op, m in OUT_OF_RANGE])
def test_a_magnitude_outside_the_ops_range_is_refused_naming_the_op(image, op, magnitude):
    entry = [[0, 0, 90, 120], [[0, 0.0], [OP_NAMES.index(op), magnitude]]]
    with pytest.raises(ValueError, match=f"op 1: {op} magnitude {magnitude!r} outside .*RandAugment"):
        replay.parse_param_aug(entry)
    with pytest.raises(ValueError, match=f"{op} magnitude"):  # what a replay (and so a bad_param_aug) says
        replay.replay_tensor(image, json.dumps(entry), 224)


@pytest.mark.parametrize("op,magnitude", [("TranslateX", 101.6), ("TranslateX", -102.0), ("TranslateY", 150.0),
                                          ("TranslateY", -1e9)])
def test_a_shift_past_150_331_of_a_224_px_image_is_refused(image, op, magnitude):
    entry = [[0, 0, 90, 120], [[OP_NAMES.index(op), magnitude]]]
    with pytest.raises(ValueError, match=f"op 0: {op} magnitude .* on a 224x224 image"):
        replay.replay_tensor(image, entry, 224)
    with pytest.raises(ValueError, match=f"op 0: {op} magnitude .* on a 224x224 image"):
        replay.replay_tensor(image, entry, 32)


def test_the_shift_range_is_the_larger_of_datacompdr_s_and_the_replayed_size(image):
    """Shifts are pixels of the image they were drawn for: DataCompDR's 224 px, which a smaller
    student replays as they are (the reference does), or a larger student's own size."""
    shift = [[0, 0, 90, 120], [[3, 30.45]]]  # DataCompDR's magnitude-9 shift, at 224 px
    assert replay.replay_tensor(image, shift, 32).shape == (3, 32, 32)
    wide = [[0, 0, 90, 120], [[3, 110.0]]]  # within 150/331 x 256 = 116.0, past 150/331 x 224 = 101.5
    assert replay.replay_tensor(image, wide, 256).shape == (3, 256, 256)
    with pytest.raises(ValueError, match="TranslateX magnitude 110.0 outside \\[-101.511, 101.511\\]"):
        replay.replay_tensor(image, wide, 224)
    # per side: (height, width) = (300, 256) lets Y shift up to 135.9 px and X up to 116.0 px
    assert replay.replay_tensor(image, [[0, 0, 90, 120], [[4, 130.0]]], (300, 256)).shape == (3, 300, 256)
    with pytest.raises(ValueError, match="TranslateX magnitude 130.0 .* on a 256x300 image"):
        replay.replay_tensor(image, [[0, 0, 90, 120], [[3, 130.0]]], (300, 256))


@pytest.mark.parametrize("size", [224, 256, 32])
def test_every_magnitude_randaugment_draws_is_accepted_rounded_or_not(size):
    """Each bin of each op, both signs, as float32 (the reference's unrounded form) and rounded to
    2 decimals (the published form), at magnitude 0..30: nothing replay should take is refused."""
    space = replay.augmentation_space(size)
    for index, (magnitudes, signed) in enumerate(space.values()):
        values = [float(magnitudes)] if magnitudes.ndim == 0 else [float(m) for m in magnitudes]
        values += [round(v, 2) for v in values]
        values += [-v for v in values] if signed else []
        for value in values:
            param = replay.parse_param_aug([[0, 0, 10, 10], [[index, value]]])
            replay.check_translations(param, size, size)


def test_more_than_max_ops_ops_are_refused_before_any_is_parsed():
    most = [[0, 0, 10, 10], [[13, 0.0]] * replay.MAX_OPS]
    assert len(replay.parse_param_aug(most).ops) == replay.MAX_OPS
    with pytest.raises(ValueError, match=f"param_aug has {replay.MAX_OPS + 1} ops, more than MAX_OPS"):
        replay.parse_param_aug([[0, 0, 10, 10], [[13, 0.0]] * (replay.MAX_OPS + 1)])
    # a hostile entry is refused by its length: its elements are not even looked at
    with pytest.raises(ValueError, match="param_aug has 1000000 ops"):
        replay.parse_param_aug([[0, 0, 10, 10], [None] * 1_000_000])


def test_entries_are_only_drawn_with_ops_replay_takes():
    generator = torch.Generator().manual_seed(0)
    assert len(replay.sample_param_aug(200, 100, generator, num_ops=replay.MAX_OPS)[1]) == replay.MAX_OPS
    with pytest.raises(ValueError, match="num_ops 17 outside 0..16"):
        replay.sample_param_aug(200, 100, generator, num_ops=replay.MAX_OPS + 1)


def test_crop_touching_the_borders_fits(image):
    replay.check_fits(replay.parse_param_aug([[0, 0, 90, 120], []]), width=120, height=90)
    assert replay.replay_tensor(image, [[0, 0, 90, 120], []], 32).shape == (3, 32, 32)


def test_identity_entry_is_crop_and_resize(image):
    """With only Identity ops the replay is torchvision's resized_crop, then to_tensor."""
    from torchvision.transforms import functional as F

    out = replay.replay_tensor(image, [[5, 7, 40, 50], [[0, 0.0], [0, 0.0]]], 24)
    expected = F.to_tensor(F.resized_crop(image, 5, 7, 40, 50, [24, 24], InterpolationMode.BICUBIC))
    assert torch.equal(out, expected)


def test_ops_apply_in_order_with_their_sign(image):
    entry = [[0, 0, 90, 120], [[3, 5.9]]]  # TranslateX by int(5.9) = 5 px to the right
    moved = replay.replay_pil(image, entry, (90, 120))
    still = replay.replay_pil(image, [[0, 0, 90, 120], []], (90, 120))
    assert np.array_equal(np.asarray(moved)[:, 5:], np.asarray(still)[:, :-5])
    assert not np.asarray(moved)[:, :5].any()
    back = replay.replay_pil(image, [[0, 0, 90, 120], [[3, 5.9], [3, -5.2]]], (90, 120))
    assert np.array_equal(np.asarray(back)[:, 5:-5], np.asarray(still)[:, 5:-5])


def test_rgba_and_grey_inputs_replay_as_rgb(image):
    entry = [[0, 0, 90, 120], [[13, 0.0]]]
    assert replay.replay_pil(image.convert("RGBA"), entry, 16).mode == "RGB"
    assert replay.replay_tensor(image.convert("L"), entry, 16).shape == (3, 16, 16)


def test_normalization_needs_both_mean_and_std(image):
    entry = [[0, 0, 90, 120], []]
    raw = replay.replay_tensor(image, entry, 16)
    normalized = replay.replay_tensor(image, entry, 16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    torch.testing.assert_close(normalized[1], (raw[1] - 0.4) / 0.25)
    with pytest.raises(ValueError, match="both mean and std"):
        replay.replay_tensor(image, entry, 16, mean=(0.5, 0.5, 0.5))


def test_replay_transform_takes_the_students_preprocessing(image):
    from mobileclip_repro.models import create_model_and_transforms

    model, _, _ = create_model_and_transforms("toy-student")
    transform = replay.ReplayTransform.from_open_clip(model)
    cfg = model.visual.preprocess_cfg
    assert transform.size == (32, 32)
    assert transform.interpolation == InterpolationMode.BICUBIC
    assert transform.mean == tuple(cfg["mean"]) and transform.std == tuple(cfg["std"])
    entry = '[[3, 4, 60, 70], [[1, -0.09], [9, 0.27]]]'
    expected = replay.replay_tensor(image, entry, 32, InterpolationMode.BICUBIC, cfg["mean"], cfg["std"])
    assert torch.equal(transform(image, entry), expected)


# -- sampling -------------------------------------------------------------------------------

def magnitude_set(size: int) -> dict[int, set[float]]:
    """What each op may carry at magnitude 9 of 31 bins, worked out by hand (docs/reference.md §2)."""
    translate = round(150 / 331 * size * 9 / 30, 2)
    return {0: {0.0}, 1: {0.09, -0.09}, 2: {0.09, -0.09}, 3: {translate, -translate},
            4: {translate, -translate}, 5: {9.0, -9.0}, 6: {0.27, -0.27}, 7: {0.27, -0.27},
            8: {0.27, -0.27}, 9: {0.27, -0.27}, 10: {7.0}, 11: {178.5}, 12: {0.0}, 13: {0.0}}


@pytest.mark.parametrize("size", [224, 32])
def test_sampled_entries_parse_fit_and_use_the_magnitude_set(image, size):
    allowed = magnitude_set(size)
    assert allowed[3] == ({30.45, -30.45} if size == 224 else allowed[3])
    generator = torch.Generator().manual_seed(11)
    seen_ops = set()
    for _ in range(300):
        entry = replay.sample_param_aug(image.width, image.height, generator, size=size)
        param = replay.parse_param_aug(json.loads(json.dumps(entry)))
        replay.check_fits(param, image.width, image.height)
        top, left, height, width = param.crop
        assert 0.08 * 120 * 90 * 0.9 <= height * width <= 120 * 90
        assert len(param.ops) == 2
        for op, magnitude in param.ops:
            assert magnitude in allowed[op], (OP_NAMES[op], magnitude)
            seen_ops.add((op, magnitude))
    assert {op for op, _ in seen_ops} == set(range(14))
    assert (1, 0.09) in seen_ops and (1, -0.09) in seen_ops
    out = replay.replay_tensor(image, entry, size)
    assert out.shape == (3, size, size) and out.dtype == torch.float32


def test_sampling_is_deterministic_under_a_seeded_generator():
    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return [replay.sample_param_aug(640, 480, generator) for _ in range(5)]

    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    assert draw(5) == draw(5)
    assert draw(5) != draw(6)
    first = draw(5)
    assert first[0] != first[1], "the generator must advance between draws"
    assert torch.equal(torch.get_rng_state(), global_state), "sampling must leave the global RNG alone"


def test_sampling_options_are_honoured():
    generator = torch.Generator().manual_seed(0)
    crop, ops = replay.sample_param_aug(200, 100, generator, scale=(1.0, 1.0), ratio=(2.0, 2.0), num_ops=0)
    assert crop == [0, 0, 100, 200] and ops == []
    _, ops = replay.sample_param_aug(200, 100, generator, num_ops=3)
    assert len(ops) == 3
    _, skipped = replay.sample_param_aug(200, 100, generator, p=0.0)
    assert skipped is None
    assert replay.parse_param_aug([crop, skipped]).ops == ()
    with pytest.raises(ValueError, match="magnitude 31"):
        replay.sample_param_aug(200, 100, generator, magnitude=31)
