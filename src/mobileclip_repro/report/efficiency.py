"""The efficiency multipliers: how many more seen samples (``kind: samples``) and how much more
data (``kind: data``, with ``data.subsets``) plain CLIP needs to match DR training.

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

The data multiplier reads the paper's other axis (§6: DR on small subsets of DataComp-1B still
trains a usable model where plain CLIP collapses) off runs that ``data.subsets`` expanded into
one run per dataset size, all with the same seen-sample budget: for a DR run of ``n`` unique
samples, the non-DR dataset size whose final accuracy equals DR's (first crossing of non-DR's
final accuracy vs dataset size, log-x interpolation) over ``n``. Below 1 when DR needs more
data; a lower bound when the largest non-DR subset never gets there, an upper bound when the
smallest already does.
"""
from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean

Curve = list[tuple[float, float]]  # (seen samples, metric), seen samples increasing
# How the report defines the number, under its sentences.
DEFINITION = ("Multiplier: the non-DR budget over the seen samples at which the DR curve reaches non-DR's final "
              "accuracy (log-x interpolation between checkpoints); on the seed means, and its range over seed pairs "
              "(`efficiency.json`); the figure draws it as an arrow between the two curves at that accuracy.")


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
    # dr_seen, plain_seen: where each arm is at the target accuracy (the figure draws the multiplier between them)
    plain_budget, plain_final = plain_curve[-1]
    reached = first_crossing(dr_curve, plain_final)
    if reached is not None:
        return {"multiplier": plain_budget / reached, "target": plain_final, "reference": "non-DR final",
                "lower_bound": dr_curve[0][1] >= plain_final, "upper_bound": False,
                "dr_seen": reached, "plain_seen": plain_budget}
    dr_budget, dr_final = dr_curve[-1]
    reached = first_crossing(plain_curve, dr_final)  # not None: plain ends above DR's best, hence its final
    return {"multiplier": reached / dr_budget, "target": dr_final, "reference": "DR final",
            "lower_bound": False, "upper_bound": plain_curve[0][1] >= dr_final,
            "dr_seen": dr_budget, "plain_seen": reached}


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
                "kind": "samples", "dr_run": dr_run, "plain_run": plain_run, "benchmark": benchmark,
                "metric": grouped[(dr_run, benchmark)][0]["main_metric_name"],
                **overall, "seeds": len(per_seed), "range": [min(values), max(values)], "per_seed": per_seed,
            })
    return results


def subset_size(record: dict) -> int | None:
    """The unique samples a record's run trained on (``data.subsets``); None: the whole data."""
    return (record.get("run_spec") or {}).get("subset_size")


def default_pairs(records: list[dict]) -> list[tuple[str, str]]:
    """Every (DR run, non-DR run) pair of student runs with the same model and dataset size."""
    runs = {}
    for record in records:
        if record.get("role", "student") == "student":
            runs.setdefault(record["run"], (bool(record["dr"]), record["model"], subset_size(record)))
    return [(dr_run, plain_run) for dr_run, (dr, model, size) in sorted(runs.items()) if dr
            for plain_run, (plain_dr, plain_model, plain_size) in sorted(runs.items())
            if not plain_dr and plain_model == model and plain_size == size]


# -- the data-efficiency multiplier (data.subsets) ----------------------------------------------

DATA_DEFINITION = ("Data multiplier: for each DR dataset size, the non-DR dataset size whose final accuracy (same "
                   "seen-sample budget) equals DR's final accuracy, interpolated in log dataset size between the "
                   "non-DR subsets, over the DR size; ≥ when the largest non-DR subset never gets there, ≤ when the "
                   "smallest already does (`efficiency.json`, `kind: data`).")


def data_needed(size_curve: Curve, target: float) -> tuple[float, bool, bool]:
    """(dataset size at which ``size_curve`` -- final accuracy vs dataset size -- first reaches
    ``target``, lower bound, upper bound). Never reached: the largest size, a lower bound; reached
    at the smallest: that size, an upper bound."""
    reached = first_crossing(size_curve, target)
    if reached is None:
        return size_curve[-1][0], True, False
    return reached, False, size_curve[0][1] >= target


def final_accuracies(rows: list[dict]) -> dict[int, float]:
    """seed -> the main metric at the run's last checkpoint (its full budget)."""
    last: dict[int, tuple] = {}
    for row in rows:
        seed = row["seed"] if row.get("seed") is not None else 0
        if seed not in last or row["seen_samples"] > last[seed][0]:
            last[seed] = (row["seen_samples"], row["main_metric"])
    return {seed: value for seed, (_, value) in sorted(last.items())}


