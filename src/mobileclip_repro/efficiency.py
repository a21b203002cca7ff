"""The efficiency multiplier: how many more seen samples plain CLIP needs to match DR training.

The paper's claim is a ratio of seen samples at equal accuracy (DataCompDR reaches a
DataComp run's accuracy with several times fewer samples), so this module reads it off
the learning curves rather than comparing accuracies at one budget:

* target = the non-DR run's accuracy at the end of its budget ``B``;
* ``s`` = the seen samples at which the DR curve first reaches the target, interpolated
  linearly in log(seen samples) between the two checkpoints around the crossing;
* multiplier = ``B / s``. If DR is already above the target at its first checkpoint, the
  crossing lies somewhere before it: the multiplier is at least ``B / first`` and is
  reported as a lower bound.
* If DR never reaches the target, the roles swap: ``s`` = where the non-DR curve reaches
  DR's final accuracy, multiplier = ``s / B_dr`` (< 1, DR is the less efficient arm), an
  upper bound when non-DR is already there at its first checkpoint.

Per seed pair (DR seed i with non-DR seed i, in seed order) and on the curves of the
seed means. Records are plain dicts, written to ``efficiency.json``.
"""
from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean

Curve = list[tuple[float, float]]  # (seen samples, metric), seen samples increasing
# How the report defines the number, under its sentences.
DEFINITION = ("Multiplier: the non-DR budget over the seen samples at which the DR curve reaches non-DR's final "
              "accuracy (log-x interpolation between checkpoints); on the seed means, and its range over seed pairs "
              "(`efficiency.json`).")


def first_crossing(curve: Curve, target: float) -> float | None:
    """Seen samples at which ``curve`` first reaches ``target`` (log-x interpolation), None if it never does.

    A curve already at the target at its first point returns that point's seen samples.
    """
    if curve[0][1] >= target:
        return curve[0][0]
    for (seen_a, value_a), (seen_b, value_b) in zip(curve, curve[1:]):
        if value_b >= target:
            fraction = (target - value_a) / (value_b - value_a)
            return math.exp(math.log(seen_a) + fraction * (math.log(seen_b) - math.log(seen_a)))
    return None


def multiplier(dr_curve: Curve, plain_curve: Curve) -> dict:
    """How many times more seen samples the non-DR curve needs than the DR curve, at equal accuracy."""
    for name, curve in (("DR", dr_curve), ("non-DR", plain_curve)):
        if not curve:
            raise ValueError(f"the {name} curve has no points")
        if any(seen <= 0 for seen, _ in curve) or any(a[0] >= b[0] for a, b in zip(curve, curve[1:])):
            raise ValueError(f"the {name} curve's seen samples must be positive and increasing: {curve}")
    plain_budget, plain_final = plain_curve[-1]
    reached = first_crossing(dr_curve, plain_final)
    if reached is not None:
        return {"multiplier": plain_budget / reached, "target": plain_final, "reference": "non-DR final",
                "lower_bound": dr_curve[0][1] >= plain_final, "upper_bound": False}
    dr_budget, dr_final = dr_curve[-1]
    reached = first_crossing(plain_curve, dr_final)  # not None: plain ends above DR's best, hence its final
    return {"multiplier": reached / dr_budget, "target": dr_final, "reference": "DR final",
            "lower_bound": False, "upper_bound": plain_curve[0][1] >= dr_final}


def _curves(rows: list[dict]) -> dict[int, Curve]:
    """seed -> curve, from records of one run and benchmark."""
    by_seed: dict[int, Curve] = defaultdict(list)
    for row in rows:
        by_seed[row["seed"] if row.get("seed") is not None else 0].append((row["seen_samples"], row["main_metric"]))
    return {seed: sorted(points) for seed, points in sorted(by_seed.items())}


