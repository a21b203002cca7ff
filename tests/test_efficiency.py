"""The efficiency multiplier: seen samples non-DR needs over seen samples DR needs, at equal accuracy."""
from __future__ import annotations

import math

import pytest

from mobileclip_repro.report import efficiency

# Seen samples double per checkpoint, as with checkpoint_spacing: log.
SEEN = [1000, 2000, 4000, 8000, 16000]


def curve(values):
    return list(zip(SEEN, values))


def test_crossing_is_interpolated_on_the_log_axis():
    # halfway in value between 2000 and 4000 lies at their geometric mean
    assert efficiency.first_crossing(curve([0.1, 0.2, 0.4, 0.5, 0.6]), 0.3) == pytest.approx(math.sqrt(2000 * 4000))


def test_first_crossing_counts_not_a_later_one():
    # a noisy curve crossing twice: the first time it gets there counts
    assert efficiency.first_crossing(curve([0.1, 0.35, 0.25, 0.4, 0.5]), 0.3) == pytest.approx(
        math.exp(math.log(1000) + 0.8 * math.log(2)))


def test_a_curve_that_never_gets_there_has_no_crossing():
    assert efficiency.first_crossing(curve([0.1, 0.2, 0.2, 0.25, 0.29]), 0.3) is None


def test_dr_reaching_plain_final_a_quarter_into_the_budget_is_4x():
    dr = curve([0.2, 0.3, 0.5, 0.6, 0.7])
    plain = curve([0.1, 0.2, 0.3, 0.4, 0.5])
    result = efficiency.multiplier(dr, plain)
    assert result["multiplier"] == pytest.approx(16000 / 4000)
    assert result["target"] == 0.5 and result["reference"] == "non-DR final"
    assert not result["lower_bound"] and not result["upper_bound"]


def test_dr_already_past_the_target_at_its_first_checkpoint_is_a_lower_bound():
    result = efficiency.multiplier(curve([0.6, 0.7, 0.8, 0.8, 0.9]), curve([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert result["multiplier"] == pytest.approx(16)
    assert result["lower_bound"]


def test_dr_below_plain_everywhere_gives_a_multiplier_below_one():
    dr = curve([0.1, 0.15, 0.2, 0.25, 0.3])
    plain = curve([0.2, 0.25, 0.3, 0.4, 0.5])
    result = efficiency.multiplier(dr, plain)
    # non-DR reaches DR's final 0.3 at 4000 of the 16000 DR used
    assert result["multiplier"] == pytest.approx(4000 / 16000)
    assert result["reference"] == "DR final" and not result["lower_bound"]
    assert "does not reach" in efficiency.describe(
        {**result, "dr_run": "a", "plain_run": "b", "benchmark": "x", "metric": "acc1", "seeds": 1,
         "range": [0.25, 0.25], "per_seed": [result]})


def test_equal_curves_are_1x():
    values = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert efficiency.multiplier(curve(values), curve(values))["multiplier"] == pytest.approx(1.0)


def test_unsorted_or_non_positive_seen_samples_are_refused():
    with pytest.raises(ValueError, match="positive and increasing"):
        efficiency.multiplier([(2000, 0.1), (1000, 0.2)], curve([0.1] * 5))
    with pytest.raises(ValueError, match="positive and increasing"):
        efficiency.multiplier(curve([0.1] * 5), [(0, 0.1), (1000, 0.2)])


def record(run, dr, seed, seen, value, benchmark="toy_zeroshot"):
    return {"run": run, "dr": dr, "seed": seed, "seen_samples": seen, "main_metric": value, "benchmark": benchmark,
            "main_metric_name": "acc1", "model": "toy-student", "role": "student", "epoch": SEEN.index(seen) + 1}


def test_records_give_one_multiplier_per_pair_and_benchmark_with_per_seed_values():
    dr = {0: [0.2, 0.3, 0.5, 0.6, 0.7], 1: [0.2, 0.4, 0.5, 0.6, 0.7]}
    plain = {0: [0.1, 0.2, 0.3, 0.4, 0.5], 1: [0.1, 0.2, 0.3, 0.4, 0.4]}
    records = [record("dr", True, seed, seen, v) for seed, values in dr.items() for seen, v in zip(SEEN, values)]
    records += [record("plain", False, seed, seen, v) for seed, values in plain.items() for seen, v in zip(SEEN, values)]
    teacher = {**record("teacher_a", False, None, 1000, 0.9), "role": "teacher", "seen_samples": 0}
    [result] = efficiency.efficiency_records(records + [teacher], efficiency.default_pairs(records + [teacher]))
    assert (result["dr_run"], result["plain_run"], result["benchmark"], result["metric"]) == ("dr", "plain",
                                                                                             "toy_zeroshot", "acc1")
    per_seed = {entry["dr_seed"]: entry["multiplier"] for entry in result["per_seed"]}
    assert per_seed[0] == pytest.approx(4.0)
    assert per_seed[1] == pytest.approx(8.0)  # plain seed 1 ends at 0.4, DR seed 1 is there at 2000
    assert result["range"] == [pytest.approx(4.0), pytest.approx(8.0)]
    # on the seed means: plain ends at 0.45, DR's mean curve 0.2, 0.35, 0.5 -> crossing between 2000 and 4000
    assert result["multiplier"] == pytest.approx(16000 / math.exp(math.log(2000) + (0.1 / 0.15) * math.log(2)))
    sentence = efficiency.describe(result)
    assert sentence.startswith("DR (dr) reaches non-DR's (plain) final toy_zeroshot acc1 (45.0%) with")
    assert "range over 2 seed pairs" in sentence


def test_pairs_default_to_dr_and_plain_runs_of_the_same_model():
    records = [record("dr", True, 0, 1000, 0.5), record("plain", False, 0, 1000, 0.4),
               {**record("other", False, 0, 1000, 0.4), "model": "ViT-B-16"}]
    assert efficiency.default_pairs(records) == [("dr", "plain")]