def data_efficiency_records(records: list[dict]) -> list[dict]:
    """One record per (DR run, non-DR run, benchmark, DR dataset size) of runs expanded by
    ``data.subsets`` (``run_spec.subset_of``), the non-DR run with at least two sizes."""
    students = [r for r in records if r.get("role", "student") == "student" and r["main_metric"] is not None
                and r["seen_samples"] > 0 and subset_size(r)]
    finals: dict[tuple, dict[int, dict[int, float]]] = defaultdict(dict)  # (base, dr, model, bench) -> size -> seeds
    grouped = defaultdict(list)
    for record in students:
        grouped[(record["run"], record["benchmark"])].append(record)
    metric_names, budgets = {}, {}
    for (run, benchmark), rows in grouped.items():
        first = rows[0]
        base = first["run_spec"].get("subset_of") or run
        key = (base, bool(first["dr"]), first["model"], benchmark)
        finals[key][subset_size(first)] = final_accuracies(rows)
        metric_names[benchmark] = first["main_metric_name"]
        budgets[key] = max(row["seen_samples"] for row in rows)
    results = []
    bases = sorted({(base, dr, model) for base, dr, model, _ in finals})
    for dr_base, _, model in [b for b in bases if b[1]]:
        for plain_base, _, _ in [b for b in bases if not b[1] and b[2] == model]:
            benchmarks = sorted({k[3] for k in finals if k[:3] == (dr_base, True, model)}
                                & {k[3] for k in finals if k[:3] == (plain_base, False, model)})
            for benchmark in benchmarks:
                dr_sizes, plain_sizes = finals[(dr_base, True, model, benchmark)], finals[(plain_base, False, model, benchmark)]
                if len(plain_sizes) < 2:
                    continue
                results += _data_multipliers(dr_base, plain_base, benchmark, metric_names[benchmark], dr_sizes,
                                             plain_sizes, budgets[(dr_base, True, model, benchmark)])
    return results


def _data_multipliers(dr_run: str, plain_run: str, benchmark: str, metric: str, dr_sizes: dict, plain_sizes: dict,
                      budget: int) -> list[dict]:
    plain_seeds = sorted(set.intersection(*(set(seeds) for seeds in plain_sizes.values())))
    plain_curves = {seed: [(size, plain_sizes[size][seed]) for size in sorted(plain_sizes)] for seed in plain_seeds}
    plain_mean = [(size, mean(plain_sizes[size][seed] for seed in plain_seeds)) for size in sorted(plain_sizes)]
    results = []
    for size in sorted(dr_sizes):
        dr_finals = dr_sizes[size]
        per_seed = []
        for dr_seed, plain_seed in zip(sorted(dr_finals), plain_seeds):
            needed, lower, upper = data_needed(plain_curves[plain_seed], dr_finals[dr_seed])
            per_seed.append({"dr_seed": dr_seed, "plain_seed": plain_seed, "target": dr_finals[dr_seed],
                             "plain_size_needed": needed, "multiplier": needed / size,
                             "lower_bound": lower, "upper_bound": upper})
        target = mean(dr_finals.values())
        needed, lower, upper = data_needed(plain_mean, target)
        values = [entry["multiplier"] for entry in per_seed]
        results.append({"kind": "data", "dr_run": dr_run, "plain_run": plain_run, "benchmark": benchmark,
                        "metric": metric, "dr_subset_size": size, "seen_samples": budget, "target": target,
                        "plain_size_needed": needed, "multiplier": needed / size, "lower_bound": lower,
                        "upper_bound": upper, "plain_sizes": sorted(plain_sizes), "seeds": len(per_seed),
                        "range": [min(values), max(values)] if values else None, "per_seed": per_seed})
    return results


def describe_data(result: dict) -> str:
    """A data multiplier in one sentence, as the report states it."""
    low, high = result["range"]
    bounds = sum(entry["lower_bound"] or entry["upper_bound"] for entry in result["per_seed"])
    spread = (f"range over {result['seeds']} seed pairs {format_times(low, False, False)}–{format_times(high, False, False)}"
              if result["seeds"] > 1 else "one seed pair")
    if bounds:
        spread += f"; {bounds} of them bounds"
    needed = result["plain_size_needed"]
    if result["lower_bound"]:
        how = (f"non-DR ({result['plain_run']}) does not get there with its largest subset "
               f"({needed:,.0f} samples)")
    elif result["upper_bound"]:
        how = f"non-DR ({result['plain_run']}) is there with its smallest subset ({needed:,.0f} samples)"
    else:
        how = f"non-DR ({result['plain_run']}) needs {needed:,.0f} samples for it"
    return (f"On {result['dr_subset_size']:,} unique samples DR ({result['dr_run']}) reaches "
            f"{100 * result['target']:.1f}% {result['benchmark']} {result['metric']} in "
            f"{result['seen_samples']:,} seen samples; {how}: data multiplier "
            f"{format_times(result['multiplier'], result['lower_bound'], result['upper_bound'])} ({spread}).")


def format_times(value: float, lower: bool = False, upper: bool = False) -> str:
    """A multiplier as the report prints it: 4.7×, ≥ 4.7× (a lower bound), ≤ 0.6× (an upper bound)."""
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
                f"({100 * result['target']:.1f}%) with {format_times(result['multiplier'], result['lower_bound'], False)} "
                f"fewer seen samples ({spread})")
        if result["lower_bound"]:
            text += "; DR is past that accuracy at its first checkpoint, so the multiplier is a lower bound"
        return text + "."
    return (f"DR ({result['dr_run']}) does not reach non-DR's ({result['plain_run']}) final {metric}; non-DR "
            f"reaches DR's final {100 * result['target']:.1f}% with "
            f"{format_times(1 / result['multiplier'], result['upper_bound'], False)} fewer seen samples than DR used: "
            f"multiplier {format_times(result['multiplier'], False, result['upper_bound'])} ({spread}).")