def mean_curve(curves: list[Curve]) -> Curve:
    """The seed mean at the seen-sample points every seed has."""
    common = set.intersection(*(set(seen for seen, _ in curve) for curve in curves))
    values = [dict(curve) for curve in curves]
    return [(seen, mean(v[seen] for v in values)) for seen in sorted(common)]


def efficiency_records(records: list[dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """One record per (DR run, non-DR run, benchmark) of ``pairs`` that both runs were evaluated on."""
    students = [r for r in records if r.get("role", "student") == "student" and r["main_metric"] is not None
                and r["seen_samples"] > 0]
    grouped = defaultdict(list)
    for record in students:
        grouped[(record["run"], record["benchmark"])].append(record)
    results = []
    for dr_run, plain_run in pairs:
        # classification first, as the tables order benchmarks
        benchmarks = sorted({b for run, b in grouped if run == dr_run} & {b for run, b in grouped if run == plain_run},
                            key=lambda b: (grouped[(dr_run, b)][0].get("task") != "zeroshot_classification", b))
        for benchmark in benchmarks:
            dr_curves, plain_curves = _curves(grouped[(dr_run, benchmark)]), _curves(grouped[(plain_run, benchmark)])
            per_seed = []
            for dr_seed, plain_seed in zip(dr_curves, plain_curves):
                result = multiplier(dr_curves[dr_seed], plain_curves[plain_seed])
                per_seed.append({"dr_seed": dr_seed, "plain_seed": plain_seed, **result})
            overall = multiplier(mean_curve(list(dr_curves.values())), mean_curve(list(plain_curves.values())))
            values = [entry["multiplier"] for entry in per_seed]
            results.append({
                "dr_run": dr_run, "plain_run": plain_run, "benchmark": benchmark,
                "metric": grouped[(dr_run, benchmark)][0]["main_metric_name"],
                **overall, "seeds": len(per_seed), "range": [min(values), max(values)], "per_seed": per_seed,
            })
    return results


def default_pairs(records: list[dict]) -> list[tuple[str, str]]:
    """Every (DR run, non-DR run) pair of student runs with the same model."""
    runs = {}
    for record in records:
        if record.get("role", "student") == "student":
            runs.setdefault(record["run"], (bool(record["dr"]), record["model"]))
    return [(dr_run, plain_run) for dr_run, (dr, model) in sorted(runs.items()) if dr
            for plain_run, (plain_dr, plain_model) in sorted(runs.items()) if not plain_dr and plain_model == model]


def _times(value: float, lower: bool, upper: bool) -> str:
    return f"{'≥ ' if lower else '≤ ' if upper else ''}{value:.1f}×"


def describe(result: dict) -> str:
    """The result in one sentence, as the report states it."""
    low, high = result["range"]
    spread = (f"range over {result['seeds']} seed pairs {low:.1f}–{high:.1f}×" if result["seeds"] > 1
              else "one seed pair")
    bounded = [entry for entry in result["per_seed"] if entry["lower_bound"] or entry["upper_bound"]]
    if bounded:
        spread += f"; {len(bounded)} of them bounds, not crossings"
    metric = f"{result['benchmark']} {result['metric']}"
    if result["reference"] == "non-DR final":
        text = (f"DR ({result['dr_run']}) reaches non-DR's ({result['plain_run']}) final {metric} "
                f"({100 * result['target']:.1f}%) with {_times(result['multiplier'], result['lower_bound'], False)} "
                f"fewer seen samples ({spread})")
        if result["lower_bound"]:
            text += "; DR is past that accuracy at its first checkpoint, so the multiplier is a lower bound"
        return text + "."
    return (f"DR ({result['dr_run']}) does not reach non-DR's ({result['plain_run']}) final {metric}; non-DR "
            f"reaches DR's final {100 * result['target']:.1f}% with "
            f"{_times(1 / result['multiplier'], result['upper_bound'], False)} fewer seen samples than DR used: "
            f"multiplier {_times(result['multiplier'], False, result['upper_bound'])} ({spread}).")
